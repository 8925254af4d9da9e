"""Listen with signalrcore (threads): a token from :generateToken, join a group, print."""

import asyncio
import os
import queue
import threading
from typing import Any

from signalrcore.hub_connection_builder import HubConnectionBuilder

from hubbub.sdk.client import HubbubClient

URL = os.environ.get("HUBBUB_URL", "http://127.0.0.1:8081")
KEY = os.environ.get("HUBBUB_ACCESS_KEY", "hubbub-development-access-key-change-me")
GROUP = os.environ.get("GROUP", "vip")
COUNT = int(os.environ.get("COUNT", "0"))  # stop after this many messages (0: never)


async def client_token(user: str) -> str:
    """POST /api/hubs/chat/:generateToken, signed with the access key (a service's call)."""
    async with HubbubClient(URL, KEY, "chat") as api:
        return await api.generate_token(user, roles=["hubbub.joinLeaveGroup"])


token = asyncio.run(client_token("bob"))
hub = (
    HubConnectionBuilder()
    .with_url(f"{URL}/hubs/chat", options={"access_token_factory": lambda: token})
    # Its Pings only run with automatic reconnect; without them the gateway closes it after
    # 30 s of silence (HUBBUB_CLIENT_TIMEOUT).
    .with_automatic_reconnect({"type": "raw", "keep_alive_interval": 10, "reconnect_interval": 5})
    .build()
)
opened = threading.Event()
received: queue.Queue[list[Any]] = queue.Queue()
answers: queue.Queue[tuple[str, Any]] = queue.Queue()
hub.on_open(opened.set)  # callbacks run on signalrcore's own thread
hub.on("newMessage", received.put)
hub.on_error(lambda message: answers.put(("error", message.error)))
hub.start()  # returns before the handshake: wait for on_open
if not opened.wait(15):
    raise SystemExit("not connected within 15 s")

hub.send("JoinGroup", [GROUP], on_invocation=lambda message: answers.put(("ok", message.result)))
outcome, detail = answers.get(timeout=10)
if outcome != "ok":
    raise SystemExit(f"JoinGroup refused: {detail}")
print(f"listening in group {GROUP}", flush=True)

seen = 0
while COUNT == 0 or seen < COUNT:
    print("newMessage", *received.get(), flush=True)
    seen += 1
hub.stop()
