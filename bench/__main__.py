"""``python -m bench``: the benchmark's command line (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench
from bench.clients import CLIENT_IMPLS, CLIENT_PROTOCOLS
from bench.common import log, run_loop
from bench.phases import run_all
from bench.report import (
    kept_sections,
    machine_and_versions,
    print_details,
    results_markdown,
    section_markdown,
    write_section,
)
from bench.targets import PEERS, TARGETS, cluster_masters
from bench.workloads import DEFAULT_RATES, EXTRA_RATES, WORKLOADS

# --preset NAME: options put before the command line's own (which win, e.g. --seconds 5).
PRESETS: dict[str, tuple[str, list[str]]] = {
    "fanout-1k": (
        "issue 14's phases: W2 (groups of 10) and W3 (one user) at 500 msg/s, 1,000 clients",
        ["--clients", "1000", "--workload", "groups", "--workload", "users",
         "--groups-rate", "500", "--users-rate", "500"],
    ),
    "unit10": (
        "issue 14's Azure Unit10 on one box: 10,000 clients, 2.2 broadcasts/s (22,000 "
        "deliveries/s) and 2,200 REST sends to users/s at the same time",
        ["--target", "hubbub", "--clients", "10000", "--workload", "unit10",
         "--hubbub-publish", "rest", "--client-procs", "2", "--publisher-procs", "2",
         "--publishers", "32"],
    ),
}  # fmt: skip


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
        )


def client_protocol_arg(value: str) -> str:
    """One of :data:`CLIENT_PROTOCOLS`, or a mix of them joined by ``+``."""
    parts = value.split("+")
    if not all(p in CLIENT_PROTOCOLS for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(
            f"{value!r}: one of {', '.join(CLIENT_PROTOCOLS)}, or several joined by '+'"
        )
    return value


def redis_arg(value: str) -> str:
    """``standalone`` or ``cluster:N``."""
    try:
        cluster_masters(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(bench.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--compare", action="store_true", help="run Hubbub and the --peer (same workloads)"
    )
    parser.add_argument(
        "--peer",
        choices=[*PEERS, "both"],
        default=None,
        help="the peer(s) Hubbub is compared with (implies --compare; default socketio): "
        "python-socketio, Node Socket.IO (bench/peer_node, npm ci first), or both",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="; ".join(f"{name}: {text}" for name, (text, _) in PRESETS.items())
        + " (the command line's own options come after it: they override its values, and a "
        "--workload adds to its workloads)",
    )
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", dest="targets",
                        help="system(s) to run (repeatable; default hubbub)")  # fmt: skip
    parser.add_argument(
        "--all",
        action="store_true",
        help="W1, W2, W3, the ramp and W4 idle (10,000 connections unless --idle says)",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append",
                        dest="workloads", help="fixed-rate workload(s) (repeatable)")  # fmt: skip
    parser.add_argument("--ramp", action="store_true", help="W1 ramp, then W1 at 10 %% of it")
    parser.add_argument("--idle", type=int, default=None, help="W4: this many idle connections")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, help="messages/s of every fixed workload")
    for w, rate in {**DEFAULT_RATES, **EXTRA_RATES}.items():
        parser.add_argument(f"--{w}-rate", type=float, default=rate, help=f"default {rate:g}")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each fixed phase")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--publisher-procs", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=8, help="requests in flight per proc")
    parser.add_argument("--gateways", type=int, default=2, help="server processes per system")
    parser.add_argument("--workers", type=int, default=2, help="Hubbub fan-out workers")
    parser.add_argument(
        "--hubbub-publish",
        choices=["rest", "direct"],
        default=None,
        help="how Hubbub's publisher processes publish: straight to the publish stream "
        "(hubbub.sdk.publisher.Publisher) or through the REST API (default: direct with --compare, "
        "as the peer publishes straight to Redis; rest otherwise)",
    )
    parser.add_argument(
        "--rest-seconds",
        type=float,
        default=5.0,
        help="--all with direct publishing: the extra W3 via REST phase (Hubbub only) lasts "
        "this long; 0 skips it",
    )
    parser.add_argument("--pad", type=int, default=16, help="payload padding (frame ~100 B)")
    parser.add_argument(
        "--compression",
        choices=["none", "deflate"],
        default="none",
        help="offer permessage-deflate from the load clients",
    )
    parser.add_argument(
        "--client-impl",
        choices=sorted(CLIENT_IMPLS),
        default="sansio",
        help="load-client WebSocket layer, both from the websockets library (see the classes)",
    )
    parser.add_argument(
        "--client-protocol",
        type=client_protocol_arg,
        metavar="{" + ",".join(CLIENT_PROTOCOLS) + "}[+...]",
        action="append",
        dest="client_protocols",
        help="hub protocol of Hubbub's load clients (the peer's speak Socket.IO regardless): "
        "SignalR JSON (default); JSON with stateful reconnect (numbered messages, Acks at most "
        "once a second like the JS client); MessagePack. Repeated: one Hubbub deployment per "
        "protocol, all up at once, each phase run on each in turn (as with --compare), the "
        "ratio to the first in the report; W4 idle uses the first. A mix, e.g. "
        "json+messagepack: the load-client processes take the protocols in turn (half each "
        "with 2 processes), each protocol's deliveries and latency reported apart",
    )
    parser.add_argument(
        "--redis",
        type=redis_arg,
        metavar="{standalone,cluster:N}",
        action="append",
        help="Hubbub's Redis: one redis-server (default) or a Redis Cluster of N masters "
        "(HUBBUB_REDIS_MODE=cluster; no replicas). Repeated: one Hubbub deployment per value, "
        "all up at once, each phase run on each in turn, like --client-protocol; W4 idle uses "
        "the first. The server CPU counts every master (redis-m1, ...)",
    )
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--ramp-start", type=float, default=50.0, help="first W1 rate, msg/s")
    parser.add_argument("--ramp-seconds", type=float, default=3.0, help="publishing per step")
    parser.add_argument("--ramp-drain", type=float, default=2.0, help="drain timeout per step")
    parser.add_argument("--ramp-max-steps", type=int, default=10)
    parser.add_argument("--ramp-precision", type=float, default=0.15)
    parser.add_argument("--ramp-p99-ms", type=float, default=100.0)
    parser.add_argument(
        "--ramp-retry-load",
        type=float,
        default=0.3,
        help="a ramp step that failed while other work used at least this many cores runs "
        "once more",
    )
    parser.add_argument("--ramp-budget", type=float, default=120.0, help="seconds per system")
    parser.add_argument("--latency-fraction", type=float, default=0.1)
    parser.add_argument("--idle-settle", type=float, default=3.0, help="W4: pause before RSS")
    parser.add_argument("--idle-cpu-seconds", type=float, default=3.0, help="W4: idle CPU window")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="pause between group joins and the first publish (default: none)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=2.0,
        help="first measure the servers' idle CPU (clients connected) this long",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir of logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server processes under cProfile (<name>.prof next to the logs; "
        "inflates their CPU figures)",
    )
    parser.add_argument("--results", type=Path, help="write the report (markdown) to this file")
    parser.add_argument(
        "--section",
        metavar="HEADING",
        help="with --results: replace (or add) only this section of the file, e.g. "
        "'## Unit10 on one box' (bench/run does so for its presets)",
    )
    parser.add_argument("--json", type=Path, help="write every figure (JSON) to this file")
    parser.add_argument("--details", action="store_true", help="print every figure of each phase")
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        argv = PRESETS[preset][1] + argv
    args = parser.parse_args(argv)
    if args.peer:
        args.compare = True
    if args.compare:
        peer = args.peer or "socketio"
        args.targets = ["hubbub", *(PEERS if peer == "both" else [peer])]
    elif not args.targets:
        args.targets = ["hubbub"]
    else:  # Hubbub first (its ramp sets the latency check's rate), no repeats
        args.targets = sorted(set(args.targets), key=list(TARGETS).index)
    if args.all:
        args.workloads = args.workloads or list(DEFAULT_RATES)
        args.ramp = True
        if args.idle is None:
            args.idle = 10_000
    elif args.workloads is None and not args.ramp and not args.idle:
        args.workloads = ["broadcast"]
    args.workloads = list(dict.fromkeys(args.workloads or []))
    args.client_protocols = list(dict.fromkeys(args.client_protocols or ["json"]))
    args.client_protocol = args.client_protocols[0]
    args.redis = list(dict.fromkeys(args.redis or ["standalone"]))
    args.idle = args.idle or 0
    if args.hubbub_publish is None:
        args.hubbub_publish = "direct" if args.compare else "rest"
    args.rest_phase = (
        args.all
        and args.hubbub_publish == "direct"
        and "hubbub" in args.targets
        and "users" in args.workloads
        and args.rest_seconds > 0
    )
    args.rates = {
        w: args.rate or getattr(args, f"{w}_rate") for w in {**DEFAULT_RATES, **EXTRA_RATES}
    }
    if args.clients < 1 or args.client_procs < 1 or args.seconds <= 0:
        parser.error("--clients, --client-procs and --seconds must be positive")
    if any(r <= 0 for r in args.rates.values()) or args.publisher_procs < 1:
        parser.error("rates and --publisher-procs must be positive")
    args.client_procs = min(args.client_procs, args.clients)
    mix = max(len(p.split("+")) for p in args.client_protocols)
    if args.client_procs < mix:
        parser.error(f"a mix of {mix} client protocols needs --client-procs {mix} or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(
        ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    )
    raise_fd_limit()
    # SIGTERM stops the benchmark the way Ctrl-C does: everything it started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-bench-"))
    cleanup: list[Callable[[], None]] = []
    report: dict[str, Any] | None = None
    try:
        report = run_loop(run_all(args, workdir, cleanup))
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        for step in reversed(cleanup):  # idempotent: a no-op after a normal run
            with contextlib.suppress(Exception):
                step()
        issues = report is not None and any(
            part.get("log_issues")
            for part in [*report["sessions"].values(), *report["idle"].values()]
        )
        keep = args.keep_logs or args.profile or report is None or issues
        if keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info = machine_and_versions(args, command)
    text = results_markdown(report, args, info)
    if args.details:
        print_details(report)
    print(text)
    if args.results and args.section:
        section = section_markdown(report, args, info, args.section)
        write_section(args.results, args.section, section)
        log(f"section {args.section!r} of {args.results} written")
    elif args.results:
        args.results.write_text(text + "\n" + kept_sections(args.results))
        log(f"results written to {args.results}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, **report}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
