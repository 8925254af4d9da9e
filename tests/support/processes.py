"""Real Hubbub processes for the tests: gateways and workers as separate OS processes, started by
the shared launcher (:mod:`hubbub.dev.launcher`) with short timings and a key prefix per test."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from hubbub.dev.launcher import ChildProcess, LocalDeployment

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
