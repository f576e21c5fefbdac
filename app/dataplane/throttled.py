"""A warning at most once per interval: for conditions that can repeat on every request (a
connection cap, a feature store down), so the log says they happen without being flooded."""

from __future__ import annotations

import logging
import time


class Throttled:
    """A warning at most once per `seconds`, with how many times it happened meanwhile."""

    def __init__(self, message: str, log: logging.Logger, seconds: float = 10.0) -> None:
        self.message = message
        self.log = log
        self.seconds = seconds
        self.count = 0
        self.last = -seconds

    def __call__(self, detail: object = "") -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.seconds:
            suffix = f": {detail}" if detail else ""
            self.log.warning("%s%s (%d since the last such line)", self.message, suffix, self.count)
            self.count, self.last = 0, now
