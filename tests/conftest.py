"""Fixtures: a real redis-server per test session, and real gateway/worker processes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(directory=str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    """Each test gets its own key prefix, so tests sharing the server never see each other."""
    return f"t{next(_prefixes)}"


@pytest.fixture
async def deployment(
    redis_server: RedisProcess, tmp_path: Path, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Deployment]:
    dep = Deployment(redis_server.url, tmp_path, prefix)
    yield dep
    dep.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(dep.logs())


@pytest.fixture
async def cluster(deployment: Deployment) -> Deployment:
    """Two gateways and two workers, as DESIGN.md describes the smallest real deployment."""
    await deployment.start_gateway()
    await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    return deployment


@pytest.fixture
async def api(cluster: Deployment) -> AsyncIterator[HubbubClient]:
    """REST client on the *first* gateway; clients usually connect to the second."""
    async with HubbubClient(cluster.gateways[0].url, ACCESS_KEY, "chat") as client:
        yield client


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
