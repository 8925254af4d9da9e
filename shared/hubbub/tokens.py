"""Access tokens (JWT, HS256 with the access key) and signed connection tokens.

Service tokens authenticate internal callers of the REST API, with ``aud`` = the request URL,
as Azure SignalR Service does. Client tokens authenticate SignalR clients and carry the user id
and roles. Connection ids carry their own MAC over hub and user, and connection tokens add an
expiry: any gateway accepts a WebSocket that another gateway negotiated, with no shared state,
and only from the user it was negotiated for (see below).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt
import orjson

from hubbub.protocol import names
from hubbub.urls import PublicOrigins, escape_segment, is_url_text, routed_path, segment_value

ALGORITHMS = ["HS256", "HS512"]
JOIN_LEAVE_ROLE = "hubbub.joinLeaveGroup"
USER_CLAIMS = ("asrs.s.uid", "nameid", "sub")
ANY_ORIGIN = PublicOrigins()  # no HUBBUB_PUBLIC_URLS: audiences on any origin


class TokenError(Exception):
    """Why a token was refused; safe to show to the caller."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    user_id: str | None
    roles: frozenset[str]
    # The token's claims as JSON, for upstream entries (not part of who the client is).
    claims: bytes = field(default=b"{}", compare=False)

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


# ---------------------------------------------------------------- audiences
#
# A service token's ``aud`` binds one REST target: the request's routed path (each segment
# percent-decoded once, compared exactly; :mod:`hubbub.urls`) with its hub segment folded to
# the canonical hub (``?application=`` its prefix, lower case, as hub names are matched), on
# one of the public origins (``HUBBUB_PUBLIC_URLS``; none configured: any). The rest of the
# query (``api-version``, which the Azure SDKs sign) is not part of the target.

_HUB_PREFIXES = (["", "api", "hubs"], ["", "api", "v1", "hubs"])


def rest_target(path: str, application: str | None = None) -> str:
    """The target a REST request at routed ``path`` acts on, as audiences are compared: the
    path with the segment after ``/api/hubs/`` (or ``/api/v1/hubs/``) replaced by the canonical
    hub it names, so ``/api/hubs/Chat?application=App`` and ``/api/hubs/app_chat`` are one."""
    segments = path.split("/")
    for prefix in _HUB_PREFIXES:
        n = len(prefix)
        if len(segments) > n and segments[:n] == prefix:
            hub = segment_value(segments[n])
            if application:
                hub = f"{application}_{hub}"
            if hub.isascii():  # hub names are ASCII; nothing else is case-folded
                hub = hub.lower()
            segments[n] = escape_segment(hub)
            return "/".join(segments)
    return path


def audience_target(audience: object, origins: PublicOrigins) -> str | None:
    """The REST target a service token's audience names, or ``None`` if it names none (not a
    URL as sent, not http(s), or not on a public origin)."""
    if not isinstance(audience, str) or not is_url_text(audience):
        return None
    parts = urlsplit(audience)
    if parts.fragment or not origins.admits(parts):
        return None
    application = None
    for key, value in parse_qsl(parts.query):
        if key == "application":
            application = value  # the last one, as the gateway reads the request's
    return rest_target(routed_path(parts.path), application)


def _audiences(claims: dict[str, Any]) -> list[object]:
    aud = claims.get("aud")
    return aud if isinstance(aud, list) else [aud]


def verify_service_token(
    token: str,
    keys: tuple[str, ...],
    path: str,
    application: str | None = None,
    origins: PublicOrigins = ANY_ORIGIN,
) -> dict[str, Any]:
    """Check a REST caller's token: ``aud`` must name the target of this request, at routed
    ``path`` with ``?application=`` ``application`` (see :func:`rest_target`)."""
    claims = _decode(token, keys)
    want = rest_target(path, application)
    if not any(audience_target(a, origins) == want for a in _audiences(claims)):
        raise TokenError("token audience does not match the request URL")
    return claims


class ServiceTokenVerifier:
    """:func:`verify_service_token` with a bounded memory of tokens already verified.

    Callers reuse one token for many requests (the Azure SDK keeps its token for minutes), and
    the signature check is a sizeable part of a publish. A remembered token is still checked
    for expiry and for its audience against each request's target: two dict lookups, as the
    token's targets and each (path, application)'s target are remembered (a caller posts to a
    few URLs, over and over).
    """

    def __init__(
        self, keys: tuple[str, ...], capacity: int = 4096, public_urls: Sequence[str] = ()
    ) -> None:
        self.keys = keys
        self.capacity = capacity
        self.origins = PublicOrigins(public_urls)
        self._known: dict[str, tuple[float, frozenset[str | None]]] = {}
        self._targets: dict[tuple[str, str | None], str] = {}

    def verify(self, token: str, path: str, application: str | None = None) -> None:
        """Raise :class:`TokenError` unless ``token`` may act on routed ``path``."""
        target = self._targets.get((path, application))
        if target is None:
            if len(self._targets) >= self.capacity:
                self._targets.clear()
            target = self._targets[path, application] = rest_target(path, application)
        known = self._known.get(token)
        if known is None or known[0] < time.time():
            claims = _decode(token, self.keys)
            targets = frozenset(audience_target(a, self.origins) for a in _audiences(claims))
            if len(self._known) >= self.capacity:
                self._known.clear()  # crude but bounded; refilling costs one check per token
            known = self._known[token] = (float(claims["exp"]), targets)
        if target not in known[1]:
            raise TokenError("token audience does not match the request URL")


def verify_client_token(
    token: str, keys: tuple[str, ...], hub: str, origins: PublicOrigins = ANY_ORIGIN
) -> ClientIdentity:
    return _verify_client(token, keys, hub, origins)[1]


def _verify_client(
    token: str, keys: tuple[str, ...], hub: str, origins: PublicOrigins
) -> tuple[float, ClientIdentity]:
    """The token's ``exp`` and who it says the client is on ``hub``."""
    claims = _decode(token, keys)
    if not _names_client_endpoint(claims.get("aud"), hub, origins):
        raise TokenError(
            "token audience must name a client endpoint (<endpoint>/client/?hub=<hub> or "
            "<endpoint>/hubs/<hub>): REST tokens do not open client connections"
        )
    return float(claims["exp"]), client_identity(claims, hub)


class ClientTokenVerifier:
    """:func:`verify_client_token` with a bounded memory of the identities already verified.

    A SignalR client shows its token twice per connection (at negotiate and at the upgrade)
    and again on every reconnect, and a check costs about 108 µs (``timeit``; 9 % of a
    gateway's samples while 10,000 clients connected, py-spy). Only tokens that passed every
    check are remembered, keyed by the whole token (signature included) and the hub, so a
    forged or altered token never matches; a remembered one is still refused once its
    ``exp`` has passed.
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        capacity: int = 4096,
        public_urls: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.capacity = capacity
        self.origins = PublicOrigins(public_urls)
        self.clock = clock
        self._known: dict[tuple[str, str], tuple[float, ClientIdentity]] = {}

    def verify(self, token: str, hub: str) -> ClientIdentity:
        """Who ``token`` says the client is on canonical ``hub``; :class:`TokenError` if
        it may not open a connection there."""
        known = self._known.get((token, hub))
        if known is None or known[0] < self.clock():
            known = _verify_client(token, self.keys, hub, self.origins)
            if len(self._known) >= self.capacity:
                self._known.clear()  # crude but bounded; refilling costs one check per token
            self._known[token, hub] = known
        return known[1]


def client_identity(
    claims: dict[str, Any], hub: str, user_claims: tuple[str, ...] = USER_CLAIMS
) -> ClientIdentity:
    """Who verified ``claims`` say the client is on ``hub``: the optional ``hub`` claim, the
    user id (the first of ``user_claims`` present, through the name check) and the ``role``s.
    Shared by access-key tokens and identity-provider tokens (:mod:`hubbub.identity`), so
    both are read the same way."""
    token_hub = claims.get("hub")
    if token_hub is not None and str(token_hub).lower() != hub:
        raise TokenError("token was issued for another hub")
    user = next((claims[c] for c in user_claims if claims.get(c)), None)
    if user is not None:
        try:
            user = names.user_id(str(user))
        except names.InvalidName as exc:
            raise TokenError(f"token's user id: {exc}") from None
    roles = claims.get("role")
    if isinstance(roles, str):
        roles = [roles]
    elif not isinstance(roles, list):
        roles = []  # absent or unusable: no roles
    return ClientIdentity(
        user_id=str(user) if user is not None else None,
        roles=frozenset(r for r in roles if isinstance(r, str)),
        claims=orjson.dumps(claims, default=str),
    )


def _names_client_endpoint(aud: object, hub: str, origins: PublicOrigins) -> bool:
    """Azure's client audiences: ``<endpoint>/client/?hub=<hub>`` (the hub query optional) and
    ``<endpoint>/hubs/<hub>``; the path compared after one percent-decoding, the hub
    case-insensitively. The endpoint must be one of ``origins`` when ``HUBBUB_PUBLIC_URLS``
    configures them; otherwise it is not checked (gateways sit behind load balancers)."""
    for audience in aud if isinstance(aud, list) else [aud]:
        if not isinstance(audience, str):
            continue
        parts = urlsplit(audience.strip())
        if origins and not origins.admits(parts):
            continue
        path = unquote(parts.path).rstrip("/")
        if path.endswith("/client") or path == "client":
            wanted = [v for k, v in parse_qsl(parts.query) if k == "hub"]
            if all(v.lower() == hub for v in wanted):
                return True
        elif path.lower().endswith(f"/hubs/{hub}"):
            return True
    return False


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


# ---------------------------------------------------------------- connection ids and tokens
#
# A connection id is never a capability on its own: it carries its own MAC, bound to the hub and
# the user it was issued to, so only that user can open it, on that hub.
#
#   connection id     = R + M            R: 22 chars, 16 random bytes (base64url, no padding)
#                                        M: 16 chars, HMAC-SHA256(key, label, hub, R, user)[:12]
#   connection token  = id "." E "." T   E: expiry, Unix seconds (decimal)
#                                        T: 24 chars, HMAC-SHA256(key, id, E)[:18]
#
# Both are URL-safe; the id stays within the connection id charset ``[A-Za-z0-9_-]``. Version 0
# clients (pysignalr, signalrcore) send the id itself as ``?id=``; the JS client (version 1)
# sends the token, whose id is minted with another label, so that id is only accepted inside
# an unexpired token. The primary access key signs; the primary and secondary keys verify.
#
# Anonymous clients (no user claim) get ids bound to the hub and to "no user" (the empty user):
# such an id is only as secret as the id itself (128 random bits), and it is never accepted
# for a client with a user.

_RANDOM_CHARS = 22  # 16 bytes in base64url without padding
_ID_MAC_BYTES = 12  # 16 chars
_TOKEN_MAC_BYTES = 18  # 24 chars
_ID_LABELS = {False: b"hubbub.connection-id.v0\0", True: b"hubbub.connection-id.v1\0"}
_TOKEN_LABEL = b"hubbub.connection-token\0"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _id_mac(key: str, hub: str, user: str | None, random: str, in_token: bool) -> str:
    # hub has no NUL (hub names are checked) and random has a fixed length: unambiguous.
    message = b"".join(
        (
            _ID_LABELS[in_token],
            hub.encode(),
            b"\0",
            random.encode(),
            b"\0",
            (user or "").encode("utf-8", "surrogatepass"),
        )
    )
    return _b64(hmac.new(key.encode(), message, hashlib.sha256).digest()[:_ID_MAC_BYTES])


def new_connection_id(key: str, hub: str, user: str | None, *, in_token: bool = False) -> str:
    """A fresh connection id for ``user`` (None: anonymous) on ``hub``, signed with ``key``.

    ``in_token``: the id of a version 1 negotiation, accepted only inside a connection token
    (:func:`open_connection_token`), never bare."""
    random = _b64(secrets.token_bytes(16))
    return random + _id_mac(key, hub, user, random, in_token)


def verify_connection_id(
    connection_id: str, keys: tuple[str, ...], hub: str, user: str | None, *, in_token: bool = False
) -> bool:
    """Whether ``connection_id`` was issued by this deployment to ``user`` on ``hub``."""
    if len(connection_id) != _RANDOM_CHARS + 16 or not connection_id.isascii():
        return False
    random, mac = connection_id[:_RANDOM_CHARS], connection_id[_RANDOM_CHARS:].encode()
    # Every key is tried (no early exit): the time taken does not say which key matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(_id_mac(key, hub, user, random, in_token).encode(), mac)
    return ok


def _token_mac(key: str, connection_id: str, expires: str) -> str:
    message = b"".join((_TOKEN_LABEL, connection_id.encode(), b".", expires.encode()))
    return _b64(hmac.new(key.encode(), message, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES])


def connection_token(
    key: str, connection_id: str, ttl: float, now: float | None = None, *, resumable: bool = False
) -> str:
    """The version 1 connection token: the id, its expiry (``ttl`` seconds from now) and their
    MAC. URL-safe: the JS client appends it to the WebSocket URL without encoding.

    ``resumable``: the client negotiated stateful reconnect; the mark (``r`` after the
    expiry) is under the MAC, so it says so to whichever gateway the client reaches."""
    expires = str(math.ceil((time.time() if now is None else now) + ttl))
    if resumable:
        expires += "r"
    return f"{connection_id}.{expires}.{_token_mac(key, connection_id, expires)}"


@dataclass(frozen=True, slots=True)
class ConnectionToken:
    """What a verified connection token says."""

    connection_id: str
    resumable: bool  # negotiated with stateful reconnect
    expired: bool  # too late for a new connection; a resumable one may still re-attach


def read_connection_token(
    token: str, keys: tuple[str, ...], hub: str, user: str | None, now: float | None = None
) -> ConnectionToken:
    """A token this deployment signed for ``user`` on ``hub``, expired or not. Raises
    :class:`TokenError` (the message is safe to show) if it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        raise TokenError("invalid connection token")
    connection_id, expires, mac = parts
    digits = expires.removesuffix("r")
    if not digits.isdigit() or len(digits) > 12:
        raise TokenError("invalid connection token")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(_token_mac(key, connection_id, expires).encode(), mac.encode())
    if not ok or not verify_connection_id(connection_id, keys, hub, user, in_token=True):
        raise TokenError("invalid connection token")
    expired = int(digits) < (time.time() if now is None else now)
    return ConnectionToken(connection_id, digits != expires, expired)


def open_connection_token(
    token: str, keys: tuple[str, ...], hub: str, user: str | None, now: float | None = None
) -> str:
    """The connection id inside a token this deployment signed for ``user`` on ``hub``, if
    it has not expired. Raises :class:`TokenError` (the message is safe to show)."""
    opened = read_connection_token(token, keys, hub, user, now)
    if opened.expired:
        raise TokenError("connection token has expired")
    return opened.connection_id
