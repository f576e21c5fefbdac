"""The data plane's errors beyond the scheduler's (`scheduler.errors`): each carries its HTTP
status, which every transport maps to its own (REST: `app.http.errors`, gRPC:
`app.grpc.service`)."""

from __future__ import annotations

from http import HTTPStatus

from scheduler.errors import ServingError


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unauthorized(ServingError):
    status = HTTPStatus.UNAUTHORIZED


class Unprocessable(ServingError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class Forbidden(ServingError):
    status = HTTPStatus.FORBIDDEN
