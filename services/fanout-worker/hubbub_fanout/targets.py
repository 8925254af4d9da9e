"""Targets: which gateways hold a group's or a user's recipients, as this worker last looked.

A send to a known target then needs no lookup round trip. What makes it exact:

- Only a target's gateways *growing* matters: a cached set that is too large costs an append
  the gateway drops (it holds no recipient any more); a set missing a gateway would lose
  messages. Every change that can grow a set (a connection registers, is claimed by another
  gateway, joins a group; a user's connections join a group) appends a
  :class:`~hubbub.wire.envelopes.GrownEntry` to the target's own publish partition *after*
  the change, before the call returns (``hubbub.redis.membership``).
- A partition has one reader at a time and is read in order, so a send accepted after the
  change is read after its marker, and the marker is handled before the send is routed: the
  batch's markers are applied first, and the lookups made for the batch run after it was
  read, so after every change whose marker it holds.
- Each partition's memory belongs to one lease epoch: a worker that loses a partition misses
  its markers, so on any new epoch that memory starts empty.
- After any Redis error the worker forgets everything: a failover can keep a change and lose
  its marker (replication is asynchronous, and the marker is written after the change).

Bounded: at most ``size`` targets in all; past that everything is forgotten and relearnt.
Off by default (``HUBBUB_ROUTE_CACHE_SIZE=0``): a send accepted just before a resumable
connection moves to another gateway can be routed to the old one after the new one read the
old inbox back (docs/guarantees.md §1 says why, and the fix it needs).
Sans-I/O: the router feeds it lookups and markers.
"""

from __future__ import annotations

from hubbub.wire.envelopes import Kind

Target = tuple[str, Kind, str]  # hub, kind (group or user), name
Gateways = tuple[bytes, ...]


class Targets:
    def __init__(self, size: int) -> None:
        self.size = size
        self._epochs: dict[int, int] = {}
        self._known: dict[int, dict[Target, Gateways]] = {}
        self._count = 0

    def of(self, partition: int, epoch: int) -> dict[Target, Gateways]:
        """The partition's memory under lease ``epoch`` (empty after a change of epoch)."""
        known = self._known.get(partition)
        if known is None or self._epochs.get(partition) != epoch:
            self._count -= len(known or ())
            known = self._known[partition] = {}
            self._epochs[partition] = epoch
        return known

    def forget_all(self) -> None:
        self._known.clear()
        self._epochs.clear()
        self._count = 0

    def forget(self, known: dict[Target, Gateways], target: Target) -> None:
        if known.pop(target, None) is not None:
            self._count -= 1

    def remember(self, known: dict[Target, Gateways], target: Target, gateways: Gateways) -> None:
        if self.size == 0:
            return
        if target not in known:
            if self._count >= self.size:
                for each in self._known.values():
                    each.clear()
                self._count = 0
            self._count += 1
        known[target] = gateways
