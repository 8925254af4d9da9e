"""Validation of hub, group, user and connection names, shared by REST and WebSocket edges."""

from __future__ import annotations

import re

# Azure SignalR Service hub names; matched case-insensitively, so we store them lowercased.
_HUB = re.compile(r"[A-Za-z][A-Za-z0-9_`,.\[\]]{0,127}")
_CONNECTION = re.compile(r"[A-Za-z0-9_\-]{1,128}")
MAX_GROUP_LENGTH = 1024
MAX_USER_LENGTH = 1024


class InvalidName(ValueError):
    """A name that cannot be used; the message says why, for the HTTP error body."""


def hub_name(raw: str, application: str | None = None) -> str:
    """Canonical hub name: ``{application}_{hub}``, lowercased, as the Azure SDK does."""
    name = f"{application}_{raw}" if application else raw
    if not _HUB.fullmatch(name):
        raise InvalidName(
            f"invalid hub name {name[:140]!r}: start with a letter, then up to 127 of "
            "letters, digits and _`,.[]"
        )
    return name.lower()


def group_name(raw: str) -> str:
    if not raw or len(raw) > MAX_GROUP_LENGTH or raw.isspace():
        raise InvalidName("group name must be 1-1024 characters and not all whitespace")
    if not _utf8(raw):
        raise InvalidName("group name must be valid Unicode (no lone surrogates)")
    return raw


def user_id(raw: str) -> str:
    if not raw or len(raw) > MAX_USER_LENGTH or raw.isspace():
        raise InvalidName("user id must be 1-1024 characters and not all whitespace")
    if not _utf8(raw):
        raise InvalidName("user id must be valid Unicode (no lone surrogates)")
    return raw


def _utf8(raw: str) -> bool:
    """A JSON string may spell a lone surrogate (``"\\ud800"``), which Python decodes into a
    ``str`` that no UTF-8 key, frame or log line can carry."""
    if raw.isascii():
        return True
    try:
        raw.encode()
    except UnicodeEncodeError:
        return False
    return True


def connection_id(raw: str) -> str:
    if not _CONNECTION.fullmatch(raw):
        raise InvalidName("connection id must be 1-128 characters of A-Z a-z 0-9 _ -")
    return raw


MAX_IDEMPOTENCY_KEY_LENGTH = 128


def idempotency_key(raw: str) -> str:
    """A caller's ``Idempotency-Key``: 1-128 printable ASCII characters (it becomes part of a
    Redis key; UUIDs and request ids fit)."""
    if not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY_LENGTH or not (raw.isascii() and raw.isprintable()):
        raise InvalidName(
            f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return raw
