"""A fault-injecting backend wrapper, for testing fault isolation for real: told to fail or stall
(through the admin switch, which is off by default), it does so on the live serving path."""

from __future__ import annotations

import threading
from typing import Literal

import numpy as np

from scheduler.backend import Backend, Inputs, Outputs

FaultMode = Literal["none", "fail", "stall", "perturb"]
# perturb: float outputs get Gaussian noise of this many times their spread within the batch
# (answers that rank rows differently, as a model gone wrong would)
PERTURB_SCALE = 0.5
STALL_LIMIT_SECONDS = 60.0  # a stalled call gives up eventually, so no thread hangs forever


class FaultInjector:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.device_kind = inner.device_kind
        self.mode: FaultMode = "none"
        self._unstall = threading.Event()
        self.execution_precision = inner.execution_precision
        self._noise = np.random.default_rng(0)

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
        outputs = self.inner.run(inputs)
        if self.mode == "perturb":
            outputs = {name: perturbed(array, self._noise) for name, array in outputs.items()}
        return outputs

    def close(self) -> None:
        self._unstall.set()
        self.inner.close()


def perturbed(array: np.ndarray, noise: np.random.Generator) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) or array.size < 2:
        return array
    spread = float(np.std(array)) or 1.0
    return (array + noise.normal(0, PERTURB_SCALE * spread, array.shape)).astype(array.dtype)
