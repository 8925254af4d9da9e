"""The hot-path Redis connection (``hubbub.redis.pipe.Pipe``) against a real ``redis-server``:
order under concurrency, errors, a cut connection, a frozen server, auth and database."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.pipe import Pipe
from tests.support.processes import eventually


@pytest.fixture
async def pipe(redis_server: RedisProcess, prefix: str) -> AsyncIterator[Pipe]:
    p = Pipe.from_url(redis_server.url, f"pipe-{prefix}")
    yield p
    await p.aclose()


async def test_concurrent_callers_get_their_own_replies(pipe: Pipe, prefix: str) -> None:
    key = f"{prefix}:counter"
    results = await asyncio.gather(*(pipe.execute("INCR", key) for _ in range(500)))
    assert results == list(range(1, 501))  # written and answered in call order
    many = await asyncio.gather(
        *(pipe.execute_many([("INCRBY", key, 0), ("ECHO", str(i))]) for i in range(50))
    )
    assert many == [[500, str(i).encode()] for i in range(50)]


async def test_one_command_answering_a_list_is_not_taken_for_many(pipe: Pipe, prefix: str) -> None:
    await pipe.execute("RPUSH", f"{prefix}:l", "a", "b")
    assert await pipe.execute_many([("LRANGE", f"{prefix}:l", 0, -1)]) == [[b"a", b"b"]]
    assert await pipe.execute("LRANGE", f"{prefix}:l", 0, -1) == [b"a", b"b"]


async def test_an_error_reply_raises_and_the_connection_goes_on(pipe: Pipe, prefix: str) -> None:
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await pipe.execute("XADD", f"{prefix}:s")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipe.execute_many([("SET", f"{prefix}:k", "v"), ("LPUSH", f"{prefix}:k", "x")])
    assert await pipe.execute("GET", f"{prefix}:k") == b"v"  # the batch was not rolled back


async def test_a_killed_connection_fails_calls_in_flight_then_reconnects(
    pipe: Pipe, redis: Redis, prefix: str
) -> None:
    assert await pipe.execute("PING") == b"PONG"
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", f"{prefix}:never", 5, block=5))
    name = f"pipe-{prefix}"

    async def named() -> list[dict[str, object]]:
        return [c for c in await redis.client_list() if c.get("name") == name]

    async def blocking() -> bool:  # no event tells us Redis has parsed the BLPOP
        return any(c.get("cmd") == "blpop" for c in await named())

    await eventually(blocking)
    for client in await named():
        await redis.client_kill_filter(_id=client["id"])
    with pytest.raises(ConnectionError):
        await blocked
    assert await pipe.execute("PING") == b"PONG"
    assert len(await named()) == 1  # the new connection carries the client name again


async def test_a_frozen_server_times_out_instead_of_hanging() -> None:
    server = RedisProcess()
    server.start()
    pipe = Pipe.from_url(server.url, "frozen", timeout=0.5)
    try:
        assert await pipe.execute("PING") == b"PONG"
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pipe.execute("PING"), 10)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert await pipe.execute("PING") == b"PONG"
    finally:
        await pipe.aclose()
        server.stop()


async def test_a_stopped_server_is_a_connection_error_not_a_hang() -> None:
    server = RedisProcess()
    server.start()
    pipe = Pipe.from_url(server.url, "stopped")
    try:
        assert await pipe.execute("SET", "k", "v") == b"OK"
        server.stop()
        with pytest.raises(ConnectionError):
            await pipe.execute("GET", "k")
        server.start()
        assert await pipe.execute("PING") == b"PONG"
    finally:
        await pipe.aclose()
        server.stop()


async def test_password_and_database_from_the_url(redis_server: RedisProcess, redis: Redis) -> None:
    await redis.execute_command("ACL", "SETUSER", "pipeuser", "on", ">secret", "~*", "+@all")
    try:
        url = f"redis://pipeuser:secret@127.0.0.1:{redis_server.port}/3"
        pipe = Pipe.from_url(url, "authed")
        try:
            await pipe.execute("SET", "pipe-db-key", "in db 3")
        finally:
            await pipe.aclose()
        db3 = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/3")
        assert await db3.get("pipe-db-key") == b"in db 3"
        assert await redis.get("pipe-db-key") is None
        await db3.delete("pipe-db-key")
        await db3.aclose()
        with pytest.raises(ResponseError):
            await Pipe.from_url(url.replace("secret", "wrong"), "bad").execute("PING")
    finally:
        await redis.execute_command("ACL", "DELUSER", "pipeuser")


async def test_a_closed_pipe_refuses_calls(pipe: Pipe) -> None:
    await pipe.execute("PING")
    await pipe.aclose()
    with pytest.raises(ConnectionError):
        await pipe.execute("PING")
