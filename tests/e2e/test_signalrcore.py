"""signalrcore (PyPI), unchanged: a threaded client, negotiating version 0."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from signalrcore.hub_connection_builder import HubConnectionBuilder

from hubbub.sdk.client import HubbubClient
from tests.support.processes import Deployment
from tests.support.rawclient import client_token


async def test_signalrcore_receives_and_invokes(cluster: Deployment, api: HubbubClient) -> None:
    token = client_token("sig", roles=["hubbub.joinLeaveGroup"])
    hub = (
        HubConnectionBuilder()
        .with_url(
            f"{cluster.gateways[1].url}/hubs/chat", options={"access_token_factory": lambda: token}
        )
        # Its ping thread only runs with automatic reconnect; without Pings the server's client
        # timeout would (rightly) close it after 30 s.
        .with_automatic_reconnect(
            {"type": "raw", "keep_alive_interval": 10, "reconnect_interval": 5}
        )
        .build()
    )
    opened = threading.Event()
    messages: queue.Queue[list[Any]] = queue.Queue()
    completions: queue.Queue[Any] = queue.Queue()
    hub.on_open(opened.set)
    hub.on("newMessage", messages.put)
    hub.on_error(lambda m: completions.put(("error", m.error)))
    hub.start()
    try:
        assert await asyncio.to_thread(opened.wait, 15)
        await api.send_to_all("newMessage", ["hi signalrcore"])
        assert await asyncio.to_thread(messages.get, True, 10) == ["hi signalrcore"]

        hub.send("JoinGroup", ["core"], on_invocation=lambda m: completions.put(("ok", m.result)))
        assert await asyncio.to_thread(completions.get, True, 10) == ("ok", None)
        await api.send_to_group("core", "newMessage", ["group"])
        assert await asyncio.to_thread(messages.get, True, 10) == ["group"]

        hub.send("Nope", [], on_invocation=lambda m: completions.put(("ok", m.result)))
        kind, error = await asyncio.to_thread(completions.get, True, 10)
        assert kind == "error" and "does not exist" in error
    finally:
        # signalrcore's stop() blocks ~15 s on its own threads after closing the socket; the
        # socket is what the server sees, so let the client wind down in the background.
        threading.Thread(target=hub.stop, daemon=True).start()
