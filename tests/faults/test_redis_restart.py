"""After a Redis restart, no request fails because of a pooled connection that died while
idle (issue 10): once Redis answers again, every connect and every membership call works the
first time, on every gateway."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.slow


async def test_no_request_fails_on_a_connection_that_died_while_idle(
    aof_redis: RedisProcess, tmp_path: Path
) -> None:
    dep = Deployment(aof_redis.url, tmp_path, "pool")
    try:
        gateway = await dep.start_gateway()
        dep.start_worker()
        await dep.workers_seen()  # past its start-up check of Redis, which is killed below
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            # Fill the gateway's pool: concurrent connects and membership calls.
            first = await asyncio.gather(
                *(RawClient.connect(gateway.url, token=client_token(f"u{n}")) for n in range(20))
            )
            await asyncio.gather(
                *(api.add_connection_to_group("g", c.connection_id or "") for c in first)
            )
            for client in first:
                await client.close()

            assert aof_redis.process is not None
            aof_redis.process.send_signal(signal.SIGKILL)
            aof_redis.process.wait()
            aof_redis.process = None
            aof_redis.start()  # same port, same data: only the connections are gone

            async def ready() -> bool:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{gateway.url}/api/health")).status_code == 200

            await eventually(ready, timeout=15)
            # Every pooled connection is dead now; none of these may fail because of it.
            second = await asyncio.gather(
                *(RawClient.connect(gateway.url, token=client_token(f"v{n}")) for n in range(20)),
                return_exceptions=True,
            )
            failed = [c for c in second if isinstance(c, BaseException)]
            assert not failed, failed[:3]
            clients = [c for c in second if isinstance(c, RawClient)]
            puts = await asyncio.gather(
                *(api.add_connection_to_group("h", c.connection_id or "") for c in clients),
                return_exceptions=True,
            )
            failed_puts = [p for p in puts if isinstance(p, BaseException)]
            assert not failed_puts, failed_puts[:3]
            await api.send_to_group("h", "hello", [1])
            for client in clients:
                assert (await client.recv())["target"] == "hello"
                await client.close()
        assert "Traceback" not in gateway.output()
    finally:
        dep.stop()
