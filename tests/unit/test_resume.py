"""Stateful reconnect's pure parts: counting the client's messages, where a resend starts,
and whom a read-back message was for."""

from __future__ import annotations

from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub_gateway.deliver import LocalConnection
from hubbub_gateway.resume import Resume, addressed_to
from tests.support.sockets import NullSocket


def test_resent_client_messages_are_handled_once() -> None:
    resume = Resume("json")
    assert [resume.counted() for _ in range(3)] == [True, True, True]
    resume.expect = 2  # after a re-attach, the client resends from its message 2
    assert [resume.counted() for _ in range(3)] == [False, False, True]
    assert resume.received == 4


def test_a_resend_starts_at_the_first_unacknowledged_message() -> None:
    resume = Resume("json", next_seq=10)
    assert resume.first_unacked() == 10  # nothing waits: the next one
    resume.unsent.append((10, b"", b"x"))
    assert resume.first_unacked() == 10
    resume.sent.append((7, b"y"))
    assert resume.first_unacked() == 7


def _entry(
    kind: Kind, target: str, hub: str = "chat", excluded: tuple[str, ...] = ()
) -> MessageEntry:
    return MessageEntry(kind, hub, target, b"{}\x1e", excluded=excluded, message_id=b"0:1-0")


def test_read_back_picks_what_the_connection_was_sent() -> None:
    conn = LocalConnection("c1", "chat", "ann", NullSocket(), 1024)
    conn.groups = {"room"}
    assert addressed_to(_entry(Kind.ALL, ""), conn)
    assert addressed_to(_entry(Kind.GROUP, "room"), conn)
    assert addressed_to(_entry(Kind.USER, "ann"), conn)
    assert addressed_to(_entry(Kind.CONNECTION, "c1"), conn)
    assert not addressed_to(_entry(Kind.GROUP, "other"), conn)
    assert not addressed_to(_entry(Kind.USER, "bob"), conn)
    assert not addressed_to(_entry(Kind.CONNECTION, "c2"), conn)
    assert not addressed_to(_entry(Kind.ALL, "", hub="other"), conn)
    assert not addressed_to(_entry(Kind.GROUP, "room", excluded=("c1",)), conn)
