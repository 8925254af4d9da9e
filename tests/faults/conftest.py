"""Fault tests' own Redis servers: each test that restarts or freezes Redis gets a server of
its own, so nothing else on the session's server sees the fault."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubbub.dev.embedded import RedisProcess


@pytest.fixture
async def aof_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """Keeps every write (``appendfsync always``): a restart loses nothing accepted."""
    (tmp_path / "aof").mkdir()
    server = RedisProcess(directory=str(tmp_path / "aof"), appendonly=True, appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def volatile_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """Keeps nothing on disk: a restart comes back empty."""
    (tmp_path / "volatile").mkdir()
    server = RedisProcess(directory=str(tmp_path / "volatile"))
    server.start()
    yield server
    server.stop()
