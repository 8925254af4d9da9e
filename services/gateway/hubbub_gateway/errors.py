"""Errors as JSON bodies shaped like Azure SignalR Service's, with ``x-ms-error-code``.

The FastAPI exception handlers and the raw ASGI send endpoints (:class:`.ingest.SendEndpoint`)
answer through the same functions here, so an error looks the same whichever served it, and
each refusal is logged once, at WARNING on the rate-limited refusal logger (:mod:`hubbub.logs`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from hubbub.logs import REFUSALS, RedactingFilter
from hubbub.protocol.names import InvalidName
from hubbub.redis.directory import InvalidCursor
from hubbub.redis.membership import TooManyGroups
from hubbub.redis.stream import NotReplicated
from hubbub.wire.messages import InvalidArguments, TooManyExcluded

refusals = logging.getLogger(REFUSALS)

# Attributes a refusal's log record may carry (``extra=``), which :class:`RefusalRing` keeps.
REFUSAL_STATUS, REFUSAL_CODE, REFUSAL_PATH = "refusal_status", "refusal_code", "refusal_path"
RING_SIZE = 100
_RING_MESSAGE = 500  # characters of a message kept


@dataclass(frozen=True, slots=True)
class Refusal:
    time: float
    status: int | None
    code: str | None
    path: str | None
    message: str


def _clip(path: object) -> str | None:
    return path[:_RING_MESSAGE] if isinstance(path, str) else None


class RefusalRing(logging.Handler):
    """The last :data:`RING_SIZE` refusals this process logged (REST, upgrades, handshakes,
    limit closes), for the admin console: a handler on the refusal logger, so it sees what
    the log sees (after the rate limit), redacted as the log is."""

    def __init__(self, size: int = RING_SIZE) -> None:
        super().__init__(logging.WARNING)
        self.entries: collections.deque[Refusal] = collections.deque(maxlen=size)
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        status = getattr(record, REFUSAL_STATUS, None)
        self.entries.append(
            Refusal(
                time=record.created,
                status=status if isinstance(status, int) else None,
                code=getattr(record, REFUSAL_CODE, None),
                path=_clip(getattr(record, REFUSAL_PATH, None)),
                message=record.getMessage()[:_RING_MESSAGE],
            )
        )

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [asdict(entry) for entry in reversed(self.entries)]


class ApiError(Exception):
    """An answer other than success. ``quiet``: an answer to a question (``GET`` of a
    connection that does not exist), not a refusal, so not logged."""

    def __init__(self, status: int, code: str, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.quiet = quiet


class ErrorBody(BaseModel):
    """Every error's body (OpenAPI documents it; :func:`error_response` writes it)."""

    code: str = Field(
        description="Azure-style error code, also in the x-ms-error-code header",
        examples=["Error.InvalidRequest"],
    )
    message: str = Field(description="What was wrong, for a human")


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The refusals every REST operation may answer, as OpenAPI documents them (never FastAPI's
# 422: validation errors are 400 here).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Malformed body, name or query (Error.InvalidRequest, Error.InvalidName)"),
    401: _documented("Missing or bad token: HS256 with the access key, aud = the request URL"),
    404: _documented("No such hub, connection, user or group"),
    413: _documented("Request body over HUBBUB_MAX_BODY_SIZE (1 MiB)"),
    503: _documented("Redis unreachable or the gateway draining"),
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message},
        status_code=status,
        headers={"x-ms-error-code": code},
    )


def refusal(scope: Scope, status: int, code: str, message: str) -> JSONResponse:
    """:func:`error_response`, logged as a refusal: one WARNING line, no traceback."""
    path = scope.get("path")
    refusals.warning(
        "refused %s %s: %d %s: %s", scope.get("method"), path, status, code, message,
        extra={REFUSAL_STATUS: status, REFUSAL_CODE: code, REFUSAL_PATH: path},
    )  # fmt: skip
    return error_response(status, code, message)


def too_large_response(scope: Scope, limit: int) -> JSONResponse:
    return refusal(scope, 413, "Error.PayloadTooLarge", f"request body exceeds {limit} bytes")


def validation_message(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic errors as one line: ``body.target: Field required; ...`` (ten at most)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in list(errors)[:10]
    )
    return problems or "invalid request"


def invalid_request(errors: Iterable[Mapping[str, Any]]) -> ApiError:
    return ApiError(400, "Error.InvalidRequest", validation_message(errors))


def known_error_response(scope: Scope, exc: Exception) -> JSONResponse | None:
    """The answer to an error the API expects (``None`` for anything else: a bug, a 500)."""
    if isinstance(exc, ApiError):
        if exc.quiet:
            return error_response(exc.status, exc.code, exc.message)
        return refusal(scope, exc.status, exc.code, exc.message)
    if isinstance(exc, InvalidName):
        return refusal(scope, 400, "Error.InvalidName", str(exc))
    if isinstance(exc, TooManyGroups):
        return refusal(scope, 409, "Error.Connection.TooManyGroups", str(exc))
    if isinstance(exc, TooManyExcluded):
        return refusal(scope, 400, "Error.TooManyExcluded", str(exc))
    if isinstance(exc, InvalidCursor):
        return refusal(scope, 400, "Error.InvalidCursor", str(exc))
    if isinstance(exc, InvalidArguments):
        return refusal(scope, 400, "Error.InvalidRequest", str(exc))
    if isinstance(exc, NotReplicated):
        return refusal(scope, 503, "Error.Redis.NotReplicated", str(exc))
    if isinstance(exc, RedisError):
        return refusal(scope, 503, "Error.Unavailable", f"message store unavailable: {exc}")
    return None


KNOWN_ERRORS = (
    ApiError,
    InvalidName,
    InvalidArguments,
    InvalidCursor,
    TooManyExcluded,
    TooManyGroups,
    RedisError,
)


def install(app: FastAPI) -> None:
    async def _known(request: Request, exc: Exception) -> JSONResponse:
        response = known_error_response(request.scope, exc)
        assert response is not None
        return response

    for kind in KNOWN_ERRORS:
        app.add_exception_handler(kind, _known)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = invalid_request(exc.errors())
        return refusal(request.scope, error.status, error.code, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = f"Error.Http{exc.status_code}"
        return refusal(request.scope, exc.status_code, code, str(exc.detail))
