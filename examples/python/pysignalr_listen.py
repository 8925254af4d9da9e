"""Listen with pysignalr: connect as the token's user, join a group, print each newMessage."""

import asyncio
import os
import sys
from typing import Any

from pysignalr.client import SignalRClient
from pysignalr.messages import CompletionMessage

URL = os.environ.get("HUBBUB_URL", "http://127.0.0.1:8081")  # hubbub dev's second gateway
TOKEN = os.environ["TOKEN"]  # hubbub token --user alice --role hubbub.joinLeaveGroup
GROUP = os.environ.get("GROUP", "vip")
COUNT = int(os.environ.get("COUNT", "0"))  # stop after this many messages (0: never)


async def main() -> None:
    # The token as a header: pysignalr 1.3.3 calls access_token_factory only after its first
    # handshake, so with it the first negotiate and upgrade would go out without a token.
    client = SignalRClient(f"{URL}/hubs/chat", headers={"Authorization": f"Bearer {TOKEN}"})
    opened = asyncio.Event()
    received: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def on_open() -> None:
        opened.set()  # do not await a hub call in here: the receive loop starts after it

    async def on_message(arguments: list[Any]) -> None:
        await received.put(arguments)  # the whole arguments list, as one parameter

    async def on_error(message: CompletionMessage) -> None:
        print("error:", message.error, file=sys.stderr)  # without it, pysignalr gives up

    client.on_open(on_open)
    client.on_error(on_error)
    client.on("newMessage", on_message)
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(opened.wait(), 15)

    joined: asyncio.Future[CompletionMessage] = asyncio.get_running_loop().create_future()

    async def on_joined(message: CompletionMessage) -> None:
        joined.set_result(message)

    # JoinGroup and LeaveGroup are the hub methods Hubbub itself answers (with a role that
    # allows them); other methods go to your services (docs/upstream.md).
    await client.send("JoinGroup", [GROUP], on_invocation=on_joined)
    answer = await asyncio.wait_for(joined, 10)
    if answer.error:
        raise SystemExit(f"JoinGroup refused: {answer.error}")
    print(f"listening in group {GROUP}", flush=True)

    seen = 0
    while COUNT == 0 or seen < COUNT:
        print("newMessage", *await received.get(), flush=True)
        seen += 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


asyncio.run(main())
