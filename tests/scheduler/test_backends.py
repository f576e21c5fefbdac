"""The CPU runtimes' backends on a real model (`bench.plain_models.user_sized_ranker`, ONNX):
OpenVINO and ONNX Runtime score the same rows alike, whether the arrays are writable or read-only
(as decoded from a request's bytes), and hand back arrays of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.plain_models import user_sized_ranker
from scheduler.backend import BackendConfig, create_backend


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return user_sized_ranker(tmp_path_factory.mktemp("ranker") / "model.onnx")


def rows(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cat": rng.integers(0, 5000, (count, 8)).astype(np.int64),
            "dense": rng.random((count, 4), dtype=np.float32)}  # fmt: skip


def read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape) for k, v in arrays.items()}


def test_openvino_and_onnxruntime_score_writable_and_read_only_rows_alike(ranker: Path) -> None:
    openvino = create_backend("openvino-cpu", "ov", BackendConfig(ranker, threads=1))
    onnxruntime = create_backend("onnxruntime-cpu", "ort", BackendConfig(ranker, threads=1))
    openvino.load()
    onnxruntime.load()
    try:
        first, second = rows(100, 0), rows(7, 1)
        expected = onnxruntime.run(first)["score"]
        assert expected.shape == (100,) and np.ptp(expected) > 0
        scored = openvino.run(first)["score"]
        assert not read_only(first)["cat"].flags.writeable
        assert np.array_equal(openvino.run(read_only(first))["score"], scored)
        np.testing.assert_allclose(scored, expected, atol=1e-3)
        # The request's tensors are used again: an answer already handed back must not change.
        kept = scored.copy()
        other = openvino.run(second)["score"]
        assert other.shape == (7,) and np.array_equal(scored, kept)
        np.testing.assert_allclose(other, onnxruntime.run(second)["score"], atol=1e-3)
    finally:
        openvino.close()
        onnxruntime.close()
