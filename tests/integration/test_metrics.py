"""Prometheus /metrics on a gateway and on a worker, after real traffic."""

from __future__ import annotations

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
            return found if ("hubbub_routed_total", (("kind", "all"),)) in found else {}

        worker = await eventually(worker_metrics)
        assert worker[("hubbub_routed_total", (("kind", "all"),))] == 1
        assert worker[("hubbub_drops_total", (("reason", "no_recipient"),))] == 1
