"""The report: warnings in the server logs, the markdown tables (one column per system and the
Hubbub / peer ratio, one per peer when there are two), the machine and versions, and
RESULTS.md's sections."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.clients import protocol_label
from bench.common import NODE_PEER_DIR, ROOT, fmt
from bench.publishers import PUBLISH_PATHS
from bench.targets import TARGETS
from bench.workloads import WORKLOADS

LOG_PATTERN = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
REDIS_BENIGN = (
    "Redis is starting",
    "Redis version=",
    "Configuration loaded",
    "Server initialized",
    "Memory overcommit",
    "User requested shutdown",
    "ready to exit",
    "Saving the final",
)


def scan_logs(files: list[Path]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the server logs (HUBBUB_LOG_LEVEL=WARNING)."""
    found: dict[str, Any] = {}
    for path in files:
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if path.name == "server.log":  # redis: '#' marks warnings (and some startup chatter)
            hits = [
                line for line in lines if " # " in line and not any(b in line for b in REDIS_BENIGN)
            ]
        else:
            hits = [line for line in lines if LOG_PATTERN.search(line)]
        if hits:
            key = f"{path.parent.name}/{path.name}"
            found[key] = {"count": len(hits), "first": hits[:8]}
    return found


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


ROWS: list[tuple[str, Callable[[dict[str, Any]], float | None], str]] = [
    ("messages published / s", lambda r: r["publish_rate"], ".1f"),
    ("deliveries expected", lambda r: r["expected"], "d"),
    ("deliveries lost", lambda r: r["lost"], "d"),
    ("duplicates + misdelivered", lambda r: r["duplicates"] + r["misdelivered"], "d"),
    ("closed by server", lambda r: r["closed_by_server"], "d"),
    ("deliveries / s", lambda r: r["deliveries_per_s"], ".0f"),
    ("**server CPU µs / delivery**", lambda r: r["server_cpu_us_per_delivery"], ".1f"),
    (
        "… of which gateway / uvicorn / Node processes",
        lambda r: cpu_share(r, ("gw", "sio", "node")),
        ".1f",
    ),
    ("… of which fan-out workers", lambda r: cpu_share(r, ("worker",)), ".1f"),
    ("… of which redis-server", lambda r: cpu_share(r, ("redis",)), ".1f"),
    ("… … busiest Redis Cluster master", lambda r: master_share(r, max), ".1f"),
    ("… … least busy Redis Cluster master", lambda r: master_share(r, min), ".1f"),
    ("publishers' CPU µs / delivery (not in server CPU)", lambda r: publisher_share(r), ".1f"),
    (
        "server + publishers' CPU µs / delivery",
        lambda r: sum_or_none(r["server_cpu_us_per_delivery"], publisher_share(r)),
        ".1f",
    ),
    ("server CPU µs / published message", lambda r: r["server_cpu_us_per_message"], ".0f"),
    ("server CPU, cores (average)", lambda r: r["server_cpu_cores"], ".2f"),
    ("latency p50 (ms)", lambda r: r["latency_ms"]["p50"], ".1f"),
    ("latency p95 (ms)", lambda r: r["latency_ms"]["p95"], ".1f"),
    ("latency p99 (ms)", lambda r: r["latency_ms"]["p99"], ".1f"),
    ("latency max (ms)", lambda r: r["latency_ms"]["max"], ".1f"),
    ("first-recipient latency p50 (ms)", lambda r: r["first_latency_ms"]["p50"], ".1f"),
    ("first-recipient latency p99 (ms)", lambda r: r["first_latency_ms"]["p99"], ".1f"),
    ("publish call p50 (ms)", lambda r: r["publish_request_ms"]["p50"], ".1f"),
    ("drain after last publish (s)", lambda r: r["drain_seconds"], ".2f"),
    ("frame size (B)", lambda r: r["frame_bytes"], "d"),
    ("busiest load client (CPU-s / s)", lambda r: r["client_cpu_max_utilisation"], ".2f"),
    ("publishers' CPU (s)", lambda r: sum(r["publisher_cpu_seconds"]), ".2f"),
    ("other load on the machine (cores)", lambda r: r["other_cpu_cores"], ".2f"),
]


def cpu_share(r: dict[str, Any], prefixes: tuple[str, ...]) -> float | None:
    """Server CPU µs per delivery of the processes whose names start with one of ``prefixes``
    (None when the system has none)."""
    parts: list[float] = [
        v for k, v in r["server_cpu_by_process"].items() if k.startswith(prefixes)
    ]
    received: int = r["received"]
    if not parts or not received:
        return None
    return sum(parts) / received * 1e6


def publisher_share(r: dict[str, Any]) -> float | None:
    """The publisher processes' CPU (each over its own share of the phase) per delivery: issue
    14 counts the publishing process in the server CPU, the rows above do not."""
    received: int = r["received"]
    return sum(r["publisher_cpu_seconds"]) / received * 1e6 if received else None


def sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def master_share(r: dict[str, Any], pick: Callable[[list[float]], float]) -> float | None:
    """Server CPU µs per delivery of one Redis Cluster master (``redis-m1`` ...), the one
    ``pick`` (max or min) chooses; None with one redis-server."""
    parts = [v for k, v in r["server_cpu_by_process"].items() if k.startswith("redis-m")]
    received: int = r["received"]
    if not parts or not received:
        return None
    return pick(parts) / received * 1e6


def redis_bytes(per_process: dict[str, float | None]) -> float | None:
    """The redis-server figure of W4: ``redis``, or the sum over a cluster's masters."""
    parts = [v for k, v in per_process.items() if k.startswith("redis") and v is not None]
    return sum(parts) if parts else None


def header_rows(
    labels: list[str], ratio_label: str = "Hubbub / peer", short: list[str] | None = None
) -> list[str]:
    """A markdown table's header: one column per system, and Hubbub / peer when there are two;
    with more, a ratio column for each after the first, to the first, named with ``short``
    names when given (see :func:`ratio_cells`)."""
    names = short or labels
    ratios = [ratio_label] if len(labels) == 2 else [f"{names[0]} / {n}" for n in names[1:]]
    return [
        "| | " + " | ".join([*labels, *ratios]) + " |",
        "|---" * (len(labels) + 1 + len(ratios)) + "|",
    ]


def ratio_cells(values: list[Any]) -> list[str]:
    """The ratio cells that go with :func:`header_rows`: the first value over each other."""
    return [ratio(values[0], v) for v in values[1:]]


def phase_table(
    runs: list[tuple[str, dict[str, Any] | None]],
    ratio_label: str = "Hubbub / peer",
    against_first: bool = False,
    short: list[str] | None = None,
) -> list[str]:
    """A markdown table, one column per system, and Hubbub/peer when there are two, Hubbub/each
    peer when there are more, named with ``short`` names when given (with ``against_first``: a
    ratio column for each column after the first, each over the first)."""
    if against_first and len(runs) >= 2:
        names = short or [label for label, _ in runs]
        lines = [
            "| | " + " | ".join(label for label, _ in runs) + " | "
            + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |",
            "|---" * (2 * len(runs)) + "|",
        ]  # fmt: skip
        for name, get, spec in ROWS:
            values = []
            for _, r in runs:
                try:
                    values.append(get(r) if r else None)
                except (KeyError, TypeError):
                    values.append(None)
            cells = [fmt(v, spec) for v in values] + [ratio(v, values[0]) for v in values[1:]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return lines
    lines = header_rows([label for label, _ in runs], ratio_label, short)
    for name, get, spec in ROWS:
        values = []
        for _, r in runs:
            try:
                values.append(get(r) if r else None)
            except (KeyError, TypeError):
                values.append(None)
        cells = [fmt(v, spec) for v in values] + ratio_cells(values)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def describe_phase(r: dict[str, Any]) -> str:
    notes = []
    if r["publish_max_lag_s"] > 0.25:
        notes.append(f"publishers fell behind by up to {r['publish_max_lag_s']:.2f} s")
    if r["drain_timed_out"]:
        notes.append("drain TIMED OUT")
    if r["publish_failed"]:
        notes.append(f"{r['publish_failed']} publishes failed: {r['publish_errors']}")
    if r["close_reasons"]:
        notes.append(f"closes: {r['close_reasons']}")
    if r["late_from_earlier_phases"]:
        notes.append(f"{r['late_from_earlier_phases']} late messages of an earlier phase")
    for proto, x in r.get("by_client_protocol", {}).items():
        notes.append(
            f"{proto} clients ({x['connections']}): {x['received']} received, "
            f"{x['duplicates'] + x['misdelivered']} duplicates + misdelivered, "
            f"{x['closed_by_server']} closed, p50 {fmt(x['latency_ms']['p50'], '.1f')} / p99 "
            f"{fmt(x['latency_ms']['p99'], '.1f')} ms, client CPU {x['client_cpu_seconds']:.2f} s"
        )
    return "; ".join(notes)


def markdown_report(report: dict[str, Any], args: argparse.Namespace) -> str:
    sessions = report["sessions"]
    # Session keys: one per system, Hubbub once per --client-protocol (hubbub, hubbub/<proto>)
    names = [k for t in args.targets for k in [*sessions, *report["idle"]] if k.split("/")[0] == t]
    names = list(dict.fromkeys(names))
    labels = {n: TARGETS[n.split("/")[0]].label for n in names}
    protocols = "hubbub" in args.targets and (
        len(getattr(args, "client_protocols", [])) > 1 or len(getattr(args, "redis", [])) > 1
    )
    paths = {  # the publish path of each system, in the column headers
        n: PUBLISH_PATHS.get(sessions[n].get("publish_path", ""), "")
        for n in names
        if n in sessions
    }
    plain = dict(labels)
    labels.update({n: f"{labels[n]} ({p})" for n, p in paths.items() if p})
    for n in names:  # Hubbub's load clients' hub protocol, in its column headers
        proto = (sessions.get(n) or report["idle"].get(n) or {}).get("client_protocol")
        if proto and proto != "socket.io":
            head = labels[n]
            labels[n] = f"{head[:-1]}, {proto})" if head.endswith(")") else f"{head} ({proto})"
        redis = (sessions.get(n) or {}).get("redis", "standalone")
        if redis != "standalone" or len(getattr(args, "redis", [])) > 1:
            head, tag = labels[n], f"Redis {redis}"
            labels[n] = f"{head[:-1]}, {tag})" if head.endswith(")") else f"{head} ({tag})"
    out: list[str] = []
    hub = sessions.get("hubbub")
    peer = sessions.get("socketio")
    compare = hub is not None and peer is not None

    # ---------------------------------------------------------------- targets
    if compare or report["idle"]:
        how = "; ".join(f"{plain[n]} publish: {p}" for n, p in paths.items() if p)
        measured = f"measured ({how})" if compare and how else "measured"
        out += ["## Targets", "", f"| target | {measured} | met? |", "|---|---|---|"]
        if compare:
            for w in ("broadcast", "groups", "users"):
                a = hub["phases"].get(w)
                b = peer["phases"].get(w)
                if not a or not b:
                    continue
                x, y = a["server_cpu_us_per_delivery"], b["server_cpu_us_per_delivery"]
                met = x is not None and y is not None and x <= y / 3
                out.append(
                    f"| {WORKLOADS[w].label}: server CPU / delivery ≤ 1/3 of python-socketio's | "
                    f"{fmt(x, '.1f')} vs {fmt(y, '.1f')} µs = {ratio(x, y)}x | "
                    f"{'yes' if met else 'NO'} |"
                )
            ra, rb = hub.get("ramp"), peer.get("ramp")
            if ra and rb:
                x, y = ra["deliveries_per_s"], rb["deliveries_per_s"]
                met = bool(y) and x >= 3 * y
                out.append(
                    f"| W1 ramp: sustainable deliveries/s ≥ 3x python-socketio's | "
                    f"{x:.0f} vs {y:.0f} /s = {ratio(x, y)}x | {'yes' if met else 'NO'} |"
                )
        if hub is not None and "latency" in hub["phases"]:
            r = hub["phases"]["latency"]
            p99 = r["latency_ms"]["p99"]
            met = p99 is not None and p99 < 10 and not r["lost"]
            out.append(
                f"| p99 < 10 ms at 10 % of Hubbub's sustainable rate ({r['rate']:g} msg/s, "
                f"{r['deliveries_per_s']:.0f} deliveries/s) | {fmt(p99, '.1f')} ms "
                f"(lost {r['lost']}) | {'yes' if met else 'NO'} |"
            )
        idle_hub = report["idle"].get("hubbub")
        if idle_hub and idle_hub.get("gateway_bytes_per_connection") is not None:
            kb = idle_hub["gateway_bytes_per_connection"] / 1024
            out.append(
                f"| idle memory ≤ 30 KB per connection (gateway RSS growth) | {kb:.1f} KB | "
                f"{'yes' if kb <= 30 else 'NO'} |"
            )
        out.append("")

    # ---------------------------------------------------------------- fixed workloads
    all_phases = ["broadcast", "groups", "users", "unit10", "latency"]
    for w in all_phases:
        runs = [(labels[n], sessions[n]["phases"].get(w)) for n in names if n in sessions]
        short = [
            "/".join(
                [sessions[n].get("client_protocol", n)]
                + [sessions[n].get("redis", "standalone")] * (len(getattr(args, "redis", [])) > 1)
            )
            for n in names
            if n in sessions and sessions[n]["phases"].get(w) is not None
        ]
        runs = [(label, r) for label, r in runs if r is not None]
        if not runs:
            continue
        r0 = runs[0][1]
        assert r0 is not None
        if w == "latency":
            title = (
                f"W1 broadcast at 10 % of Hubbub's sustainable rate: {r0['clients']} clients, "
                f"{r0['rate']:g} msg/s for {r0['seconds']:g} s"
            )
        else:
            title = (
                f"{WORKLOADS[w].label}: {r0['clients']} clients, {r0['rate']:g} msg/s for "
                f"{r0['seconds']:g} s"
            )
        out += [f"## {title}", ""]
        if not protocols:
            short = [plain[n] for n in names if n in sessions and sessions[n]["phases"].get(w)]
        out += phase_table(runs, against_first=protocols, short=short)
        notes = [(label, describe_phase(r)) for label, r in runs if r and describe_phase(r)]
        out += [""] + [f"- {label}: {note}" for label, note in notes] + ([""] if notes else [])

    # ---------------------------------------------------------------- W3 via REST
    rest = hub["phases"].get("users_rest") if hub is not None else None
    if rest is not None:
        direct = hub["phases"].get("users")
        out += [
            f"## W3 via REST (Hubbub only): {rest['clients']} clients, {rest['rate']:g} msg/s "
            f"for {rest['seconds']:g} s",
            "",
            "W3 again, published through Hubbub's REST API (an HTTP request to a gateway, JWT "
            "verified, then the same XADD) instead of straight to the publish stream: what the "
            "REST ingest adds to the server CPU. The peer has no REST path.",
            "",
        ]
        runs = [("Hubbub W3 via REST API", rest), ("Hubbub W3 direct to stream", direct)]
        out += phase_table(runs, "REST / direct")
        note = describe_phase(rest)
        out += [""] + ([f"- W3 via REST: {note}", ""] if note else [])

    # ---------------------------------------------------------------- ramp
    ramps = [(n, sessions[n].get("ramp")) for n in names if n in sessions]
    ramps = [(n, r) for n, r in ramps if r]
    if ramps:
        out += [
            f"## W1 ramp: highest rate with zero loss and p99 < {args.ramp_p99_ms:g} ms "
            f"({args.ramp_seconds:g} s steps)",
            "",
            f"Doubling from {args.ramp_start:g} msg/s, then bisecting; the systems take turns, "
            f"step by step. A step that failed while other work used ≥ {args.ramp_retry_load:g} "
            "cores ran once more, and the rate counts as failed only if that run failed too "
            "(both runs are listed).",
            "",
        ]
        out += header_rows([labels[n] for n, _ in ramps], short=[plain[n] for n, _ in ramps])

        def at(r: dict[str, Any], get: Callable[[dict[str, Any]], Any]) -> Any:
            return get(r["at_sustainable"]) if r["at_sustainable"] else None

        ramp_rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
            ("sustainable rate (msg/s)", lambda r: r["sustainable_rate"], ".1f"),
            ("**deliveries / s at that rate**", lambda r: r["deliveries_per_s"], ".0f"),
            ("first failing rate (msg/s)", lambda r: r["first_failed_rate"], ".1f"),
            ("p99 at that rate (ms)", lambda r: at(r, lambda x: x["latency_ms"]["p99"]), ".1f"),
            (
                "server CPU µs / delivery at that rate",
                lambda r: at(r, lambda x: x["server_cpu_us_per_delivery"]),
                ".1f",
            ),
            (
                "server CPU, cores, at that rate",
                lambda r: at(r, lambda x: x["server_cpu_cores"]),
                ".2f",
            ),
            (
                "busiest load client at that rate (CPU-s / s)",
                lambda r: at(r, lambda x: x["client_cpu_max_utilisation"]),
                ".2f",
            ),
            (
                "other load at that rate (cores)",
                lambda r: at(r, lambda x: x["other_cpu_cores"]),
                ".2f",
            ),
        ]
        for row, get, spec in ramp_rows:
            values = [get(r) for _, r in ramps]
            cells = [fmt(v, spec) for v in values] + ratio_cells(values)
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        for n, r in ramps:
            steps = ", ".join(
                f"{s['rate']:g}/s {'ok' if s['ok'] else '✗ ' + str(s['why'])} "
                f"({s['result']['deliveries_per_s']:.0f} del/s, p99 "
                f"{fmt(s['result']['latency_ms']['p99'], '.0f')} ms, server "
                f"{s['result']['server_cpu_cores']:.2f} cores, other "
                f"{s['result']['other_cpu_cores']:.2f})"
                for s in r["steps"]
            )
            conv = "" if r["converged"] else " (did not converge within the step budget)"
            out.append(f"- {labels[n]} steps{conv}: {steps}")
        out.append("")

    # ---------------------------------------------------------------- idle
    idles = [(n, report["idle"].get(n)) for n in names]
    idles = [(n, r) for n, r in idles if r]
    if idles:
        out += [f"## W4 idle: {args.idle} connections over {args.gateways} server processes", ""]
        out += header_rows([labels[n] for n, _ in idles], short=[plain[n] for n, _ in idles])

        def kb(v: float | None) -> float | None:
            return None if v is None else v / 1024

        idle_rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
            ("connections open", lambda r: r["connected"], "d"),
            (
                "… of which closed by the server before the measurement",
                lambda r: r.get("closed_by_server", 0),
                "d",
            ),
            ("connect time (s)", lambda r: r["connect_seconds"], ".1f"),
            (
                "**server CPU per connection opened (µs)**",
                lambda r: r.get("connect_server_us_per_connection"),
                ".0f",
            ),
            (
                "… of which the server processes (gateways)",
                lambda r: r.get("connect_gateway_us_per_connection"),
                ".0f",
            ),
            (
                "**gateway RSS growth per connection (KB)**",
                lambda r: kb(r["gateway_bytes_per_connection"]),
                ".1f",
            ),
            (
                "gateway RSS growth, total (MB)",
                lambda r: r["gateway_rss_growth_bytes"] / 2**20,
                ".1f",
            ),
            (
                "redis-server RSS growth per connection (KB)",
                lambda r: kb(redis_bytes(r["other_bytes_per_connection"])),
                ".2f",
            ),
            ("server idle CPU with them open (cores)", lambda r: r["server_idle_cores"], ".3f"),
        ]
        for row, get, spec in idle_rows:
            values = [get(r) for _, r in idles]
            cells = [fmt(v, spec) for v in values] + ratio_cells(values)
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        for n, r in idles:
            if r["connect_failed"]:
                out.append(f"- {labels[n]}: {r['connect_failed']} failed, {r['connect_errors']}")
            if r.get("close_reasons"):
                out.append(f"- {labels[n]}: closed by the server: {r['close_reasons']}")
            if r.get("negotiate_retries"):
                out.append(f"- {labels[n]}: negotiate retried: {r['negotiate_retries']}")

    # ---------------------------------------------------------------- health of each run
    out += ["## Per system", ""]
    for n in names:
        s = sessions.get(n)
        i = report["idle"].get(n)
        bits = []
        if s:
            bits.append(
                f"{s.get('clients_connected', 0)} clients connected"
                + (f" ({len(s['connect_errors'])} failed)" if s.get("connect_errors") else "")
            )
            if s.get("server_idle_cores") is not None:
                idle = s["server_idle_cores"]
                bits.append(f"server idle CPU with them connected {idle:.3f} cores")
            if s.get("negotiate_retries"):
                bits.append(f"negotiate retried: {s['negotiate_retries']}")
            stale = s.get("stale_registrations")
            if stale is not None:
                bits.append(f"still registered 3 s after their clients closed: {stale}")
        issues: dict[str, Any] = {}
        for part in (s, i):
            if part:
                issues.update(part.get("log_issues", {}))
        count = sum(v["count"] for v in issues.values())
        bits.append(f"server log warnings/errors: {count}")
        out.append(f"- **{labels[n]}**: " + "; ".join(bits))
        for logname, issue in issues.items():
            out.append(f"  - `{logname}`: {issue['count']} lines, first:")
            for line in issue["first"][:4]:
                out.append(f"    - `{line[:240]}`")
    out.append("")
    return "\n".join(out)


def machine_and_versions(args: argparse.Namespace, command: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        from hubbub.dev.embedded import find_server_binary

        binary = find_server_binary()
        redis_version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        redis_version = f"{binary}: {redis_version}"
    except (OSError, subprocess.SubprocessError, FileNotFoundError) as exc:
        redis_version = f"unknown ({exc})"
    return {
        "command": command,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "hubbub": source_state(),
        "python-socketio": version("python-socketio"),
        "python-engineio": version("python-engineio"),
        "uvicorn": version("uvicorn"),
        "websockets": version("websockets"),
        "uvloop": version("uvloop"),
        "redis-server": redis_version,
        "node": node_versions(),
    }


def node_versions() -> str:
    """Node's version and the Node peer's packages, as its package-lock.json pins them."""
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        node = "not installed"
    try:
        lock = json.loads((NODE_PEER_DIR / "package-lock.json").read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return f"Node {node}"
    names = ("socket.io", "@socket.io/redis-adapter", "@socket.io/redis-emitter", "redis",
             "engine.io", "ws")  # fmt: skip
    packages = ", ".join(
        f"{name} {lock[f'node_modules/{name}']['version']}"
        for name in names
        if f"node_modules/{name}" in lock
    )
    return f"Node {node}: {packages}"


# Sections that other benchmarks write into the same file, kept when this one rewrites it.
# Sections other tools (or runs) wrote, kept when bench/run rewrites the file.
KEPT_SECTIONS = (
    "## REST ingest",  # bench/ingest.py
    "## Stateful reconnect and MessagePack",  # python -m bench --client-protocol ...
    "## The way back",  # python -m bench.upstream
    "## Redis Cluster",  # python -m bench --redis ...
    "## Group size",  # python -m bench.group_size
    "## WAIT for replicas",  # python -m bench.wait
    "## Targeted messages at 1,000 clients",  # python -m bench --peer node --preset fanout-1k
    "## Unit10 on one box",  # python -m bench --preset unit10
    "## Issue 14: levers measured",  # hand-written
)


def write_section(path: Path, heading: str, body: str) -> None:
    """Put ``body`` (which starts with ``heading``) in place of the results file's section
    with that heading (up to the next ``## ``), or at its end: how runs other than the main
    one keep their figures in the same file (see :data:`KEPT_SECTIONS`)."""
    text = path.read_text() if path.exists() else ""
    body = body.rstrip("\n") + "\n"
    pattern = rf"^{re.escape(heading)}.*?(?=^## |\Z)"
    if re.search(pattern, text, re.S | re.M):
        text = re.sub(pattern, lambda _: body + "\n", text, count=1, flags=re.S | re.M)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def section_markdown(
    report: dict[str, Any], args: argparse.Namespace, info: dict[str, str], heading: str
) -> str:
    """This run as one section of the results file (``--section``): what ran, then its
    tables, their headings one level down."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["started"]))
    phases = [p for s in report["sessions"].values() for p in s["phases"].values()]
    other = [p["other_cpu_cores"] for p in phases]
    load = f"other load {min(other):.2f} to {max(other):.2f} cores" if other else "no phase"
    body = markdown_report(report, args)
    body = re.sub(r"^## ", "### ", body, flags=re.M)
    return "\n".join(
        [
            heading,
            "",
            f"`{info['command']}`: {started}, hubbub {info['hubbub']}, {load}. Every ratio is "
            "against the peer measured in the same invocation.",
            "",
            body,
        ]
    )


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    kept = [
        found.group(0).rstrip("\n") + "\n"
        for heading in KEPT_SECTIONS
        if (found := re.search(rf"^{re.escape(heading)}.*?(?=^## |\Z)", text, re.S | re.M))
    ]
    return "".join("\n" + section for section in kept)


def results_markdown(report: dict[str, Any], args: argparse.Namespace, info: dict[str, str]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["started"]))
    took = report["finished"] - report["started"]
    phases = [p for s in report["sessions"].values() for p in s["phases"].values()]
    phases += [
        st["result"]
        for s in report["sessions"].values()
        if s.get("ramp")
        for st in s["ramp"]["steps"]
    ]
    other = [p["other_cpu_cores"] for p in phases]
    load = (
        f"other work on the machine used {min(other):.2f} to {max(other):.2f} cores "
        f"(mean {sum(other) / len(other):.2f}) of {os.cpu_count()} during the measured phases"
        if other
        else "no phase measured"
    )
    lb, la = report["loadavg_before"], report["loadavg_after"]
    publish_paths = "; ".join(
        f"{s['label']}: {PUBLISH_PATHS.get(s.get('publish_path', ''), '?')}"
        for s in report["sessions"].values()
    )
    if any("users_rest" in s["phases"] for s in report["sessions"].values()):
        publish_paths += "; Hubbub's W3 via REST phase: REST API"
    peers = " and ".join(TARGETS[t].label for t in args.targets if t != "hubbub")
    lines = [
        f"# Hubbub vs {peers or 'python-socketio'}: benchmark results",
        "",
        "Produced by `bench/run` (`python -m bench`); see the docstring of `bench/__init__.py` "
        "for what each figure means. Absolute figures drift on a shared machine: read the "
        "**Hubbub / peer** ratios, measured in the same invocation (below 1 is better for CPU, "
        "latency and memory, above 1 for deliveries/s).",
        "",
        f"- run: {started}, {took / 60:.1f} min",
        f"- command: `{info['command']}`",
        f"- machine: nproc {info['nproc']}, CPU {info['cpu']}, {info['memory']} RAM, Linux "
        f"{info['kernel']}, Python {info['python']}",
        f"- load: {load}; load average {lb[0]:.2f} before, {la[0]:.2f} after (1 min)",
        f"- hubbub: {info['hubbub']}",
        f"- python-socketio {info['python-socketio']} (python-engineio {info['python-engineio']}),"
        f" uvicorn {info['uvicorn']} (uvloop {info['uvloop']}, httptools, websockets-sansio), "
        f"websockets {info['websockets']}",
        *([f"- {info['node']} (the Node peer)"] if "node" in args.targets else []),
        f"- {info['redis-server']} (a separate server per system)",
        f"- setup: {args.gateways} server processes per system (Hubbub also {args.workers} "
        f"fan-out workers), {args.clients} clients from {args.client_procs} load-client "
        f"processes ({args.client_impl}), {args.publisher_procs} publisher processes "
        f"({args.publishers} in flight each), payload padding {args.pad} B",
        f"- publish path: {publish_paths}",
        "- Hubbub's load clients' hub protocol (`--client-protocol`): "
        + "; ".join(f"{p}: {protocol_label(p)}" for p in args.client_protocols)
        + (
            " (one Hubbub deployment per protocol, each phase run on each in turn; ratios to "
            "the first)"
            if len(args.client_protocols) > 1
            else ""
        ),
        "",
        markdown_report(report, args),
        "## How the two setups differ (read the figures with this in mind)",
        "",
        publishing_note(args),
        "- Keep-alive: the SignalR load clients send a Ping every 10 s (Hubbub closes a client "
        "silent for 30 s) and Hubbub pings after 15 s without output; Socket.IO clients only "
        "answer the server's pings (every 25 s). This shows in the idle CPU figures.",
        "- Connecting: Hubbub is a negotiate POST, then the WebSocket and the SignalR handshake "
        "(two JWTs checked); Socket.IO is the WebSocket and `40`.",
        "- Frames: SignalR JSON records are ~30 B longer than Socket.IO's `42[...]` packets.",
        "- The ramp finds where the whole 2-core machine saturates for each system: servers, "
        "load clients and publishers share it (their CPU is in the tables).",
        "",
    ]
    return "\n".join(lines)


def publishing_note(args: argparse.Namespace) -> str:
    peers = []
    if "socketio" in args.targets:
        peers.append(
            "python-socketio's come from a write-only `AsyncRedisManager` (one Redis PUBLISH "
            "that both uvicorn processes receive and decode)"
        )
    if "node" in args.targets:
        peers.append(
            "Node Socket.IO's from `@socket.io/redis-emitter` in a Node process (one Redis "
            "PUBLISH that both Node processes' Redis adapters receive and decode; the recipients "
            "are drawn in Python before the phase, so the publishers' CPU is the emitter's)"
        )
    peer = "; ".join(peers) or "no peer ran"
    if args.hubbub_publish == "direct":
        hub = (
            "Hubbub's messages are appended straight to its publish stream by "
            "`hubbub.sdk.publisher.Publisher` (one XADD; then a fan-out worker, the gateway's "
            "inbox), "
            "the counterpart of the peer's path; the W3 via REST phase shows what the REST API "
            "(an HTTP request to a gateway, JWT verified) adds"
        )
    else:
        hub = (
            "Hubbub's messages go through its REST API (an HTTP request to a gateway, JWT "
            "verified, XADD, a fan-out worker, the gateway's inbox), so its server CPU includes "
            "that ingest"
        )
    return (
        f"- Publishing: {hub}; {peer}. The publishers' own CPU is not server CPU for any system; "
        "the row server + publishers' CPU adds it (issue 14 counts it as server CPU)."
    )


def print_details(report: dict[str, Any]) -> None:
    """Every figure of every phase, one block each (``--details``)."""
    for name, session in report["sessions"].items():
        phases = list(session["phases"].items())
        if session.get("ramp"):
            phases += [(f"ramp {s['rate']:g}/s", s["result"]) for s in session["ramp"]["steps"]]
        for label, r in phases:
            print(f"\n=== {name} {label}")
            slim = {k: v for k, v in r.items() if k not in ("target",)}
            print(json.dumps(slim, indent=1, default=str))


def source_state() -> str:
    """The commit measured, and whether the working tree had local changes (outside bench/)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, timeout=10
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = [
            line[3:]
            for line in git("status", "--porcelain").splitlines()
            if not line[3:].startswith("bench/")
        ]
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (f" + local changes to {', '.join(dirty)}" if dirty else "")
