"""The official JS client's core cases, unchanged, on Redis Sentinel and on Redis Cluster.

The test functions are the ones of :mod:`tests.e2e.test_js_client` (all, group, user,
connection, excluded, user groups before connecting, invocations, leaving every set, drain to
the other gateway), plus a stateful reconnect to the other gateway after a SIGKILL (the claim
script, the read-back of the dead gateway's inbox) and the way back (an upstream service's
handlers, client results across gateways), imported so they run here against this module's
fixtures: two gateways and
two workers on a Sentinel-managed primary with a replica, or on a Redis Cluster of three
masters with a replica each (``hubbub.dev.topologies``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.dev.topologies import RedisClusterProcesses, SentinelProcesses
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.sdk.client import HubbubClient
from hubbub.settings import Settings
from hubbub.tokens import mint_token
from tests.e2e.test_js_client import (  # noqa: F401  (fixtures and tests run here again)
    _js_installed,
    js,
    test_js_client_receives_all_group_user_connection,
    test_js_reconnects_to_other_gateway_after_drain,
    test_js_stop_removes_connection_from_every_set,
    test_js_user_in_group_before_connecting_and_invocations,
)
from tests.e2e.test_stateful_reconnect import (  # noqa: F401
    proxy,
    test_gateway_killed_resumes_on_the_other_gateway,
)
from tests.e2e.test_upstream import (  # noqa: F401
    clients,
    service,
    test_client_results_across_gateways,
    test_invoke_returns_the_handlers_value_and_send_reaches_it,
)
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.e2e

Topology = RedisClusterProcesses | SentinelProcesses


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def topology(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    directory = str(tmp_path_factory.mktemp(request.param))
    servers: Topology
    if request.param == "sentinel":
        servers = SentinelProcesses(directory)
    else:
        servers = RedisClusterProcesses(masters=3, replicas=1, directory=directory)
    servers.start()
    yield servers
    servers.stop()


def topology_settings(topology: Topology, **overrides: object) -> Settings:
    """The settings a process gets from the topology's environment variables."""
    values: dict[str, object] = {
        name.removeprefix("HUBBUB_").lower(): value for name, value in topology.nodes_env().items()
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[Redis]:
    client = RedisEndpoint.from_settings(topology_settings(topology)).redis()
    yield client
    await client.aclose()


@pytest.fixture
async def deployment(
    topology: Topology, tmp_path: Path, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Deployment]:
    env = topology.nodes_env()
    dep = Deployment(env["HUBBUB_REDIS_URL"], tmp_path, prefix)
    dep.settings.update(env)
    yield dep
    dep.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(dep.logs())


async def test_listings_and_admin_data(deployment: Deployment) -> None:
    """The listings and the admin console's data on Sentinel and Cluster: in Cluster a hub's
    SCAN goes to the master that owns the hub's slot (a SCAN of every master would answer
    with a cursor per master)."""
    first = await deployment.start_gateway()
    second = await deployment.start_gateway()
    deployment.start_worker()
    sockets = [
        await RawClient.connect(gw.url, token=client_token(user))
        for gw, user in ((first, "alice"), (second, "bob"), (second, "carol"))
    ]
    ids = {c.connection_id for c in sockets}

    async def walk(http: httpx.AsyncClient, path: str) -> list[Any]:
        items: list[Any] = []
        params: dict[str, Any] = {"limit": 1}
        while True:
            url = f"{first.url}/api/hubs/chat{path}"
            auth = {"Authorization": f"Bearer {mint_token(ACCESS_KEY, url)}"}
            r = await http.get(url, params=params, headers=auth)
            assert r.status_code == 200, r.text
            items += r.json()["items"]
            if r.json()["next"] is None:
                return items
            params["cursor"] = r.json()["next"]

    try:
        async with HubbubClient(first.url, ACCESS_KEY, "chat") as api:
            for c in sockets:
                await api.add_connection_to_group("room", c.connection_id or "")
        async with httpx.AsyncClient() as http:
            assert set(await walk(http, "/groups/room/connections")) == ids
            assert await walk(http, "/groups") == [{"name": "room", "connections": 3}]
            assert await walk(http, "/users/bob/connections") == [sockets[1].connection_id]
            url = f"{first.url}/api/hubs/chat/counts"
            r = await http.get(
                url, headers={"Authorization": f"Bearer {mint_token(ACCESS_KEY, url)}"}
            )
            assert r.json() == {"connections": 3, "groups": 1, "users": 3, "complete": True}, r.text
            admin = {"Authorization": f"Bearer {mint_token(ACCESS_KEY, f'{second.url}/api/admin')}"}

            async def reported() -> bool:
                r = await http.get(f"{second.url}/api/admin/cluster", headers=admin)
                assert r.status_code == 200, r.text
                body = r.json()
                gateways = {g["id"]: g["connections"] for g in body["gateways"]}
                held = {p["worker"] for p in body["partitions"]}
                ours = {
                    f"{deployment.prefix}-{first.name}": 1,
                    f"{deployment.prefix}-{second.name}": 2,
                }
                return gateways == ours and held == {"worker1"}

            await eventually(reported, timeout=15)
            r = await http.get(f"{second.url}/api/admin/hubs/chat/users?prefix=c", headers=admin)
            assert r.json() == {"items": ["carol"], "next": None}, r.text
            r = await http.get(f"{second.url}/api/admin/hubs", headers=admin)
            (hub,) = r.json()["items"]
            assert hub == {"name": "chat", "connections": 3, "groups": 1, "users": 3,
                           "complete": True}, hub  # fmt: skip
    finally:
        for c in sockets:
            await c.close()
