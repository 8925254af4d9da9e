"""REST ingest benchmark: how many publishes per second ONE gateway process accepts.

    .venv/bin/python -m bench.ingest                       # the working tree
    .venv/bin/python -m bench.ingest --baseline HEAD       # HEAD's gateway, then the working tree
    .venv/bin/python -m bench.ingest --baseline HEAD --rounds 2 --results bench/RESULTS.md

What runs: one ``redis-server`` (:class:`hubbub.dev.embedded.RedisProcess`, on a free port) and one
gateway process (started by :func:`hubbub.dev.launcher.start_service`, as the tests and
``hubbub dev`` start it); no fan-out worker, so nothing but the ingest runs on the server side.
``wrk`` (one thread, ``--connections`` keep-alive connections) POSTs one request shape over and
over, signed with a service JWT minted for that URL (as ``hubbub token`` / the Azure SDK do: one
token reused for many requests).

Scenarios: ``POST /api/hubs/bench/:send`` (broadcast), the ``users/{u}``, ``groups/{g}`` and
``connections/{c}`` ``/:send`` variants, and ``POST /api/hubs/bench/:batch`` with
``--batch-size`` messages to distinct users.

Figures per scenario: requests/s and messages/s as wrk counts them; every request must be answered
2xx (wrk's "Non-2xx" count is reported and fails the run) and the messages that reached the publish
stream (``XINFO STREAM`` entries-added, summed over the partitions) are counted independently.
**Gateway CPU µs per request** = user+system CPU of the gateway process (``/proc/<pid>/stat``,
:mod:`bench.procstat`) over the run / requests the gateway accepted (entries added / batch size).
redis-server's and wrk's CPU are given in cores, and so is the *other load*: CPU the whole machine
used meanwhile (``/proc/stat``) minus gateway, redis and wrk, i.e. whatever else runs on this
(shared) machine. With ``--baseline REV`` the same scenarios run against REV's gateway (its sources
from ``git archive REV``, put first on ``PYTHONPATH``) in the same invocation; with ``--rounds N``
both systems take turns N times and the median is reported.

``wrk`` must be on PATH (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from redis import Redis

from bench.procstat import cpu_seconds, loadavg, machine_busy_seconds
from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.dev.launcher import start_service
from hubbub.tokens import mint_token
from hubbub.wire.keys import KeySchema

REPO = Path(__file__).resolve().parent.parent
ACCESS_KEY = "bench-access-key-0123456789abcdef"
PREFIX = "ingest"
PARTITIONS = 16
HEADING = "## REST ingest"


@dataclass
class Scenario:
    name: str
    path: str
    body: bytes
    messages_per_request: int = 1


def scenarios(batch_size: int, only: list[str] | None) -> list[Scenario]:
    single = orjson.dumps({"target": "bench", "arguments": ["hello from wrk", 42, {"k": "v"}]})
    batch = orjson.dumps(
        {
            "messages": [
                {"to": "user", "name": f"u{i}", "target": "bench", "arguments": ["hello", i]}
                for i in range(batch_size)
            ]
        }
    )
    all_ = [
        Scenario("send", "/api/hubs/bench/:send", single),
        Scenario("send user", "/api/hubs/bench/users/u1/:send", single),
        Scenario("send group", "/api/hubs/bench/groups/g1/:send", single),
        Scenario("send connection", "/api/hubs/bench/connections/c1/:send", single),
        Scenario(f"batch x{batch_size}", "/api/hubs/bench/:batch", batch, batch_size),
    ]
    if only:
        return [s for s in all_ if s.name.split()[0 if s.name.startswith("batch") else -1] in only
                or s.name in only]  # fmt: skip
    return all_


@dataclass
class Run:
    system: str
    scenario: str
    seconds: float
    requests: int  # completed, as wrk counts them
    non_2xx: int
    socket_errors: str
    accepted_messages: int  # entries added to the publish stream
    messages_per_request: int
    gateway_cpu: float  # seconds
    redis_cpu: float
    wrk_cpu: float
    machine_busy: float  # seconds of CPU, all cores, whole machine
    latency: dict[str, float] = field(default_factory=dict)  # ms

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mps(self) -> float:
        return self.requests * self.messages_per_request / self.seconds

    @property
    def gateway_us_per_request(self) -> float:
        served = self.accepted_messages / self.messages_per_request
        return self.gateway_cpu / served * 1e6 if served else float("nan")

    @property
    def gateway_us_per_message(self) -> float:
        return self.gateway_cpu / self.accepted_messages * 1e6 if self.accepted_messages else 0.0

    @property
    def other_cores(self) -> float:
        own = self.gateway_cpu + self.redis_cpu + self.wrk_cpu
        return max(0.0, self.machine_busy - own) / self.seconds


def accepted(redis: Redis) -> int:
    schema = KeySchema(PREFIX)
    total = 0
    for n in range(PARTITIONS):
        key = schema.publish_partition(n)
        if redis.exists(key):
            total += int(redis.xinfo_stream(key)["entries-added"])
    return total


@contextlib.contextmanager
def gateway(
    source: Path | None, redis_url: str, workdir: Path, name: str
) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        HUBBUB_REDIS_URL=redis_url,
        HUBBUB_PORT=str(port),
        HUBBUB_ACCESS_KEY=ACCESS_KEY,
        HUBBUB_KEY_PREFIX=PREFIX,
        HUBBUB_GATEWAY_ID=f"bench-{name}",
        HUBBUB_PUBLISH_PARTITIONS=str(PARTITIONS),
        HUBBUB_PUBLISH_STREAM_MAXLEN="100000",
        HUBBUB_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(var, None)  # tracing off: the figures are for the untraced path
    if source is not None:
        env["PYTHONPATH"] = f"{source / 'shared'}:{source / 'services' / 'gateway'}"
    child = start_service(
        "gateway", f"gateway-{name}", env=env, log=workdir / f"gateway-{name}.log", port=port
    )
    try:
        child.wait_healthy_sync(within=30, interval=0.05)
        yield child.url, child.pid
    finally:
        child.stop(20)


def wrk_script(workdir: Path, url: str, scenario: Scenario) -> Path:
    token = mint_token(ACCESS_KEY, url + scenario.path, minutes=120)
    body = scenario.body.decode()
    assert "]==]" not in body
    slug = re.sub(r"\W+", "-", scenario.name)
    script = workdir / f"{slug}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(
    url: str, scenario: Scenario, script: Path, seconds: float, connections: int
) -> tuple[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency",
            "-s", str(script), url + scenario.path]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{output}")
    return output, usage.ru_utime + usage.ru_stime


def measure(
    system: str,
    url: str,
    gateway_pid: int,
    redis_pid: int,
    redis: Redis,
    scenario: Scenario,
    script: Path,
    seconds: float,
    connections: int,
) -> Run:
    before = (cpu_seconds(gateway_pid), cpu_seconds(redis_pid), machine_busy_seconds(),
              accepted(redis))  # fmt: skip
    started = time.monotonic()
    output, wrk_cpu = run_wrk(url, scenario, script, seconds, connections)
    elapsed = time.monotonic() - started
    after = (cpu_seconds(gateway_pid), cpu_seconds(redis_pid), machine_busy_seconds(),
             accepted(redis))  # fmt: skip
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if not done:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    wrk_seconds = float(done.group(2)) * (0.001 if done.group(3) == "ms" else 1.0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    latency = {
        f"p{p}": _ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    return Run(
        system=system,
        scenario=scenario.name,
        seconds=wrk_seconds,
        requests=int(done.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors.group(1).strip() if socket_errors else "",
        accepted_messages=after[3] - before[3],
        messages_per_request=scenario.messages_per_request,
        gateway_cpu=after[0] - before[0],
        redis_cpu=after[1] - before[1],
        wrk_cpu=wrk_cpu,
        machine_busy=(after[2] - before[2]) * wrk_seconds / elapsed,
        latency=latency,
    )


def source_of(rev: str, workdir: Path) -> Path:
    target = workdir / f"src-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def describe(rev: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True
    )
    return done.stdout.strip() or rev


def median_run(runs: list[Run]) -> Run:
    """The run with the median requests/s, the lower middle one of an even count (an actual
    run, so that its figures belong together)."""
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


def table(runs: list[Run], systems: list[str]) -> str:
    lines = [
        "| scenario | system | requests/s | messages/s | gateway CPU µs / request"
        " | µs / message | gateway cores | redis cores | wrk cores | other load (cores)"
        " | p50 / p99 ms | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r.scenario for r in runs))
    for name in names:
        for system in systems:
            chosen = [r for r in runs if r.scenario == name and r.system == system]
            if not chosen:
                continue
            r = median_run(chosen)
            lines.append(
                f"| {name} | {system} | {r.rps:,.0f} | {r.mps:,.0f} | "
                f"{r.gateway_us_per_request:,.0f} | {r.gateway_us_per_message:,.1f} | "
                f"{r.gateway_cpu / r.seconds:.2f} | {r.redis_cpu / r.seconds:.2f} | "
                f"{r.wrk_cpu / r.seconds:.2f} | {r.other_cores:.2f} | "
                f"{r.latency.get('p50', 0):.1f} / {r.latency.get('p99', 0):.1f} | "
                f"{r.non_2xx} |"
            )
    return "\n".join(lines)


def ratios(runs: list[Run], before: str, after: str) -> str:
    out = []
    for name in dict.fromkeys(r.scenario for r in runs):
        b = [r for r in runs if r.scenario == name and r.system == before]
        a = [r for r in runs if r.scenario == name and r.system == after]
        if a and b:
            rb, ra = median_run(b), median_run(a)
            out.append(
                f"- {name}: {ra.rps / rb.rps:.2f}x requests/s, gateway CPU per request "
                f"{ra.gateway_us_per_request / rb.gateway_us_per_request:.2f}x"
            )
    return "\n".join(out)


def every_run(runs: list[Run], systems: list[str]) -> str:
    """Each run's requests/s with the other load it had: the spread behind the medians."""
    out = []
    for name in dict.fromkeys(r.scenario for r in runs):
        parts = []
        for system in systems:
            mine = [r for r in runs if r.scenario == name and r.system == system]
            figures = ", ".join(f"{r.rps:,.0f} ({r.other_cores:.2f})" for r in mine)
            parts.append(f"{system} {figures}")
        out.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(out)


def batch_over_single(runs: list[Run], system: str) -> str:
    """Batch messages/s over single-send requests/s (the same system, median runs)."""
    single = [r for r in runs if r.system == system and r.scenario == "send"]
    batch = [r for r in runs if r.system == system and r.messages_per_request > 1]
    if not single or not batch:
        return ""
    s, b = median_run(single), median_run(batch)
    return (
        f"- {system}: {b.scenario} carries {b.mps / s.rps:.1f}x the messages/s of single "
        f"sends ({b.mps:,.0f} vs {s.rps:,.0f}), at {b.gateway_us_per_message:.1f} vs "
        f"{s.gateway_us_per_request:.0f} µs of gateway CPU per message"
    )


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the ``## REST ingest`` section of a markdown file."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk run per scenario")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--batch-size", type=int, default=100, help="messages per :batch call")
    parser.add_argument("--baseline", metavar="REV", help="also measure REV's gateway")
    parser.add_argument("--rounds", type=int, default=1, help="turns per system (median kept)")
    parser.add_argument("--only", nargs="*", help="scenarios: send user group connection batch")
    parser.add_argument("--results", type=Path, help="write the '## REST ingest' section here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="hubbub-ingest-bench-"))
    systems: list[tuple[str, Path | None]] = []
    if args.baseline:
        systems.append((f"before ({describe(args.baseline)})", source_of(args.baseline, workdir)))
    systems.append(("after (working tree)" if args.baseline else "working tree", None))
    chosen = scenarios(args.batch_size, args.only)
    load_before = loadavg()
    started = time.time()
    runs: list[Run] = []
    server = RedisProcess(directory=str(workdir / "redis"))
    (workdir / "redis").mkdir()
    server.start()
    try:
        assert server.process is not None
        redis = Redis.from_url(server.url)
        for round_ in range(args.rounds):
            order = systems if round_ % 2 == 0 else systems[::-1]
            for label, source in order:
                with gateway(source, server.url, workdir, f"{len(runs)}") as (url, pid):
                    warm = wrk_script(workdir, url, chosen[0])
                    run_wrk(url, chosen[0], warm, 2, args.connections)  # warm-up, not counted
                    for scenario in chosen:
                        script = wrk_script(workdir, url, scenario)
                        run = measure(label, url, pid, server.process.pid, redis, scenario,
                                      script, args.seconds, args.connections)  # fmt: skip
                        runs.append(run)
                        print(
                            f"{label:28} {scenario.name:16} {run.rps:9,.0f} req/s "
                            f"{run.mps:10,.0f} msg/s {run.gateway_us_per_request:7,.0f} µs/req "
                            f"other load {run.other_cores:.2f} cores"
                            + (f" NON-2XX {run.non_2xx}" if run.non_2xx else ""),
                            flush=True,
                        )
        redis.close()
    finally:
        server.stop()
    load_after = loadavg()
    names = [label for label, _ in systems]
    info = (
        f"- run: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}, "
        f"{(time.time() - started) / 60:.1f} min; command: `.venv/bin/python -m bench.ingest "
        f"{' '.join(sys.argv[1:])}`\n"
        f"- machine: nproc {os.cpu_count()}; load average (1 min) {load_before} before, "
        f"{load_after} after; other load during the runs: "
        f"{min(r.other_cores for r in runs):.2f} to {max(r.other_cores for r in runs):.2f} cores\n"
        f"- wrk -t1 -c{args.connections}, {args.seconds:g} s per scenario, {args.rounds} "
        "round(s), the median run shown (the lower middle one of an even count); "
        f"body {len(chosen[0].body)} B; batch = {args.batch_size} messages to distinct users "
        f"({len(chosen[-1].body)} B); one gateway process, one redis-server, no worker; "
        "tracing off"
    )
    parts = [
        f"{HEADING}\n\nProduced by `python -m bench.ingest` (see the docstring of "
        "`bench/ingest.py`). Gateway CPU per accepted request is the steadiest figure; "
        "requests/s also depends on what else the machine's cores run (other load).",
        info,
        table(runs, names),
    ]
    if len(names) > 1:
        parts.append(ratios(runs, names[0], names[-1]))
    parts.append("\n".join(filter(None, (batch_over_single(runs, n) for n in names))))
    parts.append("Every run, requests/s (other load in cores):\n\n" + every_run(runs, names))
    section = "\n\n".join(p for p in parts if p) + "\n"
    print()
    print(section)
    failed = [
        r for r in runs if r.non_2xx or r.accepted_messages < r.requests * r.messages_per_request
    ]
    if args.results:
        write_section(args.results, section)
        print(f"written to {args.results}")
    shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("FAILED: non-2xx answers or fewer messages stored than accepted:", file=sys.stderr)
        for r in failed:
            print(f"  {r.system} {r.scenario}: non-2xx {r.non_2xx}, requests {r.requests}, "
                  f"stored {r.accepted_messages}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
