"""Numbered message sequences: publish them, collect them, check once-and-in-order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from hubbub.sdk.client import HubbubClient

from .processes import Deployment
from .rawclient import RawClient, client_token


class Collector:
    """Reads everything a client receives in the background, by (target, stream name)."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.got: dict[str, list[int]] = defaultdict(list)
        self.order: list[tuple[str, int]] = []  # every arrival, across names
        self.changed = asyncio.Event()
        self.closed: dict[str, object] | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Read until Close; Ping every 5 s as a real client does, or the server's timeout
        (30 s without a message from the client) would close a long-running collector."""
        async with asyncio.TaskGroup() as tasks:
            pinger = tasks.create_task(self._ping())
            try:
                await self._read()
            finally:
                pinger.cancel()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(5)
            await self.client.send({"type": 6})

    async def _read(self) -> None:
        while True:
            message = await self.client.recv(timeout=3600)
            if message.get("type") == 7:
                self.closed = message
                return
            if message.get("type") == 1:
                name, n = message["arguments"]
                self.got[name].append(n)
                self.order.append((name, n))
                self.changed.set()

    async def wait_for(self, name: str, expected: set[int], timeout: float = 30) -> None:
        """Until every expected number of ``name`` arrived (more may come: checked later).
        A reader that failed or saw a Close raises here instead of leaving us waiting."""
        async with asyncio.timeout(timeout):
            while not expected <= set(self.got[name]):
                if self.task.done():
                    self.task.result()  # the reader's exception, if any
                    raise AssertionError(f"connection closed while waiting: {self.closed}")
                self.changed.clear()
                changed = asyncio.ensure_future(self.changed.wait())
                try:
                    await asyncio.wait([changed, self.task], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class Outcome:
    accepted: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


# 503 codes: Redis did not answer; or it took the message, but fewer replicas than
# HUBBUB_REDIS_WAIT_REPLICAS confirmed it in time.
REFUSED = ("Error.Unavailable", "Error.Redis.NotReplicated")


async def publish(api: HubbubClient, kind: str, target: str, name: str, numbers: range) -> Outcome:
    """One after the other, so the order of the 202s is the order of the numbers.

    A number is *refused* only when the gateway answered ``503`` with a JSON code of
    :data:`REFUSED`. Any other status, and any transport error
    (the gateway stays up while Redis is down, so it must answer), fails the test.
    """
    outcome = Outcome()
    for n in numbers:
        try:
            if kind == "group":
                await api.send_to_group(target, "seq", [name, n])
            elif kind == "user":
                await api.send_to_user(target, "seq", [name, n])
            else:
                await api.send_to_all("seq", [name, n])
            outcome.accepted.append(n)
        except httpx.HTTPStatusError as exc:
            response = exc.response
            if response.status_code != 503 or response.json().get("code") not in REFUSED:
                raise AssertionError(
                    f"{kind} {name} {n}: {response.status_code} {response.text}"
                ) from exc
            outcome.refused.append(n)
    return outcome


async def run_sequences(
    dep: Deployment,
    api: HubbubClient,
    fault: Callable[[], Awaitable[None]],
    at: int,
    probes: Outcome | None = None,
    count: int = 1700,
) -> dict[str, Outcome]:
    """Clients on both gateways; three sequences of ``count``; ``fault`` once ``at`` are sent.

    ``probes`` are numbers the fault itself sent to the group (name ``"p"``), between group
    numbers ``at - 1`` and ``at``: the clients must see the accepted ones exactly there (a
    refused one may arrive, once).
    """
    a = await RawClient.connect(dep.gateways[1].url, token=client_token("ua"))
    b = await RawClient.connect(dep.gateways[0].url, token=client_token("ub"))
    for c in (a, b):
        assert c.connection_id
        await api.add_connection_to_group("ga", c.connection_id)
    ca, cb = Collector(a), Collector(b)

    async def group_then_fault() -> Outcome:
        first = await publish(api, "group", "ga", "g", range(at))
        await fault()
        rest = await publish(api, "group", "ga", "g", range(at, count))
        first.accepted += rest.accepted
        first.refused += rest.refused
        return first

    g, u, everyone = await asyncio.gather(
        group_then_fault(),
        publish(api, "user", "ua", "u", range(count)),
        publish(api, "all", "", "a", range(count)),
    )
    checks = [(ca, "g", g), (cb, "g", g), (ca, "u", u), (ca, "a", everyone), (cb, "a", everyone)]
    for collector, name, outcome in checks:
        await collector.wait_for(name, set(outcome.accepted))
    # One end marker per partition that carried a sequence, sent after it: once a marker is
    # in, nothing of that sequence is still on its way (the partition keeps its order).
    await api.send_to_group("ga", "seq", ["end-g", 0])
    await api.send_to_user("ua", "seq", ["end-u", 0])
    await api.send_to_all("seq", ["end-a", 0])
    for collector, marker in [(ca, "end-g"), (cb, "end-g"), (ca, "end-u"), (ca, "end-a"),
                              (cb, "end-a")]:  # fmt: skip
        await collector.wait_for(marker, {0})
    for collector, name, outcome in checks:
        check_once_in_order(collector.got[name], outcome)
    if probes is not None:
        assert not g.refused
        expected = (
            [("g", n) for n in range(at)]
            + [("p", n) for n in probes.accepted]
            + [("g", n) for n in range(at, count)]
        )
        refused = set(probes.refused)  # appended maybe, answered 503: may arrive, once
        for collector in (ca, cb):
            late = [n for name, n in collector.order if name == "p" and n in refused]
            assert len(late) == len(set(late)), f"a refused probe arrived twice: {late}"
            group_order = [
                (name, n)
                for name, n in collector.order
                if name == "g" or (name == "p" and n not in refused)
            ]
            assert group_order == expected, _diff_order(group_order, expected)
    assert "u" not in cb.got and "end-u" not in cb.got
    await ca.stop()
    await cb.stop()
    return {"group": g, "user": u, "all": everyone}


def _diff_order(got: list[tuple[str, int]], want: list[tuple[str, int]]) -> str:
    first = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y), None)
    around = slice(max(0, (first or 0) - 3), (first or 0) + 3)
    return f"{len(got)} vs {len(want)}; first difference at {first}: {got[around]} / {want[around]}"


def check_once_in_order(got: list[int], outcome: Outcome) -> None:
    """Every accepted number exactly once, in publish order; a refused one at most once
    (its append may have happened with only the answer lost)."""
    accepted = set(outcome.accepted)
    delivered_accepted = [n for n in got if n in accepted]
    assert delivered_accepted == outcome.accepted, _diff(delivered_accepted, outcome.accepted)
    others = [n for n in got if n not in accepted]
    assert len(others) == len(set(others)), "a refused message was delivered twice"
    assert set(others) <= set(outcome.refused)


def _diff(got: list[int], want: list[int]) -> str:
    missing = sorted(set(want) - set(got))
    dupes = sorted({n for n in got if got.count(n) > 1}) if len(got) < 20000 else []
    first_bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    return (
        f"got {len(got)} of {len(want)}; missing {missing[:20]}; duplicated {dupes[:20]}; "
        f"first out-of-order index {first_bad}"
    )
