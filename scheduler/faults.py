"""A fault-injecting backend wrapper, for testing fault isolation for real: told to fail or stall
(through the admin switch, which is off by default), it does so on the live serving path."""

from __future__ import annotations

import threading
from typing import Literal

from scheduler.backend import Backend, Inputs, Outputs

FaultMode = Literal["none", "fail", "stall"]
STALL_LIMIT_SECONDS = 60.0  # a stalled call gives up eventually, so no thread hangs forever


class FaultInjector:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.device_kind = inner.device_kind
        self.mode: FaultMode = "none"
        self._unstall = threading.Event()
        self.execution_precision = inner.execution_precision

    def set_mode(self, mode: FaultMode) -> None:
        self.mode = mode
        if mode == "stall":
            self._unstall.clear()
        else:
            self._unstall.set()  # release calls stalled so far

    def load(self) -> None:
        self.inner.load()
        self.execution_precision = self.inner.execution_precision

    def run(self, inputs: Inputs) -> Outputs:
        if self.mode == "fail":
            raise RuntimeError("injected failure")
        if self.mode == "stall":
            self._unstall.wait(STALL_LIMIT_SECONDS)
            raise RuntimeError("injected stall")
        return self.inner.run(inputs)

    def close(self) -> None:
        self._unstall.set()
        self.inner.close()
