"""Identity-provider client tokens: RS256/ES256 (and kin) JWTs verified against a JWKS.

An OIDC provider signs client tokens with keys it publishes as a JSON Web Key Set at
``HUBBUB_JWKS_URL``. :class:`JwksVerifier` owns that key set: it fetches it at startup and every
``HUBBUB_JWKS_REFRESH_INTERVAL`` seconds, and again when a token names a ``kid`` it does not
know, at most once per ``HUBBUB_JWKS_REFRESH_MIN_INTERVAL`` however many clients ask (callers
arriving during a fetch share it). Fetches use ``httpx.AsyncClient``, never blocking the event
loop, with a time limit for the whole fetch and a size limit on the body.

Which path a token takes is decided by its header's ``alg`` (:func:`is_idp_token`): an
asymmetric algorithm goes here, anything else (HS256/HS512, ``none``, garbage) to the
access-key path (:func:`hubbub.tokens.verify_client_token`), which accepts only HMAC. A key
verifies only with its own algorithm (the JWK's ``alg``, else RS256 for RSA and ES256/384/512 by
curve for EC; PyJWT binds it), so a token cannot choose how a key is used: no HS token is ever
checked against a public key, and no RSA key verifies an EC signature.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from hubbub.settings import Settings
from hubbub.tokens import ClientIdentity, TokenError, client_identity

log = logging.getLogger("hubbub.identity")

# Asymmetric algorithms an IdP token may name. Each key still verifies only its own one.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
# Largest JWKS body read: real ones are a few KiB (a handful of keys, perhaps with x5c chains).
MAX_JWKS_BYTES = 256 * 1024
LEEWAY = 30  # seconds of clock skew allowed on exp / nbf / iat, as for access-key tokens


class IdentityProviderUnavailable(Exception):
    """No cached key matches the token and the JWKS cannot be fetched: not the client's fault,
    so the gateway answers 503 rather than 401."""


def is_idp_token(token: str) -> bool:
    """Whether the token's (unverified) header names an asymmetric algorithm, i.e. the token is
    for :class:`JwksVerifier`. Anything else goes to the access-key path, which takes only
    HMAC: the header chooses the path, never the key an algorithm is used with."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return False
    return alg in ALGORITHMS


def usable_keys(document: object) -> dict[str | None, PyJWK]:
    """The signing keys of a JWKS document by ``kid`` (None: a key without one). Encryption
    keys, symmetric keys and keys whose algorithm is not in :data:`ALGORITHMS` are skipped; a
    document with none left is an error (``ValueError`` or ``jwt.PyJWTError``)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set (no 'keys' list)")
    candidates = [
        k
        for k in document["keys"]
        if isinstance(k, dict) and k.get("use", "sig") == "sig" and k.get("kty") in ("RSA", "EC")
    ]
    keys = {k.key_id: k for k in PyJWKSet(candidates) if k.algorithm_name in ALGORITHMS}
    if not keys:
        raise ValueError("no usable signing key")
    return keys


class JwksVerifier:
    """Verifies identity-provider tokens against the provider's published keys, cached."""

    def __init__(
        self,
        url: str,
        issuer: str,
        audience: str,
        user_claim: str = "sub",
        *,
        min_interval: float = 30.0,
        refresh_interval: float = 300.0,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.issuer = issuer
        self.audience = audience
        self.user_claim = user_claim
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._clock = clock
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._keys: dict[str | None, PyJWK] = {}
        self._attempted_at = -math.inf  # monotonic time of the last fetch started
        self._fetched_at: float | None = None  # ... and of the last one that succeeded
        self._last_error: str | None = None  # why the last fetch failed (None: it did not)
        self._fetch: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.fetches = 0  # fetches started, for status and tests

    @classmethod
    def from_settings(cls, settings: Settings) -> JwksVerifier | None:
        """The verifier ``HUBBUB_JWKS_URL`` asks for, or None when it is unset."""
        if not settings.jwks_url:
            return None
        assert settings.jwt_issuer and settings.jwt_audience  # the settings validator insists
        return cls(
            settings.jwks_url,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.user_claim,
            min_interval=settings.jwks_refresh_min_interval,
            refresh_interval=settings.jwks_refresh_interval,
            timeout=settings.jwks_fetch_timeout,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Fetch the keys once and keep them fresh. A failed first fetch is logged, not raised:
        access-key clients and the REST API do not depend on the provider."""
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def aclose(self) -> None:
        tasks = [t for t in (self._refresher, self._fetch) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_http:
            await self._http.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            failing = self._last_error is not None
            # After a failure, try again as soon as the rate limit allows (at least 1 s apart).
            await asyncio.sleep(max(self.min_interval, 1.0) if failing else self.refresh_interval)
            await self.refresh()

    # ------------------------------------------------------------------ fetching

    async def refresh(self) -> None:
        """Fetch the JWKS now; callers arriving while a fetch runs wait for that one. Never
        raises: a failure keeps the keys already cached and is recorded for :meth:`status`."""
        if self._fetch is None:
            self._attempted_at = self._clock()  # before any await: concurrent callers see it
            self._fetch = asyncio.create_task(self._fetch_once(), name="jwks-fetch")
            self._fetch.add_done_callback(self._fetch_done)
        # Shielded: one caller giving up (a client hanging up) does not cancel the others'.
        await asyncio.shield(self._fetch)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._fetch is task:
            self._fetch = None

    async def _fetch_once(self) -> None:
        self.fetches += 1
        try:
            body = await self._download()
            keys = usable_keys(json.loads(body))
        except (httpx.HTTPError, TimeoutError, ValueError, TypeError, jwt.PyJWTError) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "JWKS fetch from %s failed (%d keys still cached): %s",
                self.url,
                len(self._keys),
                self._last_error,
            )
            return
        except Exception as exc:  # a bug here must not fail every client request (a 500)
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("JWKS fetch from %s failed unexpectedly", self.url)
            return
        if set(keys) != set(self._keys):
            log.info("JWKS from %s: key ids %s", self.url, sorted(map(str, keys)))
        # Replaced, not merged: a key the provider stopped publishing is no longer trusted.
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_error = None

    async def _download(self) -> bytes:
        """The JWKS body: status 200, at most :data:`MAX_JWKS_BYTES`, within the timeout (the
        whole download: a server dripping bytes cannot hold a fetch open)."""
        async with asyncio.timeout(self.timeout):
            async with self._http.stream(
                "GET", self.url, headers={"accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)

    # ------------------------------------------------------------------ verifying

    def _key(self, kid: str | None) -> PyJWK | None:
        if kid is None:  # allowed only when the provider publishes a single key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token: signed by a published key with that key's algorithm,
        ``iss`` and ``aud`` as configured, not expired, with the user claim. Raises
        :class:`~hubbub.tokens.TokenError` (the client's fault: 401) or
        :class:`IdentityProviderUnavailable` (the keys cannot be had: 503)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("invalid token: kid must be a string")
        key = self._key(kid)
        if key is None:
            # An unknown kid may be a key the provider just added: refetch, at most once per
            # min_interval (or join the fetch under way), so made-up kids cannot flood the IdP.
            if self._fetch is not None or self._clock() - self._attempted_at >= self.min_interval:
                await self.refresh()
                key = self._key(kid)
            if key is None:
                if self._last_error is not None:
                    raise IdentityProviderUnavailable(
                        "the identity provider's keys cannot be fetched; try again later"
                    )
                raise TokenError(f"token signing key {kid!r} is not published by the provider")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=sorted(ALGORITHMS),  # and PyJWT requires alg == the key's algorithm
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", self.user_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token has expired") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError just in case
            raise TokenError(f"invalid token: {exc}") from None
        return claims

    async def identify(self, token: str, hub: str) -> ClientIdentity:
        """:meth:`verify`, then read the claims as access-key tokens are read (hub, roles), the
        user id from the configured user claim."""
        return client_identity(await self.verify(token), hub, (self.user_claim,))

    def status(self) -> dict[str, object]:
        """For the health endpoint: how many keys are cached, how old they are, and why the
        last fetch failed (if it did)."""
        age = None if self._fetched_at is None else round(self._clock() - self._fetched_at, 1)
        return {
            "keys": len(self._keys),
            "age": age,
            "error": self._last_error,
            "state": "ok" if self._keys and self._last_error is None else "degraded",
        }
