"""Redis Cluster without I/O: which slot a command touches, who serves it, where it was sent.

The :class:`~hubbub.redis.pipe.Pipe` routes each command to the master of its key's slot; this
module says which key that is (:func:`command_key`), reads ``CLUSTER SLOTS`` into a table
(:class:`SlotTable`) and reads ``MOVED``/``ASK`` error replies (:func:`redirect_of`). Hubbub's
commands and scripts touch one slot each (every script gets its keys through ``KEYS``, and a
script's keys share a hash tag), so the first key decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.crc import key_slot as _crc_slot
from redis.exceptions import ClusterDownError, ResponseError

from hubbub.redis.resp import Arg, Command

SLOTS = 16384
Node = tuple[str, int]

# Commands whose first key is not their first argument.
_KEYS_AFTER_STREAMS = {b"XREAD", b"XREADGROUP"}
_SCRIPTS = {b"EVAL", b"EVALSHA", b"FCALL"}
_NO_KEY = {b"PING", b"CLIENT", b"WAIT", b"ROLE", b"CLUSTER", b"ASKING", b"INFO", b"TIME"}


def _bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    return str(arg).encode()


def key_slot(key: Arg) -> int:
    """The slot of a key (its hash tag's, if it has one)."""
    return int(_crc_slot(_bytes(key)))


def command_key(command: Command) -> bytes | None:
    """The key that decides where ``command`` runs, ``None`` for a command without keys."""
    name = _bytes(command[0]).upper()
    if name in _NO_KEY or len(command) < 2:
        return None
    if name in _SCRIPTS:
        return _bytes(command[3]) if int(command[2]) > 0 else None
    if name in _KEYS_AFTER_STREAMS:
        for i, arg in enumerate(command):
            if _bytes(arg).upper() == b"STREAMS":
                return _bytes(command[i + 1])
        raise ValueError(f"{name.decode()} without STREAMS")
    return _bytes(command[1])


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` (the slot lives elsewhere now) or ``ASK`` (this one key, during a
    migration, is already on the importing node) reply: the command was not run."""

    ask: bool
    slot: int
    node: Node


def redirect_of(reply: object) -> Redirect | None:
    """The redirection an error reply asks for, else ``None``."""
    if not isinstance(reply, ResponseError):
        return None
    parts = str(reply).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return Redirect(parts[0] == "ASK", int(parts[1]), (host.strip("[]"), int(port)))


def try_again(reply: object) -> bool:
    """``TRYAGAIN``: a multi-key command met a slot half-migrated; it can run in a moment."""
    return isinstance(reply, ResponseError) and str(reply).startswith("TRYAGAIN")


class SlotTable:
    """Slot -> the master serving it, read from ``CLUSTER SLOTS``."""

    __slots__ = ("_owner", "masters")

    def __init__(self, owner: Sequence[Node | None]) -> None:
        self._owner = list(owner)
        self.masters = {node for node in owner if node is not None}

    @classmethod
    def parse(cls, reply: object, asked: Node) -> SlotTable:
        """``CLUSTER SLOTS`` as asked of ``asked`` (whose address stands in for an empty host,
        as Redis means it)."""
        owner: list[Node | None] = [None] * SLOTS
        for start, end, master, *_ in reply:  # type: ignore[attr-defined]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            node = (host or asked[0], int(master[1]))
            owner[int(start) : int(end) + 1] = [node] * (int(end) - int(start) + 1)
        return cls(owner)

    def node(self, slot: int) -> Node:
        node = self._owner[slot]
        if node is None:  # a cluster that lost a master and its replicas: nothing to retry
            raise ClusterDownError(f"CLUSTERDOWN slot {slot} is not served by any master")
        return node

    def moved(self, slot: int, node: Node) -> None:
        self._owner[slot] = node
        self.masters.add(node)

    def nodes_of(self, keys: Iterable[Arg]) -> dict[Node, list[int]]:
        """Which master serves each key: master -> indexes into ``keys``."""
        groups: dict[Node, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self.node(key_slot(key)), []).append(i)
        return groups
