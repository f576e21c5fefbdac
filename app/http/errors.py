"""The data plane's errors rendered as `{"error": "..."}` with their HTTP status, in one place."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.errors import NotReady, Overloaded, ServingError

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, naming the field or header")


def _described(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Every error the server answers, in the one JSON format (for the OpenAPI schema).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described("invalid input: a wrong type, shape, datatype or header, naming it"),
    403: _described(
        "the repository API's load or unload while [model_control] mode is not explicit"
    ),
    404: _described("unknown model, version or route"),
    405: _described("method not allowed"),
    408: _described("the request's head or body did not arrive in time"),
    413: _described("body, candidates or rows over the limits"),
    422: _described("a /v1 body that does not match its schema or ranges"),
    431: _described("request head too large"),
    500: _described("an internal error"),
    503: _described("overloaded (with Retry-After), draining or not ready"),
    504: _described("the request's deadline passed"),
}


def json_response(
    content: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


UNION_MEMBERS = {"bool", "int", "float", "str"}  # pydantic tags a union member's error with these


def field_path(location: tuple[int | str, ...]) -> str:
    """pydantic's location as the request spells it (`inputs[0].shape[1]`), without the
    union member a message is about."""
    path = ""
    for part in location:
        if part in UNION_MEMBERS:
            break
        if part == "body" and not path:  # FastAPI's prefix for the request body
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def serving_error_parts(exc: ServingError, overload_status: int,
                        ) -> tuple[int, str, dict[str, str] | None]:  # fmt: skip
    """A data-plane error's status, message and headers, for every REST route."""
    if isinstance(exc, Overloaded):
        return (
            overload_status,
            str(exc),
            {"Retry-After": str(max(1, math.ceil(exc.retry_after_seconds)))},
        )
    if isinstance(exc, NotReady):  # loading or draining: try again soon, or elsewhere
        return int(exc.status), str(exc), {"Retry-After": "1"}
    return int(exc.status), str(exc), None


def validation_message(exc: RequestValidationError) -> str:
    """A /v1 body's schema errors, the first five, each naming its field."""
    return "; ".join(f"{field_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()[:5])


def serving_error(overload_status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def render(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return error_response(*serving_error_parts(exc, overload_status))

    return render


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, validation_message(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown route, a wrong method) in the one JSON format."""
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected: a 500 in the one JSON format (the traceback goes to the log)."""
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")


def install(app: FastAPI, overload_status: int = HTTPStatus.SERVICE_UNAVAILABLE) -> None:
    """`overload_status`: what an overload refusal answers ([admission] overload_status)."""
    app.add_exception_handler(ServingError, serving_error(overload_status))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
