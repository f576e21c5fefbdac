"""Score every variant of a repository version on its stored test split (numpy only, no torch).

Each variant runs in the runtime and precision the manifest says its figures come from; ONNX float
variants also run in OpenVINO at FP32. A variant whose scores no longer reproduce the manifest's
test AUC is reported as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.artifacts.repository import ModelVersion, Variant
from models.metrics import log_loss, roc_auc
from models.runtime import OnnxRuntimeSession, OpenVinoSession, Session

AUC_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Evaluation:
    variant: str
    runtime: str
    execution_precision: str
    test_auc: float
    test_log_loss: float
    manifest_auc: float
    scores: npt.NDArray[np.float32]

    @property
    def matches_manifest(self) -> bool:
        return abs(self.test_auc - self.manifest_auc) <= AUC_TOLERANCE


def sessions_for(version: ModelVersion, variant: Variant) -> list[Session]:
    path = version.file(variant.file)
    if variant.format == "openvino-ir":
        return [OpenVinoSession(path, inference_precision=None)]
    sessions: list[Session] = [OnnxRuntimeSession(path)]
    if "openvino" in variant.runtimes:
        sessions.append(OpenVinoSession(path, inference_precision="f32"))
    return sessions


def evaluate_version(version: ModelVersion) -> list[Evaluation]:
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows, split.item_rows)
    results = []
    for variant in version.manifest.variants:
        for session in sessions_for(version, variant):
            scores = session.run(inputs)
            precision = session.execution_precision
            if session.runtime == variant.scored_with.runtime:
                precision = variant.scored_with.executed  # ONNX Runtime does not report it
            results.append(
                Evaluation(
                    variant=variant.name,
                    runtime=session.runtime,
                    execution_precision=precision,
                    test_auc=roc_auc(split.labels, scores),
                    test_log_loss=log_loss(split.labels, scores),
                    manifest_auc=variant.test_auc,
                    scores=scores,
                )
            )
    return results
