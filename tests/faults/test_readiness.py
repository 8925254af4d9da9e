"""Readiness tells the truth (issue 10), for workers and gateways.

A worker's ``/readyz`` is 503 within 2 s of Redis not answering and 200 again once it answers;
its ``/livez`` stays 200 meanwhile (restarting a worker does not bring Redis back); ``/metrics``
is served beside them. A gateway's ``/api/health`` does the same with a JSON body naming each
component, and a gateway that sees no live worker says so once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from hubbub.dev.embedded import RedisProcess, free_port
from tests.support.processes import Deployment, eventually

pytestmark = pytest.mark.slow


async def status_until(http: httpx.AsyncClient, url: str, status: int, within: float) -> float:
    """Seconds until ``url`` answers ``status`` (a probe is polled by nature: that is how
    Kubernetes reads it too)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def answers() -> bool:
        try:
            return (await http.get(url, timeout=1.0)).status_code == status
        except httpx.TransportError:
            return False  # not listening yet

    await eventually(answers, timeout=within)
    return loop.time() - started


async def test_readyz_follows_redis_and_livez_does_not(
    volatile_redis: RedisProcess, tmp_path: Path
) -> None:
    dep = Deployment(volatile_redis.url, tmp_path, "health")
    port = free_port()
    dep.start_worker(HUBBUB_METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            await status_until(http, f"{base}/readyz", 200, within=20)
            ready = await http.get(f"{base}/readyz")
            assert ready.json()["status"] == "ready", ready.text
            metrics = await http.get(f"{base}/metrics")
            assert metrics.status_code == 200 and "hubbub_" in metrics.text

            assert volatile_redis.process is not None
            volatile_redis.process.send_signal(signal.SIGSTOP)  # frozen: connections hang
            try:
                took = await status_until(http, f"{base}/readyz", 503, within=5)
                print(f"\n/readyz 503 {took:.2f} s after Redis froze")
                assert took <= 2.5, took
                unready = await http.get(f"{base}/readyz")
                assert unready.json()["status"] == "not ready", unready.text
                live = await http.get(f"{base}/livez")
                assert live.status_code == 200 and live.json()["status"] == "live", live.text
            finally:
                volatile_redis.process.send_signal(signal.SIGCONT)
            back = await status_until(http, f"{base}/readyz", 200, within=15)
            print(f"/readyz 200 again {back:.2f} s after Redis thawed")
        log = dep.workers[0].output()
        assert "not ready: no routing turn completed" in log, log[-2000:]
        assert log.count("not ready:") == 1, log[-2000:]  # one line per change
        assert "Traceback" not in log
    finally:
        dep.stop()


async def test_gateway_health_names_its_parts_and_follows_redis(
    volatile_redis: RedisProcess, tmp_path: Path
) -> None:
    dep = Deployment(volatile_redis.url, tmp_path, "ghealth")
    gateway = await dep.start_gateway()
    try:
        async with httpx.AsyncClient() as http:
            # No worker yet: ready (sends are accepted), but it says so, once, after a grace.
            r = await http.get(f"{gateway.url}/api/health")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "ready" and body["draining"] is False, body
            assert body["redis"]["ok"] is True and body["workers"]["ok"] is False, body

            async def warned() -> bool:
                return "no fan-out worker has been live" in gateway.output()

            await eventually(warned, timeout=15)
            dep.start_worker()

            async def workers_back() -> bool:
                r = await http.get(f"{gateway.url}/api/health")
                return bool(r.json()["workers"]["live"])

            await eventually(workers_back, timeout=15)
            assert gateway.output().count("no fan-out worker has been live") == 1
            assert "fan-out workers live again" in gateway.output()

            assert volatile_redis.process is not None
            volatile_redis.process.send_signal(signal.SIGSTOP)
            try:
                took = await status_until(http, f"{gateway.url}/api/health", 503, within=5)
                print(f"\n/api/health 503 {took:.2f} s after Redis froze")
                assert took <= 2.5, took
                down = await http.get(f"{gateway.url}/api/health")
                assert down.json()["status"] == "not ready", down.text
                assert down.json()["redis"]["ok"] is False, down.text
                live = await http.get(f"{gateway.url}/api/live")
                assert live.status_code == 200
            finally:
                volatile_redis.process.send_signal(signal.SIGCONT)
            back = await status_until(http, f"{gateway.url}/api/health", 200, within=15)
            print(f"/api/health 200 again {back:.2f} s after Redis thawed")
        log = gateway.output()
        assert log.count("not ready: Redis not answering") == 1, log[-2000:]
        assert "Traceback" not in log
    finally:
        dep.stop()
