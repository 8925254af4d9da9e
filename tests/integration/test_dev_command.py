"""The README's first command, ``hubbub dev``, as a user runs it: from a fresh directory, with
the default relative ``--workdir``; a message sent with ``hubbub send`` reaches a client; Ctrl-C
stops everything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubbub.dev.embedded import RedisProcess, free_port
from tests.support.processes import ACCESS_KEY
from tests.support.rawclient import RawClient

HUBBUB = str(Path(sys.executable).with_name("hubbub"))


def two_free_ports() -> int:
    """A port p with p + 1 free too: ``hubbub dev`` puts its gateways on consecutive ports."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def test_hubbub_dev_runs_and_delivers(tmp_path: Path) -> None:
    port = two_free_ports()
    env = dict(os.environ, HUBBUB_ACCESS_KEY=ACCESS_KEY)
    dev = await asyncio.create_subprocess_exec(
        HUBBUB, "dev", "--port", str(port),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert dev.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "Ctrl-C stops everything" not in (line := (await dev.stdout.readline()).decode()):
                assert line, "hubbub dev exited:\n" + "".join(output)
                output.append(line)
        banner = "".join(output)
        gateways = re.search(r"gateways : (\S+), (\S+)", banner)
        assert gateways is not None, banner
        assert gateways.groups() == (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}")
        assert (tmp_path / ".hubbub" / "redis" / "server.log").exists()

        client = await RawClient.connect(gateways.group(2))
        send = await asyncio.create_subprocess_exec(
            HUBBUB, "send", "--url", gateways.group(1), "--hub", "chat",
            "newMessage", '"hello from hubbub"',
            env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        sent, _ = await send.communicate()
        assert send.returncode == 0
        message = await client.recv()
        assert message["target"] == "newMessage"
        assert message["arguments"] == ["hello from hubbub"]
        assert sent.decode().strip().startswith(tuple(f"{n}:" for n in range(16)))  # its id
        await client.close()
    finally:
        if dev.returncode is None:
            dev.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(dev.communicate(), 30)
    assert dev.returncode == 0, rest.decode()
    assert "hubbub dev: stopped" in rest.decode()


def test_a_redis_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = RedisProcess(directory=str(tmp_path), appendfsync="sometimes")  # not a valid value
    try:
        with pytest.raises(RuntimeError, match="appendfsync"):
            server.start()
    finally:
        server.stop()
