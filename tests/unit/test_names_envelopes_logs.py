"""Name validation, the Redis stream envelopes, and secret redaction in logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from hubbub import logs
from hubbub.logs import RedactingFilter, redact
from hubbub.protocol import names
from hubbub.protocol.names import InvalidName
from hubbub.wire.envelopes import (
    ControlEntry,
    Fields,
    Kind,
    MessageEntry,
    Op,
    decode_entry,
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


def as_read_back(flat: list[bytes]) -> Fields:
    """What XREAD returns for an entry written with these fields (no decode_responses)."""
    assert all(isinstance(x, bytes) for x in flat)
    return dict(zip(flat[::2], flat[1::2], strict=True))


FRAME = b'{"type":1,"target":"Receive","arguments":["hi"]}\x1e'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class TestMessageEntry:
    @pytest.mark.parametrize(
        "entry",
        [
            MessageEntry(Kind.ALL, "chat", "", FRAME),
            MessageEntry(Kind.GROUP, "chat", "g1", FRAME, excluded=("c1", "c-2_x")),
            MessageEntry(Kind.USER, "app_chat", "user@example.com", FRAME, traceparent=TRACEPARENT),
            MessageEntry(Kind.CONNECTION, "chat", "c1", FRAME, ("c2",), TRACEPARENT),
            MessageEntry(Kind.GROUP, "chat", "a,b:{c}\u00e9", b"\x00\xff" + FRAME),
        ],
    )
    def test_round_trip(self, entry: MessageEntry) -> None:
        assert MessageEntry.decode(as_read_back(entry.fields())) == entry

    def test_field_layout(self) -> None:
        entry = MessageEntry(Kind.GROUP, "chat", "g1", FRAME, ("c1", "c2"), TRACEPARENT)
        assert as_read_back(entry.fields()) == {
            b"k": b"g",
            b"h": b"chat",
            b"t": b"g1",
            b"f": FRAME,
            b"x": b"c1,c2",
            b"tp": TRACEPARENT.encode(),
        }

    def test_optional_fields_are_omitted(self) -> None:
        fields = as_read_back(MessageEntry(Kind.ALL, "chat", "", FRAME).fields())
        assert set(fields) == {b"k", b"h", b"t", b"f"}
        entry = MessageEntry.decode(fields)
        assert entry.excluded == ()
        assert entry.traceparent is None

    def test_unknown_kind_refused(self) -> None:
        fields = as_read_back(MessageEntry(Kind.ALL, "chat", "", FRAME).fields())
        fields[b"k"] = b"?"
        with pytest.raises(ValueError):
            MessageEntry.decode(fields)

    def test_labels(self) -> None:
        assert [k.label for k in Kind] == ["all", "group", "user", "connection"]
        assert all(Kind.from_label(k.label) is k for k in Kind)


class TestInboxEntries:
    def test_from_a_delivery(self) -> None:
        entry = MessageEntry(Kind.GROUP, "chat", "g1", FRAME, ("c1", "c2"), TRACEPARENT)
        fields = as_read_back(entry.fields(b"1700000000000-0"))
        assert fields[b"m"] == b"1700000000000-0"
        assert decode_entry(fields) == MessageEntry(
            kind=Kind.GROUP,
            hub="chat",
            target="g1",
            frame=FRAME,
            excluded=("c1", "c2"),
            traceparent=TRACEPARENT,
            message_id=b"1700000000000-0",
        )

    def test_delivery_does_not_change_the_publish_fields(self) -> None:
        entry = MessageEntry(Kind.ALL, "chat", "", FRAME)
        entry.fields(b"1-0")
        assert b"m" not in as_read_back(entry.fields())

    def test_from_a_broadcast_without_exclusions(self) -> None:
        fields = as_read_back(MessageEntry(Kind.ALL, "chat", "", FRAME).fields(b"5-1"))
        assert decode_entry(fields) == MessageEntry(Kind.ALL, "chat", "", FRAME, message_id=b"5-1")

    def test_from_a_join_control_entry(self) -> None:
        fields = as_read_back(ControlEntry(Op.JOIN, "chat", ("c1", "c2"), target="g1").fields())
        assert decode_entry(fields) == ControlEntry(
            op=Op.JOIN, hub="chat", connections=("c1", "c2"), target="g1", reason=None
        )

    def test_from_a_close_control_entry_with_reason(self) -> None:
        entry = ControlEntry(Op.CLOSE, "chat", ("c1",), reason="kicked by admin")
        decoded = decode_entry(as_read_back(entry.fields()))
        assert isinstance(decoded, ControlEntry)
        assert decoded.op is Op.CLOSE
        assert decoded.target == ""
        assert decoded.connections == ("c1",)
        assert decoded.reason == "kicked by admin"

    def test_control_entry_with_no_connections(self) -> None:
        fields = as_read_back(ControlEntry(Op.LEAVE, "chat", (), target="g1").fields())
        decoded = decode_entry(fields)
        assert isinstance(decoded, ControlEntry) and decoded.connections == ()

    def test_mapping_is_the_same_fields(self) -> None:
        entry = ControlEntry(Op.LEAVE, "chat", ("a",), target="g1", reason="r")
        assert entry.mapping() == as_read_back(entry.fields())

    def test_from_a_hello(self) -> None:
        decoded = decode_entry(as_read_back(hello("gw-1").fields()))
        assert isinstance(decoded, ControlEntry)
        assert decoded.op is Op.HELLO
        assert decoded.hub == ""
        assert decoded.target == "gw-1"

    def test_kind_and_op_values_never_overlap(self) -> None:
        values = [k.value for k in Kind] + [o.value for o in Op]
        assert len(set(values)) == len(values)


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


class TestRateLimit:
    def test_lets_a_burst_through_then_the_rate_and_counts_the_rest(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        now = [100.0]
        monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
        limit = logs.RateLimit(rate=2.0, burst=3)
        passed = [limit.filter(record("refused %d", n)) for n in range(10)]
        assert passed == [True] * 3 + [False] * 7
        now[0] += 0.5  # one token back at 2 a second
        rec = record("refused %d", 10)
        assert limit.filter(rec) is True
        assert rec.getMessage() == "refused 10 (7 more refusals not logged)"
        assert limit.filter(record("refused %d", 11)) is False
        now[0] += 60  # refills to the burst, no more
        assert [limit.filter(record("x")) for _ in range(4)] == [True, True, True, False]

    def test_configure_puts_it_on_the_refusal_logger_only(self) -> None:
        refused = logging.getLogger(logs.REFUSALS)
        saved = refused.filters[:], logging.getLogger().handlers[:]
        try:
            logs.configure("info", "gateway", refusals_per_second=1, refusal_burst=5)
            limit, printable = refused.filters
            assert isinstance(limit, logs.RateLimit) and limit.burst == 5 and limit.rate == 1
            assert isinstance(printable, logs.Printable)  # after the limit: only lines kept
            logs.configure("info", "gateway")  # again: replaced, not stacked
            assert len(refused.filters) == 2
        finally:
            refused.filters[:], logging.getLogger().handlers[:] = saved


@pytest.mark.parametrize("check", [names.group_name, names.user_id])
@pytest.mark.parametrize("raw", ["\ud800", "a\udfffb", "ok\ud83d"])
def test_lone_surrogates_are_not_names(check: Callable[[str], str], raw: str) -> None:
    with pytest.raises(InvalidName, match="valid Unicode"):
        check(raw)


@pytest.mark.parametrize("check", [names.group_name, names.user_id])
def test_any_valid_unicode_is_a_name(check: Callable[[str], str]) -> None:
    assert check("caf\u00e9 \U0001f600 \u4e2d") == "caf\u00e9 \U0001f600 \u4e2d"
