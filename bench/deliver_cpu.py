"""A gateway's delivery loop in process: the steadiest figure for the cost per delivery.

    .venv/bin/python -m bench.deliver_cpu                    # CPU µs per delivery
    N=200 valgrind --tool=callgrind .venv/bin/python -m bench.deliver_cpu
    N=1200 valgrind --tool=callgrind .venv/bin/python -m bench.deliver_cpu
    # instructions per delivery = (Collected(1200) - Collected(200)) / (1000 * recipients)

``LocalIndex.handle_many`` with 1,000 local connections, fed inbox reads of ``N`` messages as
the inbox reader would (batches of 64): ``KIND=all`` (W1: each message reaches all 1,000) or
``KIND=group`` (W2: groups of 10). Sockets are counting sinks, so what is measured is the
gateway's own work per delivery (dedupe, fencing, recipients, frame batching), not the
kernel's. Runs against any revision that has ``LocalIndex`` (compare in a checkout).
"""

from __future__ import annotations

import dataclasses
import os
import time

from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub_gateway.deliver import LocalConnection, LocalIndex

CONNECTIONS = 1000
GROUP_SIZE = 10
BATCH = 64


class Sink:
    """A socket that takes every write (the cost below it is the kernel's)."""

    def __init__(self) -> None:
        self.frames = 0

    def write_frames(self, frames: bytes, max_buffer: int | None = None) -> bool:
        self.frames += 1
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def drain(self) -> None:
        pass


def build(kind: Kind, n: int) -> list[MessageEntry]:
    has_epoch = any(f.name == "epoch" for f in dataclasses.fields(MessageEntry))
    messages = []
    for i in range(n):
        target = f"g{i % (CONNECTIONS // GROUP_SIZE)}" if kind is Kind.GROUP else ""
        extra = {"epoch": 1_796_000_000_000_000} if has_epoch else {}
        messages.append(
            MessageEntry(
                kind,
                "bench",
                target,
                b'{"type":1,"target":"m","arguments":[1]}',
                message_id=f"3:{i}-0".encode(),
                **extra,  # type: ignore[arg-type]
            )
        )
    return messages


def main() -> None:
    n = int(os.environ.get("N", "1000"))
    kind = Kind.from_label(os.environ.get("KIND", "all"))
    index = LocalIndex()
    for c in range(CONNECTIONS):
        conn = LocalConnection(f"c{c}", "bench", f"u{c}", Sink(), 1 << 20)
        conn.start(b"")
        index.add(conn)
        index.join("bench", f"g{c // GROUP_SIZE}", (conn.id,))
    messages = build(kind, n)
    if os.environ.get("HANDLE") == "0":  # building only: to subtract it under callgrind
        return
    started = time.process_time()
    for i in range(0, n, BATCH):
        index.handle_many(list(messages[i : i + BATCH]))
    cpu = time.process_time() - started
    per = CONNECTIONS if kind is Kind.ALL else GROUP_SIZE
    print(
        f"{kind.label}: {n} messages, {index.delivered} deliveries ({per} each), "
        f"{cpu / index.delivered * 1e6:.3f} µs CPU per delivery"
    )


if __name__ == "__main__":
    main()
