"""Access tokens (client and service JWTs), signed connection ids and connection tokens."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest

from hubbub.protocol import names
from hubbub.tokens import (
    JOIN_LEAVE_ROLE,
    ClientIdentity,
    TokenError,
    connection_token,
    mint_token,
    new_connection_id,
    open_connection_token,
    verify_client_token,
    verify_connection_id,
    verify_service_token,
)

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

    def test_unsigned_token_refused(self) -> None:
        token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
        with pytest.raises(TokenError):
            verify_client_token(token, KEYS, "chat")

    @pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b"])
    def test_malformed_token_refused(self, token: str) -> None:
        with pytest.raises(TokenError):
            verify_client_token(token, KEYS, "chat")


# ---------------------------------------------------------------- service tokens

REST_URL = "https://hubbub.example/api/v1/hubs/chat/groups/g1"


class TestServiceToken:
    def test_exact_audience(self) -> None:
        claims = verify_service_token(mint_token(PRIMARY, REST_URL), KEYS, REST_URL)
        assert claims["aud"] == REST_URL

    @pytest.mark.parametrize(
        "request_url",
        [
            "HTTPS://HUBBUB.EXAMPLE/API/V1/HUBS/CHAT/GROUPS/G1",  # case
            "https://hubbub.example:8443/api/v1/hubs/chat/groups/g1",  # port
            "https://hubbub.example/api/v1/hubs/chat/groups/g1?api-version=2022-06-01",  # query
            "https://hubbub.example/api/v1/hubs/chat/groups/g1/",  # trailing slash
            "  https://hubbub.example/api/v1/hubs/chat/groups/g1  ",  # whitespace
        ],
    )
    def test_audience_matching_ignores(self, request_url: str) -> None:
        verify_service_token(mint_token(PRIMARY, REST_URL), KEYS, request_url)
        # ...and the same holds the other way round: the SDK puts query and port in aud.
        verify_service_token(mint_token(PRIMARY, request_url.strip()), KEYS, REST_URL)

    def test_percent_encoding_is_ignored(self) -> None:
        aud = "https://hubbub.example/api/v1/hubs/chat/groups/a%20b"
        verify_service_token(mint_token(PRIMARY, aud), KEYS, aud.replace("%20", " "))

    @pytest.mark.parametrize(
        "request_url",
        [
            "https://hubbub.example/api/v1/hubs/chat/groups/g2",
            "https://hubbub.example/api/v1/hubs/chat/groups",
            "https://hubbub.example/api/v1/hubs/news/groups/g1",
            "https://other.example/api/v1/hubs/chat/groups/g1",
            "http://hubbub.example/api/v1/hubs/chat/groups/g1",
        ],
    )
    def test_different_url_refused(self, request_url: str) -> None:
        with pytest.raises(TokenError, match="audience"):
            verify_service_token(mint_token(PRIMARY, REST_URL), KEYS, request_url)

    def test_audience_list_with_a_match(self) -> None:
        token = signed({"aud": ["https://elsewhere.example/x", REST_URL]})
        verify_service_token(token, KEYS, REST_URL)

    def test_audience_list_without_a_match_refused(self) -> None:
        token = signed({"aud": ["https://elsewhere.example/x", 5, None]})
        with pytest.raises(TokenError, match="audience"):
            verify_service_token(token, KEYS, REST_URL)

    @pytest.mark.parametrize("claims", [{}, {"aud": None}, {"aud": 5}, {"aud": []}])
    def test_missing_or_bad_audience_refused(self, claims: dict[str, Any]) -> None:
        with pytest.raises(TokenError, match="audience"):
            verify_service_token(signed(claims), KEYS, REST_URL)

    def test_wrong_key_refused(self) -> None:
        with pytest.raises(TokenError, match="invalid token"):
            verify_service_token(mint_token(OTHER, REST_URL), KEYS, REST_URL)

    def test_secondary_key_accepted(self) -> None:
        verify_service_token(mint_token(SECONDARY, REST_URL), BOTH, REST_URL)

    def test_expired_refused(self) -> None:
        with pytest.raises(TokenError, match="expired"):
            verify_service_token(mint_token(PRIMARY, REST_URL, minutes=-5), KEYS, REST_URL)


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

    def test_tampered_refused(self) -> None:
        token = connection_token(PRIMARY, self.conn(), 60)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        with pytest.raises(TokenError):
            open_connection_token(tampered, KEYS, "chat", "alice")
