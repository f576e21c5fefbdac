"""uvicorn's httptools protocol, guarded against hostile and broken clients, with admission decided
as soon as a request's head is parsed.

- Heads are bounded (request target, header count, head bytes: 414 / 431) and must arrive within
  `header_timeout_seconds` (408); only HTTP/1.0 and 1.1 are spoken (505), and 1.1 needs a Host
  (400). Every such answer is the JSON error format, then the connection closes.
- A body larger than `max_body_bytes` is refused (413) by its Content-Length before it is read, or
  as soon as a chunked one passes the limit; the whole body must arrive within
  `body_timeout_seconds` (408).
- A request reaches the ASGI app only once its body is complete, and is counted against
  admission (or refused) then, before its task runs (see `app.http.admission`): slow senders
  can never hold the in-flight slots of complete requests, and a burst read in one turn of the
  event loop cannot slip past the limit.
- An inference request over the in-flight limit gets its 503 written straight to the socket: no
  ASGI scope, cycle or task, its body skipped by the parser (about 5 µs of Python, parsing
  included; under 3x overload this raised goodput from 82% to 90% of capacity). A request
  pipelined behind one in progress, or with a URL that is not a plain path, is decided when its
  body is complete, by the same rule.
- A request the app answers whole (the hot routes, `app.http.hot`) may write its response in one
  write through the `recsys.respond` scope extension: uvicorn's ASGI send checks every header
  against two expressions and writes the head and the body apart (two system calls).
- Open connections are capped (`ConnectionCap`): beyond the cap the oldest idle connection is
  closed, or the new one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import deque
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from app.dataplane.admission import Decision
from app.dataplane.throttled import Throttled
from app.http.admission import ADMITTED, HttpAdmission, response_bytes
from app.http.metrics import ConnectionMetrics
from app.settings import HttpSettings

log = logging.getLogger(__name__)
LINGER_SECONDS = 2.0  # after an error answer, unread bytes are discarded this long, then close
HIGH_WATER_BYTES = 65536  # as uvicorn: pause reading a started request's unread body beyond this
STARTS_PER_TURN = 4  # admitted requests' tasks started per turn of the event loop (see Starts)


def error_bytes(
    status: int, message: str, defaults: list[tuple[bytes, bytes]], *extra: tuple[bytes, bytes]
) -> bytes:
    """A whole HTTP/1.1 error response in the JSON error format, closing the connection."""
    body = orjson.dumps({"error": message})
    headers = [*defaults, (b"content-type", b"application/json"), *extra,
               (b"content-length", b"%d" % len(body)), (b"connection", b"close")]  # fmt: skip
    return response_bytes(status, headers, body)


class ConnectionCap:
    """At most `limit` open connections. Idle ones (no request begun) are kept in the order they
    turned idle, so that a new connection beyond the cap closes the one idle the longest."""

    def __init__(self, limit: int, metrics: ConnectionMetrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.open = 0
        self.idle: dict[Any, None] = {}  # insertion order: the oldest idle first
        self.warn_evicted = Throttled(
            f"connection cap ({limit}) reached: closed idle connections", log
        )
        self.warn_refused = Throttled(f"connection cap ({limit}) reached, none idle: refused", log)
        metrics.open.set_function(lambda: self.open)

    def admit(self, connection: Any) -> bool:
        """Count a new connection in; False: it is to be refused (the cap, none idle)."""
        self.open += 1
        if self.open <= self.limit:
            return True
        if self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            oldest.transport.close()
            self.metrics.closed.labels(reason="idle_evicted").inc()
            self.warn_evicted()
            return True
        self.metrics.closed.labels(reason="refused").inc()
        self.warn_refused()
        return False

    def release(self, connection: Any) -> None:
        self.open -= 1
        self.idle.pop(connection, None)


def connection_limit(configured: int, reserve: int = 128) -> int:
    """`configured`, raising the soft descriptor limit toward the hard one to fit it, and kept
    `reserve` descriptors below the soft limit (model files, sessions, the agent check, logs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = configured + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    limit = configured if soft == resource.RLIM_INFINITY else min(configured, soft - reserve)
    if limit < configured:
        log.warning("max_connections %d lowered to %d: the descriptor limit is %d",
                    configured, limit, soft)  # fmt: skip
    return max(limit, 1)


class Starts:
    """Admitted requests' ASGI tasks, started at most `per_turn` per turn of the event loop: the
    loop reads its sockets (answering refusals there) between turns, so a burst of admitted
    requests cannot hold the refusals of the next ones behind all of its work."""

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self.queue: deque[tuple[Any, RequestResponseCycle, Any, bool]] = deque()
        self.scheduled = False

    def add(self, protocol: Any, cycle: RequestResponseCycle, app: Any, counted: bool) -> None:
        self.queue.append((protocol, cycle, app, counted))
        if not self.scheduled:
            self.scheduled = True
            protocol.loop.call_soon(self.drain, protocol.loop)

    def drain(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self.queue
        for _ in range(min(self.per_turn, len(queue))):
            protocol, cycle, app, counted = queue.popleft()
            protocol.launch(cycle, app, counted)
        if queue:
            loop.call_soon(self.drain, loop)
        else:
            self.scheduled = False


RESPOND = "recsys.respond"  # scope extension: `await respond(status, headers, body)`


class WholeResponses:
    """Responses written whole, in one write, to an ASGI request's connection; the default
    headers (Date, Server) rendered once each time uvicorn replaces them (every second)."""

    def __init__(self) -> None:
        self.defaults: object = None
        self.rendered = b""

    def respond(self, cycle: RequestResponseCycle) -> Any:
        async def respond(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            """Headers are the app's own (lower case, valid); Content-Length is added here."""
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            if cycle.disconnected:
                return
            if cycle.response_started:
                raise RuntimeError("a response was already started")
            cycle.response_started = True
            cycle.waiting_for_100_continue = False
            if self.defaults is not cycle.default_headers:
                self.defaults = cycle.default_headers
                self.rendered = b"".join(n + b": " + v + b"\r\n" for n, v in cycle.default_headers)
            parts = [STATUS_LINE[status], self.rendered]
            parts += [name + b": " + value + b"\r\n" for name, value in headers]
            parts.append(b"content-length: %d\r\n" % len(body))
            if not cycle.keep_alive:
                parts.append(b"connection: close\r\n")
            parts += [b"\r\n", body]
            cycle.transport.write(b"".join(parts))
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()

        return respond


class _Answered:
    """Stands in for uvicorn's response cycle of a request the protocol answered itself: complete,
    so the parser's body callbacks for it do nothing."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = asyncio.Event()


ANSWERED = _Answered()


class Rejected(Exception):
    """Raised in a parser callback once the protocol has answered and closed: stops the parser."""


def guarded_protocol(admission: HttpAdmission, http: HttpSettings, max_body_bytes: int,
                     cap: ConnectionCap, metrics: ConnectionMetrics,
                     ) -> type[HttpToolsProtocol]:  # fmt: skip
    cached: list[object] = [None, b""]  # uvicorn replaces default_headers (Date) every second
    rejected = {reason: metrics.rejected.labels(reason=reason) for reason in (
        "request_line", "header_count", "header_bytes", "header_timeout", "body_bytes",
        "body_timeout", "http_version", "no_host", "malformed",
    )}  # fmt: skip
    timed_out = {k: metrics.closed.labels(reason=k) for k in ("header_timeout", "body_timeout")}
    starts = Starts(STARTS_PER_TURN)
    whole = WholeResponses()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.closed_by_us = False
            self.head_open = False  # a request's head has begun and is not complete
            self.body_open = False  # its head is complete, its body not yet
            self.head_read_bytes = 0  # whole reads while the head stayed open
            self.body_bytes = 0
            self.waiting: tuple[RequestResponseCycle, Any] | None = None  # started once complete
            self.timer: asyncio.TimerHandle | None = None
            self.timer_kind = ""
            # Bytes that are not HTTP after complete requests: those are answered first, in
            # order, then a 400 (what follows is discarded unparsed).
            self.malformed = False

        # Connection life

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not cap.admit(self):
                self.closed_by_us = True
                refusal = error_bytes(503, "too many open connections", [], (b"retry-after", b"1"))
                transport.write(refusal)
                transport.close()
                return
            cap.idle[self] = None
            self.set_timer("header_timeout", http.header_timeout_seconds)

        def connection_lost(self, exc: Exception | None) -> None:
            cap.release(self)
            self.set_timer("", 0)
            super().connection_lost(exc)

        def set_timer(self, kind: str, seconds: float) -> None:
            if kind == self.timer_kind:
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.timer_kind = kind
            if kind:
                self.timer = self.loop.call_later(seconds, self.on_timeout)

        def on_timeout(self) -> None:
            kind, self.timer, self.timer_kind = self.timer_kind, None, ""
            if self.closed_by_us or self.transport.is_closing():
                return
            timed_out[kind].inc()
            if kind == "header_timeout" and not self.head_open:
                self.close_now()  # a connection that never began a request: nothing to answer
            elif kind == "header_timeout":
                seconds = http.header_timeout_seconds
                self.reject(408, "header_timeout", f"request head: not complete in {seconds:g} s")
            else:
                seconds = http.body_timeout_seconds
                self.reject(408, "body_timeout", f"body: not complete in {seconds:g} s")

        def close_now(self, linger: bool = False) -> None:
            self.closed_by_us = True  # from now on, what arrives is discarded unparsed
            if self.cycle is not None and not self.cycle.response_complete:  # its app stops
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.cycle = ANSWERED  # type: ignore[assignment]
            if linger and self.transport.can_write_eof():
                # Closing with unread bytes would reset the connection and could destroy the
                # answer before the client reads it: end our side, discard theirs for a while.
                self.transport.write_eof()
                self.loop.call_later(LINGER_SECONDS, self.transport.close)
            else:
                self.transport.close()

        def reject(self, status: int, reason: str, message: str) -> None:
            """Answer `status` with the JSON error and close, whatever was in progress."""
            rejected[reason].inc()
            self.transport.write(error_bytes(status, message, self.server_state.default_headers))
            self.close_now(linger=True)

        # Bytes in

        def data_received(self, data: bytes) -> None:
            if self.closed_by_us or self.malformed:
                return
            self._unset_keepalive_if_required()
            cap.idle.pop(self, None)
            head_was_open = self.head_open
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                if self.closed_by_us:
                    return
                answering = self.cycle is not None and not self.cycle.response_complete
                if self.pipeline or answering:
                    self.malformed = True
                    self.flow.pause_reading()
                else:
                    self.reject(400, "malformed", "not a valid HTTP/1.1 request")
                return
            # A head still open after a whole read was all head: the parser buffers a header
            # until it ends, so bound it here (a read at most past the limit).
            if self.head_open and head_was_open:
                self.head_read_bytes += len(data)
                if self.head_read_bytes > http.max_header_bytes:
                    self.reject(431, "header_bytes", self.head_message())
                    return
            if self.head_open:
                self.set_timer("header_timeout", http.header_timeout_seconds)
            elif self.body_open:
                self.set_timer("body_timeout", http.body_timeout_seconds)
            elif self.timer_kind:
                self.set_timer("", 0)

        def head_message(self) -> str:
            return f"request head: larger than {http.max_header_bytes} bytes"

        # Parser callbacks

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.head_open = True
            self.head_read_bytes = self.body_bytes = 0

        def on_headers_complete(self) -> None:
            # The head is checked whole here (it arrived within one read of the limits, or the
            # streaming bound in data_received cut it off); one pass over the header fields.
            self.head_open = False
            headers = self.headers
            if len(self.url) > http.max_request_line_bytes:
                size = http.max_request_line_bytes
                self.reject(414, "request_line", f"request target: longer than {size} bytes")
                raise Rejected
            if len(headers) > http.max_header_count:
                count = http.max_header_count
                self.reject(431, "header_count", f"request head: more than {count} header fields")
                raise Rejected
            length = None
            has_host = False
            size = 4 * len(headers)  # ": " and CRLF
            for name, value in headers:
                size += len(name) + len(value)
                if name == b"content-length":
                    length = value
                elif name == b"host":
                    has_host = True
            if size > http.max_header_bytes:
                self.reject(431, "header_bytes", self.head_message())
                raise Rejected
            version = self.parser.get_http_version()
            if version != "1.1" and version != "1.0":  # noqa: PLR1714 (faster than `in` here)
                self.reject(505, "http_version", f"HTTP/{version}: only HTTP/1.1 and 1.0 here")
                raise Rejected
            if not has_host and version == "1.1":
                self.reject(400, "no_host", "Host: required in an HTTP/1.1 request")
                raise Rejected
            if length is not None and length.isdigit() and int(length) > max_body_bytes:
                self.reject(413, "body_bytes", self.body_message())
                raise Rejected
            self.body_open = True
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if not in_progress and self.url.startswith(b"/") and admission.decide(
                self.parser.get_method().decode("ascii"),
                self.url.partition(b"?")[0].decode("latin-1"),
                headers,
            ) is Decision.REFUSE:  # fmt: skip
                self.refuse()
                return
            super().on_headers_complete()

        def body_message(self) -> str:
            return f"body: larger than the limit of {max_body_bytes} bytes"

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            if cycle.more_body:  # its body is still coming: start once it is complete
                self.waiting = (cycle, app)
                if cycle.waiting_for_100_continue:
                    cycle.waiting_for_100_continue = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.start(cycle, app)

        def start(self, cycle: RequestResponseCycle, app: Any) -> None:
            """Admit the request, its body complete, counting it in at once (not when its task
            first runs: a burst read in one turn of the loop must see itself), or refuse it."""
            scope = cycle.scope
            decision = admission.decide(scope["method"], scope["path"], scope["headers"])
            if decision is Decision.REFUSE:
                starts.add(self, cycle, admission.answer, False)
            else:
                admission.rule.enter()
                extensions = scope.setdefault("extensions", {})
                extensions[ADMITTED] = {}
                extensions[RESPOND] = whole.respond(cycle)
                starts.add(self, cycle, app, True)

        def launch(self, cycle: RequestResponseCycle, app: Any, counted: bool) -> None:
            task = self.loop.create_task(cycle.run_asgi(app))
            if counted:
                task.add_done_callback(admission.rule.leave)
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if cycle.response_complete:
                return
            self.body_bytes += len(body)
            if self.body_bytes > max_body_bytes:
                self.reject(413, "body_bytes", self.body_message())
                raise Rejected
            cycle.body += body
            # A request waiting for its body reads on (bounded by max_body_bytes); a started one
            # reads at the app's pace, as in uvicorn.
            if self.waiting is None and len(cycle.body) > HIGH_WATER_BYTES:
                self.flow.pause_reading()
            cycle.message_event.set()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.body_open = False
            waiting = self.waiting
            if waiting is not None and waiting[0] is self.cycle:
                self.waiting = None
                self.start(*waiting)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.malformed and not self.pipeline and self.cycle.response_complete:
                self.reject(400, "malformed", "not a valid HTTP/1.1 request")
                return
            busy = self.pipeline or self.head_open or self.body_open
            if not busy and not self.transport.is_closing():
                cap.idle[self] = None

        def refuse(self) -> None:
            admission.rule.on_refusal()
            defaults = self.server_state.default_headers
            if cached[0] is not defaults:
                cached[:] = [defaults, admission.refusal_bytes(defaults)]
            self.cycle = ANSWERED  # type: ignore[assignment]
            self.transport.write(cached[1])  # type: ignore[arg-type]
            # A client waiting for "100 Continue" may never send the body the parser would then
            # expect: close rather than read its next request as that body.
            closing = self.expect_100_continue or self.parser.get_http_version() == "1.0"
            if closing or not self.parser.should_keep_alive():
                self.close_now()
            else:
                self.on_response_complete()

    return GuardedHttpToolsProtocol
