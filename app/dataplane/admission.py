"""Admission, once for every transport: the count of inference requests in progress, the rule that
refuses a new one (`Admission.decide`), the headroom that count leaves, and request priorities.

REST decides as soon as a request's head is parsed and again when its body is complete
(`app.http.admission`); gRPC as a call arrives. Both count into the one `Admission` of the
process, so the limit holds whatever mix of transports arrives.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from app.settings import AdmissionSettings
from scheduler.errors import InvalidInput
from scheduler.scheduler import HIGH, LOW

PRIORITIES = {"high": HIGH, "low": LOW}


class Decision(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"


class Admission:
    """Refuse an inference request at once, before its body is parsed, while
    `max_in_flight_requests` requests are already in progress; a low-priority one already at
    `low_priority_in_flight_fraction` of that, so it is shed first. Under overload the front end
    itself saturates a core before the scheduler's queue grows: a refusal here costs a fraction
    of a parsed and scored request, so the requests already accepted keep their latency."""

    def __init__(self, settings: AdmissionSettings,
                 on_refusal: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.in_flight = 0  # refusals are never counted
        self.max_requests = settings.max_in_flight_requests
        self.max_low_priority = max(
            1, int(self.max_requests * settings.low_priority_in_flight_fraction)
        )
        self.default_low = settings.default_priority == "low"
        self.on_refusal = on_refusal

    def decide(self, low_priority: bool | None) -> Decision:
        """`low_priority` None: the default priority."""
        count = self.in_flight
        if count < self.max_low_priority:
            return Decision.ADMIT
        if count >= self.max_requests:
            return Decision.REFUSE
        low = self.default_low if low_priority is None else low_priority
        return Decision.REFUSE if low else Decision.ADMIT

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self, _: object = None) -> None:  # also a task's done callback
        self.in_flight -= 1

    def headroom(self, in_flight: int) -> int:
        """0-100: how far `in_flight` requests are from the limit."""
        return max(0, round(100 * (1 - in_flight / self.max_requests)))


def named_priority(value: str | bytes | None, where: str) -> int | None:
    """`high` or `low` (any case) as the scheduler's priority; None: not given (the model's
    default). Raises InvalidInput naming `where`."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    level = PRIORITIES.get(text.lower())
    if level is None:
        raise InvalidInput(f"{where}: {text[:32]!r} is not 'high' or 'low'")
    return level


def numbered_priority(value: int | None, where: str) -> int | None:
    """Triton's `priority` parameter: 1 highest, 2 or more low; 0 or absent: None (the default)."""
    if not value:
        return None
    if value < 0:
        raise InvalidInput(f"{where}: {value} is not a priority (1 highest, 2 or more low)")
    return min(value - 1, LOW)
