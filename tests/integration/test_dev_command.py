"""The README's first command, ``hubbub dev``, as a user runs it: from a fresh directory, with
the default relative ``--workdir``; the commands its banner prints work as printed; it runs
once per directory and per port; and whatever ends it (Ctrl-C to the terminal's process
group, a closed terminal, SIGKILL) leaves no child behind and its ports free."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.dev.launcher import NotOurs, start_process
from hubbub.dev.lifetime import port_in_use
from tests.integration.test_metrics import listening_addresses
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient

HUBBUB = str(Path(sys.executable).with_name("hubbub"))
BANNER_END = "Ctrl-C stops everything"


def two_free_ports() -> int:
    """A port p with p + 1 free too: ``hubbub dev`` puts its gateways (and its workers'
    /metrics) on consecutive ports."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc: no tool needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has exited: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Dev:
    """One ``hubbub dev`` process, in a session of its own as a terminal's job would be (its
    process group is the terminal's foreground group, that a Ctrl-C signals)."""

    process: asyncio.subprocess.Process
    banner: str = ""
    stderr: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def ports(self) -> list[int]:
        """Every port the banner names: gateways, Redis, workers' /metrics."""
        return sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", self.banner)})

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line.decode(errors="replace"))

    async def exit_code(self, within: float = 30.0) -> int:
        """Its exit code, once it and every process holding its stderr (the gateways and
        workers write there) have closed it."""
        assert self.process.stdout is not None and self.reader is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), within)
        self.banner += rest.decode()
        await asyncio.wait_for(self.reader, within)
        return await asyncio.wait_for(self.process.wait(), within)


def dev_args(port: int, metrics_port: int, *more: str) -> list[str]:
    return [HUBBUB, "dev", "--port", str(port), "--metrics-port", str(metrics_port), *more]


@contextlib.asynccontextmanager
async def hubbub_dev(
    cwd: Path, port: int, metrics_port: int, *more: str, env: dict[str, str] | None = None
) -> AsyncIterator[Dev]:
    """``hubbub dev`` up to its banner; killed (with its process group) if still running."""
    process = await asyncio.create_subprocess_exec(
        *dev_args(port, metrics_port, *more),
        cwd=cwd,
        env=env or dict(os.environ, HUBBUB_ACCESS_KEY=ACCESS_KEY),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    dev = Dev(process)
    dev.reader = asyncio.create_task(dev._read_stderr())
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            while BANNER_END not in (line := (await process.stdout.readline()).decode()):
                assert line, "hubbub dev exited:\n" + dev.banner + "".join(dev.stderr)
                dev.banner += line
        yield dev
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        dev.reader.cancel()


async def assert_all_gone(children: list[int], ports: list[int]) -> None:
    """Every child exits and every port is free again, within a bound: nothing announces it."""

    async def gone() -> bool:
        return not any(alive(pid) for pid in children) and not any(
            port_in_use("127.0.0.1", port) for port in ports
        )

    try:
        await eventually(gone, timeout=20)
    except AssertionError:
        left = [pid for pid in children if alive(pid)]
        taken = [port for port in ports if port_in_use("127.0.0.1", port)]
        for pid in left:  # not to leak them into the next tests
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(
            f"children still running: {left}, ports still taken: {taken}"
        ) from None


async def test_hubbub_dev_runs_and_delivers(tmp_path: Path) -> None:
    port, metrics = two_free_ports(), two_free_ports()
    env = dict(os.environ, HUBBUB_ACCESS_KEY=ACCESS_KEY)
    async with hubbub_dev(tmp_path, port, metrics, env=env) as dev:
        banner = dev.banner
        gateways = re.search(r"gateways : (\S+), (\S+)", banner)
        assert gateways is not None, banner
        assert gateways.groups() == (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}")
        assert (tmp_path / ".hubbub" / "redis" / "server.log").exists()
        # It names the Redis it runs, and the lines to paste are true.
        assert re.search(r"redis    : \S+\s+\((redis|valkey)-server \d+\.\d+", banner), banner
        export = re.search(r"^\s*export (.+)$", banner, re.MULTILINE)
        assert export is not None, banner
        exported = dict(word.split("=", 1) for word in shlex.split(export.group(1)))
        assert exported["HUBBUB_ACCESS_KEY"] == ACCESS_KEY
        async with Redis.from_url(exported["HUBBUB_REDIS_URL"]) as redis:
            assert await redis.ping()
        async with httpx.AsyncClient() as http:
            for url in re.findall(r"http://\S+/metrics", banner):
                assert (await http.get(url)).status_code == 200, url
            # hubbub dev turns the gateways' demo page on (HUBBUB_DEMO_PAGE).
            front = await http.get(f"{gateways.group(1)}/")
            assert front.status_code == 200 and "signalr.min.js" in front.text, front.text
        assert f"127.0.0.1:{metrics + 1}/metrics" in banner

        # Workers' /metrics only on the loopback interface.
        assert listening_addresses(metrics) == {"127.0.0.1"}
        assert "development default" not in banner  # its own key

        client = await RawClient.connect(gateways.group(2))
        # The banner's `hubbub listen` sees what its `hubbub send` sends.
        watch = re.search(r"^\s*(\S*hubbub listen .+)$", banner, re.MULTILINE)
        assert watch is not None, banner
        listen = await asyncio.create_subprocess_exec(
            *shlex.split(watch.group(1)), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert listen.stdout is not None and listen.stderr is not None
        connected = await asyncio.wait_for(listen.stderr.readline(), 20)
        assert connected == b"connected to hub 'chat' as user 'alice'\n"
        command = re.search(r"^\s*(\S*hubbub send .+)$", banner, re.MULTILINE)
        assert command is not None, banner
        send = await asyncio.create_subprocess_exec(
            *shlex.split(command.group(1)), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
        )
        sent, _ = await send.communicate()
        assert send.returncode == 0
        message = await client.recv()
        assert message["target"] == "newMessage"
        assert message["arguments"] == ["hello from hubbub"]
        assert sent.decode().strip().startswith(tuple(f"{n}:" for n in range(16)))  # its id
        line = await asyncio.wait_for(listen.stdout.readline(), 15)
        assert json.loads(line) == {"target": "newMessage", "arguments": ["hello from hubbub"]}
        listen.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(listen.wait(), 15) == 0
        await client.close()
        dev.process.send_signal(signal.SIGINT)
        assert await dev.exit_code() == 0, "".join(dev.stderr)
    assert "hubbub dev: stopped" in "".join(dev.stderr)


async def test_a_second_hubbub_dev_refuses_to_start(tmp_path: Path) -> None:
    """Same directory (its Redis's AOF), or another directory but the same ports: one line on
    stderr, no banner, and the first one goes on, healthy."""
    port, metrics = two_free_ports(), two_free_ports()
    async with hubbub_dev(tmp_path, port, metrics) as first:
        other = tmp_path / "other"
        other.mkdir()
        cases = [
            # Its own ports, but the first one's Redis directory.
            (tmp_path, two_free_ports(), two_free_ports(), "another hubbub dev is running in"),
            # Its own directory, but the first one's ports.
            (other, port, metrics, f"port {port} (gateway 1) is already in use"),
        ]
        for cwd, gateways, metrics_ports, reason in cases:
            second = await asyncio.create_subprocess_exec(
                *dev_args(gateways, metrics_ports), cwd=cwd,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                out, err = await asyncio.wait_for(second.communicate(), 30)
            finally:
                if second.returncode is None:  # it started after all: its children follow it
                    second.kill()
                    await second.wait()
            stdout, stderr = out.decode(), err.decode()
            assert second.returncode != 0
            assert "Hubbub is running" not in stdout, stdout
            assert stderr.count("\n") == 1, stderr
            assert stderr.startswith(f"hubbub dev: {reason}"), stderr
        async with httpx.AsyncClient() as http:
            for gateway in (port, port + 1):
                health = await http.get(f"http://127.0.0.1:{gateway}/api/health")
                assert health.status_code == 200
                assert health.json()["pid"] in children_of(first.pid)
        assert first.process.returncode is None


async def test_the_default_key_is_said_once_in_the_banner(tmp_path: Path) -> None:
    """Under hubbub dev the gateways do not each warn about the development key: the banner
    says it once."""
    env = {k: v for k, v in os.environ.items() if k != "HUBBUB_ACCESS_KEY"}
    one = ("--gateways", "1", "--workers", "1")
    async with hubbub_dev(tmp_path, free_port(), free_port(), *one, env=env) as dev:
        assert dev.banner.count("The access key is the development default") == 1, dev.banner
        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.exit_code() == 0
    stderr = "".join(dev.stderr)
    assert "HUBBUB_ACCESS_KEY" not in stderr and " WARNING " not in stderr, stderr


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:6379", "bad Redis URL localhost:6379: no scheme"),
        ("redis://127.0.0.1:70000/0", "bad Redis URL redis://127.0.0.1:70000/0: Port out of"),
        ("redis://:pw@127.0.0.1:{port}/0", "cannot reach Redis at redis://:***@127.0.0.1:{port}/0"),
    ],
)
async def test_a_bad_redis_url_is_one_line(tmp_path: Path, url: str, reason: str) -> None:
    """``hubbub dev --redis-url``: the one line says what is wrong with it; no child starts,
    no banner, exit 2."""
    port = free_port()
    url, reason = url.format(port=port), reason.format(port=port)
    process = await asyncio.create_subprocess_exec(
        *dev_args(two_free_ports(), two_free_ports(), "--redis-url", url), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 2
    assert out == b""
    assert err.decode().startswith(f"hubbub dev: {reason}"), err
    assert err.count(b"\n") == 1, err
    assert b"pw" not in err


@pytest.mark.parametrize(
    "how", ["SIGKILL to hubbub dev", "SIGHUP (terminal closed)", "SIGINT (Ctrl-C)"]
)
async def test_nothing_outlives_hubbub_dev(tmp_path: Path, how: str) -> None:
    """A SIGKILL leaves the children to Linux's parent-death signal; SIGHUP and the terminal's
    Ctrl-C (to the whole foreground process group) stop the gateways and workers first, then
    Redis, quietly: no traceback, no WARNING (a Redis stopped under live services logs some).
    One gateway and one worker: one of each kind of child starts faster than the default two."""
    one_each = ("--gateways", "1", "--workers", "1")
    async with hubbub_dev(tmp_path, free_port(), free_port(), *one_each) as dev:
        children = children_of(dev.pid)
        assert len(children) == 3, children  # Redis, a gateway, a worker
        ports = dev.ports()
        assert len(ports) == 3, dev.banner  # the gateway's, Redis's, the worker's /metrics
        if how.startswith("SIGKILL"):
            dev.process.kill()
        else:
            sig = signal.SIGHUP if how.startswith("SIGHUP") else signal.SIGINT
            os.killpg(dev.pid, sig)  # what a terminal does: the whole foreground group
            assert await dev.exit_code() == 0
            stderr = "".join(dev.stderr)
            assert "Traceback" not in stderr, stderr
            assert " WARNING " not in stderr, stderr
            assert stderr.endswith("hubbub dev: stopped\n"), stderr
        await assert_all_gone(children, ports)


async def test_a_health_check_answered_by_another_process_fails(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A child whose port another gateway holds must not pass for healthy on that one's
    answer: the launcher compares the pid of the health body with its child's."""
    gateway = await deployment.start_gateway()
    impostor = start_process(
        "gw-late", [sys.executable, "-c", "import signal; signal.pause()"],  # holds no port
        env=dict(os.environ), port=gateway.port,
    )  # fmt: skip
    try:
        with pytest.raises(NotOurs, match=f"pid {gateway.pid}"):
            impostor.wait_healthy_sync(within=10)
    finally:
        impostor.stop()


def test_a_redis_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = RedisProcess(directory=str(tmp_path), appendfsync="sometimes")  # not a valid value
    try:
        with pytest.raises(RuntimeError, match="appendfsync"):
            server.start()
    finally:
        server.stop()
