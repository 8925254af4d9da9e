"""Fuzzing the REST API (issue 9, "Fuzzing in CI"): schemathesis against a real gateway.

Every operation in the gateway's own ``/openapi.json`` gets generated requests (valid and
invalid path parameters, queries and bodies) against one gateway process on the session's
real Redis. Signed requests carry a service token whose ``aud`` is the exact URL sent (signed
on the prepared request, as :class:`hubbub.sdk.client.ServiceAuth` does with httpx), so the
fuzzing reaches the handlers and Redis instead of stopping at 401; unsigned and wrongly signed
requests must all be refused with a 4xx.

Checks: ``not_a_server_error`` only. The document describes the real error bodies (400, 401,
404, 413, 503 with ``{"code", "message"}``, no 422: ``tests/unit/test_openapi.py``), but not
every status an operation may answer (409, 429, 502, 504 on some), so status-code conformance
is not checked here. The gateway's log must have no traceback after the run, and the gateway
must still be healthy.

Bounded for CI: a fixed number of examples per operation, no deadline, derandomized (the same
cases on every run), no shrinking or database replays.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from hubbub.dev.embedded import RedisProcess
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment, Proc

Operation: TypeAlias = "schemathesis.APIOperation[Any, Any, Any, Any]"
Case: TypeAlias = "schemathesis.Case[Any]"

# Cases per operation (26 operations): about 20 s for the signed run on CI's 2 cores.
SIGNED_EXAMPLES = 20
REFUSED_EXAMPLES = 8  # the refusals come before any handler: fewer cases show the same
SIGNED_CHECKS: list[schemathesis.CheckFunction] = [not_a_server_error]
pytestmark = pytest.mark.fuzz

CLIENT_AUDIENCE = "http://test/client"
TIMEOUT = 10.0  # seconds per request: a hung request fails the test instead of CI


class SignedAuth(requests.auth.AuthBase):
    """A service token per request, ``aud`` = the request URL as it goes on the wire (path
    parameters encoded) without its query but its last ``application`` (ServiceAuth's rule:
    ``application`` names part of the hub); for the admin console's endpoints, its one
    audience ``<origin>/api/admin``."""

    def __init__(self, key: str = ACCESS_KEY) -> None:
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        assert request.url is not None
        url, _, query = request.url.partition("?")
        if url.endswith("/negotiate"):  # the client side: a client token, for a user
            token = mint_token(self.key, CLIENT_AUDIENCE, user_id="fuzzer")
        elif (admin := url.find("/api/admin/")) != -1:  # the console's one audience
            token = mint_token(self.key, url[:admin] + "/api/admin", minutes=5)
        else:
            application = [
                v for k, v in parse_qsl(query, keep_blank_values=True) if k == "application"
            ]
            if application:
                url += "?" + urlencode({"application": application[-1]})
            token = mint_token(self.key, url, minutes=5)
        request.headers["Authorization"] = f"Bearer {token}"
        return request


@pytest.fixture(scope="module")
def fuzz_gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, Proc]]:
    """One gateway (no worker: what is published is never delivered) for the whole module."""
    deployment = Deployment(redis_server.url, tmp_path_factory.mktemp("fuzz-rest"), "fuzzrest")
    gateway = deployment.launch_gateway()
    try:
        gateway.wait_healthy_sync(30)
        yield deployment, gateway
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: tuple[Deployment, Proc]) -> schemathesis.BaseSchema:
    """The gateway's own OpenAPI document, with an explicit config so no schemathesis.toml
    found on disk changes what CI runs."""
    _, gateway = fuzz_gateway
    return schemathesis.openapi.from_url(
        f"{gateway.url}/openapi.json", config=schemathesis.Config(), timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def signed() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = SignedAuth()
        yield session


@pytest.fixture(scope="module")
def unsigned() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def fuzz_settings(examples: int) -> hypothesis.settings:
    """Bounded and reproducible: the same cases on every run (derandomized, no example
    database), no deadline (a slow CI machine is no failure), no shrinking (a failure is
    reported as found, without minutes of re-running against the live server)."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def operations(api_schema: schemathesis.BaseSchema, signed_only: bool = False) -> list[Operation]:
    """Every operation in the document (``signed_only``: those that take a service token)."""
    found: list[Operation] = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document is one schemathesis can read
        found.append(result.ok())
    assert len(found) >= 20, [f"{op.method} {op.path}" for op in found]
    if signed_only:
        found = [op for op in found if op.path.startswith("/api/hubs/")]
    return found


def cases(operation: Operation) -> st.SearchStrategy[Case]:
    """Valid requests, invalid ones (the refusals), and valid ones on a valid hub: a random
    hub name is almost never a valid one, and those requests stop at the hub check."""
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if "{hub}" in operation.path:
        hub = st.sampled_from(["chat", "Chat_1.[x]"])
        strategies.append(
            hub.flatmap(
                lambda name: operation.as_strategy(
                    GenerationMode.POSITIVE, path_parameters={"hub": name}
                )
            )
        )
    return st.one_of(strategies)


def fuzz(
    targets: list[Operation],
    examples: int,
    check: Callable[[Case], None],
) -> None:
    """Run ``check`` on ``examples`` generated cases of each operation in turn (so each gets
    its share); a failure names its operation and the request, as a curl command."""
    for operation in targets:

        @fuzz_settings(examples)
        @given(case=cases(operation))
        def run(case: Case) -> None:
            try:
                check(case)
            except AssertionError as exc:
                exc.add_note(f"request: {case.as_curl_command()}")
                raise

        try:
            run()
        except Exception as exc:
            exc.add_note(f"operation: {operation.method.upper()} {operation.path}")
            raise


def test_signed_requests_never_get_a_server_error(
    api_schema: schemathesis.BaseSchema, signed: requests.Session
) -> None:
    """Signed, the cases get past authentication: no answer is a 401 (a correctly signed
    request is never refused for its audience, whatever names it carries) and none is a 5xx."""
    statuses: dict[str, Counter[int]] = defaultdict(Counter)

    def check(case: Case) -> None:
        response = case.call(session=signed, timeout=TIMEOUT)
        statuses[f"{case.method} {case.path}"][response.status_code] += 1
        case.validate_response(response, checks=SIGNED_CHECKS)

    fuzz(operations(api_schema), SIGNED_EXAMPLES, check)
    refused = {op: seen[401] for op, seen in statuses.items() if seen[401]}
    assert not refused, statuses


def test_unsigned_requests_are_refused(
    api_schema: schemathesis.BaseSchema, unsigned: requests.Session
) -> None:
    def check(case: Case) -> None:
        response = case.call(session=unsigned, timeout=TIMEOUT)
        case.validate_response(response, checks=[not_a_server_error])
        assert 400 <= response.status_code < 500, (response.status_code, response.text)

    fuzz(operations(api_schema, signed_only=True), REFUSED_EXAMPLES, check)


WRONG_TOKENS = ("another URL", "another key", "expired", "not a JWT")


def test_wrongly_signed_requests_are_refused(
    api_schema: schemathesis.BaseSchema, unsigned: requests.Session
) -> None:
    """Tokens that must not pass: a valid one for another URL (the health path), one for
    this URL signed with another key, an expired one, and garbage."""

    def check(case: Case) -> None:
        base = case.operation.schema.get_base_url()
        here = f"{base}{case.formatted_path}"
        tokens = {
            "another URL": mint_token(ACCESS_KEY, f"{base}/api/health"),
            "another key": mint_token("not-the-access-key-0123456789abcdef", here),
            "expired": mint_token(ACCESS_KEY, here, minutes=-1),
            "not a JWT": "e30.e30.e30",
        }
        for wrong, token in tokens.items():
            headers = {"Authorization": f"Bearer {token}"}
            response = case.call(session=unsigned, headers=headers, timeout=TIMEOUT)
            case.validate_response(response, checks=[not_a_server_error])
            assert 400 <= response.status_code < 500, (wrong, response.status_code, response.text)

    fuzz(operations(api_schema, signed_only=True), REFUSED_EXAMPLES // 4, check)


def test_the_gateway_survived_the_fuzzing_without_a_traceback(
    fuzz_gateway: tuple[Deployment, Proc],
) -> None:
    """Last in this module: the fuzz tests above ran against this process."""
    deployment, gateway = fuzz_gateway
    assert gateway.returncode is None, deployment.logs()
    assert requests.get(f"{gateway.url}/api/health", timeout=TIMEOUT).status_code == 200
    log = gateway.output()
    assert "gateway[fuzzrest-gw1]" in log, log[-2000:]  # the log of this very process
    assert "Traceback" not in log, log[-8000:]
