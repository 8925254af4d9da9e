"""The gateway's OpenAPI document (hubbub_gateway.apidocs): valid, unique operation ids (and
no FastAPI warning about them), the bearer scheme on every REST operation and only there (the
admin console's endpoints have their own, one audience for all), the
real error bodies (400/401/404/413/503 with ``{code, message}``) and no 422 anywhere.

Built in process (``create_app`` without its lifespan: no Redis needed to describe the API);
``tests/security/test_fuzz_rest.py`` fuzzes a real gateway from the same document.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any

import pytest
import schemathesis

from hubbub.settings import Settings
from hubbub_gateway import admin
from hubbub_gateway.app import create_app
from hubbub_gateway.endpoints import SECURITY_SCHEME

METHODS = {"get", "head", "post", "put", "delete", "patch", "options"}
# Operations a caller reaches without a service token: the client's negotiate (it takes a
# client token of its own) and the health checks.
PUBLIC = {"negotiate", "health", "health_head", "live", "live_head"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        document = create_app(Settings()).openapi()
    assert [str(w.message) for w in caught] == []  # e.g. "Duplicate Operation ID ..."
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    schemathesis.openapi.from_dict(spec).validate()  # raises on an invalid document
    assert spec["openapi"].startswith("3.1")


def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = Counter(op["operationId"] for _, _, op in operations(spec))
    assert [i for i, n in ids.items() if n > 1] == []
    # GET and HEAD of one route are two operations.
    assert {"user_in_group", "user_in_group_head", "broadcast", "send_to_group"} <= set(ids)


def test_no_422_anywhere(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        assert "422" not in op["responses"], (path, method)
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text and '"422"' not in text


def test_rest_operations_require_the_bearer_scheme(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"][SECURITY_SCHEME]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert scheme["bearerFormat"] == "JWT"
    assert "aud" in scheme["description"] and "hubbub token --access-key" in scheme["description"]
    rest = 0
    for path, method, op in operations(spec):
        if op["operationId"] in PUBLIC:
            assert "security" not in op, (path, method)
        elif path.startswith("/api/admin/"):  # the admin console's one audience
            assert op["security"] == [{admin.SECURITY_SCHEME: []}], (path, method)
        else:
            assert path.startswith("/api/hubs/{hub}"), (path, method)
            assert op["security"] == [{SECURITY_SCHEME: []}], (path, method)
            rest += 1
    assert rest >= 20
    scheme = spec["components"]["securitySchemes"][admin.SECURITY_SCHEME]
    assert scheme["scheme"] == "bearer" and "/api/admin" in scheme["description"]


def test_errors_are_documented_with_their_real_body(spec: dict[str, Any]) -> None:
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"code", "message"}
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method, op in operations(spec):
        if op["operationId"] in PUBLIC:
            continue
        for status in ("400", "401", "404", "413", "503"):
            answer = op["responses"].get(status)
            assert answer is not None, (path, method, status)
            assert answer["content"]["application/json"]["schema"] == ref, (path, method)
    invoke = spec["paths"]["/api/hubs/{hub}/connections/{connection}/:invoke"]["post"]
    assert invoke["responses"]["504"]["content"]["application/json"]["schema"] == ref
