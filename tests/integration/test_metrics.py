"""Prometheus /metrics on a gateway and on a worker, after real traffic."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hubbub.dev.embedded import free_port
from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_gateway_and_worker_metrics(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    port = free_port()
    deployment.start_worker(HUBBUB_METRICS_PORT=str(port))
    client = await RawClient.connect(gateway.url)
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        await api.send_to_all("t", [1])
        await api.send_to_group("nobody-here", "t", [2])
    assert (await client.recv())["arguments"] == [1]
    async with httpx.AsyncClient() as http:
        gw = samples((await http.get(f"{gateway.url}/metrics")).text)
        assert gw[("hubbub_connections", (("hub", "chat"),))] == 1
        assert gw[("hubbub_messages_accepted_total", (("kind", "all"),))] == 1
        assert gw[("hubbub_messages_accepted_total", (("kind", "group"),))] == 1
        assert gw[("hubbub_deliveries_total", ())] == 1
        assert gw[("hubbub_stage_seconds_count", (("stage", "ingest"),))] == 2

        async def worker_metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            try:
                found = samples((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            except httpx.TransportError:
                return {}
            # Both series exist at 0 from the start: wait for the counts.
            routed = found.get(("hubbub_routed_total", (("kind", "all"),)))
            dropped = found.get(("hubbub_drops_total", (("reason", "no_recipient"),)))
            return found if routed == 1 and dropped == 1 else {}

        worker = await eventually(worker_metrics)
        assert worker[("hubbub_routed_total", (("kind", "all"),))] == 1
        assert worker[("hubbub_drops_total", (("reason", "no_recipient"),))] == 1


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(int(address, 16).to_bytes(4, "little")))
    return found


async def test_each_role_exports_its_own_metrics_from_zero(deployment: Deployment) -> None:
    """Before any traffic: a gateway has no worker series and a worker no gateway series;
    the labelled counters of each are there at 0 for every label value the role counts;
    HUBBUB_METRICS_HOST binds the worker's /metrics to that interface only."""
    gateway = await deployment.start_gateway()
    port = free_port()
    deployment.start_worker(HUBBUB_METRICS_PORT=str(port), HUBBUB_METRICS_HOST="127.0.0.1")
    async with httpx.AsyncClient() as http:
        gw = samples((await http.get(f"{gateway.url}/metrics")).text)

        async def worker_metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            try:
                return samples((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            except httpx.TransportError:
                return {}

        worker = await eventually(worker_metrics)
    assert listening_addresses(port) == {"127.0.0.1"}
    kinds = ("all", "group", "user", "connection")
    for kind in kinds:
        assert gw[("hubbub_messages_accepted_total", (("kind", kind),))] == 0
        assert worker[("hubbub_routed_total", (("kind", kind),))] == 0
    for reason in ("slow_consumer", "duplicate", "not_transcoded"):
        assert gw[("hubbub_drops_total", (("reason", reason),))] == 0
    for reason in ("malformed", "no_recipient"):
        assert worker[("hubbub_drops_total", (("reason", reason),))] == 0
    assert gw[("hubbub_redis_errors_total", (("component", "heartbeat"),))] == 0
    assert worker[("hubbub_redis_errors_total", (("component", "worker"),))] == 0
    gateway_only = {"hubbub_connections", "hubbub_messages_accepted_total",
                    "hubbub_deliveries_total", "hubbub_resumes_total",
                    "hubbub_invocations_total"}  # fmt: skip
    worker_only = {"hubbub_routed_total", "hubbub_route_lookups_total", "hubbub_stream_lag",
                   "hubbub_webhook_responses_total"}  # fmt: skip
    gateway_names = {name for name, _ in gw}
    worker_names = {name for name, _ in worker}
    assert not gateway_only & worker_names, gateway_only & worker_names
    assert not worker_only & gateway_names, worker_only & gateway_names
    assert worker_only - {"hubbub_stream_lag"} <= worker_names  # lag: once gauged
