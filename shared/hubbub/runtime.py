"""Process-wide runtime settings both services apply at start."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Keep CPython's cycle collector off the hot path.

    Every request and message allocates containers, and a few thousand are alive at any time
    (requests in flight, batches waiting for Redis). With the default gen-0 threshold (700)
    that ran a collection every few requests and a full one, over every object of the app,
    several times a second: a tenth of the gateway's CPU for single REST sends and a third for
    batches of 100 (bench/ingest.py).
    What exists at start-up lives for good, so it is frozen out of collections, and young
    collections wait for 20,000 surviving allocations (cycles wait a little longer, memory
    stays bounded by that count).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
