"""Sessions and phases: start a system, connect its clients, run each workload on every system in
turn, measure (CPU from /proc, deliveries and latency from the clients); W4 idle on a fresh
start."""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import ClientPool
from bench.common import (
    GROUP_SIZE,
    TARGET_METHOD,
    ClientSpec,
    fmt,
    fmt_ms,
    log,
    merge_counts,
    percentile,
)
from bench.procstat import cpu_snapshot, machine_busy_seconds, rss_bytes
from bench.publishers import PublisherPool
from bench.report import scan_logs
from bench.targets import TARGETS, HubbubTarget, Target
from bench.workloads import Ramp


@dataclass
class Session:
    """One system up, its load clients connected, its publisher processes ready."""

    target: Target
    clients: ClientPool
    publishers: PublisherPool
    args: argparse.Namespace
    connected: dict[int, str]
    seq_next: int = 0
    phase_no: int = 0
    out: dict[str, Any] = field(default_factory=dict)  # what the report says of this system
    rest_publishers: PublisherPool | None = None  # Hubbub, direct: for the W3 via REST phase
    client_protocol: str = "-"  # Hubbub: --client-protocol; the peers: Socket.IO, always


def sample_frame_bytes(protocol: str, pad: int, client_protocol: str = "json") -> int:
    payload = {"s": 12345, "g": "g12", "p": "x" * pad, "t": time.time()}
    if protocol == "signalr" and client_protocol.split("+")[0] == "messagepack":
        import msgpack

        record = msgpack.packb([1, {}, None, TARGET_METHOD, [payload]])
        return len(record) + 1  # + its varint length (< 128)
    if protocol == "signalr":
        body = {"type": 1, "target": TARGET_METHOD, "arguments": [payload]}
        return len(json.dumps(body, separators=(",", ":"))) + 1
    return len("42" + json.dumps([TARGET_METHOD, payload], separators=(",", ":")))


async def run_phase(
    session: Session,
    workload: str,
    rate: float,
    seconds: float,
    drain_timeout: float,
    publishers: PublisherPool | None = None,
) -> dict[str, Any]:
    """Publish ``workload`` at ``rate``/s for ``seconds`` (with the session's publishers unless
    told), wait for every delivery (at most ``drain_timeout`` after the last publish), measure;
    then wait until traffic stopped."""
    args, target, pool = session.args, session.target, session.clients
    publishers = publishers or session.publishers
    seq_base = session.seq_next
    session.seq_next += max(1, int(rate * seconds))
    session.phase_no += 1
    pool.broadcast("phase", seq_base)
    pids = target.server_pids()
    start_at = time.time() + 0.3
    publishers.send_publish(
        {
            "workload": workload,
            "rate": rate,
            "seconds": seconds,
            "seq_base": seq_base,
            "start_at": start_at,
            "seed": args.seed * 1000 + session.phase_no,
            "pad": args.pad,
        }
    )
    await asyncio.sleep(max(0.0, start_at - time.time() - 0.02))
    cpu_before = cpu_snapshot(pids)
    machine_before, self_before = machine_busy_seconds(), time.process_time()
    window_start = time.monotonic()
    pub = await publishers.results(seconds * 4 + 120)
    publish_end = time.monotonic()
    got = 0
    while True:
        got, _ = await pool.count()
        if got >= pub.expected or time.monotonic() - publish_end > drain_timeout:
            break
        await asyncio.sleep(0.05)
    drain_end = time.monotonic()
    cpu_after = cpu_snapshot(pids)
    machine_busy = machine_busy_seconds() - machine_before
    self_cpu = time.process_time() - self_before
    results = await pool.collect()
    quiesce = await pool.quiesce()
    if quiesce > 2:
        log(f"  traffic of that phase went on for {quiesce:.1f} s after it was measured")

    latencies: list[float] = []
    for res in results:
        samples = array.array("d")
        samples.frombytes(res["latencies"])
        latencies.extend(samples)
    latencies.sort()
    first: dict[int, float] = {}
    for res in results:
        for seq, latency in res["first_latency"].items():
            if latency < first.get(seq, 1e9):
                first[seq] = latency
    first_latencies = sorted(first.values())
    request_ms = sorted(x * 1000 for x in pub.request_latencies)
    received = sum(r["received"] for r in results)
    server_cpu = {k: cpu_after[k] - cpu_before[k] for k in pids}
    server_total = sum(server_cpu.values())
    window = drain_end - window_start
    last_receive = max((r["last_receive"] for r in results), default=0.0)
    active = max(1e-9, (last_receive - pub.started) if received else window)
    close_reasons: dict[str, int] = {}
    for res in results:
        for reason, n in res["close_reasons"].items():
            close_reasons[reason] = close_reasons.get(reason, 0) + n
    client_cpu = [r["cpu_seconds"] for r in results]
    report = {
        "target": target.name,
        "workload": workload,
        "client_protocol": session.client_protocol,
        "publish_path": publishers.kind,
        "clients": len(session.connected),
        "rate": rate,
        "seconds": seconds,
        "frame_bytes": sample_frame_bytes(target.protocol, args.pad, session.client_protocol),
        "published": pub.published,
        "publish_failed": pub.failed,
        "publish_errors": pub.errors,
        "publish_seconds": pub.duration,
        "publish_rate": pub.published / pub.duration if pub.duration > 0 else 0.0,
        "publish_max_lag_s": pub.max_lag,
        "publish_request_ms": {
            "p50": percentile(request_ms, 50),
            "p99": percentile(request_ms, 99),
        },
        "expected": pub.expected,
        "received": received,
        "lost": max(0, pub.expected - received),
        "lost_pct": 100.0 * max(0, pub.expected - received) / pub.expected if pub.expected else 0.0,
        "duplicates": sum(r["duplicates"] for r in results),
        "misdelivered": sum(r["misdelivered"] for r in results),
        "other_records": sum(r["other_records"] for r in results),
        "late_from_earlier_phases": sum(r["late"] for r in results),
        "closed_by_server": sum(r["closed_by_server"] for r in results),
        "close_reasons": close_reasons,
        "deliveries_per_s": received / active,
        "latency_ms": {
            "p50": fmt_ms(percentile(latencies, 50)),
            "p95": fmt_ms(percentile(latencies, 95)),
            "p99": fmt_ms(percentile(latencies, 99)),
            "max": fmt_ms(latencies[-1] if latencies else None),
            "samples": len(latencies),
        },
        # Per message, the earliest recipient: the pipeline's own latency, without the time a
        # fan-out burst spends reaching (and being read by) the last of many sockets.
        "first_latency_ms": {
            "p50": fmt_ms(percentile(first_latencies, 50)),
            "p99": fmt_ms(percentile(first_latencies, 99)),
        },
        "drain_seconds": drain_end - publish_end,
        "drain_timed_out": got < pub.expected,
        "quiesce_seconds": quiesce,
        "window_seconds": window,
        "server_cpu_seconds": server_total,
        "server_cpu_cores": server_total / window,
        "server_cpu_by_process": server_cpu,
        "server_cpu_us_per_delivery": server_total / received * 1e6 if received else None,
        "server_cpu_us_per_message": server_total / pub.published * 1e6 if pub.published else None,
        "client_cpu_seconds": client_cpu,
        "client_cpu_max_utilisation": max(
            (r["cpu_seconds"] / r["wall_seconds"] for r in results if r["wall_seconds"]),
            default=0.0,
        ),
        "publisher_cpu_seconds": pub.cpu_seconds,
        "orchestrator_cpu_seconds": self_cpu,
        # Everything else the machine ran meanwhile (other jobs skew every figure above).
        # Publisher CPU counts from their first publish, a fraction of a second after the
        # window opened: close enough.
        "other_cpu_cores": max(
            0.0,
            machine_busy - server_total - sum(client_cpu) - sum(pub.cpu_seconds) - self_cpu,
        )
        / window,
        "machine_cores": os.cpu_count(),
    }
    if "+" in session.client_protocol:  # a mix: each protocol's own figures
        report["by_client_protocol"] = by_client_protocol(results)
    lat = report["latency_ms"]
    proto = (
        "" if session.client_protocol in ("json", "socket.io") else f"/{session.client_protocol}"
    )
    log(
        f"  {target.name}{proto} {workload} @ {rate:g}/s: {received}/{pub.expected} delivered, "
        f"{report['deliveries_per_s']:.0f}/s, p50 {fmt(lat['p50'], '.1f')} "
        f"p99 {fmt(lat['p99'], '.1f')} ms, server "
        f"{fmt(report['server_cpu_us_per_delivery'], '.1f')} µs/delivery, "
        f"clients {report['client_cpu_max_utilisation']:.2f} CPU-s/s, "
        f"other load {report['other_cpu_cores']:.2f} cores"
    )
    return report


def by_client_protocol(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The client-side figures of a phase, per load-client protocol (a mix of them)."""
    out: dict[str, Any] = {}
    for proto in dict.fromkeys(r["client_protocol"] for r in results):
        mine = [r for r in results if r["client_protocol"] == proto]
        latencies: list[float] = []
        for res in mine:
            samples = array.array("d")
            samples.frombytes(res["latencies"])
            latencies.extend(samples)
        latencies.sort()
        out[proto] = {
            "connections": sum(r["connections"] for r in mine),
            "received": sum(r["received"] for r in mine),
            "duplicates": sum(r["duplicates"] for r in mine),
            "misdelivered": sum(r["misdelivered"] for r in mine),
            "closed_by_server": sum(r["closed_by_server"] for r in mine),
            "other_records": sum(r["other_records"] for r in mine),
            "latency_ms": {
                "p50": fmt_ms(percentile(latencies, 50)),
                "p99": fmt_ms(percentile(latencies, 99)),
            },
            "client_cpu_seconds": sum(r["cpu_seconds"] for r in mine),
        }
    return out


async def open_session(
    name: str,
    args: argparse.Namespace,
    workdir: Path,
    cleanup: list[Callable[[], None]],
    client_protocol: str | None = None,
    key: str | None = None,
    redis: str = "standalone",
) -> Session:
    """Start one system, connect its load clients (Hubbub's in ``client_protocol``, by default
    the first ``--client-protocol``), put them in groups, start its publishers. ``key`` names
    the session (and its log directory) when one system runs more than once."""
    key = key or name
    target = TARGETS[name](
        workdir / key.replace("/", "-"),
        gateways=args.gateways,
        workers=args.workers,
        profile=args.profile,
    )
    cleanup.append(target.stop_processes)
    pool = ClientPool(args.client_procs)
    cleanup.append(pool.terminate)
    publishers = PublisherPool(args.publisher_procs)
    cleanup.append(publishers.terminate)
    if isinstance(target, HubbubTarget):
        target.publish_mode = args.hubbub_publish
        target.redis_topology = redis
    rest_publishers = None
    if key == "hubbub" and args.rest_phase:
        rest_publishers = PublisherPool(args.publisher_procs)
        cleanup.append(rest_publishers.terminate)
    log(f"starting {target.label} (logs in {target.workdir})")
    await target.start()
    client_protocol = client_protocol_of(target, args, client_protocol)
    out: dict[str, Any] = {"target": name, "label": target.label, "phases": {},
                           "client_protocol": client_protocol}  # fmt: skip
    if isinstance(target, HubbubTarget):
        out["redis"] = redis
        out["redis_pids"] = {k: v for k, v in target.server_pids().items() if "redis" in k}
    publishers.start(target.publisher_config(), args.publishers)
    out["publish_path"] = publishers.kind
    if rest_publishers is not None:
        rest_publishers.start(target.publisher_config("rest"), args.publishers)
    endpoints = target.client_endpoints()
    specs = [
        ClientSpec(i, endpoints[i % len(endpoints)], f"u{i}", f"g{i // GROUP_SIZE}")
        for i in range(args.clients)
    ]
    log(
        f"connecting {args.clients} {target.protocol} clients ({client_protocol}) from "
        f"{args.client_procs} procs"
    )
    t0 = time.monotonic()
    ready = await pool.start(
        specs,
        target.protocol,
        args.client_impl,
        args.compression == "deflate",
        300,
        client_protocol=client_protocol if target.protocol == "signalr" else "json",
    )
    connected: dict[int, str] = {}
    connect_errors: list[str] = []
    for answer in ready:
        connected.update(answer["ready"])
        connect_errors += answer["errors"]
    log(
        f"{len(connected)} connected in {time.monotonic() - t0:.1f} s"
        f"{f', {len(connect_errors)} failed' if connect_errors else ''}"
    )
    if not connected:
        raise RuntimeError(f"no client connected: {connect_errors[:3]}")
    out["clients_connected"] = len(connected)
    out["connect_errors"] = connect_errors
    out["negotiate_retries"] = merge_counts(a.get("retries", {}) for a in ready)
    out["ws_extensions"] = ready[0]["extensions"] if ready else ""
    await target.prepare_groups(specs, connected)
    await publishers.ready()
    publishers.setup(specs, connected)
    if rest_publishers is not None:
        await rest_publishers.ready()
        rest_publishers.setup(specs, connected)
    session = Session(target, pool, publishers, args, connected, out=out,
                      rest_publishers=rest_publishers,
                      client_protocol=client_protocol)  # fmt: skip
    if args.settle:
        await asyncio.sleep(args.settle)
    pids = target.server_pids()
    if args.idle_seconds > 0:  # what the server side burns with the clients connected, idle
        idle_before, idle_start = cpu_snapshot(pids), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_after = cpu_snapshot(pids)
        out["server_idle_cores"] = sum(idle_after[k] - idle_before[k] for k in pids) / (
            time.monotonic() - idle_start
        )
    return session


def client_protocol_of(
    target: Target, args: argparse.Namespace, client_protocol: str | None = None
) -> str:
    """The load clients' protocol on this system: ``client_protocol`` or the first
    ``--client-protocol`` for SignalR (Hubbub), ``socket.io`` for the peers."""
    if target.protocol != "signalr":
        return "socket.io"
    return client_protocol or str(args.client_protocol)


def session_keys(args: argparse.Namespace) -> list[tuple[str, str, str | None, str]]:
    """(session key, system, Hubbub client protocol, Redis topology) of every session: one per
    system, and Hubbub once per ``--client-protocol`` and ``--redis`` (``hubbub`` for the
    first of each, else ``hubbub/<protocol>``, ``hubbub/<redis>`` or
    ``hubbub/<protocol>/<redis>``)."""
    keys: list[tuple[str, str, str | None, str]] = []
    for name in args.targets:
        if name == "hubbub":
            for i, proto in enumerate(args.client_protocols):
                for j, redis in enumerate(args.redis):
                    parts = [name] + [proto] * (i > 0) + [redis] * (j > 0)
                    keys.append(("/".join(parts), name, proto, redis))
        else:
            keys.append((name, name, None, "standalone"))
    return keys


async def close_session(session: Session) -> dict[str, Any]:
    """Close the clients (then count what the server still lists), stop the system."""
    target, out = session.target, session.out
    try:
        await session.clients.close()
        out["stale_registrations"] = await target.stale(list(session.connected.values()))
    finally:
        session.clients.terminate()
        session.publishers.terminate()
        if session.rest_publishers is not None:
            session.rest_publishers.terminate()
        log(f"stopping {target.label}")
        await target.stop()
    out["log_issues"] = scan_logs(target.log_files())
    out["logs"] = str(target.workdir)
    return out


def in_turn(names: list[str], turn: int) -> list[str]:
    """Alternate which system goes first (A B, B A, ...), so a trend in the machine's other load
    weighs on both alike."""
    return names if turn % 2 == 0 else names[::-1]


async def run_sessions(
    args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """Every system up at once, each phase run on one system after the other (alternating
    which goes first), so both see the same machine; then each is stopped."""
    sessions: dict[str, Session] = {}
    keys = session_keys(args)
    names = [key for key, _, _, _ in keys]
    try:
        for key, name, proto, redis in keys:
            sessions[key] = await open_session(name, args, workdir, cleanup, proto, key, redis)
        turn = 0
        for workload in args.workloads:
            rate = args.rates[workload]
            for name in in_turn(names, turn):
                log(f"{name}: {workload} at {rate:g}/s for {args.seconds:g} s")
                sessions[name].out["phases"][workload] = await run_phase(
                    sessions[name], workload, rate, args.seconds, args.drain_timeout
                )
            turn += 1
        hub = sessions.get("hubbub")
        if hub is not None and hub.rest_publishers is not None:
            rate = args.rates["users"]
            log(f"hubbub: users at {rate:g}/s for {args.rest_seconds:g} s, via the REST API")
            hub.out["phases"]["users_rest"] = await run_phase(
                hub, "users", rate, args.rest_seconds, args.drain_timeout, hub.rest_publishers
            )
        if args.ramp:
            ramps = {name: Ramp(args) for name in names}
            log(f"ramp: W1 from {args.ramp_start:g}/s, {args.ramp_seconds:g} s steps, in turn")
            deadline = time.monotonic() + args.ramp_budget * len(names)
            while not all(r.done for r in ramps.values()):
                for name in in_turn(names, turn):
                    ramp = ramps[name]
                    if ramp.done:
                        continue
                    r = await run_phase(
                        sessions[name], "broadcast", ramp.rate, args.ramp_seconds, args.ramp_drain
                    )
                    ramp.record(name, r)
                turn += 1
                if time.monotonic() > deadline:
                    log("ramp: out of time budget")
                    break
            for name, ramp in ramps.items():
                sessions[name].out["ramp"] = ramp.summary()
            # The latency check: W1 at 10 % of Hubbub's sustainable rate (of its own without
            # Hubbub), for every system.
            base = ramps["hubbub"].good if "hubbub" in ramps else ramps[names[0]].good
            if base:
                rate10 = max(1.0, round(base * args.latency_fraction, 1))
                for name in in_turn(names, turn):
                    log(f"{name}: broadcast at {rate10:g}/s (10 % of Hubbub's sustainable rate)")
                    sessions[name].out["phases"]["latency"] = await run_phase(
                        sessions[name], "broadcast", rate10, args.seconds, args.drain_timeout
                    )
    finally:
        outs = {}
        for name, session in sessions.items():
            outs[name] = await close_session(session)
    return outs


async def run_idle(
    name: str, args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """W4: a fresh start, ``--idle`` idle connections over the gateways; RSS growth of each."""
    target = TARGETS[name](
        workdir / f"{name}-idle", gateways=args.gateways, workers=args.workers, profile=args.profile
    )
    if isinstance(target, HubbubTarget):
        target.redis_topology = args.redis[0]
    cleanup.append(target.stop_processes)
    procs = max(args.client_procs, -(-args.idle // 5000))
    pool = ClientPool(procs)
    cleanup.append(pool.terminate)
    log(f"idle ({target.label}): starting, then {args.idle} connections from {procs} procs")
    await target.start()
    out: dict[str, Any] = {"target": name, "label": target.label, "connections": args.idle}
    try:
        await asyncio.sleep(args.idle_settle)
        gateways = target.gateway_pids()
        pids = target.server_pids()
        rss_before = {k: rss_bytes(p) for k, p in pids.items()}
        endpoints = target.client_endpoints()
        specs = [
            ClientSpec(i, endpoints[i % len(endpoints)], f"u{i}", "") for i in range(args.idle)
        ]
        t0, cpu0 = time.monotonic(), cpu_snapshot(pids)
        client_protocol = client_protocol_of(target, args)
        out["client_protocol"] = client_protocol
        ready = await pool.start(
            specs,
            target.protocol,
            args.client_impl,
            False,
            600,
            64,
            client_protocol if target.protocol == "signalr" else "json",
        )
        out["connect_seconds"] = time.monotonic() - t0
        cpu1 = cpu_snapshot(pids)
        connected = sum(len(a["ready"]) for a in ready)
        # Server CPU spent opening them (negotiate, upgrade, handshake, registration), per
        # connection: every server-side process, and the gateways (server processes) alone.
        spent = {k: cpu1[k] - cpu0[k] for k in pids}
        out["connect_cpu_seconds"] = spent
        if connected:
            out["connect_server_us_per_connection"] = sum(spent.values()) / connected * 1e6
            out["connect_gateway_us_per_connection"] = (
                sum(spent[k] for k in gateways) / connected * 1e6
            )
        errors = [e for a in ready for e in a["errors"]]
        out["connected"] = connected
        out["connect_errors"] = errors[:5]
        out["connect_failed"] = len(errors)
        out["negotiate_retries"] = merge_counts(a.get("retries", {}) for a in ready)
        log(f"  {connected} connected in {out['connect_seconds']:.1f} s ({len(errors)} failed)")
        await asyncio.sleep(args.idle_settle)
        rss_after = {k: rss_bytes(p) for k, p in pids.items()}
        # Connections the server closed before the measurement (none, unless something is
        # wrong) do not count: the figures are per connection still open.
        seen = await pool.collect()
        closed = sum(a["closed_by_server"] for a in seen)
        out["closed_by_server"] = closed
        out["close_reasons"] = merge_counts(a["close_reasons"] for a in seen)
        still_open = connected - closed
        before, t1 = cpu_snapshot(pids), time.monotonic()
        await asyncio.sleep(args.idle_cpu_seconds)
        after = cpu_snapshot(pids)
        out["server_idle_cores"] = sum(after[k] - before[k] for k in pids) / (time.monotonic() - t1)
        out["rss_before"] = rss_before
        out["rss_after"] = rss_after
        growth = sum(rss_after[k] - rss_before[k] for k in gateways)
        out["gateway_rss_growth_bytes"] = growth
        out["gateway_bytes_per_connection"] = growth / still_open if still_open > 0 else None
        others = {k: rss_after[k] - rss_before[k] for k in pids if k not in gateways}
        out["other_rss_growth_bytes"] = others
        out["other_bytes_per_connection"] = {
            k: (v / still_open if still_open > 0 else None) for k, v in others.items()
        }
        await pool.close()
    finally:
        pool.terminate()
        log(f"stopping {target.label}")
        await target.stop()
    out["log_issues"] = scan_logs(target.log_files())
    out["logs"] = str(target.workdir)
    return out


async def run_all(
    args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    report: dict[str, Any] = {"sessions": {}, "idle": {}, "started": time.time()}
    report["loadavg_before"] = os.getloadavg()
    if args.workloads or args.ramp:
        report["sessions"] = await run_sessions(args, workdir, cleanup)
    if args.idle:
        for name in args.targets:
            report["idle"][name] = await run_idle(name, args, workdir, cleanup)
    report["loadavg_after"] = os.getloadavg()
    report["finished"] = time.time()
    return report
