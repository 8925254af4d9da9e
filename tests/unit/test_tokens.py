"""Access tokens (client and service JWTs), signed connection ids and connection tokens."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from hubbub.protocol import names
from hubbub.settings import Settings
from hubbub.tokens import (
    JOIN_LEAVE_ROLE,
    ClientIdentity,
    ClientTokenVerifier,
    ServiceTokenVerifier,
    TokenError,
    connection_token,
    mint_token,
    new_connection_id,
    open_connection_token,
    read_connection_token,
    rest_target,
    verify_client_token,
    verify_connection_id,
    verify_service_token,
)
from hubbub.urls import PublicOrigins, escape_segment, public_origin, routed_path, segment_value

# At least 64 bytes, so PyJWT does not warn about short HMAC keys even for HS512.
PRIMARY = "primary-access-key-" + "0123456789abcdef" * 4
SECONDARY = "secondary-access-key-" + "0123456789abcdef" * 4
OTHER = "somebody-elses-key-" + "0123456789abcdef" * 4
KEYS = (PRIMARY,)
BOTH = (PRIMARY, SECONDARY)
HUB_URL = "https://hubbub.example/client/?hub=chat"


def signed(claims: dict[str, Any], key: str = PRIMARY, algorithm: str = "HS256") -> str:
    """A token with arbitrary claims; ``exp`` defaults to an hour from now."""
    body = {"exp": int(time.time()) + 3600, "aud": HUB_URL, **claims}
    return jwt.encode(body, key.encode(), algorithm=algorithm)


# ---------------------------------------------------------------- client tokens


class TestClientToken:
    def test_mint_then_verify(self) -> None:
        token = mint_token(PRIMARY, HUB_URL, user_id="alice", hub="chat", roles=["r1", "r2"])
        identity = verify_client_token(token, KEYS, "chat")
        assert identity == ClientIdentity("alice", frozenset({"r1", "r2"}))

    def test_minted_claims(self) -> None:
        before = int(time.time())
        token = mint_token(PRIMARY, HUB_URL, minutes=2, user_id="u", hub="chat", roles=["r"])
        claims = jwt.decode(token, PRIMARY.encode(), algorithms=["HS256"], audience=HUB_URL)
        assert claims["sub"] == "u"
        assert claims["hub"] == "chat"
        assert claims["role"] == ["r"]
        assert before <= claims["iat"] <= before + 2
        assert claims["exp"] - claims["iat"] == 120

    def test_anonymous_token_has_no_user_and_no_roles(self) -> None:
        token = mint_token(PRIMARY, HUB_URL)
        claims = jwt.decode(token, PRIMARY.encode(), algorithms=["HS256"], audience=HUB_URL)
        assert not {"sub", "hub", "role"} & set(claims)
        assert verify_client_token(token, KEYS, "chat") == ClientIdentity(None, frozenset())

    def test_user_from_sub(self) -> None:
        assert verify_client_token(signed({"sub": "s"}), KEYS, "chat").user_id == "s"

    def test_user_from_nameid(self) -> None:
        assert verify_client_token(signed({"nameid": "n"}), KEYS, "chat").user_id == "n"

    def test_user_from_asrs_uid(self) -> None:
        assert verify_client_token(signed({"asrs.s.uid": "a"}), KEYS, "chat").user_id == "a"

    def test_nameid_wins_over_sub(self) -> None:
        token = signed({"sub": "s", "nameid": "n"})
        assert verify_client_token(token, KEYS, "chat").user_id == "n"

    def test_asrs_uid_wins_over_nameid_and_sub(self) -> None:
        token = signed({"sub": "s", "nameid": "n", "asrs.s.uid": "a"})
        assert verify_client_token(token, KEYS, "chat").user_id == "a"

    def test_empty_user_claim_falls_through(self) -> None:
        token = signed({"sub": "s", "asrs.s.uid": ""})
        assert verify_client_token(token, KEYS, "chat").user_id == "s"

    def test_role_as_a_string(self) -> None:
        identity = verify_client_token(signed({"role": JOIN_LEAVE_ROLE}), KEYS, "chat")
        assert identity.roles == frozenset({JOIN_LEAVE_ROLE})

    def test_role_as_a_list_drops_non_strings(self) -> None:
        identity = verify_client_token(signed({"role": ["a", 5, None, "b"]}), KEYS, "chat")
        assert identity.roles == frozenset({"a", "b"})

    @pytest.mark.parametrize("role", [None, 5, True])
    def test_unusable_role_claim_is_ignored_or_refused(self, role: object) -> None:
        # A validly signed token with a malformed role claim must not crash the caller,
        # which only catches TokenError: it either grants no role or is refused.
        token = signed({"sub": "u", "role": role})
        try:
            identity = verify_client_token(token, KEYS, "chat")
        except TokenError:
            return
        assert identity.roles == frozenset()

    def test_may_join_with_the_global_role(self) -> None:
        identity = verify_client_token(signed({"role": [JOIN_LEAVE_ROLE]}), KEYS, "chat")
        assert identity.may_join("g1")
        assert identity.may_join("anything at all")

    def test_may_join_with_a_per_group_role(self) -> None:
        token = signed({"role": f"{JOIN_LEAVE_ROLE}.g1"})
        identity = verify_client_token(token, KEYS, "chat")
        assert identity.may_join("g1")
        assert not identity.may_join("g2")
        assert not identity.may_join("g")
        assert not identity.may_join("g1.sub")

    def test_may_not_join_without_a_role(self) -> None:
        identity = verify_client_token(signed({"role": ["other"]}), KEYS, "chat")
        assert not identity.may_join("g1")
        assert not ClientIdentity("u", frozenset()).may_join("g1")

    def test_hub_claim_matches_case_insensitively(self) -> None:
        assert verify_client_token(signed({"sub": "u", "hub": "Chat"}), KEYS, "chat").user_id

    def test_hub_claim_mismatch_refused(self) -> None:
        with pytest.raises(TokenError, match="another hub"):
            verify_client_token(signed({"sub": "u", "hub": "news"}), KEYS, "chat")

    def test_no_hub_claim_is_valid_for_any_hub(self) -> None:
        token = signed({"sub": "u", "aud": "https://hubbub.example/client/"})
        assert verify_client_token(token, KEYS, "chat").user_id == "u"
        assert verify_client_token(token, KEYS, "news").user_id == "u"

    @pytest.mark.parametrize(
        "aud",
        [
            "https://hubbub.example/client/?hub=chat",
            "https://hubbub.example/client",
            "http://gw:8080/hubs/Chat",
            ["https://other.example/api/hubs/chat/:send", "https://hubbub.example/client"],
        ],
    )
    def test_client_audiences_accepted(self, aud: str | list[str]) -> None:
        assert verify_client_token(signed({"sub": "u", "aud": aud}), KEYS, "chat").user_id == "u"

    @pytest.mark.parametrize(
        "aud",
        [
            None,
            "https://hubbub.example/api/hubs/chat/:send",  # a REST token
            "https://hubbub.example/api/hubs/chat/users/u/:send",
            "https://hubbub.example/client/?hub=news",
            "https://hubbub.example/hubs/news",
            "bench",
        ],
    )
    def test_other_audiences_refused(self, aud: str | None) -> None:
        claims: dict[str, Any] = {"sub": "u", "aud": aud}
        with pytest.raises(TokenError, match="client endpoint"):
            verify_client_token(signed(claims), KEYS, "chat")

    def test_expired_refused(self) -> None:
        token = mint_token(PRIMARY, HUB_URL, minutes=-5, user_id="u")
        with pytest.raises(TokenError, match="expired"):
            verify_client_token(token, KEYS, "chat")

    def test_expiry_has_a_little_leeway(self) -> None:
        token = signed({"sub": "u", "exp": int(time.time()) - 5})
        assert verify_client_token(token, KEYS, "chat").user_id == "u"

    def test_missing_exp_refused(self) -> None:
        token = jwt.encode({"sub": "u"}, PRIMARY.encode(), algorithm="HS256")
        with pytest.raises(TokenError, match="exp"):
            verify_client_token(token, KEYS, "chat")

    def test_wrong_key_refused(self) -> None:
        token = mint_token(OTHER, HUB_URL, user_id="u")
        with pytest.raises(TokenError, match="invalid token"):
            verify_client_token(token, KEYS, "chat")
        with pytest.raises(TokenError):
            verify_client_token(token, BOTH, "chat")

    def test_secondary_key_accepted(self) -> None:
        token = mint_token(SECONDARY, HUB_URL, user_id="u")
        assert verify_client_token(token, BOTH, "chat").user_id == "u"
        with pytest.raises(TokenError):
            verify_client_token(token, KEYS, "chat")

    def test_expired_token_under_the_secondary_key_reports_expiry(self) -> None:
        token = mint_token(SECONDARY, HUB_URL, minutes=-5, user_id="u")
        with pytest.raises(TokenError, match="expired"):
            verify_client_token(token, BOTH, "chat")

    def test_hs512_accepted(self) -> None:
        token = signed({"sub": "u"}, algorithm="HS512")
        assert verify_client_token(token, KEYS, "chat").user_id == "u"

    def test_public_urls_bind_the_client_endpoint(self) -> None:
        for aud in (
            "https://hubbub.example.com/client/?hub=chat",  # Azure's: no port
            "https://hubbub.example.com:443/hubs/chat",
        ):
            verify_client_token(mint_token(PRIMARY, aud), KEYS, "chat", PUBLIC)
        for aud in (
            "http://test/client",
            "https://evil.example/hubs/chat",
            "http://hubbub.example.com/client",
            "https://hubbub.example.com:8443/client",
        ):
            with pytest.raises(TokenError, match="client endpoint"):
                verify_client_token(mint_token(PRIMARY, aud), KEYS, "chat", PUBLIC)
            verify_client_token(mint_token(PRIMARY, aud), KEYS, "chat")  # no public URLs

    def test_unsigned_token_refused(self) -> None:
        token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
        with pytest.raises(TokenError):
            verify_client_token(token, KEYS, "chat")

    @pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b"])
    def test_malformed_token_refused(self, token: str) -> None:
        with pytest.raises(TokenError):
            verify_client_token(token, KEYS, "chat")


class TestClientTokenVerifier:
    """The gateway's memory of client tokens it verified (negotiate, then the upgrade)."""

    def test_remembers_a_verified_token_until_its_exp(self) -> None:
        now = [time.time()]
        verifier = ClientTokenVerifier(KEYS, clock=lambda: now[0])
        token = signed({"sub": "alice", "exp": int(now[0]) + 60})
        first = verifier.verify(token, "chat")
        assert first.user_id == "alice"
        # The keys no longer verify it: only the memory can answer now.
        verifier.keys = (OTHER,)
        assert verifier.verify(token, "chat") is first
        now[0] += 61  # past exp: checked again, and the signature fails
        with pytest.raises(TokenError, match=r"(?i)signature"):
            verifier.verify(token, "chat")

    def test_memory_is_per_hub_and_per_exact_token(self) -> None:
        verifier = ClientTokenVerifier(KEYS)
        token = signed({"sub": "alice", "aud": "https://hubbub.example/hubs/chat"})
        assert verifier.verify(token, "chat").user_id == "alice"
        with pytest.raises(TokenError, match="client endpoint"):
            verifier.verify(token, "other")
        head, _, signature = token.split(".")
        forged_body = signed({"sub": "mallory"}).split(".")[1]
        with pytest.raises(TokenError, match=r"(?i)signature"):
            verifier.verify(f"{head}.{forged_body}.{signature}", "chat")

    def test_refused_tokens_are_not_remembered_and_memory_is_bounded(self) -> None:
        verifier = ClientTokenVerifier(KEYS, capacity=3)
        for _ in range(2):
            with pytest.raises(TokenError):
                verifier.verify(signed({"sub": "x"}, key=OTHER), "chat")
        assert len(verifier._known) == 0
        for i in range(10):
            assert verifier.verify(signed({"sub": f"u{i}"}), "chat").user_id == f"u{i}"
            assert len(verifier._known) <= 3


# ---------------------------------------------------------------- service tokens

REST_URL = "https://hubbub.example/api/v1/hubs/chat/groups/g1"
REST_PATH = "/api/v1/hubs/chat/groups/g1"
PUBLIC = PublicOrigins(["https://hubbub.example.com"])


def _refused(audience: str, path: str, application: str | None = None, **kw: Any) -> None:
    with pytest.raises(TokenError, match="audience"):
        verify_service_token(mint_token(PRIMARY, audience), KEYS, path, application, **kw)


class TestServiceToken:
    def test_exact_audience(self) -> None:
        claims = verify_service_token(mint_token(PRIMARY, REST_URL), KEYS, REST_PATH)
        assert claims["aud"] == REST_URL

    @pytest.mark.parametrize(
        "aud",
        [
            # As Azure's Management SDK signs: the hub lower-cased, no port, the query signed.
            "https://hubbub.example/api/v1/hubs/chat/groups/g1?api-version=2022-06-01",
            "https://hubbub.example:8443/api/v1/hubs/chat/groups/g1",  # hubbub's SDK keeps it
            "https://hubbub.example/api/v1/hubs/CHAT/groups/g1",  # hub names ignore case
            "https://hubbub.example/api/v1/hubs/%43hat/groups/g1",  # one decoding: "Chat"
            "HTTPS://HUBBUB.EXAMPLE/api/v1/hubs/chat/groups/g1",  # scheme and host ignore case
            "http://127.0.0.1:8080/api/v1/hubs/chat/groups/g1",  # no public URLs: any origin
        ],
    )
    def test_audiences_naming_the_target(self, aud: str) -> None:
        verify_service_token(mint_token(PRIMARY, aud), KEYS, REST_PATH)

    @pytest.mark.parametrize(
        "path",
        [
            # Issue 9 item 5, reproduced: all four were authorised by one token.
            "/api/hubs/h/users/zed/groups/VIP",
            "/api/hubs/h/users/zed/groups/vip ",  # vip%20, as routed
            "/api/hubs/h/users/zed/groups/vip\t",  # vip%09, as routed
            "/api/hubs/h/users/ZED/groups/vip",
            "/api/hubs/h/users/zed/groups/vip%2F",  # vip%2F: the group "vip/"
            "/api/hubs/h/users/zed/groups",
            "/api/hubs/other/users/zed/groups/vip",
        ],
    )
    def test_group_and_user_segments_are_exact(self, path: str) -> None:
        _refused("https://hubbub.example/api/hubs/h/users/zed/groups/vip", path)

    @pytest.mark.parametrize(
        "aud",
        [
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip/",  # trailing slash
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip%20",
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip%09",
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip ",
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip\t",  # urlsplit drops \t
            "  https://hubbub.example/api/hubs/h/users/zed/groups/vip",
            "https://hubbub.example/api/hubs/h/users/zed/groups/vip#x",
            "https://hubbub.example/api/hubs/h/users/zed/groups/vi%70%2F",
            "/api/hubs/h/users/zed/groups/vip",  # not a URL
            "ftp://hubbub.example/api/hubs/h/users/zed/groups/vip",
        ],
    )
    def test_audiences_naming_another_target_refused(self, aud: str) -> None:
        _refused(aud, "/api/hubs/h/users/zed/groups/vip")

    def test_paths_are_decoded_once(self) -> None:
        # A token for the group "aA" does not name the group "a%41" (sent as a%2541, routed
        # as a%2541), and the right token for either is accepted.
        _refused(f"{REST_BASE}/groups/aA", "/api/hubs/h/groups/a%2541")
        _refused(f"{REST_BASE}/groups/a%2541", "/api/hubs/h/groups/aA")
        verify_service_token(
            mint_token(PRIMARY, f"{REST_BASE}/groups/a%2541"), KEYS, "/api/hubs/h/groups/a%2541"
        )
        verify_service_token(
            mint_token(PRIMARY, f"{REST_BASE}/groups/a%41"), KEYS, "/api/hubs/h/groups/aA"
        )

    def test_an_encoded_slash_stays_in_its_segment(self) -> None:
        token = mint_token(PRIMARY, f"{REST_BASE}/groups/a%2Fb/:send")
        verify_service_token(token, KEYS, routed_path("/api/hubs/h/groups/a%2Fb/:send"))
        _refused(f"{REST_BASE}/groups/a%2Fb/:send", "/api/hubs/h/groups/a/b/:send")
        _refused(f"{REST_BASE}/groups/a/b/:send", routed_path("/api/hubs/h/groups/a%2fb/:send"))

    def test_the_application_prefix_is_part_of_the_hub(self) -> None:
        send = "https://hubbub.example/api/hubs/chat/:send"
        _refused(send, "/api/hubs/chat/:send", "other")
        _refused(f"{send}?application=other", "/api/hubs/chat/:send")
        verify_service_token(
            mint_token(PRIMARY, f"{send}?application=Other&api-version=2022-06-01"),
            KEYS,
            "/api/hubs/chat/:send",
            "other",
        )
        other_chat = mint_token(PRIMARY, "https://hubbub.example/api/hubs/other_chat/:send")
        verify_service_token(other_chat, KEYS, "/api/hubs/chat/:send", "other")

    def test_public_urls_bind_the_origin(self) -> None:
        path = "/api/hubs/chat/:send"
        for aud in (
            "https://hubbub.example.com/api/hubs/chat/:send?api-version=2022-06-01",  # Azure
            "https://hubbub.example.com:443/api/hubs/chat/:send",
            "https://HUBBUB.example.com/api/hubs/chat/:send",
        ):
            verify_service_token(mint_token(PRIMARY, aud), KEYS, path, origins=PUBLIC)
        for aud in (
            "https://evil.example/api/hubs/chat/:send",
            "http://hubbub.example.com/api/hubs/chat/:send",
            "https://hubbub.example.com:8443/api/hubs/chat/:send",
            "https://hubbub.example.com.evil.example/api/hubs/chat/:send",
            "https://hubbub.example.com@evil.example/api/hubs/chat/:send",
        ):
            _refused(aud, path, origins=PUBLIC)

    def test_audience_list_with_a_match(self) -> None:
        token = signed({"aud": ["https://elsewhere.example/x", REST_URL]})
        verify_service_token(token, KEYS, REST_PATH)

    def test_audience_list_without_a_match_refused(self) -> None:
        token = signed({"aud": ["https://elsewhere.example/x", 5, None]})
        with pytest.raises(TokenError, match="audience"):
            verify_service_token(token, KEYS, REST_PATH)

    @pytest.mark.parametrize("claims", [{}, {"aud": None}, {"aud": 5}, {"aud": []}])
    def test_missing_or_bad_audience_refused(self, claims: dict[str, Any]) -> None:
        with pytest.raises(TokenError, match="audience"):
            verify_service_token(signed(claims), KEYS, REST_PATH)

    def test_wrong_key_refused(self) -> None:
        with pytest.raises(TokenError, match="invalid token"):
            verify_service_token(mint_token(OTHER, REST_URL), KEYS, REST_PATH)

    def test_secondary_key_accepted(self) -> None:
        verify_service_token(mint_token(SECONDARY, REST_URL), BOTH, REST_PATH)

    def test_expired_refused(self) -> None:
        with pytest.raises(TokenError, match="expired"):
            verify_service_token(mint_token(PRIMARY, REST_URL, minutes=-5), KEYS, REST_PATH)


REST_BASE = "https://hubbub.example/api/hubs/h"


class TestServiceTokenVerifier:
    def test_a_remembered_token_is_checked_per_path_without_decoding(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verifier = ServiceTokenVerifier(KEYS)
        token = mint_token(PRIMARY, f"{REST_BASE}/users/zed/groups/vip")
        verifier.verify(token, "/api/hubs/h/users/zed/groups/vip")
        decodes = 0
        real = jwt.decode

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal decodes
            decodes += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counting)
        verifier.verify(token, "/api/hubs/H/users/zed/groups/vip")
        for path in ("/api/hubs/h/users/zed/groups/VIP", "/api/hubs/h/users/zed/groups/vip "):
            with pytest.raises(TokenError, match="audience"):
                verifier.verify(token, path)
        with pytest.raises(TokenError, match="audience"):
            verifier.verify(token, "/api/hubs/h/users/zed/groups/vip", "app")
        assert decodes == 0

    def test_a_remembered_token_past_its_expiry_is_decoded_again(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verifier = ServiceTokenVerifier(KEYS)
        token = signed({"aud": REST_URL, "exp": int(time.time()) - 20})  # inside the leeway
        verifier.verify(token, REST_PATH)
        decodes = 0
        real = jwt.decode

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal decodes
            decodes += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counting)
        verifier.verify(token, REST_PATH)
        assert decodes == 1  # its signature and expiry checked again, not taken from memory
        with pytest.raises(TokenError, match="expired"):
            verifier.verify(signed({"aud": REST_URL, "exp": int(time.time()) - 60}), REST_PATH)

    def test_public_urls_apply(self) -> None:
        verifier = ServiceTokenVerifier(KEYS, public_urls=["https://hubbub.example.com/"])
        verifier.verify(
            mint_token(PRIMARY, "https://hubbub.example.com/api/hubs/h/:send"), "/api/hubs/h/:send"
        )
        with pytest.raises(TokenError, match="audience"):
            verifier.verify(mint_token(PRIMARY, f"{REST_BASE}/:send"), "/api/hubs/h/:send")


class TestUrls:
    @pytest.mark.parametrize(
        ("raw", "routed"),
        [
            ("/api/hubs/h/groups/vip", "/api/hubs/h/groups/vip"),
            ("/api/hubs/h/groups/a%2Fb/:send", "/api/hubs/h/groups/a%2Fb/:send"),
            ("/api/hubs/h/groups/a%2fb", "/api/hubs/h/groups/a%2Fb"),
            ("/api/hubs/h/groups/a%2541", "/api/hubs/h/groups/a%2541"),
            ("/api/hubs/h/groups/a%41", "/api/hubs/h/groups/aA"),
            ("/api/hubs/h/groups/vip%20", "/api/hubs/h/groups/vip "),
            ("/api/hubs/h/groups/%zz", "/api/hubs/h/groups/%25zz"),
            ("/api/hubs/h/groups/caf%C3%A9", "/api/hubs/h/groups/café"),
        ],
    )
    def test_routed_path(self, raw: str, routed: str) -> None:
        assert routed_path(raw) == routed
        name = routed.rsplit("/", 1)[1]
        assert escape_segment(segment_value(name)) == name

    def test_rest_target_folds_only_the_hub(self) -> None:
        assert rest_target("/api/hubs/Chat/users/Zed") == "/api/hubs/chat/users/Zed"
        assert rest_target("/api/v1/hubs/Chat/:send", "App") == "/api/v1/hubs/app_chat/:send"
        assert rest_target("/other/hubs/Chat") == "/other/hubs/Chat"

    @pytest.mark.parametrize(
        "url",
        [
            "hubbub.example.com",
            "ftp://h",
            "https://h/prefix",
            "https://h/?q=1",
            "https://u@h",
            "https://h:99999",
            "https://h#f",
            " https://h",
        ],
    )
    def test_public_urls_must_be_base_urls(self, url: str) -> None:
        with pytest.raises(ValueError, match="base URL"):
            public_origin(url)
        with pytest.raises(ValidationError):
            Settings(public_urls=[url])

    def test_public_url_ports(self) -> None:
        assert public_origin("https://H.example") == ("https", "h.example", 443)
        assert public_origin("http://h.example:8080/") == ("http", "h.example", 8080)
        assert Settings(public_urls=["https://h.example"]).public_urls == ["https://h.example"]


# ---------------------------------------------------------------- connection ids and tokens


class TestConnectionId:
    def test_valid_name_unique_and_verifies_for_its_user_and_hub(self) -> None:
        ids = {new_connection_id(PRIMARY, "chat", "alice") for _ in range(200)}
        assert len(ids) == 200
        for conn in ids:
            assert names.connection_id(conn) == conn
            assert verify_connection_id(conn, KEYS, "chat", "alice")

    def test_other_user_or_hub_refused(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "alice")
        assert not verify_connection_id(conn, KEYS, "chat", "bob")
        assert not verify_connection_id(conn, KEYS, "chat", None)
        assert not verify_connection_id(conn, KEYS, "other", "alice")

    def test_anonymous_is_bound_to_no_user(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", None)
        assert verify_connection_id(conn, KEYS, "chat", None)
        assert verify_connection_id(conn, KEYS, "chat", "")
        assert not verify_connection_id(conn, KEYS, "chat", "alice")

    def test_hub_and_user_boundary_is_unambiguous(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "x")
        assert not verify_connection_id(conn, KEYS, "chatx", "")

    def test_keys(self) -> None:
        conn = new_connection_id(SECONDARY, "chat", "alice")
        assert verify_connection_id(conn, BOTH, "chat", "alice")
        assert not verify_connection_id(conn, KEYS, "chat", "alice")
        assert not verify_connection_id(new_connection_id(OTHER, "chat", "a"), BOTH, "chat", "a")

    def test_v1_id_is_not_accepted_bare(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "alice", in_token=True)
        assert not verify_connection_id(conn, KEYS, "chat", "alice")
        assert verify_connection_id(conn, KEYS, "chat", "alice", in_token=True)

    @pytest.mark.parametrize(
        "conn", ["", "admin-console", "a" * 38, "a" * 128, "\u00e9" * 38, "x.y", "A" * 37]
    )
    def test_forged_or_malformed_refused(self, conn: str) -> None:
        assert not verify_connection_id(conn, KEYS, "chat", "alice")

    def test_tampered_refused(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "alice")
        for i in (0, 21, 22, 37):
            flipped = conn[:i] + ("A" if conn[i] != "A" else "B") + conn[i + 1 :]
            assert not verify_connection_id(flipped, KEYS, "chat", "alice")

    def test_non_utf8_user_does_not_crash(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "\ud800")
        assert verify_connection_id(conn, KEYS, "chat", "\ud800")


class TestConnectionToken:
    def conn(self, user: str | None = "alice", hub: str = "chat") -> str:
        return new_connection_id(PRIMARY, hub, user, in_token=True)

    def test_round_trip_url_safe(self) -> None:
        conn = self.conn()
        token = connection_token(PRIMARY, conn, 60)
        assert re.fullmatch(r"[A-Za-z0-9_-]{38}\.[0-9]+\.[A-Za-z0-9_-]{24}", token)
        assert open_connection_token(token, KEYS, "chat", "alice") == conn

    def test_other_user_or_hub_refused(self) -> None:
        token = connection_token(PRIMARY, self.conn(), 60)
        for hub, user in (("chat", "bob"), ("chat", None), ("other", "alice")):
            with pytest.raises(TokenError, match="invalid"):
                open_connection_token(token, KEYS, hub, user)

    def test_expired_refused(self) -> None:
        token = connection_token(PRIMARY, self.conn(), 60, now=time.time() - 120)
        with pytest.raises(TokenError, match="expired"):
            open_connection_token(token, KEYS, "chat", "alice")

    def test_expiry_is_signed(self) -> None:
        conn = self.conn()
        token = connection_token(PRIMARY, conn, 60, now=time.time() - 120)
        _, expires, mac = token.split(".")
        later = f"{conn}.{int(expires) + 3600}.{mac}"
        with pytest.raises(TokenError, match="invalid"):
            open_connection_token(later, KEYS, "chat", "alice")

    def test_v0_id_in_a_token_refused(self) -> None:
        conn = new_connection_id(PRIMARY, "chat", "alice")
        with pytest.raises(TokenError, match="invalid"):
            open_connection_token(connection_token(PRIMARY, conn, 60), KEYS, "chat", "alice")

    def test_keys(self) -> None:
        conn = new_connection_id(SECONDARY, "chat", "alice", in_token=True)
        token = connection_token(SECONDARY, conn, 60)
        assert open_connection_token(token, BOTH, "chat", "alice") == conn
        with pytest.raises(TokenError):
            open_connection_token(token, KEYS, "chat", "alice")

    @pytest.mark.parametrize(
        "token", ["", "abc", ".", "a.b", "a.b.c.d", "a.1.\u00e9", "\u00e9.1.x", "a.-1.x", "a.1e3.x"]
    )
    def test_malformed_refused_not_crashing(self, token: str) -> None:
        with pytest.raises(TokenError, match="invalid"):
            open_connection_token(token, KEYS, "chat", "alice")

    def test_resumable_mark_is_signed(self) -> None:
        conn = self.conn()
        plain = connection_token(PRIMARY, conn, 60)
        resumable = connection_token(PRIMARY, conn, 60, resumable=True)
        assert read_connection_token(resumable, KEYS, "chat", "alice").resumable
        assert not read_connection_token(plain, KEYS, "chat", "alice").resumable
        _, expires, mac = plain.split(".")
        with pytest.raises(TokenError, match="invalid"):  # the mark cannot be added
            read_connection_token(f"{conn}.{expires}r.{mac}", KEYS, "chat", "alice")
        _, expires, mac = resumable.split(".")
        with pytest.raises(TokenError, match="invalid"):  # nor removed
            read_connection_token(f"{conn}.{expires[:-1]}.{mac}", KEYS, "chat", "alice")

    def test_expired_token_still_names_its_connection_for_a_reattach(self) -> None:
        conn = self.conn()
        token = connection_token(PRIMARY, conn, 60, now=time.time() - 120, resumable=True)
        opened = read_connection_token(token, KEYS, "chat", "alice")
        assert opened.expired and opened.resumable and opened.connection_id == conn
        with pytest.raises(TokenError, match="expired"):
            open_connection_token(token, KEYS, "chat", "alice")

    def test_tampered_refused(self) -> None:
        token = connection_token(PRIMARY, self.conn(), 60)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        with pytest.raises(TokenError):
            open_connection_token(tampered, KEYS, "chat", "alice")
