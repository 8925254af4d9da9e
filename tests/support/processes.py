"""Real Hubbub processes for the tests: gateways and workers as separate OS processes, started by
the shared launcher (:mod:`hubbub.dev.launcher`) with short timings and a key prefix per test."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx

from hubbub.dev.launcher import ChildProcess, LocalDeployment
from hubbub.settings import Settings

ACCESS_KEY = "test-access-key-0123456789abcdef"

Proc = ChildProcess  # name, process, log, port; url, signal(), stop(), output(), wait_healthy()


class Deployment(LocalDeployment):
    """Gateways and workers sharing one Redis; the test decides how many of each.

    Gateway ids are ``<prefix>-gw<n>``; a worker's name (``HUBBUB_WORKER_NAME``, e.g. the owner
    stored in a partition lease) is its process name, ``worker<n>``. Each child logs to
    ``<workdir>/<name>.log``. :attr:`extra_env` applies to the children started after it changes.
    """

    def __init__(self, redis_url: str, workdir: Path, prefix: str) -> None:
        super().__init__(
            redis_url,
            ACCESS_KEY,
            workdir=workdir,
            settings={
                "HUBBUB_KEY_PREFIX": prefix,
                "HUBBUB_LOG_LEVEL": os.environ.get("TEST_HUBBUB_LOG_LEVEL", "INFO"),
                "HUBBUB_HEARTBEAT_INTERVAL": "0.5",
                "HUBBUB_GATEWAY_TTL": "3",
                "HUBBUB_REAP_INTERVAL": "0.5",
                "HUBBUB_LEASE_MS": "2000",
                "HUBBUB_LEASE_INTERVAL": "0.25",
                "HUBBUB_METRICS_PORT": "0",
                "PYTHONUNBUFFERED": "1",
            },
            gateway_id=f"{prefix}-{{name}}",
        )
        self.prefix = prefix

    @property
    def extra_env(self) -> dict[str, str]:
        """Variables for the children started from now on, over the test settings."""
        return self.settings

    def env(self, **overrides: str) -> dict[str, str]:
        return self.environment(**overrides)

    def service_settings(self, **overrides: Any) -> Settings:
        """Settings of an upstream service (:mod:`hubbub.upstream`) run in the test process:
        this deployment's Redis, prefix and key, and the children's short leases."""
        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "key_prefix": self.prefix,
            "access_key": ACCESS_KEY,
            "lease_ms": 2000,
            "lease_interval": 0.25,
        }
        # The Redis mode too (Sentinel, Cluster), as the children get it.
        for name, value in self.settings.items():
            if name.startswith("HUBBUB_REDIS_"):
                values[name.removeprefix("HUBBUB_").lower()] = value
        return Settings(**{**values, **overrides})

    async def workers_seen(self, n: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``n`` workers are live as the gateways see them (their heartbeats): a
        worker checks its Redis once at start and exits if it is down, so a test that stops
        Redis must let the workers it started get past that first."""

        async def seen() -> bool:
            async with httpx.AsyncClient() as http:
                for gateway in self.gateways:
                    if gateway.returncode is not None:
                        continue
                    health = (await http.get(f"{gateway.url}/api/health")).json()
                    if health["workers"]["live"] < n:
                        return False
            return True

        await eventually(seen, timeout=timeout)

    async def upstream_services_seen(self, n: int = 1, timeout: float = 15.0) -> None:
        """Wait until every gateway's heartbeat has seen ``n`` live upstream services (until
        then a gateway answers invocations itself: "does not exist")."""

        async def seen() -> bool:
            async with httpx.AsyncClient() as http:
                for gateway in self.gateways:
                    if gateway.returncode is not None:
                        continue
                    health = (await http.get(f"{gateway.url}/api/health")).json()
                    if health["upstreamServices"] < n:
                        return False
            return True

        await eventually(seen, timeout=timeout)


async def wait_healthy(proc: Proc, timeout: float = 20.0) -> None:
    """Poll health until it answers 200: the process has no other way to say it is ready."""
    await proc.wait_healthy(timeout)


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async predicate for state that no event announces (e.g. keys in Redis)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
