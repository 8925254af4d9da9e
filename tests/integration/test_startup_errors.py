"""Start-up errors as a user meets them: a wrong HUBBUB_REDIS_URL, a Redis that does not
answer, a busy port. Each entry point says so in one line that names the URL (its password
redacted) and the reason, exits 2, and prints no traceback (hubbub.startup)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.sdk.client import HubbubClient
from hubbub.settings import DEFAULT_ACCESS_KEY
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient

BIN = Path(sys.executable).parent
ENTRY_POINTS = ["hubbub-gateway", "hubbub-fanout"]


async def run(argv: list[str], env: dict[str, str], within: float = 30.0) -> tuple[int, str, str]:
    """Run ``argv`` to its end: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def service_env(redis_url: str, **more: str) -> dict[str, str]:
    env = dict(
        os.environ,
        HUBBUB_REDIS_URL=redis_url,
        HUBBUB_ACCESS_KEY=ACCESS_KEY,
        HUBBUB_PORT=str(free_port()),
        HUBBUB_METRICS_PORT="0",
    )
    env.update(more)
    return env


BAD_URLS = [
    ("localhost:6379", "no scheme"),
    ("http://127.0.0.1:6379", "scheme 'http'"),
    ("redis://127.0.0.1:99999/0", "Port out of range"),
    ("redis://127.0.0.1:port/0", "Port could not be cast"),
    ("redis:///0", "no host"),
]


@pytest.mark.parametrize("program", ENTRY_POINTS)
@pytest.mark.parametrize(("url", "reason"), BAD_URLS)
async def test_a_bad_redis_url_is_one_line(program: str, url: str, reason: str) -> None:
    code, out, err = await run([str(BIN / program)], service_env(url))
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"{program}: bad Redis URL {url}: "), err
    assert reason in err, err


@pytest.mark.parametrize("program", ENTRY_POINTS)
async def test_an_unreachable_redis_is_one_line_naming_it(program: str) -> None:
    """Nothing listens on the port: the line names the URL, password redacted, and why."""
    port = free_port()
    url = f"redis://hubbub:s3cret-pass@127.0.0.1:{port}/0"
    started = time.monotonic()
    code, out, err = await run([str(BIN / program)], service_env(url))
    assert code == 2, err
    assert time.monotonic() - started < 15  # one attempt, not endless retries
    assert out == ""
    assert "s3cret" not in err
    assert err == (
        f"{program}: cannot reach Redis at redis://hubbub:***@127.0.0.1:{port}/0: "
        "Connection refused\n"
    ), err


async def test_a_gateway_on_a_busy_port_says_so_before_ready(redis_server: RedisProcess) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = service_env(redis_server.url, HUBBUB_PORT=str(port), HUBBUB_KEY_PREFIX="busy")
        code, out, err = await run([str(BIN / "hubbub-gateway")], env)
    assert code == 2, err
    assert " ready" not in out + err  # "gateway <id> ready" was never logged
    assert err == (
        f"hubbub-gateway: port {port} on 127.0.0.1 is already in use (HUBBUB_PORT, HUBBUB_HOST)\n"
    )


async def test_the_default_access_key_is_one_warning(deployment: Deployment) -> None:
    """A gateway with the README's key says so once at start; one with its own key does not."""
    default = await deployment.start_gateway(HUBBUB_ACCESS_KEY=DEFAULT_ACCESS_KEY)
    own = await deployment.start_gateway()

    async def both_ready() -> bool:
        return all(" ready" in g.output() for g in (default, own))

    await eventually(both_ready)
    lines = [line for line in default.output().splitlines() if "HUBBUB_ACCESS_KEY" in line]
    assert len(lines) == 1, default.output()
    assert " WARNING " in lines[0] and "development default" in lines[0], lines
    assert "HUBBUB_ACCESS_KEY" not in own.output()


async def test_an_upstream_service_run_is_one_line_too() -> None:
    """``Upstream(...).run()``, a service's own entry point, checks its Redis the same way."""
    port = free_port()
    script = "from hubbub.upstream.app import Upstream; Upstream(name='svc').run()"
    env = service_env(f"redis://127.0.0.1:{port}/0")
    code, out, err = await run([sys.executable, "-c", script], env)
    assert code == 2, err
    assert out == ""
    assert err == (
        f"hubbub upstream svc: cannot reach Redis at redis://127.0.0.1:{port}/0: "
        "Connection refused\n"
    )


async def test_a_unix_socket_url_passes_the_check_and_delivers(tmp_path: Path) -> None:
    """``unix:///path``: the check's PING goes through the same client the services use (it
    once passed a TCP-only option to redis-py's Unix socket connection), and messages flow."""
    socket_path = tmp_path / "redis.sock"
    server = RedisProcess(
        directory=str(tmp_path / "r"), extra_args=("--unixsocket", str(socket_path))
    )
    (tmp_path / "r").mkdir()
    server.start()
    deployment = Deployment(f"unix://{socket_path}", tmp_path, "unix")
    try:
        gateway = await deployment.start_gateway()
        deployment.start_worker()
        client = await RawClient.connect(gateway.url)
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            await api.send_to_all("t", ["over a unix socket"])
        assert (await client.recv())["arguments"] == ["over a unix socket"]
        await client.close()
    finally:
        deployment.stop()
        server.stop()


@pytest.mark.parametrize("program", ENTRY_POINTS)
async def test_an_invalid_setting_is_one_line(program: str) -> None:
    env = service_env("redis://127.0.0.1:6379/0", HUBBUB_KEY_PREFIX="{x}")
    code, out, err = await run([str(BIN / program)], env)
    assert code == 2, err
    assert out == ""
    assert err.startswith(f"{program}: invalid settings: HUBBUB_KEY_PREFIX: "), err
    assert err.count("\n") == 1, err
