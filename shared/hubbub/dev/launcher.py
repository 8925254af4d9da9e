"""Hubbub's services as child processes of this one: the one local launcher.

``hubbub dev`` (:mod:`.cli`), the test suite (``tests/support/processes.py``) and the benchmark
(``bench/``) start gateways and fan-out workers here, and nowhere else:

- :func:`service_command` is the one place that knows how each service is run
  (``python -m hubbub_gateway.main``, ``python -m hubbub_fanout.main``);
- :func:`start_process` / :func:`start_service` start a child with a given environment, its
  output appended to a log file (or left on this process's stdout/stderr), optionally in its own
  session, in a :class:`~hubbub.dev.lifetime.ChildGroup` (dies with this process) or under
  cProfile;
- :class:`ChildProcess` waits until it is healthy (``/api/health`` answers 200 from that very
  child, by the ``pid`` of the body; a child that exits first is reported with its output,
  another process answering on its port as :class:`NotOurs`), signals, stops (SIGTERM, then
  SIGKILL after a timeout) and reads its log;
- :class:`LocalDeployment` runs gateways and workers around one Redis with shared settings
  (``HUBBUB_*`` variables) and per-child overrides, and stops them all at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hubbub.dev.embedded import free_port
from hubbub.dev.lifetime import ChildGroup

SERVICES: dict[str, str] = {"gateway": "hubbub_gateway.main", "worker": "hubbub_fanout.main"}
HEALTH_PATH = "/api/health"


def service_command(service: str, python: str = sys.executable) -> list[str]:
    """The command line that runs ``service`` (a key of :data:`SERVICES`)."""
    try:
        module = SERVICES[service]
    except KeyError:
        raise ValueError(f"unknown service {service!r} (one of {', '.join(SERVICES)})") from None
    return [python, "-m", module]


class ProcessExited(RuntimeError):
    """A child exited while it was expected to become healthy."""

    def __init__(self, name: str, returncode: int | None, output: str) -> None:
        super().__init__(f"{name} exited (code {returncode})" + (f":\n{output}" if output else ""))
        self.name = name
        self.returncode = returncode


class NotOurs(RuntimeError):
    """Another process answered the health check on a child's port (it holds the port)."""

    def __init__(self, name: str, url: str, pid: object) -> None:
        super().__init__(f"{url} is answered by another process (pid {pid}), not {name}")
        self.name = name
        self.url = url
        self.pid = pid


class NotHealthy(TimeoutError):
    """A child did not answer its health check in time."""

    def __init__(self, name: str, url: str, within: float, output: str) -> None:
        super().__init__(
            f"{name} not healthy at {url} after {within:g} s" + (f":\n{output}" if output else "")
        )
        self.name = name
        self.url = url


@dataclass
class ChildProcess:
    """One child process: a gateway, a worker, or any server with an HTTP health path."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path | None = None  # its stdout and stderr; None: this process's own
    port: int | None = None
    host: str = "127.0.0.1"
    killed: bool = False  # stop() had to SIGKILL it

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` unless it already exited."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.killed = True
        self.process.wait()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout`` for it to drain and exit, else SIGKILL; its exit code."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.process.returncode

    def output(self) -> str:
        """What it wrote to its log so far ("" without a log file)."""
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise ProcessExited(self.name, self.process.returncode, self.output())

    def _healthy(self, response: httpx.Response) -> bool:
        """A 200 from this child. A JSON body with a ``pid`` (a gateway's) must name this
        child: an older process on the same port would otherwise pass for it."""
        if response.status_code != 200:
            return False
        try:
            body = response.json()
        except ValueError:
            return True
        pid = body.get("pid") if isinstance(body, dict) else None
        if pid is not None and pid != self.pid:
            self._check_running()  # it lost the port and exited: say that, with its output
            raise NotOurs(self.name, self.url, pid)
        return True

    async def wait_healthy(
        self, within: float = 30.0, path: str = HEALTH_PATH, interval: float = 0.05
    ) -> None:
        """Poll ``path`` until this child answers 200 (it has no other way to say it is ready),
        for at most ``within`` seconds. Raises :class:`ProcessExited` if the child exits first,
        :class:`NotOurs` if another process answers, :class:`NotHealthy` when the time is up."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                self._check_running()
                try:
                    if self._healthy(await http.get(f"{self.url}{path}", timeout=1)):
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(interval)
        raise NotHealthy(self.name, self.url, within, self.output())

    def wait_healthy_sync(
        self, within: float = 30.0, path: str = HEALTH_PATH, interval: float = 0.1
    ) -> None:
        """:meth:`wait_healthy` for callers without an event loop."""
        deadline = time.monotonic() + within
        with httpx.Client() as http:
            while time.monotonic() < deadline:
                self._check_running()
                try:
                    if self._healthy(http.get(f"{self.url}{path}", timeout=1)):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(interval)
        raise NotHealthy(self.name, self.url, within, self.output())


def start_process(
    name: str,
    argv: list[str],
    *,
    env: Mapping[str, str],
    log: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    new_session: bool = False,
    group: ChildGroup | None = None,
    profile: Path | None = None,
) -> ChildProcess:
    """Start ``argv`` with exactly ``env``. ``log``: stdout and stderr appended to this file
    (else inherited). ``new_session``: a Ctrl-C in the terminal reaches only this process, which
    then stops its children in order. ``group``: the same, and the child also dies with this
    process (see :class:`~hubbub.dev.lifetime.ChildGroup`); its stdin is /dev/null, as a
    background group may not read the terminal. ``profile``: ``argv[0]`` is a Python
    interpreter; run the rest under cProfile, writing its statistics to this file."""
    if profile is not None:
        argv = [argv[0], "-m", "cProfile", "-o", str(profile), *argv[1:]]
    grouped = group is not None
    options: dict[str, Any] = {
        "env": dict(env),
        "start_new_session": new_session and not grouped,
        "preexec_fn": group.preexec() if group is not None else None,
        "stdin": subprocess.DEVNULL if grouped else None,
    }
    if log is None:
        process = subprocess.Popen(argv, **options)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, **options)
    if group is not None:
        group.started(process.pid)
    return ChildProcess(name, process, log, port, host)


def start_service(
    service: str,
    name: str,
    *,
    env: Mapping[str, str],
    log: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    new_session: bool = False,
    group: ChildGroup | None = None,
    profile: Path | None = None,
) -> ChildProcess:
    """Start one Hubbub service (``"gateway"`` or ``"worker"``); see :func:`start_process`."""
    return start_process(
        name,
        service_command(service),
        env=env,
        log=log,
        port=port,
        host=host,
        new_session=new_session,
        group=group,
        profile=profile,
    )


def stop_all(children: Iterable[ChildProcess], timeout: float = 15.0) -> None:
    """SIGTERM every child first, so that they drain in parallel, then stop each in turn."""
    children = list(children)
    for child in children:
        child.terminate()
    for child in children:
        child.stop(timeout)


class LocalDeployment:
    """Gateways and fan-out workers sharing one Redis, as child processes of this one.

    Every child gets this process's environment, then ``HUBBUB_REDIS_URL`` and
    ``HUBBUB_ACCESS_KEY``, then :attr:`settings` (a dict the caller may change between starts),
    then its own variables (port, id) and the keyword overrides of the start call. Children are
    named ``gw1``, ``gw2``, ... and ``worker1``, ...; ``gateway_id`` and ``worker_id`` turn that
    name into ``HUBBUB_GATEWAY_ID`` / ``HUBBUB_WORKER_NAME`` (``"{name}"`` is replaced). With a
    ``group``, every child is started in it (:func:`start_process`). With a
    ``workdir``, each child's output goes to ``<workdir>/<name>.log`` (and, with ``profile``,
    its cProfile statistics to ``<name>.prof``); without one, to this process's stdout/stderr.
    """

    def __init__(
        self,
        redis_url: str,
        access_key: str,
        *,
        workdir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        gateway_id: str = "{name}",
        worker_id: str = "{name}",
        new_session: bool = False,
        group: ChildGroup | None = None,
        profile: bool = False,
    ) -> None:
        self.redis_url = redis_url
        self.access_key = access_key
        self.workdir = workdir
        self.settings: dict[str, str] = dict(settings or {})
        self.host = host
        self.gateway_id = gateway_id
        self.worker_id = worker_id
        self.new_session = new_session
        self.group = group
        self.profile = profile
        self.gateways: list[ChildProcess] = []
        self.workers: list[ChildProcess] = []

    @property
    def children(self) -> list[ChildProcess]:
        return self.gateways + self.workers

    def environment(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HUBBUB_REDIS_URL=self.redis_url, HUBBUB_ACCESS_KEY=self.access_key)
        env.update(self.settings)
        env.update(overrides)
        return env

    def _start(
        self, service: str, name: str, port: int | None, env: dict[str, str]
    ) -> ChildProcess:
        log = self.workdir / f"{name}.log" if self.workdir is not None else None
        profile = log.with_suffix(".prof") if self.profile and log is not None else None
        return start_service(
            service,
            name,
            env=env,
            log=log,
            port=port,
            host=self.host,
            new_session=self.new_session,
            group=self.group,
            profile=profile,
        )

    def launch_gateway(self, port: int | None = None, **env: str) -> ChildProcess:
        """Start a gateway (on ``port``, else a free one) without waiting for it."""
        name = f"gw{len(self.gateways) + 1}"
        port = port or free_port()
        own = {
            "HUBBUB_HOST": self.host,
            "HUBBUB_PORT": str(port),
            "HUBBUB_GATEWAY_ID": self.gateway_id.format(name=name),
        }
        child = self._start("gateway", name, port, self.environment(**{**own, **env}))
        self.gateways.append(child)
        return child

    async def start_gateway(
        self, port: int | None = None, within: float = 30.0, **env: str
    ) -> ChildProcess:
        """Start a gateway and wait (at most ``within`` seconds) until it is healthy."""
        child = self.launch_gateway(port, **env)
        await child.wait_healthy(within)
        return child

    def start_worker(self, **env: str) -> ChildProcess:
        """Start a fan-out worker (it has no health endpoint to wait for)."""
        name = f"worker{len(self.workers) + 1}"
        own = {"HUBBUB_WORKER_NAME": self.worker_id.format(name=name)}
        child = self._start("worker", name, None, self.environment(**{**own, **env}))
        self.workers.append(child)
        return child

    def exited(self) -> list[ChildProcess]:
        """The children that are no longer running."""
        return [child for child in self.children if child.returncode is not None]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every child (idempotent)."""
        stop_all(self.children, timeout)

    def logs(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of each child's log, under its name."""
        return "\n".join(f"----- {c.name} -----\n{c.output()[-tail:]}" for c in self.children)
