"""Issue 14's group-size curve: a fan-out worker's CPU per group message, by group size.

    .venv/bin/python -m bench.group_size                       # 10, 100, 1,000, 10,000 members
    .venv/bin/python -m bench.group_size --sizes 10 10000 --rate 500 --messages 3000

A real ``redis-server`` and one real fan-out worker (``hubbub-fanout``). The members are real
registrations (:meth:`Membership.register`, then ``add_connection_to_group``), spread evenly
over two gateway ids whose heartbeats and inboxes exist but whose processes do not: what is
measured is the worker's routing, not the gateways' delivery (``bench/run`` measures that).
Each size gets its own group; messages go straight to the publish stream
(:class:`hubbub.sdk.publisher.Publisher`) at ``--rate``, and the worker's and Redis's CPU
(``/proc``) is taken from the first publish until both inboxes hold every message.

The worker reads the group's *gateways* (a hash of two fields), never its members, so the
curve should be flat: that is the claim this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.procstat import cpu_seconds
from bench.report import write_section
from hubbub.dev.embedded import RedisProcess
from hubbub.dev.launcher import LocalDeployment
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

HEADING = "## Group size (`python -m bench.group_size`, issue 14)"
HUB = "bench"
GATEWAYS = ("ga", "gb")
ACCESS_KEY = "group-size-bench-access-key-0123456789"


async def _populate(settings: Settings, size: int) -> str:
    """``size`` registered connections in one new group, half on each gateway."""
    endpoint = RedisEndpoint.from_settings(settings, "bench-group-size")
    redis = endpoint.redis()
    membership = Membership.from_settings(redis, settings)
    group = f"g{size}"
    try:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                conn = f"{group}-c{i}"
                await membership.register(HUB, conn, GATEWAYS[i % 2], f"u{i}")
                await membership.add_connection_to_group(HUB, conn, group)

        await asyncio.gather(*(one(i) for i in range(size)))
        # The joins' control entries are not what is measured: start from empty inboxes.
        schema = KeySchema(settings.key_prefix)
        for gw in GATEWAYS:
            await redis.xtrim(schema.inbox(gw), maxlen=0)
    finally:
        await redis.aclose()
    return group


async def _inbox_lengths(pipe: Pipe, schema: KeySchema) -> list[int]:
    return [int(await pipe.execute("XLEN", schema.inbox(gw))) for gw in GATEWAYS]


async def _measure(
    settings: Settings, worker_pid: int, redis_pid: int, group: str, args: argparse.Namespace
) -> dict[str, float]:
    schema = KeySchema(settings.key_prefix)
    pipe = Pipe(RedisEndpoint.from_settings(settings, "bench-group-size-check"))
    try:
        before = await _inbox_lengths(pipe, schema)
        async with Publisher.from_settings(settings, HUB) as hub:
            cpu0 = (cpu_seconds(worker_pid), cpu_seconds(redis_pid))
            t0 = time.monotonic()
            for k in range(args.messages):
                delay = t0 + k / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await hub.send_to_group(group, "m", [k])
            deadline = time.monotonic() + 30
            while True:
                now = await _inbox_lengths(pipe, schema)
                if all(n - b >= args.messages for n, b in zip(now, before, strict=True)):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{group}: inboxes hold {now} (from {before})")
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - t0
            cpu1 = (cpu_seconds(worker_pid), cpu_seconds(redis_pid))
    finally:
        await pipe.aclose()
    return {
        "worker_us": (cpu1[0] - cpu0[0]) / args.messages * 1e6,
        "redis_us": (cpu1[1] - cpu0[1]) / args.messages * 1e6,
        "seconds": elapsed,
    }


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-group-size-"))
    (workdir / "redis").mkdir()
    redis = RedisProcess(directory=str(workdir / "redis"))
    redis.start()
    assert redis.process is not None
    redis_pid = redis.process.pid
    deployment = LocalDeployment(redis.url, ACCESS_KEY, workdir=workdir, profile=args.profile)
    settings = Settings(redis_url=redis.url, access_key=ACCESS_KEY)
    try:
        # Two gateways that are alive as far as Redis says (a day of heartbeat), with inboxes.
        setup = RedisEndpoint.from_settings(settings, "bench-group-size").redis()
        schema = KeySchema(settings.key_prefix)
        await setup.zadd(schema.gateways, {gw: time.time() + 86_400 for gw in GATEWAYS})
        for gw in GATEWAYS:
            await setup.xadd(schema.inbox(gw), {"x": "0"})
        await setup.aclose()
        worker = deployment.start_worker()
        rows = []
        for size in args.sizes:
            group = await _populate(settings, size)
            await _measure(settings, worker.pid, redis_pid, group, _warmup(args))
            figures = await _measure(settings, worker.pid, redis_pid, group, args)
            rows.append((size, figures))
            print(
                f"{size:>6} members: worker {figures['worker_us']:6.1f} µs/message, "
                f"redis {figures['redis_us']:5.1f} µs/message ({figures['seconds']:.1f} s)",
                flush=True,
            )
        small = rows[0][1]["worker_us"]
        table = [
            "| members | worker CPU µs per message | Redis CPU µs per message | worker / smallest"
            " |",
            "|---|---|---|---|",
            *(
                f"| {size:,} | {f['worker_us']:.1f} | {f['redis_us']:.1f} | "
                f"{f['worker_us'] / small:.2f} |"
                for size, f in rows
            ),
        ]
        print("\n" + "\n".join(table))
        if args.results:
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            write_section(
                args.results,
                HEADING,
                "\n".join(
                    [
                        HEADING,
                        "",
                        f"`python -m bench.group_size` ({started}): one fan-out worker routing "
                        f"{args.messages} messages at {args.rate:g}/s to one group per size, "
                        "its members real registrations spread over two gateways; CPU from "
                        "/proc, first publish to the last delivery appended. The worker reads "
                        "a group's gateways, never its members: the curve is flat.",
                        "",
                        *table,
                    ]
                ),
            )
    finally:
        deployment.stop()
        redis.stop()
        if args.profile:
            print(f"profile: {workdir / 'worker1.prof'}")


def _warmup(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "messages": max(50, args.messages // 10)})


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.group_size", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    parser.add_argument("--rate", type=float, default=500.0, help="group messages per second")
    parser.add_argument("--messages", type=int, default=2500, help="messages per size")
    parser.add_argument("--results", type=Path, help="write the table as a section of this file")
    parser.add_argument("--profile", action="store_true", help="the worker under cProfile")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
