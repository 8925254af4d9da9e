"""``HUBBUB_REDIS_WAIT_REPLICAS``: a send is accepted only once a replica has it.

A primary with one replica (real servers): accepted while the replica keeps up; ``503
Error.Redis.NotReplicated`` (one line, the message may still be delivered) while it is frozen,
for a single send and for a batch; accepted again once it is back.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = RedisProcess(directory=str(tmp_path / "primary"))
    primary.start()
    replica = RedisProcess(
        directory=str(tmp_path / "replica"),
        extra_args=[
            "--replicaof",
            "127.0.0.1",
            str(primary.port),
            "--repl-diskless-sync-delay",
            "0",
        ],
    )
    replica.start()
    with SyncRedis(port=primary.port) as admin:
        # WAIT returns as the replica acknowledges: the link is up (no polling).
        admin.set("linked", "1")
        assert admin.execute_command("WAIT", 1, 10_000) == 1, "the replica never linked"
    yield primary, replica
    replica.stop()
    primary.stop()


async def test_accepted_means_on_a_replica(
    primary_and_replica: tuple[RedisProcess, RedisProcess], tmp_path: Path, prefix: str
) -> None:
    primary, replica = primary_and_replica
    dep = Deployment(primary.url, tmp_path, prefix)
    dep.settings.update(HUBBUB_REDIS_WAIT_REPLICAS="1", HUBBUB_REDIS_WAIT_TIMEOUT="0.3")
    try:
        gateway = await dep.start_gateway()
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            assert await api.send_to_user("u", "m", [1])  # the replica confirmed it

            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await api.send_to_user("u", "m", [2])
                with pytest.raises(httpx.HTTPStatusError) as batch_refused:
                    await api.send_batch([{"to": "user", "name": "u", "target": "m"}])
            finally:
                replica.process.send_signal(signal.SIGCONT)
            response = refused.value.response
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "Error.Redis.NotReplicated"
            assert "Idempotency-Key" in response.json()["message"]
            answer = batch_refused.value.response
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "Error.Redis.NotReplicated"

            assert await api.send_to_user("u", "m", [4])  # back: accepted again
        log = dep.logs()
        assert log.count("Error.Redis.NotReplicated") == 2, log
        assert "Traceback" not in log
    finally:
        dep.stop()
