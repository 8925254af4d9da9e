"""Identity-provider tokens (issue 9): RS256/ES256 client tokens verified against a JWKS.

A loopback JWKS server (tests/support/idp.py) plays the provider; the test controls what it
publishes and counts its requests. The gateway tests run a real gateway process; the
verifier tests drive :class:`hubbub.identity.JwksVerifier` in this process, with a clock of
their own where the rate limit is the point.

Waiting for the refetch window is waiting for a time the mechanism defines (the last JWKS
request's arrival + the interval), not a guess: the gateway records its attempt before the
request leaves, so by then it will refetch.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.identity import MAX_JWKS_BYTES, IdentityProviderUnavailable, JwksVerifier
from hubbub.sdk.client import HubbubClient
from hubbub.settings import Settings
from hubbub.tokens import TokenError
from tests.support.idp import AUDIENCE, ISSUER, JwksServer, SigningKey, hand_made_token
from tests.support.processes import ACCESS_KEY, Deployment, Proc
from tests.support.rawclient import RawClient, client_token

INTERVAL = 1.0  # HUBBUB_JWKS_REFRESH_MIN_INTERVAL in these tests (30 s by default)


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rsa_a() -> SigningKey:
    return SigningKey.rsa("rsa-a")


@pytest.fixture(scope="module")
def rsa_b() -> SigningKey:
    return SigningKey.rsa("rsa-b")


@pytest.fixture(scope="module")
def ec_a() -> SigningKey:
    return SigningKey.ec("ec-a")


def user_token(key: SigningKey, user: str, **claims: Any) -> str:
    """The user id in ``oid`` (HUBBUB_USER_CLAIM here) and something else in ``sub``, so the
    test sees which claim the gateway used."""
    return key.token(sub=f"subject-of-{user}", oid=user, **claims)


async def start_idp_gateway(deployment: Deployment, jwks: JwksServer, **env: str) -> Proc:
    return await deployment.start_gateway(
        HUBBUB_JWKS_URL=jwks.url,
        HUBBUB_JWT_ISSUER=ISSUER,
        HUBBUB_JWT_AUDIENCE=AUDIENCE,
        HUBBUB_USER_CLAIM="oid",
        HUBBUB_JWKS_REFRESH_MIN_INTERVAL=str(INTERVAL),
        HUBBUB_JWKS_FETCH_TIMEOUT="2",
        **env,
    )


async def negotiate(base: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{base}/hubs/chat/negotiate?negotiateVersion=1",
            headers={"Authorization": f"Bearer {token}"},
        )


async def upgrade_refused(base: str, token: str) -> int:
    """The status of a refused WebSocket upgrade (fails if the upgrade is accepted)."""
    url = base.replace("http://", "ws://") + f"/hubs/chat?access_token={token}"
    with pytest.raises(InvalidStatus) as refused:
        ws = await websockets.connect(url, ping_interval=None)
        await ws.close()
    return refused.value.response.status_code


async def refetch_allowed(jwks: JwksServer, interval: float = INTERVAL) -> None:
    """Until the gateway may fetch again: ``interval`` after the last request arrived."""
    await asyncio.sleep(max(0.0, jwks.last + interval + 0.05 - time.monotonic()))


def refused(r: httpx.Response, words: str, status: int = 401) -> None:
    assert r.status_code == status, r.text
    assert words in r.json()["message"], r.text


# ------------------------------------------------------------------ a real gateway


async def test_rs256_and_es256_clients_connect_as_the_user_claim_beside_access_key_clients(
    deployment: Deployment, jwks: JwksServer, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    jwks.publish(rsa_a, ec_a, with_alg=False)  # as many IdPs publish: the type says
    gateway = await start_idp_gateway(deployment, jwks)
    deployment.start_worker()
    assert jwks.count == 1  # fetched at startup

    alice = await RawClient.connect(gateway.url, token=user_token(rsa_a, "alice"))
    bob = await RawClient.connect(
        gateway.url, token=user_token(ec_a, "bob", role=["hubbub.joinLeaveGroup.vip"])
    )
    carol = await RawClient.connect(gateway.url, token=client_token("carol"))  # access key
    assert jwks.count == 1  # known kids: no fetch

    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        # The user ids are the oid claims, not sub: a send to "alice" reaches alice only.
        assert await api.user_exists("alice") and await api.user_exists("bob")
        assert not await api.user_exists("subject-of-alice")
        await api.send_to_user("alice", "m", ["for alice"])
        await api.send_to_user("bob", "m", ["for bob"])
        await api.send_to_user("carol", "m", ["for carol"])
        assert (await alice.recv())["arguments"] == ["for alice"]
        assert (await bob.recv())["arguments"] == ["for bob"]
        assert (await carol.recv())["arguments"] == ["for carol"]
        # The role claim is read as for access-key tokens.
        assert await bob.invoke("JoinGroup", "vip") == {"type": 3, "invocationId": "1"}
        assert "not permitted" in (await alice.invoke("JoinGroup", "vip"))["error"]
        await api.send_to_group("vip", "m", ["vip"])
        assert (await bob.recv())["arguments"] == ["vip"]
    for client in (alice, bob, carol):
        await client.close()

    async with httpx.AsyncClient() as http:
        health = await http.get(f"{gateway.url}/api/health")
    assert health.status_code == 200
    assert health.json()["identityProvider"]["state"] == "ok"
    assert health.json()["identityProvider"]["keys"] == 2


async def test_key_rotation_new_kid_after_one_shared_refetch_removed_kid_refused(
    deployment: Deployment, jwks: JwksServer, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    jwks.publish(rsa_a)
    gateway = await start_idp_gateway(deployment, jwks)
    old, new = user_token(rsa_a, "u1"), user_token(rsa_b, "u2")
    assert (await negotiate(gateway.url, old)).status_code == 200

    # The provider starts publishing key B. Many clients present it at once: one fetch.
    jwks.publish(rsa_a, rsa_b)
    await refetch_allowed(jwks)
    before = jwks.count
    answers = await asyncio.gather(*(negotiate(gateway.url, new) for _ in range(30)))
    assert [r.status_code for r in answers] == [200] * 30, answers[0].text
    assert jwks.count == before + 1
    client = await RawClient.connect(gateway.url, token=new)  # and the upgrade
    await client.close()

    # Key A is withdrawn. Until the gateway refetches, its cached copy still verifies...
    jwks.publish(rsa_b)
    assert (await negotiate(gateway.url, old)).status_code == 200
    assert jwks.count == before + 1
    # ... and the next refetch (here: another unknown kid) drops it.
    await refetch_allowed(jwks)
    unknown = SigningKey(kid="nobody", alg="RS256", private=rsa_a.private)
    refused(await negotiate(gateway.url, user_token(unknown, "u3")), "not published")
    assert jwks.count == before + 2
    refused(await negotiate(gateway.url, old), "not published")
    assert await upgrade_refused(gateway.url, old) == 401
    assert (await negotiate(gateway.url, new)).status_code == 200


async def test_unknown_kids_are_refused_and_fetch_at_most_once_per_interval(
    deployment: Deployment, jwks: JwksServer, rsa_a: SigningKey
) -> None:
    jwks.publish(rsa_a)
    gateway = await start_idp_gateway(deployment, jwks)
    assert jwks.count == 1
    # Made-up kids, as fast as a client can send them, for 2.5 intervals.
    deadline = time.monotonic() + 2.5 * INTERVAL
    sent = 0
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            forged = SigningKey(kid=f"made-up-{sent}", alg="RS256", private=rsa_a.private)
            r = await http.post(
                f"{gateway.url}/hubs/chat/negotiate",
                headers={"Authorization": f"Bearer {user_token(forged, 'x')}"},
            )
            refused(r, "not published")
            sent += 1
    times = list(jwks.requests)
    spans = [b - a for a, b in itertools.pairwise(times)]
    assert sent > 50
    print(f"{sent} unknown-kid negotiations in {2.5 * INTERVAL:g} s: {len(times)} JWKS fetches")
    # Refetched (the mechanism works), but never twice within the interval. The gateway reads
    # its clock before a request leaves and we see it arrive, so two arrivals may be closer
    # than the interval by the difference of their travel times (the first fetch opens the
    # connection): a fifth of the interval is far more than that on loopback.
    assert 2 <= len(times) <= 1 + math.floor((times[-1] - times[0]) / (0.8 * INTERVAL)), times
    assert all(span >= 0.8 * INTERVAL for span in spans), spans
    assert await upgrade_refused(gateway.url, user_token(forged, "x")) == 401


async def test_bad_identity_provider_tokens_are_refused(
    deployment: Deployment, jwks: JwksServer, rsa_a: SigningKey, ec_a: SigningKey
) -> None:
    jwks.publish(rsa_a, ec_a)
    gateway = await start_idp_gateway(deployment, jwks)
    base = gateway.url
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "oid": "mallory"}
    pem = rsa_a.public_pem()
    cases: list[tuple[str, str, str]] = [
        ("wrong issuer", user_token(rsa_a, "m", iss="https://evil.test/"), "issuer"),
        ("wrong audience", user_token(rsa_a, "m", aud="another-app"), "audience"),
        ("expired", user_token(rsa_a, "m", exp=now - 120), "expired"),
        ("no user claim", rsa_a.token(sub="m"), "oid"),
        ("no exp", user_token(rsa_a, "m", exp=None), "exp"),
        ("lone surrogate user", user_token(rsa_a, "\ud800"), "user id"),
        # Algorithm confusion: HS256 keyed with the RSA public key (as PEM), with the RSA kid.
        ("HS256 keyed with the public key", hand_made_token(
            {"alg": "HS256", "typ": "JWT", "kid": rsa_a.kid}, claims, pem), "Signature"),
        ("alg none", hand_made_token({"alg": "none", "kid": rsa_a.kid}, claims, None), "alg"),
        # An EC signature under the RSA key's kid, and RS256 under the EC key's.
        ("ES256 with an RSA kid", SigningKey(rsa_a.kid, "ES256", ec_a.private).token(
            oid="m"), "algorithm"),
        ("RS384 for an RS256 key", SigningKey(rsa_a.kid, "RS384", rsa_a.private).token(
            oid="m"), "algorithm"),
        # A published kid, signed by someone else's key.
        ("forged signature", user_token(SigningKey.rsa(rsa_a.kid), "m"), "Signature"),
        ("not a JWT", "not-a-token", "invalid token"),
    ]  # fmt: skip
    fetches = jwks.count
    for name, token, words in cases:
        r = await negotiate(base, token)
        assert r.status_code == 401 and r.json()["code"] == "Error.Unauthorized", (name, r.text)
        assert words.lower() in r.json()["message"].lower(), (name, r.text)
        assert await upgrade_refused(base, token) == 401, name
    assert jwks.count == fetches  # every one named a known kid (or none): nothing fetched
    # The good token, and an access-key token, still pass.
    assert (await negotiate(base, user_token(rsa_a, "m"))).status_code == 200
    assert (await negotiate(base, client_token("m"))).status_code == 200
    assert "Traceback" not in deployment.logs()


async def test_provider_down_is_a_503_and_access_keys_keep_working(
    deployment: Deployment, jwks: JwksServer, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    jwks.serve_raw(b"upstream error", status=500)
    gateway = await start_idp_gateway(deployment, jwks)  # healthy regardless
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{gateway.url}/api/health")
    assert health.status_code == 200
    status = health.json()["identityProvider"]
    assert status["state"] == "degraded" and status["keys"] == 0 and "500" in status["error"]

    token = user_token(rsa_a, "u")
    r = await negotiate(gateway.url, token)
    refused(r, "cannot be fetched", status=503)
    assert r.json()["code"] == "Error.IdentityProvider.Unavailable"
    assert await upgrade_refused(gateway.url, token) == 503
    client = await RawClient.connect(gateway.url, token=client_token("k"))  # access key: fine
    await client.close()

    # The provider recovers: the next refetch (periodic retry or an unknown kid) finds key A.
    jwks.publish(rsa_a)
    await refetch_allowed(jwks)
    assert (await negotiate(gateway.url, token)).status_code == 200
    # It fails again: the cached key keeps working; a kid it does not hold is a 503.
    jwks.serve_raw(b"", status=502)
    await refetch_allowed(jwks)
    assert (await negotiate(gateway.url, token)).status_code == 200
    refused(await negotiate(gateway.url, user_token(rsa_b, "u")), "cannot be fetched", 503)


# ------------------------------------------------------------------ the verifier itself


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(jwks: JwksServer, clock: Clock | None = None, **kw: Any) -> JwksVerifier:
    return JwksVerifier(
        jwks.url, ISSUER, AUDIENCE, "oid", min_interval=30, clock=clock or time.monotonic, **kw
    )


async def test_verifier_shares_one_fetch_and_rate_limits_unknown_kids(
    jwks: JwksServer, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    clock = Clock()
    v = verifier(jwks, clock)
    try:
        jwks.publish(rsa_a)
        await v.refresh()
        assert jwks.count == 1
        jwks.publish(rsa_a, rsa_b)
        # Within the interval: refused from the cache, no fetch, whatever the number of tries.
        for _ in range(5):
            with pytest.raises(TokenError, match="not published"):
                await v.verify(user_token(rsa_b, "u"))
        assert jwks.count == 1
        # Past it: 20 concurrent verifications of the new kid share one fetch.
        clock.now += 30
        claims = await asyncio.gather(*(v.verify(user_token(rsa_b, f"u{i}")) for i in range(20)))
        assert [c["oid"] for c in claims] == [f"u{i}" for i in range(20)]
        assert jwks.count == 2
        identity = await v.identify(user_token(rsa_a, "alice", role="r"), "chat")
        assert identity.user_id == "alice" and identity.roles == {"r"}
    finally:
        await v.aclose()


async def test_verifier_bounds_the_body_and_the_time_of_a_fetch(
    jwks: JwksServer, rsa_a: SigningKey
) -> None:
    v = verifier(jwks, timeout=0.5)
    try:
        padding = " " * MAX_JWKS_BYTES
        jwks.serve_raw(f'{{"keys": [], "pad": "{padding}"}}'.encode())
        await v.refresh()
        assert v.status()["keys"] == 0 and "larger than" in str(v.status()["error"])

        jwks.publish(rsa_a)
        jwks.answer.clear()  # the server stalls
        started = time.monotonic()
        await v.refresh()
        took = time.monotonic() - started
        assert 0.5 <= took < 2, took
        assert "Timeout" in str(v.status()["error"])
        with pytest.raises(IdentityProviderUnavailable):
            await v.verify(user_token(rsa_a, "u"))
        jwks.answer.set()

        # A server that drips its body, each byte well within httpx's read timeout: the time
        # limit is on the whole fetch.
        jwks.drip = 0.05  # the document is hundreds of bytes: many seconds
        started = time.monotonic()
        await v.refresh()
        took = time.monotonic() - started
        assert 0.5 <= took < 2, took
        assert "Timeout" in str(v.status()["error"]) and v.status()["keys"] == 0
        jwks.drip = 0

        # A document without a usable signing key is a failed fetch: cached keys are kept.
        await v.refresh()
        assert v.status()["state"] == "ok"
        jwks.serve_raw(b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}]}')
        await v.refresh()
        assert v.status()["keys"] == 1 and v.status()["state"] == "degraded"
        assert (await v.verify(user_token(rsa_a, "u")))["oid"] == "u"
    finally:
        await v.aclose()


def test_settings_need_issuer_and_audience_with_a_jwks_url() -> None:
    with pytest.raises(ValueError, match="HUBBUB_JWT_ISSUER"):
        Settings(jwks_url="https://idp.test/jwks", jwt_audience="a")
    assert Settings(jwks_url="https://x/jwks", jwt_issuer="i", jwt_audience="a").user_claim == "sub"


async def test_a_token_without_kid_only_when_the_provider_has_a_single_key(
    jwks: JwksServer, rsa_a: SigningKey, rsa_b: SigningKey
) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, "oid": "k"}
    no_kid = jwt.encode(claims, rsa_a.private, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(no_kid)
    v = verifier(jwks)
    try:
        jwks.publish(rsa_a)
        await v.refresh()
        assert (await v.verify(no_kid))["oid"] == "k"
        jwks.publish(rsa_a, rsa_b)
        await v.refresh()
        with pytest.raises(TokenError, match="not published"):
            await v.verify(no_kid)  # which key would it be? Refused, not guessed.
    finally:
        await v.aclose()
