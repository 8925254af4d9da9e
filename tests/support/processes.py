"""Real Hubbub processes for the tests: gateways and workers as separate OS processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hubbub.dev.embedded import free_port

ACCESS_KEY = "test-access-key-0123456789abcdef"


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    """Gateways and workers sharing one Redis; the test decides how many of each."""

    redis_url: str
    workdir: Path
    prefix: str
    gateways: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HUBBUB_REDIS_URL=self.redis_url,
            HUBBUB_ACCESS_KEY=ACCESS_KEY,
            HUBBUB_KEY_PREFIX=self.prefix,
            HUBBUB_LOG_LEVEL=os.environ.get("TEST_HUBBUB_LOG_LEVEL", "INFO"),
            HUBBUB_HEARTBEAT_INTERVAL="0.5",
            HUBBUB_GATEWAY_TTL="3",
            HUBBUB_REAP_INTERVAL="0.5",
            HUBBUB_LEASE_MS="2000",
            HUBBUB_LEASE_INTERVAL="0.25",
            HUBBUB_METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def _spawn(self, name: str, module: str, env: dict[str, str], port: int | None) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        return Proc(name, process, log, port)

    async def start_gateway(self, **env: str) -> Proc:
        port = free_port()
        name = f"gw{len(self.gateways) + 1}"
        proc = self._spawn(
            name,
            "hubbub_gateway.main",
            self.env(HUBBUB_PORT=str(port), HUBBUB_GATEWAY_ID=f"{self.prefix}-{name}", **env),
            port,
        )
        self.gateways.append(proc)
        await wait_healthy(proc)
        return proc

    def start_worker(self, **env: str) -> Proc:
        name = f"worker{len(self.workers) + 1}"
        proc = self._spawn(
            name, "hubbub_fanout.main", self.env(HUBBUB_WORKER_NAME=name, **env), None
        )
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.gateways + self.workers:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} -----\n{p.output()[-4000:]}" for p in self.gateways + self.workers
        )


async def wait_healthy(proc: Proc, timeout: float = 20.0) -> None:
    """Poll health until it answers 200: the process has no other way to say it is ready."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
            try:
                if (await http.get(f"{proc.url}/api/health", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.name} not healthy:\n{proc.output()}")


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
