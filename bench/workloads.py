"""Who each message goes to (W1 broadcast, W2 groups, W3 one user) and the W1 ramp's search for
the highest clean rate."""

from __future__ import annotations

import abc
import argparse
import math
import random
from typing import Any

from bench.common import GROUP_SIZE, ClientSpec, fmt, log

# The fixed-rate workloads (W1-W3) and their default rates, messages/s.
DEFAULT_RATES = {"broadcast": 50.0, "groups": 200.0, "users": 200.0}


class Workload(abc.ABC):
    """Who each message goes to, and how many deliveries that should make."""

    name = ""
    label = ""

    def __init__(self, specs: list[ClientSpec], connected: dict[int, str], seed: int) -> None:
        self.specs = specs
        self.connected = connected  # client index -> connection id (only those that connected)
        self.rng = random.Random(seed)

    @abc.abstractmethod
    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        """(recipient, fields the payload carries for checking, expected deliveries)."""


class Broadcast(Workload):
    name = "broadcast"
    label = "W1 broadcast"

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        return ("all", ""), {}, len(self.connected)


class Groups(Workload):
    name = "groups"
    label = f"W2 groups of {GROUP_SIZE}"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.members: dict[str, list[int]] = {}
        for spec in self.specs:
            if spec.index in self.connected:
                self.members.setdefault(spec.group, []).append(spec.index)
        self.groups = sorted(self.members)

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        group = self.rng.choice(self.groups)
        return ("group", group), {"g": group}, len(self.members[group])


class Users(Workload):
    name = "users"
    label = "W3 targeted (one user)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.users: dict[str, int] = {}
        for spec in self.specs:
            if spec.index in self.connected:
                self.users[spec.user] = self.users.get(spec.user, 0) + 1
        self.names = sorted(self.users)

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        user = self.rng.choice(self.names)
        return ("user", user), {"u": user}, self.users[user]


class Unit10(Users):
    """Issue 14's Azure Unit10 mix: mostly messages to one user, and one broadcast every
    :data:`UNIT10_USERS_PER_BROADCAST` of them. With 10,000 clients, 2,202 messages/s are
    2,200 sends to users and 2.2 broadcasts (22,000 deliveries) a second. Each publisher
    process draws only its own share, so each keeps the ratio over its own messages."""

    name = "unit10"
    label = "Unit10 mix (broadcasts + one user)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.drawn = 0

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        self.drawn += 1
        if self.drawn % UNIT10_USERS_PER_BROADCAST == UNIT10_USERS_PER_BROADCAST // 2:
            return ("all", ""), {}, len(self.connected)
        return super().next()


UNIT10_USERS_PER_BROADCAST = 1000
# Workloads outside --all (a preset runs them), with their default rates.
EXTRA_RATES = {"unit10": 2202.0}

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Broadcast, Groups, Users, Unit10)}


def ramp_verdict(r: dict[str, Any], p99_limit_ms: float) -> str | None:
    """None when the step was clean; else why not."""
    p99 = r["latency_ms"]["p99"]
    if r["published"] == 0:
        return "nothing published"
    if r["publish_failed"]:
        return f"{r['publish_failed']} publishes failed ({next(iter(r['publish_errors']))})"
    if r["lost"]:
        return f"{r['lost']} lost ({r['lost_pct']:.2f} %)"
    if p99 is None or p99 >= p99_limit_ms:
        return f"p99 {fmt(p99, '.0f')} ms"
    if r["duplicates"] or r["misdelivered"] or r["closed_by_server"]:
        return "duplicates, misdeliveries or closes"
    if r["publish_rate"] < 0.95 * r["rate"] or r["publish_max_lag_s"] > 0.25:
        return f"publishers fell behind ({r['publish_rate']:.0f}/s of {r['rate']:g}/s)"
    return None


class Ramp:
    """W1 ramp for one system: double the rate until a step fails (loss, or p99 over the limit),
    then bisect (geometric mean) until the last clean and first failed rates are within
    --ramp-precision, or the steps run out."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rate = args.ramp_start
        self.good: float | None = None
        self.bad: float | None = None
        self.good_result: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []
        self.done = False
        self.retried = False  # the current rate failed once under load and runs again

    def record(self, name: str, r: dict[str, Any]) -> None:
        args, rate = self.args, self.rate
        why = ramp_verdict(r, args.ramp_p99_ms)
        self.steps.append({"rate": rate, "ok": why is None, "why": why, "result": r})
        log(f"  ramp step {name} {rate:g}/s: {'clean' if why is None else 'FAILED: ' + why}")
        # A step that failed while other work used the machine runs once more (both runs are
        # reported); the rate counts as failed only if that one fails too.
        if why is not None and not self.retried and r["other_cpu_cores"] >= args.ramp_retry_load:
            self.retried = True
            log(f"  ramp step {name} {rate:g}/s: other load {r['other_cpu_cores']:.2f}: once more")
            return
        self.retried = False
        if why is None:
            if self.good is None or rate > self.good:
                self.good, self.good_result = rate, r
        else:
            self.bad = rate if self.bad is None else min(self.bad, rate)
        if self.bad is None:
            self.rate = rate * 2
        elif self.good is None:
            self.rate = rate / 2
            self.done = self.rate < 1
        elif self.bad / self.good <= 1 + args.ramp_precision:
            self.done = True
        else:
            self.rate = round(math.sqrt(self.good * self.bad), 1)
        if len(self.steps) >= args.ramp_max_steps:
            self.done = True

    def summary(self) -> dict[str, Any]:
        good, bad = self.good, self.bad
        return {
            "sustainable_rate": good,
            "first_failed_rate": bad,
            "deliveries_per_s": self.good_result["deliveries_per_s"] if self.good_result else 0.0,
            "at_sustainable": self.good_result,
            "steps": self.steps,
            "converged": good is not None
            and bad is not None
            and bad / good <= 1 + self.args.ramp_precision,
        }
