"""What a scheduler has served since it started: the counts and times Triton's statistics report
(inference and execution counts, success and failure, queue and compute time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from scheduler.batch import Scored


@dataclass
class Served:
    requests: int = 0  # answered with outputs
    rows: int = 0
    failures: int = 0  # refused at submission, expired, failed or cancelled
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    total_seconds: float = 0.0  # from submission until scored

    def failed(self) -> None:
        self.failures += 1

    def done(self, rows: int, submitted: float, now: float,
             future: asyncio.Future[Scored]) -> None:  # fmt: skip
        """A request's future resolved."""
        if future.cancelled() or future.exception() is not None:
            self.failures += 1
            return
        scored = future.result()
        self.requests += 1
        self.rows += rows
        self.queue_seconds += scored.queue_seconds
        self.compute_seconds += scored.compute_seconds
        self.total_seconds += now - submitted
