"""Access tokens (JWT, HS256 with the access key) and signed connection tokens.

Service tokens authenticate internal callers of the REST API, with ``aud`` = the request URL,
as Azure SignalR Service does. Client tokens authenticate SignalR clients and carry the user id
and roles. Connection tokens let any gateway accept a WebSocket that another gateway
negotiated, with no shared state: the token is the connection id plus its HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt

ALGORITHMS = ["HS256", "HS512"]
JOIN_LEAVE_ROLE = "hubbub.joinLeaveGroup"
USER_CLAIMS = ("asrs.s.uid", "nameid", "sub")


class TokenError(Exception):
    """Why a token was refused; safe to show to the caller."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    user_id: str | None
    roles: frozenset[str]

    def may_join(self, group: str) -> bool:
        return JOIN_LEAVE_ROLE in self.roles or f"{JOIN_LEAVE_ROLE}.{group}" in self.roles


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case), or
    ``None`` for another scheme or no header: the one parser of REST and client requests."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def _decode(token: str, keys: tuple[str, ...]) -> dict[str, Any]:
    last: Exception | None = None
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.encode(),
                algorithms=ALGORITHMS,
                options={"require": ["exp"], "verify_aud": False},
                leeway=30,
            )
            return claims
        except jwt.InvalidSignatureError as exc:
            last = exc
            continue
        except jwt.ExpiredSignatureError:
            raise TokenError("token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
    raise TokenError(f"invalid token: {last}")


def _normalise_url(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.strip())
    return (
        parts.scheme.lower(),
        (parts.hostname or "").lower(),
        unquote(parts.path).rstrip("/").lower(),
    )


def verify_service_token(token: str, keys: tuple[str, ...], request_url: str) -> dict[str, Any]:
    """Check a REST caller's token; ``aud`` must name this request's URL.

    Compared on scheme, host and path, ignoring case, port, query and a trailing slash: the
    Azure docs say "URL without query" while the official SDK sends the query and drops the port.
    """
    claims = _decode(token, keys)
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    want = _normalise_url(request_url)
    if not any(isinstance(a, str) and _normalise_url(a) == want for a in audiences):
        raise TokenError("token audience does not match the request URL")
    return claims


class ServiceTokenVerifier:
    """:func:`verify_service_token` with a bounded memory of tokens already verified.

    Callers reuse one token for many requests (the Azure SDK keeps its token for minutes), and
    the signature check is a sizeable part of a publish. A remembered token is still checked
    for expiry and for its audience against each request's URL (whose normalised form is
    remembered too: a caller posts to a few URLs, over and over).
    """

    def __init__(self, keys: tuple[str, ...], capacity: int = 4096) -> None:
        self.keys = keys
        self.capacity = capacity
        self._known: dict[str, tuple[float, frozenset[tuple[str, str, str]]]] = {}
        self._urls: dict[str, tuple[str, str, str]] = {}

    def verify(self, token: str, request_url: str) -> None:
        known = self._known.get(token)
        now = time.time()
        if known is None or known[0] < now:
            claims = verify_service_token(token, self.keys, request_url)
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            normalised = frozenset(_normalise_url(a) for a in audiences if isinstance(a, str))
            if len(self._known) >= self.capacity:
                self._known.clear()  # crude but bounded; refilling costs one check per token
            self._known[token] = (float(claims["exp"]), normalised)
            return
        url = self._urls.get(request_url)
        if url is None:
            if len(self._urls) >= self.capacity:
                self._urls.clear()
            url = self._urls[request_url] = _normalise_url(request_url)
        if url not in known[1]:
            raise TokenError("token audience does not match the request URL")


def verify_client_token(token: str, keys: tuple[str, ...], hub: str) -> ClientIdentity:
    claims = _decode(token, keys)
    token_hub = claims.get("hub")
    if token_hub is not None and str(token_hub).lower() != hub:
        raise TokenError("token was issued for another hub")
    user = next((claims[c] for c in USER_CLAIMS if claims.get(c)), None)
    roles = claims.get("role")
    if isinstance(roles, str):
        roles = [roles]
    elif not isinstance(roles, list):
        roles = []  # absent or unusable: no roles
    return ClientIdentity(
        user_id=str(user) if user is not None else None,
        roles=frozenset(r for r in roles if isinstance(r, str)),
    )


def mint_token(
    key: str,
    audience: str,
    *,
    minutes: float = 60,
    user_id: str | None = None,
    hub: str | None = None,
    roles: list[str] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"aud": audience, "iat": now, "exp": now + int(minutes * 60)}
    if user_id is not None:
        claims["sub"] = user_id
    if hub is not None:
        claims["hub"] = hub
    if roles:
        claims["role"] = roles
    return jwt.encode(claims, key.encode(), algorithm="HS256")


# ---------------------------------------------------------------- connection tokens


def new_connection_id() -> str:
    return secrets.token_urlsafe(16)


def _mac(key: str, connection_id: str) -> str:
    digest = hmac.new(key.encode(), b"conn:" + connection_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def connection_token(key: str, connection_id: str) -> str:
    """URL-safe: the JS client appends it to the WebSocket URL without encoding."""
    return f"{connection_id}.{_mac(key, connection_id)}"


def open_connection_token(token: str, keys: tuple[str, ...]) -> str | None:
    """The connection id inside a token this deployment signed, else ``None``."""
    connection_id, dot, mac = token.rpartition(".")
    if not dot or not connection_id:
        return None
    for key in keys:
        # Bytes, not str: compare_digest refuses non-ASCII strings, and the id is client input.
        if hmac.compare_digest(_mac(key, connection_id).encode(), mac.encode()):
            return connection_id
    return None
