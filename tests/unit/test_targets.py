"""The worker's memory of targets' gateways (``hubbub_fanout.targets``), sans I/O."""

from __future__ import annotations

from hubbub.wire.envelopes import GROWN, GrownEntry, Kind
from hubbub_fanout.targets import Targets

G1 = ("chat", Kind.GROUP, "g1")
U1 = ("chat", Kind.USER, "u1")


def test_a_new_epoch_starts_empty() -> None:
    """A worker that lost the partition missed its markers: what it knew is dropped."""
    targets = Targets(10)
    known = targets.of(3, epoch=1)
    targets.remember(known, G1, (b"gw1",))
    assert targets.of(3, epoch=1) == {G1: (b"gw1",)}
    assert targets.of(3, epoch=2) == {}
    assert targets.of(4, epoch=2) == {}


def test_forget_and_forget_all() -> None:
    targets = Targets(10)
    known = targets.of(0, 1)
    targets.remember(known, G1, (b"gw1",))
    targets.remember(known, U1, ())
    targets.forget(known, G1)
    targets.forget(known, G1)  # twice: nothing more
    assert known == {U1: ()}
    targets.forget_all()
    assert targets.of(0, 1) == {}


def test_bounded() -> None:
    """Past ``size`` targets in all, everything is forgotten and relearnt."""
    targets = Targets(3)
    a, b = targets.of(0, 1), targets.of(1, 1)
    for i in range(3):
        targets.remember(a if i % 2 else b, ("chat", Kind.USER, f"u{i}"), (b"gw",))
    assert len(a) + len(b) == 3
    targets.remember(a, ("chat", Kind.USER, "u1"), (b"gw2",))  # known already: no growth
    assert len(a) + len(b) == 3
    targets.remember(a, ("chat", Kind.USER, "new"), (b"gw",))
    assert (len(a), len(b)) == (1, 0)
    off = Targets(0)
    known = off.of(0, 1)
    off.remember(known, G1, (b"gw1",))
    assert known == {}


def test_grown_entry_round_trip() -> None:
    entry = GrownEntry(Kind.USER, "chat", "ü-1")
    fields = dict(zip(entry.fields()[::2], entry.fields()[1::2], strict=True))
    assert fields[b"k"] == GROWN
    assert GrownEntry.decode(fields) == entry
