"""A FAKE backend for the scheduler's unit tests and the simulation: it scores each row as the sum
of its `x` input, and a test controls when each batch finishes (an event) or makes it fail."""

from __future__ import annotations

import threading

import numpy as np

from scheduler.backend import DeviceKind, Inputs, Outputs


class FakeBackend:
    execution_precision = "fake"

    def __init__(self, name: str, device_kind: DeviceKind = "cpu", seconds_per_row: float = 0.0):
        self.name = name
        self.device_kind = device_kind
        self.release = threading.Event()  # batches block until a test sets it
        self.release.set()
        self.fail_with: Exception | None = None
        self.batches: list[int] = []  # rows of each batch run, in order
        self.batch_inputs: list[np.ndarray] = []  # the `x` of each batch run
        self.started = threading.Semaphore(0)  # released once per batch that starts
        self.seconds_per_row = seconds_per_row

    def load(self) -> None:
        pass

    def run(self, inputs: Inputs) -> Outputs:
        x = inputs["x"]
        self.started.release()
        if not self.release.wait(timeout=30):
            raise TimeoutError("fake backend never released")
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(len(x))
        self.batch_inputs.append(x)
        if self.seconds_per_row:
            threading.Event().wait(self.seconds_per_row * len(x))
        return {"score": x.sum(axis=1).astype(np.float32)}

    def close(self) -> None:
        pass
