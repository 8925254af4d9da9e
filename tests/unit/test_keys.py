"""The Redis key schema: one hash slot per hub, and no collisions whatever the names hold."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from hubbub.settings import Settings
from hubbub.wire import keys
from hubbub.wire.keys import HubKeys, KeySchema

# ---------------------------------------------------------------- Redis Cluster hash slots


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def hash_tag(key: str) -> str:
    """What Redis hashes: the text between the first '{' and the next '}', if non-empty."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    return crc16_xmodem(hash_tag(key).encode()) % 16384


def test_crc16_matches_the_redis_reference_vector() -> None:
    # From the Redis Cluster specification: CRC16 of "123456789" is 0x31C3.
    assert crc16_xmodem(b"123456789") == 0x31C3


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("foo", "foo"),
        ("{user1000}.following", "user1000"),
        ("foo{}{bar}", "foo{}{bar}"),  # empty first tag: the whole key is hashed
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),
        ("foo{bar", "foo{bar"),
    ],
)
def test_hash_tag_rule_matches_the_redis_specification(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


# ---------------------------------------------------------------- per-hub keys

PER_HUB: list[Callable[[HubKeys, str], str]] = [
    HubKeys.connection,
    HubKeys.connection_groups,
    HubKeys.group_connections,
    HubKeys.group_gateways,
    HubKeys.user_connections,
    HubKeys.user_gateways,
    HubKeys.user_groups,
    HubKeys.gateway_connections,
    HubKeys.resume,
    HubKeys.resume_gone,
]

# Names a client or REST caller may choose; group and user names are free text.
NASTY_NAMES = [
    "plain",
    "",
    ":",
    "a:b",
    "c:x",
    "cg:x",
    "gc",
    "ugr:1",
    "}",
    "{",
    "{}",
    "}{",
    "{other}",
    "x}:gc:{y",
    "{hubbub:other}",
    "hubbub:{hubbub:other}:c:x",
    "\u00e9\U0001f600",
    " ",
]


def all_hub_keys(hub: HubKeys, name: str) -> list[str]:
    return [make(hub, name) for make in PER_HUB]


def test_every_per_hub_key_builder_is_covered() -> None:
    builders = {n for n, v in vars(HubKeys).items() if callable(v) and not n.startswith("_")}
    assert builders == {make.__name__ for make in PER_HUB}


def test_base_holds_the_hash_tag() -> None:
    assert KeySchema("hubbub").hub("chat").base == "hubbub:{hubbub:chat}"


@pytest.mark.parametrize("prefix", ["hubbub", "t1", "a:b"])
@pytest.mark.parametrize("hub", ["chat", "app_chat", "a`b,c.d[e]"])
def test_all_per_hub_keys_share_one_hash_slot(prefix: str, hub: str) -> None:
    hk = KeySchema(prefix).hub(hub)
    tags = {hash_tag(k) for name in NASTY_NAMES for k in all_hub_keys(hk, name)}
    assert tags == {f"{prefix}:{hub}"}
    slots = {key_slot(k) for name in NASTY_NAMES for k in all_hub_keys(hk, name)}
    assert len(slots) == 1


def test_different_hubs_get_different_keys_and_tags() -> None:
    schema = KeySchema()
    hubs = ["chat", "chat2", "chatx", "news", "a", "a_b"]
    seen: dict[str, str] = {}
    for hub in hubs:
        hk = schema.hub(hub)
        assert hash_tag(hk.connection("x")) == f"hubbub:{hub}"
        for key in all_hub_keys(hk, "x"):
            assert key not in seen, (key, seen.get(key), hub)
            seen[key] = hub


def test_different_hubs_mostly_spread_over_slots() -> None:
    # Not a guarantee for any two hubs, but all-equal slots would mean the tag ignores the hub.
    slots = {key_slot(KeySchema().hub(f"hub{i}").connection("c")) for i in range(50)}
    assert len(slots) > 40


def test_keys_of_different_prefixes_differ() -> None:
    a, b = KeySchema("one").hub("chat"), KeySchema("two").hub("chat")
    assert set(all_hub_keys(a, "x")).isdisjoint(all_hub_keys(b, "x"))


def test_names_cannot_make_two_keys_collide() -> None:
    hk = KeySchema().hub("chat")
    made: dict[str, tuple[str, str]] = {}
    for make, name in itertools.product(PER_HUB, NASTY_NAMES):
        key = make(hk, name)
        assert key not in made, f"{make.__name__}({name!r}) == {made[key]}"
        made[key] = (make.__name__, name)


def test_key_kind_markers_are_distinct_and_colon_free() -> None:
    markers = [
        keys.CONNECTION,
        keys.CONNECTION_GROUPS,
        keys.GROUP_CONNECTIONS,
        keys.GROUP_GATEWAYS,
        keys.USER_CONNECTIONS,
        keys.USER_GATEWAYS,
        keys.USER_GROUPS,
        keys.GATEWAY_CONNECTIONS,
    ]
    assert len(set(markers)) == len(markers)
    assert all(m and ":" not in m and "{" not in m and "}" not in m for m in markers)


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_name_goes_last_and_verbatim(name: str) -> None:
    hk = KeySchema().hub("chat")
    assert hk.group_connections(name) == f"hubbub:{{hubbub:chat}}:gc:{name}"
    assert hk.user_groups(name) == f"hubbub:{{hubbub:chat}}:ugr:{name}"
    for key in all_hub_keys(hk, name):
        assert key.startswith("hubbub:{hubbub:chat}:")
        assert key.endswith(name)


@pytest.mark.parametrize("name", ["}", "x}y", "{evil}", "}{evil}", "{}{", "{hubbub:other}"])
def test_braces_in_names_cannot_escape_the_hash_tag(name: str) -> None:
    hk = KeySchema().hub("chat")
    other = KeySchema().hub("other")
    for key in all_hub_keys(hk, name):
        assert hash_tag(key) == "hubbub:chat"
        assert key_slot(key) == key_slot(hk.connection("plain"))
        assert hash_tag(key) != hash_tag(other.connection("plain"))


# ---------------------------------------------------------------- process-wide keys


def test_process_wide_keys() -> None:
    schema = KeySchema("p")
    assert schema.publish_partition(3) == "p:publish:3"
    assert schema.partition_lease(3) == "p:lease:3"
    assert schema.workers == "p:workers"
    assert schema.broadcast_feed == "p:broadcast"
    assert schema.inbox("gw-1") == "p:inbox:gw-1"
    assert schema.gateways == "p:gateways"
    assert schema.gateway_hubs("gw-1") == "p:gwh:gw-1"
    assert schema.gateway_status("gw-1") == "p:gws:gw-1"
    assert schema.reaper_lock("gw-1") == "p:reaping:gw-1"


def test_process_wide_keys_never_collide_with_per_hub_keys() -> None:
    schema = KeySchema()
    process = {
        schema.publish_partition(0),
        schema.partition_lease(0),
        schema.workers,
        schema.broadcast_feed,
        schema.inbox("gw-1"),
        schema.gateways,
        schema.gateway_hubs("gw-1"),
        schema.gateway_status("gw-1"),
        schema.reaper_lock("gw-1"),
    }
    assert len(process) == 9
    hub_keys = {k for name in NASTY_NAMES for k in all_hub_keys(schema.hub("chat"), name)}
    assert process.isdisjoint(hub_keys)
    # Process-wide keys carry no hash tag of any hub.
    assert all("{" not in k for k in process)


# ---------------------------------------------------------------- prefix validation


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "{a}", "", "{", "}"])
def test_settings_refuse_a_prefix_that_would_break_the_hash_tag(prefix: str) -> None:
    with pytest.raises(ValidationError, match="key_prefix"):
        Settings(key_prefix=prefix)


@pytest.mark.parametrize("prefix", ["hubbub", "t1", "a:b", "my-app.prod"])
def test_settings_accept_plain_prefixes(prefix: str) -> None:
    assert Settings(key_prefix=prefix).key_prefix == prefix


def test_settings_read_the_prefix_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBBUB_KEY_PREFIX", "x{y}")
    with pytest.raises(ValidationError, match="key_prefix"):
        Settings()


def test_membership_scripts_take_their_keys_from_the_schema() -> None:
    """Lua never spells a key: no kind marker or separator literal, no hash tag, no prefix
    argument; every key (or family prefix of the hub's slot) arrives through KEYS."""
    from hubbub.redis import membership

    scripts = [v for n, v in vars(membership).items() if n.startswith("_") and isinstance(v, str)]
    assert len(scripts) >= 7
    markers = [
        keys.CONNECTION_GROUPS, keys.GROUP_CONNECTIONS, keys.GROUP_GATEWAYS,
        keys.USER_CONNECTIONS, keys.USER_GATEWAYS, keys.USER_GROUPS, keys.GATEWAY_CONNECTIONS,
    ]  # fmt: skip
    for script in scripts:
        for marker in markers:
            assert f"'{marker}'" not in script and f"':{marker}:'" not in script
        assert "':'" not in script and "{" not in script.replace("{}", "")
        assert "base" not in script
