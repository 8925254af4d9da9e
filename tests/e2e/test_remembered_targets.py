"""A worker remembers which gateways hold a group's or a user's recipients
(``hubbub_fanout.targets``); joins, leaves and sends interleaved must never meet a stale memory.

Each round, for a user, a group joined by REST and a group joined through the user's binding:
send (the worker learns the target's gateways), a new member joins on the *other* gateway
(the target's gateways grow), send, the oldest member leaves, send; each send is delivered
before the next change. Every member must receive exactly the sends accepted while it was a
member, in order: a memory that missed a growth
loses the sends to the new member's gateway. With the ``GrownEntry`` markers left out
(``Membership._announce`` given no ``grown``), the first send after the first join is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token
from tests.support.sequences import Collector

pytestmark = pytest.mark.timeout(120)

ROUNDS = 6


@dataclass
class Member:
    collector: Collector
    expected: list[int] = field(default_factory=list)
    live: bool = True


@dataclass
class Target:
    """One target and its members, oldest first."""

    name: str
    members: list[Member] = field(default_factory=list)

    def sent(self, n: int) -> None:
        for m in self.members:
            if m.live:
                m.expected.append(n)


async def test_remembered_gateways_never_miss_a_join(deployment: Deployment) -> None:
    # Off by default; on for every process (gateways write the markers, workers read them).
    deployment.settings["HUBBUB_ROUTE_CACHE_SIZE"] = "100000"
    gateways = [await deployment.start_gateway(), await deployment.start_gateway()]
    deployment.start_worker()
    n = 0
    user, rest_group, user_group = Target("u"), Target("g-rest"), Target("g-user")
    targets = (user, rest_group, user_group)
    async with HubbubClient(gateways[0].url, ACCESS_KEY, "chat") as api:
        await api.add_user_to_group(user_group.name, "u")  # durable: each new u connection joins

        async def check(collector: Collector) -> None:
            """What ``collector`` got of each target: exactly what was sent while it was a
            member, in order."""
            for target in targets:
                for m in target.members:
                    if m.collector is collector:
                        await collector.wait_for(target.name, set(m.expected), timeout=20)
                        assert collector.got[target.name] == m.expected, (target.name, m)

        async def send_all() -> None:
            nonlocal n
            n += 1
            await api.send_to_user(user.name, "seq", ["u", n])
            user.sent(n)
            await api.send_to_group(rest_group.name, "seq", ["g-rest", n])
            rest_group.sent(n)
            await api.send_to_group(user_group.name, "seq", ["g-user", n])
            user_group.sent(n)
            # Delivered before membership changes: a member may otherwise also get a send
            # accepted just before it joined (routed after), which is right but inexact.
            for m in user.members:
                if m.live:
                    await check(m.collector)

        async def join(gateway: int) -> None:
            """A new connection of u on ``gateway``: a member of all three targets."""
            client = await RawClient.connect(gateways[gateway].url, token=client_token("u"))
            assert client.connection_id
            await api.add_connection_to_group(rest_group.name, client.connection_id)
            collector = Collector(client)
            for target in targets:
                target.members.append(Member(collector))

        async def leave_oldest() -> None:
            """Once it got everything sent to it, the oldest member closes."""
            oldest = next(m for m in user.members if m.live).collector
            await check(oldest)
            for target in targets:
                for m in target.members:
                    if m.collector is oldest:
                        m.live = False
            await oldest.stop()
            await oldest.client.close()

        await join(0)
        for round_ in range(ROUNDS):
            await send_all()  # the worker learns each target's gateways
            await join((round_ + 1) % 2)  # they grow: a member on the other gateway
            await send_all()
            await leave_oldest()
            await send_all()

        for m in user.members:
            if m.live:
                await check(m.collector)
                await m.collector.stop()
    print(f"\n{n} sends x 3 targets over {ROUNDS} joins and leaves: none missed")
