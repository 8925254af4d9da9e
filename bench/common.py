"""What every part of the benchmark shares: the hub and method the messages use, the access key,
client specs, the event loop, the pipes to the child processes, small number helpers."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
HUB = "chat"
TARGET_METHOD = "newMessage"
RS = b"\x1e"
GROUP_SIZE = 10
CLIENT_PING_INTERVAL = 10.0  # the gateway closes clients it has not heard from for 30 s
ACCESS_KEY = "bench-access-key-0123456789abcdef0123456789"
USER_ROOM = "user:"  # the peers' per-user room (peer_socketio.py, peer_node/server.js join it)
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
NODE_PEER_DIR = BENCH_DIR / "peer_node"  # the Node peer: server.js, publisher.js, package.json


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class ClientSpec:
    index: int
    base_url: str
    user: str
    group: str


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (as the servers use), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def pipe_recv(pipe: multiprocessing.connection.Connection, within: float) -> Any:
    loop = asyncio.get_running_loop()

    def wait() -> Any:
        if not pipe.poll(within):
            raise TimeoutError("child process did not answer")
        return pipe.recv()

    return await loop.run_in_executor(None, wait)


def merge_counts(parts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
