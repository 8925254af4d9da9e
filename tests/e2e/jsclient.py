"""The official ``@microsoft/signalr`` client under Node, as an asyncio subprocess."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).parent / "js"


def ensure_installed() -> None:
    """Install the pinned client from the lock file if ``scripts/test`` has not."""
    if (JS_DIR / "node_modules" / "@microsoft" / "signalr").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required for the JavaScript client tests")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR, check=True
    )


class JsClient:
    _ids = itertools.count(1)

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.buffer: list[dict[str, Any]] = []
        self.connection_id: str | None = None

    @classmethod
    async def start(
        cls,
        url: str,
        token: str | None = None,
        *,
        skip_negotiation: bool = False,
        reconnect: bool = False,
        on: tuple[str, ...] = ("newMessage",),
    ) -> JsClient:
        args = ["client.mjs", "--url", url, "--on", ",".join(on)]
        if token:
            args += ["--token", token]
        if skip_negotiation:
            args.append("--skip-negotiation")
        if reconnect:
            args.append("--reconnect")
        process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            *args,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        first = await client.next_event(("connected", "start_failed"), timeout=20)
        if first["event"] == "start_failed":
            await client.aclose()
            raise RuntimeError(first["message"])
        client.connection_id = first["connectionId"]
        return client

    async def next_event(
        self, kinds: tuple[str, ...] | str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The next event (of one of ``kinds``); skipped events stay buffered for later."""
        wanted = (kinds,) if isinstance(kinds, str) else kinds
        for i, event in enumerate(self.buffer):
            if wanted is None or event["event"] in wanted:
                return self.buffer.pop(i)
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise EOFError("the JS client exited")
                event = json.loads(line)
                if wanted is None or event["event"] in wanted:
                    return event
                self.buffer.append(event)

    async def message(self, timeout: float = 10.0) -> list[Any]:
        event = await self.next_event("message", timeout)
        args: list[Any] = event["args"]
        return args

    async def _command(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def invoke(self, method: str, *args: Any) -> Any:
        call = next(self._ids)
        await self._command({"cmd": "invoke", "id": call, "method": method, "args": list(args)})
        while True:
            event = await self.next_event(("result", "error"))
            if event["id"] == call:
                if event["event"] == "error":
                    raise RuntimeError(event["message"])
                return event["result"]
            self.buffer.append(event)

    async def current_id(self) -> str:
        await self._command({"cmd": "id"})
        event = await self.next_event("id")
        connection_id: str = event["connectionId"]
        return connection_id

    async def aclose(self) -> None:
        if self.process.returncode is None:
            try:
                await self._command({"cmd": "stop"})
                await asyncio.wait_for(self.process.wait(), 5)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                self.process.kill()
                await self.process.wait()
