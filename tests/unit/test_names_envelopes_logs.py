"""Name validation, the Redis stream envelopes, and secret redaction in logs."""

from __future__ import annotations

import logging

import pytest
from redis.typing import EncodableT, FieldT

from hubbub import logs
from hubbub.logs import RedactingFilter, redact
from hubbub.protocol import names
from hubbub.protocol.names import InvalidName
from hubbub.wire.envelopes import (
    MESSAGE_KINDS,
    Delivery,
    Fields,
    Kind,
    Publish,
    control,
    hello,
)

# ---------------------------------------------------------------- hub names


class TestHubName:
    def test_lowercased(self) -> None:
        assert names.hub_name("ChatRoom") == "chatroom"

    def test_application_prefix(self) -> None:
        assert names.hub_name("Chat", application="MyApp") == "myapp_chat"

    def test_empty_application_is_no_prefix(self) -> None:
        assert names.hub_name("chat", application="") == "chat"
        assert names.hub_name("chat", application=None) == "chat"

    @pytest.mark.parametrize("raw", ["a", "chat", "a1", "a_b", "a`b", "a,b", "a.b", "a[0]", "Z9"])
    def test_allowed_characters(self, raw: str) -> None:
        assert names.hub_name(raw) == raw.lower()

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "1chat",
            "_chat",
            "chat-room",
            "chat room",
            "chat/x",
            "chat:x",
            "chat{x}",
            "chat}",
            "ch\u00e4t",
            "chat\n",
            "\nchat",
            "chat%20",
        ],
    )
    def test_invalid_characters(self, raw: str) -> None:
        with pytest.raises(InvalidName, match="invalid hub name"):
            names.hub_name(raw)

    def test_invalid_application(self) -> None:
        with pytest.raises(InvalidName):
            names.hub_name("chat", application="1app")
        with pytest.raises(InvalidName):
            names.hub_name("chat", application="my-app")

    def test_length_128_accepted_129_refused(self) -> None:
        assert names.hub_name("a" * 128) == "a" * 128
        with pytest.raises(InvalidName):
            names.hub_name("a" * 129)

    def test_length_limit_counts_the_application_prefix(self) -> None:
        app = "app"  # "app_" takes 4 of the 128 characters
        assert names.hub_name("h" * 124, application=app) == "app_" + "h" * 124
        with pytest.raises(InvalidName):
            names.hub_name("h" * 125, application=app)

    def test_error_message_is_bounded(self) -> None:
        with pytest.raises(InvalidName) as info:
            names.hub_name("-" * 10_000)
        assert len(str(info.value)) < 300


# ---------------------------------------------------------------- group, user, connection


@pytest.mark.parametrize("check", [names.group_name, names.user_id])
class TestGroupAndUser:
    @pytest.mark.parametrize(
        "raw", ["g", " g ", "a:b", "{x}", "a,b", "\u00e9\U0001f600", "x" * 1024, "1"]
    )
    def test_accepted_verbatim(self, check: object, raw: str) -> None:
        assert callable(check)
        assert check(raw) == raw

    @pytest.mark.parametrize("raw", ["", " ", "\t\n", "\u3000", "x" * 1025])
    def test_refused(self, check: object, raw: str) -> None:
        assert callable(check)
        with pytest.raises(InvalidName, match="1-1024"):
            check(raw)


class TestConnectionId:
    @pytest.mark.parametrize("raw", ["a", "abc-DEF_123", "-", "_", "x" * 128])
    def test_accepted(self, raw: str) -> None:
        assert names.connection_id(raw) == raw

    @pytest.mark.parametrize(
        "raw", ["", "x" * 129, "a.b", "a b", "a,b", "a:b", "a=b", "\u00e9", "abc\n", "a/b"]
    )
    def test_refused(self, raw: str) -> None:
        with pytest.raises(InvalidName, match="connection id"):
            names.connection_id(raw)


# ---------------------------------------------------------------- envelopes


def as_read_back(fields: dict[FieldT, EncodableT]) -> Fields:
    """What XREAD returns for an entry written with these fields (no decode_responses)."""
    out: Fields = {}
    for key, value in fields.items():
        assert isinstance(key, bytes), key
        assert isinstance(value, bytes), (key, value)
        out[key] = value
    return out


FRAME = b'{"type":1,"target":"Receive","arguments":["hi"]}\x1e'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class TestPublish:
    @pytest.mark.parametrize(
        "publish",
        [
            Publish(Kind.ALL, "chat", "", FRAME),
            Publish(Kind.GROUP, "chat", "g1", FRAME, excluded=("c1", "c-2_x")),
            Publish(Kind.USER, "app_chat", "user@example.com", FRAME, traceparent=TRACEPARENT),
            Publish(Kind.CONNECTION, "chat", "c1", FRAME, ("c2",), TRACEPARENT),
            Publish(Kind.GROUP, "chat", "a,b:{c}\u00e9", b"\x00\xff" + FRAME),
        ],
    )
    def test_round_trip(self, publish: Publish) -> None:
        assert Publish.from_fields(as_read_back(publish.to_fields())) == publish

    def test_field_layout(self) -> None:
        fields = Publish(Kind.GROUP, "chat", "g1", FRAME, ("c1", "c2"), TRACEPARENT).to_fields()
        assert fields == {
            b"k": b"g",
            b"h": b"chat",
            b"t": b"g1",
            b"f": FRAME,
            b"x": b"c1,c2",
            b"tp": TRACEPARENT.encode(),
        }

    def test_optional_fields_are_omitted(self) -> None:
        fields = Publish(Kind.ALL, "chat", "", FRAME).to_fields()
        assert set(fields) == {b"k", b"h", b"t", b"f"}
        publish = Publish.from_fields(as_read_back(fields))
        assert publish.excluded == ()
        assert publish.traceparent is None

    def test_unknown_kind_refused(self) -> None:
        fields = as_read_back(Publish(Kind.ALL, "chat", "", FRAME).to_fields())
        fields[b"k"] = b"?"
        with pytest.raises(ValueError):
            Publish.from_fields(fields)


class TestDelivery:
    def test_from_a_delivery(self) -> None:
        publish = Publish(Kind.GROUP, "chat", "g1", FRAME, ("c1", "c2"), TRACEPARENT)
        fields = publish.delivery(b"1700000000000-0")
        assert fields[b"m"] == b"1700000000000-0"
        delivery = Delivery.from_fields(as_read_back(fields))
        assert delivery == Delivery(
            kind=Kind.GROUP,
            hub="chat",
            target="g1",
            message_id=b"1700000000000-0",
            frame=FRAME,
            connections=("c1", "c2"),
            reason=None,
            traceparent=TRACEPARENT,
        )
        assert delivery.kind in MESSAGE_KINDS

    def test_delivery_does_not_change_the_publish_fields(self) -> None:
        publish = Publish(Kind.ALL, "chat", "", FRAME)
        publish.delivery(b"1-0")
        assert b"m" not in publish.to_fields()

    def test_from_a_broadcast_without_exclusions(self) -> None:
        fields = Publish(Kind.ALL, "chat", "", FRAME).delivery(b"5-1")
        delivery = Delivery.from_fields(as_read_back(fields))
        assert delivery == Delivery(Kind.ALL, "chat", "", b"5-1", FRAME)

    def test_from_a_join_control_entry(self) -> None:
        fields = control(Kind.JOIN, "chat", ("c1", "c2"), target="g1")
        delivery = Delivery.from_fields(as_read_back(fields))
        assert delivery == Delivery(
            kind=Kind.JOIN,
            hub="chat",
            target="g1",
            message_id=b"",
            frame=b"",
            connections=("c1", "c2"),
            reason=None,
            traceparent=None,
        )
        assert delivery.kind not in MESSAGE_KINDS

    def test_from_a_close_control_entry_with_reason(self) -> None:
        fields = control(Kind.CLOSE, "chat", ("c1",), reason="kicked by admin")
        delivery = Delivery.from_fields(as_read_back(fields))
        assert delivery.kind is Kind.CLOSE
        assert delivery.target == ""
        assert delivery.connections == ("c1",)
        assert delivery.reason == "kicked by admin"

    def test_control_entry_with_no_connections(self) -> None:
        fields = control(Kind.LEAVE, "chat", (), target="g1")
        assert Delivery.from_fields(as_read_back(fields)).connections == ()

    def test_from_a_hello(self) -> None:
        delivery = Delivery.from_fields(as_read_back(hello("gw-1")))
        assert delivery.kind is Kind.HELLO
        assert delivery.hub == ""
        assert delivery.target == "gw-1"

    def test_message_kinds(self) -> None:
        assert {Kind.ALL, Kind.GROUP, Kind.USER, Kind.CONNECTION} == MESSAGE_KINDS
        assert len({k.value for k in Kind}) == len(Kind)


# ---------------------------------------------------------------- log redaction


class TestRedact:
    def test_hides_id_and_access_token_but_keeps_other_params(self) -> None:
        assert redact("/hubs/chat?id=abc&access_token=x.y.z&negotiateVersion=1") == (
            "/hubs/chat?id=***&access_token=***&negotiateVersion=1"
        )

    @pytest.mark.parametrize(
        "text",
        [
            "hid=1",
            "/x?hid=1&uid=2&valid=3",
            "connectionId=abc",
            "/negotiate?negotiateVersion=1",
            "access_tokens_issued=3",
            "plain text without params",
        ],
    )
    def test_leaves_other_params_alone(self, text: str) -> None:
        assert redact(text) == text

    def test_case_insensitive_and_keeps_the_name(self) -> None:
        assert redact("?ID=abc&Access_Token=t") == "?ID=***&Access_Token=***"

    def test_value_ends_at_space_or_quote(self) -> None:
        line = '127.0.0.1 - "GET /hubs/chat?id=c1.mac&access_token=e.y.J HTTP/1.1" 101'
        assert redact(line) == '127.0.0.1 - "GET /hubs/chat?id=***&access_token=*** HTTP/1.1" 101'
        assert redact("url='/x?id=abc' next") == "url='/x?id=***' next"

    def test_every_occurrence(self) -> None:
        text = "a?id=1 b?id=2&access_token=3 c?access_token=4"
        assert redact(text) == "a?id=*** b?id=***&access_token=*** c?access_token=***"

    def test_empty_value(self) -> None:
        assert redact("?id=&x=1") == "?id=***&x=1"


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)


class TestRedactingFilter:
    def test_redacts_formatted_message(self) -> None:
        rec = record('"%s %s"', "GET", "/hubs/chat?id=c1&access_token=secret")
        assert RedactingFilter().filter(rec) is True
        assert rec.getMessage() == '"GET /hubs/chat?id=***&access_token=***"'
        assert "secret" not in rec.getMessage()

    def test_leaves_clean_records_untouched(self) -> None:
        rec = record("%s joined %s", "c1", "g1")
        assert RedactingFilter().filter(rec) is True
        assert rec.msg == "%s joined %s"
        assert rec.args == ("c1", "g1")


def test_configure_writes_redacted_lines(capsys: pytest.CaptureFixture[str]) -> None:
    # Saved and restored inside the call phase, so pytest's own capture handlers, which it
    # swaps per phase, are put back exactly as they were.
    root = logging.getLogger()
    names_ = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = root.handlers[:], root.level
    saved_uvicorn = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names_
    }
    try:
        logs.configure("debug", "gateway")
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1
        assert any(isinstance(f, RedactingFilter) for f in root.handlers[0].filters)
        assert logging.getLogger("uvicorn.access").propagate is True
        url = "/hubs/chat?id=conn-77&access_token=s3cr3t-jwt"
        logging.getLogger("uvicorn.access").info("GET %s 101", url)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for n, (handlers, propagate) in saved_uvicorn.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate
    err = capsys.readouterr().err
    assert "INFO gateway uvicorn.access: GET /hubs/chat?id=***&access_token=*** 101" in err
    assert "s3cr3t" not in err
    assert "conn-77" not in err
