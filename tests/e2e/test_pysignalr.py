"""pysignalr (PyPI), unchanged, against two gateways and two workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pysignalr.client import SignalRClient
from pysignalr.messages import CompletionMessage

from hubbub.sdk.client import HubbubClient
from tests.support.processes import Deployment
from tests.support.rawclient import client_token


class PyClient:
    """A running pysignalr client whose ``newMessage`` arguments land in a queue."""

    def __init__(self, url: str, token: str) -> None:
        # pysignalr 1.3.3 applies access_token_factory only after its first handshake, so its
        # first negotiate and upgrade would go unauthenticated: pass the header instead.
        self.client = SignalRClient(url, headers={"Authorization": f"Bearer {token}"})
        self.opened = asyncio.Event()
        self.messages: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

        async def on_open() -> None:
            self.opened.set()

        async def on_message(args: list[Any]) -> None:
            await self.messages.put(args)

        async def on_error(message: CompletionMessage) -> None:
            pass  # pysignalr closes the connection on a completion error unless this is set

        self.client.on_open(on_open)
        self.client.on_error(on_error)
        self.client.on("newMessage", on_message)

    async def start(self) -> PyClient:
        self.task = asyncio.create_task(self.client.run())
        await asyncio.wait_for(self.opened.wait(), 15)
        return self

    async def next(self) -> list[Any]:
        return await asyncio.wait_for(self.messages.get(), 10)

    async def invoke(self, method: str, *args: Any) -> CompletionMessage:
        done: asyncio.Future[CompletionMessage] = asyncio.get_running_loop().create_future()

        async def on_completion(message: Any) -> None:
            done.set_result(message)

        await self.client.send(method, list(args), on_invocation=on_completion)
        return await asyncio.wait_for(done, 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def py_clients() -> AsyncIterator[list[PyClient]]:
    clients: list[PyClient] = []
    yield clients
    for c in clients:
        await c.stop()


async def test_pysignalr_receives_all_user_and_group(
    cluster: Deployment, api: HubbubClient, py_clients: list[PyClient]
) -> None:
    await api.add_user_to_group("early", "gina")  # before she connects
    url = f"{cluster.gateways[1].url}/hubs/chat"
    gina = await PyClient(url, client_token("gina", roles=["hubbub.joinLeaveGroup"])).start()
    py_clients.append(gina)

    await api.send_to_all("newMessage", ["to all", {"n": 1}])
    assert await gina.next() == ["to all", {"n": 1}]
    await api.send_to_user("gina", "newMessage", ["to gina"])
    assert await gina.next() == ["to gina"]
    await api.send_to_group("early", "newMessage", ["to early birds"])
    assert await gina.next() == ["to early birds"]

    joined = await gina.invoke("JoinGroup", "late")
    assert joined.error is None
    await api.send_to_group("late", "newMessage", ["joined by invocation"])
    assert await gina.next() == ["joined by invocation"]

    unknown = await gina.invoke("Nope")
    assert unknown.error == "Method 'Nope' does not exist on this hub."
