"""The hot routes, POST /v1/rank and V2 infer, answered by a plain ASGI layer in front of FastAPI.

FastAPI's middleware stack, routing, dependency solving and response classes cost about 0.1 ms of
CPU per request (81-114 us in `bench.ledger`'s samples), a large share of a request whose model
runs in 0.05-0.6 ms. These two routes skip them: the path is matched here, the body handed to the
same function FastAPI's route calls (`v1.rank_body`, `v2.infer_body`), and the answer written
whole (the guarded protocol's `recsys.respond`) or as two ASGI messages. What the skipped
layers did is done here too: admission when the guarded protocol has not decided it (another ASGI
server), the one JSON error format with its statuses and headers, and the latency histogram under
the route's template. FastAPI keeps every other request, and documents these routes (its own
handlers for them answer the same way, for an application that mounts FastAPI's app alone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http import HTTPStatus

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import Histogram
from starlette.types import Receive, Scope, Send

from app.dataplane.plane import DataPlane
from app.http import v2_codec
from app.http.admission import HttpAdmission
from app.http.errors import serving_error_parts, validation_message
from app.http.protocol import RESPOND
from app.http.v1 import rank_body
from app.http.v2 import infer_body
from scheduler.errors import ServingError

log = logging.getLogger(__name__)
RANK = "/v1/rank"
INFER = "/v2/models/{name}/infer"
VERSIONED_INFER = "/v2/models/{name}/versions/{version}/infer"
HEADER_LENGTH = v2_codec.HEADER_LENGTH.encode()
JSON = (b"content-type", b"application/json")
BINARY = (b"content-type", b"application/octet-stream")


def hot_route(method: str, path: str) -> tuple[str, str, str | None] | None:
    """The route template, model name and version of a hot request; None for any other."""
    if method != "POST":
        return None
    if path == RANK:
        return RANK, "", None
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return INFER, parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return VERSIONED_INFER, parts[0], parts[2]
    return None


class HotRoutes:
    def __init__(self, app: FastAPI, latency: Histogram, overload_status: int) -> None:
        self.app = app
        self.plane: DataPlane = app.state.plane
        self.admission: HttpAdmission = app.state.http_admission
        self.latency = latency
        self.overload_status = overload_status
        self.observers: dict[tuple[str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = hot_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        admission = self.admission
        status = await admission.within(
            scope, receive, send, lambda: self.answer(route, scope, receive, send)
        )
        if status is None:  # refused
            status = admission.status
        self.observer(route[0], status)(time.perf_counter() - started)

    async def answer(self, route: tuple[str, str, str | None], scope: Scope, receive: Receive,
                     send: Send) -> int:  # fmt: skip
        template, name, version = route
        headers = [JSON]
        try:
            body = await read_body(receive)
            if template == RANK:
                answer = await rank_body(self.plane, body, scope["headers"])
            else:
                given = next((v for k, v in scope["headers"] if k == HEADER_LENGTH), None)
                length = None if given is None else given.decode("latin-1")  # as Starlette reads
                answer, json_length = await infer_body(self.plane, name, version, body, length)
                if json_length is not None:
                    headers = [BINARY, (HEADER_LENGTH, b"%d" % json_length)]
            status = 200
        except ServingError as exc:
            status, message, extra = serving_error_parts(exc, self.overload_status)
            answer = orjson.dumps({"error": message})
            headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
        except RequestValidationError as exc:
            status = HTTPStatus.UNPROCESSABLE_ENTITY
            answer = orjson.dumps({"error": validation_message(exc)})
        except Disconnected:
            return 499  # nginx's "client closed request": no answer was written
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            answer = orjson.dumps({"error": "internal error"})
        respond = scope["extensions"].get(RESPOND) if "extensions" in scope else None
        if respond is not None:  # the guarded protocol: one write
            await respond(status, headers, answer)
        else:
            headers.append((b"content-length", b"%d" % len(answer)))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
        return int(status)

    def observer(self, template: str, status: int) -> Callable[[float], None]:
        """The histogram child's observe for a route and status (labels resolved once)."""
        key = (template, status)
        observe = self.observers.get(key)
        if observe is None:
            observe = self.latency.labels(endpoint=template, status=str(status)).observe
            self.observers[key] = observe
        return observe


class Disconnected(Exception):
    """The client went away before its body was read."""


async def read_body(receive: Receive) -> bytes:
    """The whole body (already complete when the guarded protocol starts a request: one call)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
