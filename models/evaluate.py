"""Score every variant of a repository version on its stored test split (numpy only, no torch).

Runs each ONNX variant in ONNX Runtime and in OpenVINO at FP32, and compares with the figures the
manifest publishes: a variant whose scores no longer reproduce them is reported as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.metrics import log_loss, roc_auc
from models.repository import ModelVersion
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

    @property
    def matches_manifest(self) -> bool:
        return abs(self.test_auc - self.manifest_auc) <= AUC_TOLERANCE


def evaluate_version(version: ModelVersion) -> list[Evaluation]:
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows, split.item_rows)
    results = []
    for variant in version.manifest.variants:
        if variant.format != "onnx":
            continue
        path = version.file(variant.file)
        sessions: list[Session] = [OnnxRuntimeSession(path), OpenVinoSession(path, "f32")]
        for session in sessions:
            scores = session.run(inputs)
            results.append(
                Evaluation(
                    variant=variant.name,
                    runtime=session.runtime,
                    execution_precision=session.execution_precision,
                    test_auc=roc_auc(split.labels, scores),
                    test_log_loss=log_loss(split.labels, scores),
                    manifest_auc=variant.test_auc,
                )
            )
    return results
