"""Errors as JSON bodies shaped like Azure SignalR Service's, with ``x-ms-error-code``.

The FastAPI exception handlers and the raw ASGI send endpoints (:class:`.ingest.SendEndpoint`)
answer through the same functions here, so an error looks the same whichever served it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hubbub.protocol.names import InvalidName
from hubbub.redis.membership import TooManyGroups
from hubbub.wire.messages import InvalidArguments, TooManyExcluded


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message},
        status_code=status,
        headers={"x-ms-error-code": code},
    )


def too_large_response(limit: int) -> JSONResponse:
    return error_response(413, "Error.PayloadTooLarge", f"request body exceeds {limit} bytes")


def validation_message(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic errors as one line: ``body.target: Field required; ...`` (ten at most)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in list(errors)[:10]
    )
    return problems or "invalid request"


def invalid_request(errors: Iterable[Mapping[str, Any]]) -> ApiError:
    return ApiError(400, "Error.InvalidRequest", validation_message(errors))


def known_error_response(exc: Exception) -> JSONResponse | None:
    """The answer to an error the API expects (``None`` for anything else: a bug, a 500)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, InvalidName):
        return error_response(400, "Error.InvalidName", str(exc))
    if isinstance(exc, TooManyGroups):
        return error_response(409, "Error.Connection.TooManyGroups", str(exc))
    if isinstance(exc, TooManyExcluded):
        return error_response(400, "Error.TooManyExcluded", str(exc))
    if isinstance(exc, InvalidArguments):
        return error_response(400, "Error.InvalidRequest", str(exc))
    if isinstance(exc, RedisError):
        return error_response(503, "Error.Unavailable", f"message store unavailable: {exc}")
    return None


KNOWN_ERRORS = (
    ApiError,
    InvalidName,
    InvalidArguments,
    TooManyExcluded,
    TooManyGroups,
    RedisError,
)


def install(app: FastAPI) -> None:
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        response = known_error_response(exc)
        assert response is not None
        return response

    for kind in KNOWN_ERRORS:
        app.add_exception_handler(kind, _known)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = invalid_request(exc.errors())
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"Error.Http{exc.status_code}", str(exc.detail))
