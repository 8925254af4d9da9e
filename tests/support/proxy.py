"""A round-robin TCP proxy: the load balancer in front of the gateways, for drain tests.

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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = next(self._turn)
        for i in range(len(self.backends)):
            port = self.backends[(start + i) % len(self.backends)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
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
