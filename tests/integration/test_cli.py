"""The command line as a user meets it: ``--help`` and ``--version`` on every entry point
(and ``--help`` starts nothing), ``hubbub send``'s usage error, ``hubbub listen`` seeing a
group's messages, the SDK's errors carrying the gateway's code and message, and the health
endpoints' small JSON bodies."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.dev.cli import parser
from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.sdk.client import HubbubClient, HubbubError
from tests.support.processes import ACCESS_KEY, Deployment, eventually

BIN = Path(sys.executable).parent
SUBCOMMANDS = ["dev", "send", "listen", "token", "redis-acl"]
ENTRY_POINTS = [
    ["hubbub-gateway"],
    ["hubbub-fanout"],
    ["hubbub"],
    *(["hubbub", command] for command in SUBCOMMANDS),
]


async def run(
    argv: list[str], env: dict[str, str] | None = None, within: float = 15.0
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env or dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:  # it started something: not what --help should do
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=" ".join)
async def test_help_and_version_start_nothing(
    argv: list[str], redis_server: RedisProcess, prefix: str, redis: Redis
) -> None:
    """With everything a server needs (a live Redis, free ports), ``--help`` prints its usage
    and returns at once: no key is written under the prefix, no port stays taken."""
    port, metrics = free_port(), free_port()
    env = dict(
        os.environ,
        HUBBUB_REDIS_URL=redis_server.url,
        HUBBUB_KEY_PREFIX=prefix,
        HUBBUB_PORT=str(port),
        HUBBUB_METRICS_PORT=str(metrics),
    )
    command = [str(BIN / argv[0]), *argv[1:]]
    code, out, err = await run([*command, "--help"], env, within=10)
    assert code == 0, err
    assert err == ""
    assert out.startswith(f"usage: {' '.join(argv)} "), out
    assert "``" not in out and ":class:" not in out and ":mod:" not in out, out
    assert await redis.keys(f"{prefix}*") == []
    code, out, err = await run([*command, "--version"], env, within=10)
    assert code == 0, err
    assert out == f"{' '.join(argv)} {version('hubbub')}\n"


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_has_help_and_shows_its_default() -> None:
    for p in _parsers(parser()):
        text = p.format_help()
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{p.prog} {action.dest} has no help"
            assert "``" not in action.help and ":class:" not in action.help
            default = action.default
            if default not in (None, [], False, True) and default != argparse.SUPPRESS:
                assert f"(default: {default})" in " ".join(text.split()), (p.prog, action.dest)


async def test_send_without_a_target_does_not_call_arguments_required() -> None:
    code, out, err = await run([str(BIN / "hubbub"), "send"])
    assert code == 2
    assert out == ""
    assert (
        err.splitlines()[-1] == "hubbub send: error: the following arguments are required: target"
    )


async def test_the_sdk_error_carries_code_and_message(api: HubbubClient) -> None:
    with pytest.raises(HubbubError) as missing:
        await api.add_connection_to_group("g", "no-such-connection")
    error = missing.value
    assert isinstance(error, httpx.HTTPStatusError)  # callers catching httpx's still do
    assert error.response.status_code == error.status_code == 404
    assert error.code == "Error.Connection.NotExisted"
    assert error.message == "connection does not exist"
    assert str(error) == f"404 {error.code}: {error.message}"

    with pytest.raises(HubbubError) as bad:
        await api.send_to_group("g" * 1025, "t", [])
    error = bad.value
    assert error.status_code == 400
    assert error.code is not None and error.code.startswith("Error.")
    assert error.message and "group" in error.message
    assert str(error) == f"400 {error.code}: {error.message}"


async def test_send_prints_the_refusal_in_one_line(cluster: Deployment) -> None:
    env = dict(os.environ, HUBBUB_ACCESS_KEY=ACCESS_KEY)
    url = cluster.gateways[0].url
    code, out, err = await run(
        [str(BIN / "hubbub"), "send", "--url", url, "--group", "g" * 1025, "t"], env
    )
    assert code == 1
    assert out == ""
    assert err.startswith("hubbub send: 400 Error.") and err.count("\n") == 1, err


async def raw_head(port: int | None, path: str) -> bytes:
    """Everything a server writes for one HEAD request, up to its close (HTTP/1.0): an HTTP
    client would not read a body a HEAD answer must not have, this sees one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"HEAD {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_health_endpoints_answer_small_json(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    port = free_port()
    deployment.start_worker(HUBBUB_METRICS_PORT=str(port))
    async with httpx.AsyncClient() as http:
        live = await http.get(f"{gateway.url}/api/live")
        assert live.status_code == 200
        assert live.headers["content-type"] == "application/json"
        assert live.json() == {"status": "ok"}
        for path in ("/api/live", "/api/health"):
            head = await raw_head(gateway.port, path)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert head.endswith(b"\r\n\r\n"), head  # the headers alone
        health = (await http.get(f"{gateway.url}/api/health")).json()
        assert health["status"] == "ready" and health["redis"]["ok"] is True, health

        async def worker_ready() -> httpx.Response | None:
            with contextlib.suppress(httpx.TransportError):
                response = await http.get(f"http://127.0.0.1:{port}/readyz")
                if response.status_code == 200:
                    return response
            return None

        ready = await eventually(worker_ready, timeout=15)
        assert ready.json()["status"] == "ready"
        live = await http.get(f"http://127.0.0.1:{port}/livez")
        assert live.status_code == 200 and live.json()["status"] == "live"
        for path in ("/livez", "/readyz"):
            head = await raw_head(port, path)
            assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n"), head


async def test_listen_prints_a_group_message(cluster: Deployment, api: HubbubClient) -> None:
    """``hubbub listen --group g`` on the second gateway: a message to another group does not
    reach it, the one to ``g`` (sent through the first gateway) does, as one JSON line."""
    listen = await asyncio.create_subprocess_exec(
        str(BIN / "hubbub"), "listen", "--url", cluster.gateways[1].url, "--hub", "chat",
        "--user", "bob", "--group", "g", "--access-key", ACCESS_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert listen.stdout is not None and listen.stderr is not None
    try:
        status = []
        async with asyncio.timeout(20):
            while "joined group 'g'" not in (line := (await listen.stderr.readline()).decode()):
                assert line, "hubbub listen exited: " + "".join(status)
                status.append(line)
        assert status == ["connected to hub 'chat' as user 'bob'\n"]
        await api.send_to_group("other", "newMessage", ["not for bob"])
        await api.send_to_group("g", "newMessage", ["hello", {"n": 1, "ü": [True, None]}])
        line = await asyncio.wait_for(listen.stdout.readline(), 15)
        assert json.loads(line) == {
            "target": "newMessage",
            "arguments": ["hello", {"n": 1, "ü": [True, None]}],
        }
        listen.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(listen.communicate(), 15)
        assert listen.returncode == 0
        assert out == b"" and err == b"", (out, err)  # quietly, and nothing else arrived
    finally:
        if listen.returncode is None:
            listen.kill()
            await listen.wait()


async def test_listen_answers_pings_and_stays_connected(deployment: Deployment) -> None:
    """A gateway that closes a client silent for 2 s (pinging it every second): ``hubbub
    listen`` answers each Ping, so it is still connected well past that, and still receives."""
    gateway = await deployment.start_gateway(
        HUBBUB_KEEPALIVE_INTERVAL="1", HUBBUB_CLIENT_TIMEOUT="2"
    )
    deployment.start_worker()
    listen = await asyncio.create_subprocess_exec(
        str(BIN / "hubbub"), "listen", "--url", gateway.url, "--user", "carol",
        "--access-key", ACCESS_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert listen.stdout is not None and listen.stderr is not None
    try:
        connected = await asyncio.wait_for(listen.stderr.readline(), 20)
        assert connected == b"connected to hub 'chat' as user 'carol'\n"
        with pytest.raises(TimeoutError):  # three client timeouts go by: it must not exit
            await asyncio.wait_for(listen.wait(), 6)
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            await api.send_to_user("carol", "still", ["here"])
        line = await asyncio.wait_for(listen.stdout.readline(), 15)
        assert json.loads(line) == {"target": "still", "arguments": ["here"]}
    finally:
        if listen.returncode is None:
            listen.kill()
        await listen.wait()


async def test_listen_refused_is_one_line(deployment: Deployment) -> None:
    """A token the gateway rejects (another key), or a group the client may not join."""
    gateway = await deployment.start_gateway()
    hubbub = str(BIN / "hubbub")
    code, out, err = await run(
        [hubbub, "listen", "--url", gateway.url, "--access-key", "not-the-key-" * 4], within=20
    )
    assert code == 1
    assert out == ""
    assert err.startswith("hubbub listen: negotiate answered 401: "), err
    assert err.count("\n") == 1, err
    code, out, err = await run(
        [hubbub, "listen", "--url", gateway.url, "--access-key", ACCESS_KEY, "--group", "x" * 1025],
        within=20,
    )
    assert code == 1
    assert out == ""
    assert err.splitlines()[-1].startswith("hubbub listen: cannot join group "), err
