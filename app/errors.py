"""Domain errors rendered as `{"error": "..."}` with their HTTP status, in one place."""

from __future__ import annotations

import math
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from scheduler.errors import NotReady, Overloaded, ServingError


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unauthorized(ServingError):
    status = HTTPStatus.UNAUTHORIZED


class Unprocessable(ServingError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY


def json_response(
    content: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


def _field(location: tuple[object, ...]) -> str:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or "body"


async def serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    headers = None
    status = int(exc.status)
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_seconds)))}
        status = request.app.state.settings.admission.overload_status
    elif isinstance(exc, NotReady):  # loading or draining: try again soon, or elsewhere
        headers = {"Retry-After": "1"}
    return error_response(status, str(exc), headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_field(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()[:5]]
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "; ".join(problems))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, validation_error)
