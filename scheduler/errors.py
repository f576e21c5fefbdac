"""The domain errors of serving, each with the HTTP status the app maps it to (in one place)."""

from __future__ import annotations

from http import HTTPStatus


class ServingError(Exception):
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR


class InvalidInput(ServingError):
    status = HTTPStatus.BAD_REQUEST


class UnknownModel(ServingError):
    status = HTTPStatus.NOT_FOUND


class Overloaded(ServingError):
    """Refused at once: the queue is full. `retry_after_seconds` is a hint for the client."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceeded(ServingError):
    """The request's deadline passed while it was queued or running; answered at that moment."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class NotReady(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class BatchFailed(ServingError):
    """The batch holding this request failed on its device; the message names the device."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class DeviceUnavailable(RuntimeError):
    """A configured device cannot be created here (no library, no GPU); it is left out."""
