"""The edge's limits fitted under the open-file limit (hubbub_gateway/edge.py)."""

from __future__ import annotations

import resource

from hubbub.settings import Settings
from hubbub_gateway.edge import FD_RESERVE, EdgeLimits, raise_fd_limit


def test_the_defaults_fit_a_large_fd_limit_unchanged() -> None:
    limits = EdgeLimits.fit(Settings(), 1 << 20)
    assert (limits.max_head_bytes, limits.head_timeout) == (16 * 1024, 10.0)
    assert (limits.max_pending, limits.max_connections) == (1000, 10_000)


def test_a_small_fd_limit_lowers_the_caps_and_keeps_a_reserve() -> None:
    """1,024 descriptors (a common default): pending sockets get a quarter of what is left after
    the reserve, WebSocket connections the rest; never more than the limit in all."""
    limits = EdgeLimits.fit(Settings(), 1024)
    assert limits.max_pending == (1024 - FD_RESERVE) // 4 == 240
    assert limits.max_connections == 1024 - FD_RESERVE - 240 == 720
    assert limits.max_pending + limits.max_connections + FD_RESERVE <= 1024


def test_the_soft_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limit = raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
        if hard != resource.RLIM_INFINITY:
            assert limit == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
