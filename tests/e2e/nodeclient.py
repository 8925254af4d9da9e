"""The official ``@microsoft/signalr`` client under Node (``node/client.mjs``) as an asyncio
subprocess, so end-to-end tests exercise Hubbub against the real client rather than our idea
of it. One JSON event per stdout line comes back; one JSON command per stdin line goes in."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

NODE_DIR = Path(__file__).parent / "node"
# Hub messages can be large; asyncio's 64 KiB default line limit would break the pipe framing.
_LINE_LIMIT = 16 * 1024 * 1024
_STDERR_LINES = 200

Event = dict[str, Any]


def ensure_node_modules() -> None:
    """Install the pinned packages from the lock file once, so a fresh checkout just works
    (again when package.json names one that node_modules lacks)."""
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if all((NODE_DIR / "node_modules" / name).is_dir() for name in wanted):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required for the Node SignalR client tests")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"npm ci failed in {NODE_DIR} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


class NodeClient:
    """One official-client connection; events are buffered so no test can miss one."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.connection_id: str | None = None
        self._events: list[Event] = []
        self._eof = False
        self._changed = asyncio.Condition()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(
        self,
        url: str,
        token: str | None = None,
        skip_negotiation: bool = False,
        reconnect: bool = False,
        on: Iterable[str] = ("newMessage",),
        *,
        transport_header: bool = False,
        query_token: bool = False,
        answer: Iterable[str] = (),
        msgpack: bool = False,
        stateful: bool = False,
    ) -> None:
        """Spawn the client; it connects on its own, so await ``wait_connected()`` next.

        ``transport_header`` sends the token as a fixed ``headers`` option instead of an
        accessTokenFactory; ``query_token`` makes the WebSocket carry ``access_token`` in the URL
        and no Authorization header, as the browser build does; ``msgpack`` speaks the
        MessagePack hub protocol (MessagePackHubProtocol) instead of JSON.
        """
        if self.process is not None:
            raise RuntimeError("this NodeClient was already started")
        names = [name for name in on if name]
        args = ["client.mjs", "--url", url]
        if names:
            args += ["--on", ",".join(names)]
        if token is not None:
            args += ["--token", token]
        if skip_negotiation:
            args.append("--skip-negotiation")
        if reconnect:
            args.append("--reconnect")
        if transport_header:
            args.append("--transport-header")
        if query_token:
            args.append("--query-token")
        if answer:  # handlers returning {"echo": args} (client results); "fail", "hang"
            args += ["--answer", ",".join(answer)]
        if msgpack:
            args.append("--msgpack")
        if stateful:  # withStatefulReconnect()
            args.append("--stateful")
        self.process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            *args,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        self._tasks = [
            asyncio.create_task(self._pump_stdout()),
            asyncio.create_task(self._pump_stderr()),
        ]

    @property
    def stderr(self) -> str:
        """The client's recent log (Warning and up), for assertion messages."""
        return "\n".join(self._stderr)

    async def _pump_stdout(self) -> None:
        """Read every event as it arrives, so waiting for one kind never drops another."""
        assert self.process is not None and self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "unparsed", "line": line.decode(errors="replace")}
                async with self._changed:
                    self._events.append(event)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._eof = True
                self._changed.notify_all()

    async def _pump_stderr(self) -> None:
        """Drain stderr, or a chatty client would block on a full pipe."""
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip("\n"))

    def _claim(self, match: Callable[[Event], bool]) -> Event | None:
        for i, event in enumerate(self._events):
            if match(event):
                return self._events.pop(i)
        return None

    async def _next(self, match: Callable[[Event], bool], timeout: float, what: str) -> Event:
        # Claim an already-buffered event first: a spent deadline must not hide one.
        if (event := self._claim(match)) is not None:
            return event

        async def wait() -> Event:
            async with self._changed:
                while True:
                    if (event := self._claim(match)) is not None:
                        return event
                    if self._eof:
                        code = self.process.returncode if self.process else None
                        raise EOFError(
                            f"node client exited (code {code}) before {what}; "
                            f"unclaimed events {self._events}; stderr:\n{self.stderr}"
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no {what} within {timeout}s; unclaimed events {self._events}; "
                f"stderr:\n{self.stderr}"
            ) from None

    async def next_event(
        self, kind: str | tuple[str, ...] | None = None, timeout: float = 10.0
    ) -> Event:
        """The oldest unclaimed event (of ``kind``); events skipped over stay for later calls."""
        kinds = (kind,) if isinstance(kind, str) else kind
        return await self._next(
            lambda e: kinds is None or e.get("event") in kinds, timeout, f"event {kinds or 'any'}"
        )

    async def wait_connected(self, timeout: float = 20.0) -> str | None:
        """The connectionId once start() resolved; a failed start raises with its reason.

        None with ``skip_negotiation``: the client only learns an id from negotiate.
        """
        event = await self.next_event(("connected", "start_failed"), timeout)
        if event["event"] == "start_failed":
            raise RuntimeError(f"start failed: {event['message']}")
        connection_id: str | None = event["connectionId"]
        self.connection_id = connection_id
        return connection_id

    async def _command(self, command: dict[str, Any]) -> None:
        if self.process is None or self.process.stdin is None:
            raise RuntimeError("NodeClient.start() was not called")
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def _call(
        self, cmd: str, done: str, method: str, args: tuple[Any, ...], timeout: float
    ) -> Event:
        call = next(self._ids)
        await self._command({"cmd": cmd, "id": call, "method": method, "args": list(args)})
        event = await self._next(
            lambda e: e.get("id") == call and e.get("event") in (done, "error"),
            timeout,
            f"reply to {cmd} {method} (id {call})",
        )
        if event["event"] == "error":
            raise RuntimeError(event["message"])
        return event

    async def invoke(self, method: str, *args: Any, timeout: float = 10.0) -> Any:
        """connection.invoke(): the hub method's result; a completion error raises RuntimeError."""
        return (await self._call("invoke", "result", method, args, timeout))["result"]

    async def send(self, method: str, *args: Any, timeout: float = 10.0) -> None:
        """connection.send(): returns once the frame is written; the server never answers it."""
        await self._call("send", "sent", method, args, timeout)

    async def state(self, timeout: float = 10.0) -> Event:
        """The client's own view: ``state`` (Connected, Reconnecting, ...) and ``connectionId``."""
        call = next(self._ids)
        await self._command({"cmd": "state", "id": call})
        return await self._next(
            lambda e: e.get("event") == "state" and e.get("id") == call, timeout, "state"
        )

    async def messages(self, n: int, timeout: float = 10.0) -> list[Event]:
        """The next ``n`` message events, all within one overall deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[Event] = []
        for _ in range(n):
            got.append(await self.next_event("message", max(0.0, deadline - loop.time())))
        return got

    async def stop(self, timeout: float = 10.0) -> None:
        """connection.stop(), then wait for the process to exit cleanly."""
        await self._command({"cmd": "stop"})
        await self.next_event("stopped", timeout)
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if code != 0:
            raise RuntimeError(f"node client exited with {code}; stderr:\n{self.stderr}")

    async def aclose(self) -> None:
        """Stop politely if it is still running, kill it if that stalls; safe to call twice."""
        process = self.process
        if process is not None and process.returncode is None:
            try:
                await self._command({"cmd": "stop"})
                await asyncio.wait_for(process.wait(), 5)
            except (TimeoutError, BrokenPipeError, ConnectionResetError, RuntimeError):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process is not None and process.stdin is not None:
            process.stdin.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []
