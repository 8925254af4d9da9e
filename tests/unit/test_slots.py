"""Redis Cluster without I/O: the key a command is placed by, the slot table, redirections."""

from __future__ import annotations

import pytest
from redis.exceptions import RedisError, ResponseError

from hubbub.redis.slots import (
    SLOTS,
    Redirect,
    SlotTable,
    command_key,
    key_slot,
    redirect_of,
    try_again,
)
from hubbub.wire.keys import KeySchema


def test_the_first_key_places_each_command() -> None:
    assert command_key(("XADD", "k", "*", "f", "v")) == b"k"
    assert command_key(("EVAL", "return 1", 2, "a", "b", "x")) == b"a"
    assert command_key(("EVAL", "return 1", 0, "x")) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s", ">")) == b"s"
    assert command_key(("XREAD", "COUNT", 5, "STREAMS", b"s1", b"s2", 0, 0)) == b"s1"
    assert command_key(("WAIT", 1, 100)) is None
    assert command_key(("PING",)) is None
    with pytest.raises(ValueError):
        command_key(("XREAD", "COUNT", 1))


def test_hash_tags_keep_a_hub_and_an_idempotency_key_in_one_slot() -> None:
    schema = KeySchema("hubbub")
    hub = schema.hub("chat")
    slots = {key_slot(k) for k in (hub.connection("c1"), hub.group_gateways("g"), hub.resume("c"))}
    assert len(slots) == 1
    partition = schema.publish_partition(3)
    assert key_slot(schema.idempotency(partition, "chat", "order-1")) == key_slot(partition)
    # The 16 publish partitions are 16 slots: they spread over the masters.
    assert len({key_slot(schema.publish_partition(n)) for n in range(16)}) == 16


def test_redirections_and_try_again() -> None:
    assert redirect_of(ResponseError("MOVED 3999 127.0.0.1:6381")) == Redirect(
        False, 3999, ("127.0.0.1", 6381)
    )
    assert redirect_of(ResponseError("ASK 3999 [::1]:6381")) == Redirect(True, 3999, ("::1", 6381))
    assert redirect_of(ResponseError("ERR wrong number of arguments")) is None
    assert redirect_of(b"MOVED 1 a:1") is None  # a value, not an error reply
    assert try_again(ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"))
    assert not try_again(ResponseError("MOVED 1 a:1"))


def test_the_slot_table_from_cluster_slots() -> None:
    reply = [
        [0, 5460, [b"", 7000, b"id1"], [b"127.0.0.1", 7003, b"id4"]],
        [5461, 16383, [b"10.0.0.2", 7001, b"id2"]],
    ]
    table = SlotTable.parse(reply, ("127.0.0.1", 7000))
    assert table.node(0) == ("127.0.0.1", 7000)  # an empty host: the node asked
    assert table.node(SLOTS - 1) == ("10.0.0.2", 7001)
    assert table.masters == {("127.0.0.1", 7000), ("10.0.0.2", 7001)}
    table.moved(5, ("10.0.0.2", 7001))
    assert table.node(5) == ("10.0.0.2", 7001)
    groups = table.nodes_of([b"a", b"b", b"c"])
    assert sorted(i for indexes in groups.values() for i in indexes) == [0, 1, 2]
    with pytest.raises(RedisError, match="not served"):
        SlotTable.parse([[0, 10, [b"h", 1, b"x"]]], ("h", 1)).node(11)
