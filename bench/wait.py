"""What ``HUBBUB_REDIS_WAIT_REPLICAS=1`` costs the publish path: appends per second through
``PublishStream`` against a real primary with one replica, without and with ``WAIT``, one
caller at a time and many in flight (where ``GroupWait`` shares one ``WAIT`` per turn).

``python -m bench.wait [--appends 4000] [--in-flight 1 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from redis import Redis as SyncRedis

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.pipe import Pipe
from hubbub.redis.stream import PublishStream
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema


def _replica_linked(primary_port: int, timeout: float = 10.0) -> None:
    """Returns once the replica acknowledges a write (``WAIT``): its link is up."""
    with SyncRedis(port=primary_port) as admin:
        admin.set("bench:linked", "1")
        if admin.execute_command("WAIT", 1, int(timeout * 1000)) != 1:
            raise TimeoutError("the replica never linked")


async def _rate(stream: PublishStream, appends: int, in_flight: int) -> float:
    slots = asyncio.Semaphore(in_flight)
    frame = b'{"type":1,"target":"m","arguments":[1]}\x1e'

    async def one(i: int) -> None:
        async with slots:
            await stream.append(MessageEntry(Kind.USER, "chat", f"u{i % 100}", frame))

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(appends)))
    return appends / (time.perf_counter() - started)


async def main(appends: int, in_flight: list[int]) -> None:
    primary = RedisProcess(directory=tempfile.mkdtemp(prefix="hubbub-wait-p-"))
    primary.start()
    replica = RedisProcess(
        directory=tempfile.mkdtemp(prefix="hubbub-wait-r-"),
        extra_args=["--replicaof", "127.0.0.1", str(primary.port)],
    )
    replica.start()
    try:
        _replica_linked(primary.port)
        print("| in flight | appends/s, no WAIT | appends/s, WAIT 1 | WAIT 1 / no WAIT |")
        print("|---|---|---|---|")
        for n in in_flight:
            rates = []
            for wait in (0, 1):
                pipe = Pipe.from_url(primary.url)
                stream = PublishStream(pipe, KeySchema("bench"), 16, 1_000_000, wait_replicas=wait)
                rates.append(await _rate(stream, appends, n))
                await pipe.aclose()
            print(f"| {n} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[1] / rates[0]:.2f} |")
    finally:
        replica.stop()
        primary.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    asyncio.run(main(args.appends, args.in_flight))
