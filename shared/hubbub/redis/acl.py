"""Least-privilege Redis ACL rules for each Hubbub role, the one home of what each may run.

Gateways, fan-out workers and upstream services need different commands (only workers read
the publish stream in a consumer group; only gateways read their inboxes), and none needs
anything outside the deployment's key prefix, any Pub/Sub channel, or any administrative
command. Commands
run by Lua scripts are checked against the calling user too, so they are listed here.

``hubbub redis-acl gateway`` prints the rules for ``ACL SETUSER`` (see docs/security.md);
``tests/security/test_redis_acl.py`` runs a whole deployment under them.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["gateway", "worker", "service"]

# Connection set-up (redis-py and the Pipe), scripts (loaded once, then run by their SHA),
# and the reads and writes the membership scripts make: both roles run those (workers reap).
# CLIENT SETINFO (Redis 7.2+) is left out: redis-py ignores its refusal. Sentinel and Cluster
# modes add: ROLE (is this still the primary?), CLUSTER SLOTS and COMMAND (the slot map and
# redis-py's key positions), ASKING (a key mid-migration), CLIENT ID / UNBLOCK (a blocking
# read over several masters ends the others' reads early) and WAIT (HUBBUB_REDIS_WAIT_REPLICAS).
_COMMON = (
    "ping", "hello", "auth", "select", "client|setname", "script|load", "evalsha",
    "role", "cluster|slots", "cluster|shards", "command", "asking", "client|id",
    "client|unblock", "wait",
    "exists", "get", "set", "del", "pexpire",
    "hget", "hset", "hmget", "hdel", "hincrby", "hkeys",
    "sadd", "srem", "smembers", "scard", "sismember", "srandmember",
    "zadd", "zrem", "zscore", "zrange", "zremrangebyscore",
    "xadd",
)  # fmt: skip

COMMANDS: dict[Role, tuple[str, ...]] = {
    # Publishing (with an idempotency key: EVAL of its script, see hubbub.redis.stream),
    # reading its inbox and the broadcast feed, trimming its inbox, counting live workers
    # (readiness reports them) and live upstream services, appending what clients do
    # upstream; and the read-only listings of the REST API and the admin console
    # (hubbub.redis.directory: scans, partition lag).
    "gateway": (
        *_COMMON, "eval", "xread", "xrevrange", "xtrim", "zcount",
        "scan", "sscan", "zscan", "xinfo|groups", "xlen",
    ),
    # Consuming the publish partitions in a group, recovering what a dead worker held,
    # leases, reaping dead gateways, trimming, and the lag gauges; and the webhook
    # dispatcher's upstream consumer (as a service's below).
    "worker": (
        *_COMMON,
        "xreadgroup", "xack", "xautoclaim", "xgroup|create", "xgroup|delconsumer",
        "xinfo|groups", "xinfo|consumers", "xlen", "xtrim", "xrevrange", "zcard",
        "zrangebyscore", "time", "xpending", "zcount",
    ),
    # An upstream service (hubbub.upstream): consuming the upstream partitions in its group
    # under leases, trimming what every group is done with, answering through the publish
    # stream (EVAL: sends with an idempotency key), and group changes (the scripts).
    "service": (
        *_COMMON,
        "eval", "xreadgroup", "xack", "xautoclaim", "xgroup|create", "xinfo|groups",
        "xpending", "xtrim", "zcard", "time",
    ),
}  # fmt: skip


def rules(role: Role, prefix: str) -> list[str]:
    """ACL rules for ``role``: its commands only, on ``<prefix>:*`` keys only, no channels.

    Starts from nothing (``resetkeys``, ``resetchannels``, ``-@all``), so applying it to an
    existing user leaves no earlier grant behind (its password and on/off are left alone)."""
    return [
        "resetkeys",
        f"~{prefix}:*",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in COMMANDS[role]),
    ]
