"""A round-robin TCP proxy: the load balancer in front of the gateways, for drain tests; and
the network between a client and them, for stateful-reconnect tests (:meth:`Proxy.cut`).

Each new connection goes to the next backend that accepts it, the way a Kubernetes Service
spreads connections; a backend that refuses is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from hubbub.dev.embedded import free_port


class Proxy:
    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Set while the network is up; while it is down, new connections wait here.
        self._up = asyncio.Event()
        self._up.set()
        self.accepted = 0  # connections accepted so far

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def cut(self, seconds: float, backends: list[int] | None = None) -> None:
        """A network outage: every open connection is reset now (both ends see it drop, with
        no Close), and connections opened during the next ``seconds`` wait, like a SYN being
        retransmitted, until the network is back; then go to ``backends`` if given."""
        self._up.clear()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(seconds)  # the outage's length is the point of the test
        if backends is not None:
            self.backends = backends
        self._up.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._up.wait()
        start = next(self._turn)
        for i in range(len(self.backends)):
            port = self.backends[(start + i) % len(self.backends)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self._writers.update((writer, up_writer))
            for src, dst in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.create_task(self._pipe(src, dst))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
