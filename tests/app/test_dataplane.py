"""The data plane without any transport: a real repository, real ONNX Runtime sessions, called
directly (what REST, gRPC and the engine link do after parsing); and the pure admission rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.assembly import in_process
from app.dataplane.admission import Admission, Decision, named_priority, numbered_priority
from app.dataplane.errors import Forbidden, Unauthorized
from app.dataplane.plane import DataPlane
from app.dataplane.registry import check_repository
from app.dataplane.schemas import RankRequest
from app.settings import AdmissionSettings
from config.settings import load_settings
from models.artifacts import repository
from models.runtime import OnnxRuntimeSession
from scheduler.errors import InvalidInput, NotReady
from scheduler.scheduler import HIGH, LOW
from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.timeout(120)
TOKEN = "a-token-of-sixteen-chars"


@pytest.fixture
async def plane(built_repository: Path) -> AsyncIterator[DataPlane]:
    settings = load_settings(
        model={"repository": built_repository},
        devices=[{"name": "cpu", "backend": "onnxruntime-cpu"}],
        admission={"default_timeout_ms": 10000},
        faults={"admin_token": TOKEN},
    )
    served = in_process(settings).plane
    await served.start()
    yield served
    await served.close()


async def test_rank_and_infer_score_as_onnx_runtime_and_are_counted_once(
    plane: DataPlane, built_repository: Path
) -> None:
    version = repository.open_version(built_repository, MODEL_NAME)
    variant = version.manifest.variant(version.manifest.default_variants["cpu"])
    session = OnnxRuntimeSession(version.file(variant.file))
    split = version.load_test_split()
    arrays = version.tables.assemble(split.user_rows[:50], split.item_rows[:50])

    inferred = await plane.infer(MODEL_NAME, None, arrays, ["probability"])
    np.testing.assert_allclose(inferred.outputs["probability"], session.run(arrays), atol=1e-5)

    ranked = await plane.rank(RankRequest(user_id=196, candidates=[1, 50, 100, 181], k=2))
    scores = [item["score"] for item in ranked["items"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert ranked["variants"] == {"cpu": variant.name}

    stats = plane.statistics(MODEL_NAME)["model_stats"][0]
    assert stats["execution_count"] == 2  # one infer, one rank: each counted once
    assert stats["inference_count"] == 50 + 4
    assert stats["inference_stats"]["fail"]["count"] == 0


async def test_bad_requests_are_refused_naming_the_field(plane: DataPlane) -> None:
    arrays = {"categorical": np.zeros((2, 3), np.int64)}
    with pytest.raises(InvalidInput, match="inputs: expected"):
        await plane.infer(MODEL_NAME, None, arrays)
    with pytest.raises(InvalidInput, match="nope is not an output"):
        await plane.infer(MODEL_NAME, None, arrays, ["nope"])
    with pytest.raises(InvalidInput, match="X-Request-Priority: 'urgent'"):
        named_priority("urgent", "X-Request-Priority")


async def test_options_shorten_never_lengthen_the_deadline(plane: DataPlane) -> None:
    config = plane.models.config_of(MODEL_NAME)
    assert plane.options(config, None, None).timeout_seconds == 10.0
    assert plane.options(config, 250.0, None).timeout_seconds == 0.25
    assert plane.options(config, 60_000.0, None).timeout_seconds == 10.0
    assert plane.options(config, None, None).priority == HIGH
    assert plane.options(config, None, numbered_priority(3, "priority")).priority == LOW


async def test_draining_and_model_control(plane: DataPlane) -> None:
    assert plane.ready()
    with pytest.raises(Unauthorized):
        await plane.load_model(MODEL_NAME, "wrong")
    with pytest.raises(Forbidden, match='mode = "explicit"'):
        await plane.load_model(MODEL_NAME, TOKEN)
    plane.drain()
    assert not plane.ready()
    assert plane.agent_reply() == "drain\n"
    with pytest.raises(NotReady, match="draining"):
        await plane.rank(RankRequest(user_id=1, candidates=[1], k=1))


def test_the_admission_rule_sheds_low_priority_first() -> None:
    settings = AdmissionSettings(max_in_flight_requests=4, low_priority_in_flight_fraction=0.5)
    admission = Admission(settings)
    assert admission.decide(True) is Decision.ADMIT  # under the low-priority share
    admission.in_flight = 2
    assert admission.decide(True) is Decision.REFUSE
    assert admission.decide(False) is Decision.ADMIT
    assert admission.decide(None) is Decision.ADMIT  # the default priority: high
    admission.in_flight = 4
    assert admission.decide(False) is Decision.REFUSE
    assert admission.headroom(1) == 75 and admission.headroom(4) == 0


def test_a_process_that_ranks_nothing_reads_no_feature_tables(built_repository: Path) -> None:
    settings = load_settings(model={"repository": built_repository})
    (ranking,) = check_repository(settings)
    (engine,) = check_repository(settings, ranking=False)  # what the engine process checks
    assert [r is not None for r in ranking.rankers.values()] == [True]
    assert list(engine.rankers.values()) == [None]
