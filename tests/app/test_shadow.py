"""Shadow scoring ([shadow]): the pure comparison; a candidate variant scoring a sample of live
requests through the data plane with real ONNX Runtime sessions, never while the live device has
work, dropping what it cannot score in time; and the document and counter a real server reports
over REST, for a close candidate (INT8) and a distant one (the unpruned baseline)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.assembly import in_process
from app.dataplane.plane import DataPlane
from app.dataplane.shadow import Shadow, Shadowed
from app.dataplane.shadow_compare import compare
from app.dataplane.shadow_gate import Gate, RecentRows, judge
from config.settings import load_settings
from models.artifacts import repository
from tests.app.servers import running_server, wait_for
from tests.conftest import MODEL_NAME
from tests.prometheus_text import value

pytestmark = pytest.mark.timeout(300)
DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu"}]


def test_compare_measures_rank_agreement_top_k_and_differences() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3], dtype=np.float32)
    same = compare(scores, scores.copy(), k=2)
    assert same.spearman == pytest.approx(1.0) and same.top_k_overlap == 1.0
    assert same.max_abs_difference == 0.0
    assert same.distinct == same.distinct_sent == 5
    reversed_ = compare(scores, -scores, k=2)
    assert reversed_.spearman == pytest.approx(-1.0) and reversed_.top_k_overlap == 0.0
    swapped = compare(scores, np.array([0.7, 0.1, 0.5, 0.9, 0.3]), k=1)  # top row changes
    assert swapped.top_k_overlap == 0.0 and 0 < swapped.spearman < 1
    assert swapped.max_abs_difference == pytest.approx(0.2)
    collapsed = compare(scores, np.array([1.0, 0.0, 1.0, 1.0, 0.0]), k=3)
    assert collapsed.distinct == 2 and collapsed.distinct_sent == 5
    tied = compare(scores, np.full(5, 0.5), k=2)
    assert tied.spearman == 0.0  # one ranks the rows, the other ties them all
    assert compare(scores[:1], scores[:1] + 0.1, k=10).spearman == 1.0  # one row: nothing to order
    with pytest.raises(ValueError, match="shapes differ"):
        compare(scores, scores[:4], k=2)


def test_the_pool_keeps_the_most_recent_rows() -> None:
    pool = RecentRows(5)
    pool.add(np.arange(3.0), np.arange(3.0) + 10)
    pool.add(np.arange(3.0, 7.0), np.arange(3.0, 7.0) + 10)  # wraps: 0 and 1 overwritten
    sent, candidate = pool.rows()
    assert sorted(sent) == [2.0, 3.0, 4.0, 5.0, 6.0] and sorted(candidate - sent) == [10.0] * 5
    pool.add(np.arange(100.0, 112.0), np.arange(100.0, 112.0))  # more than it holds
    assert sorted(pool.rows()[0]) == [107.0, 108.0, 109.0, 110.0, 111.0]


def test_the_gate_waits_for_enough_requests_then_judges_as_accelerate_does() -> None:
    gate = Gate(min_requests=10, min_spearman=0.999, max_distinct_change=0.01)
    rng = np.random.default_rng(0)
    sent = rng.random(5000)
    assert judge(sent, sent, 9, gate).state == "pending"
    close = judge(sent, sent + rng.normal(0, 1e-5, 5000), 10, gate)
    assert close.state == "passes" and "Spearman 1.00000 over 5,000 rows of 10" in close.reason
    far = judge(sent, sent + rng.normal(0, 0.05, 5000), 10, gate)
    assert far.state == "fails" and far.reason.startswith("Spearman 0.9")
    collapsed = judge(sent, np.round(sent, 2), 10, gate)  # 100 values: ties everywhere
    assert collapsed.state == "fails" and collapsed.reason.startswith("scores collapse")


async def plane_with(repository_path: Path, candidate: str, **shadow: Any) -> DataPlane:
    settings = load_settings(
        model={"repository": repository_path},
        devices=DEVICES,
        admission={"default_timeout_ms": 10000},
        shadow={"candidates": {MODEL_NAME: candidate}, "sample_fraction": 1.0, **shadow},
    )
    plane = in_process(settings).plane
    await plane.start()
    return plane


def held_out_rows(repository_path: Path, count: int) -> dict[str, np.ndarray]:
    version = repository.open_version(repository_path, MODEL_NAME)
    split = version.load_test_split()
    return version.tables.assemble(split.user_rows[:count], split.item_rows[:count])


def shadowed_scheduler(plane: DataPlane) -> Shadowed:
    scoring = plane.model(MODEL_NAME).scheduler
    assert isinstance(scoring, Shadowed)
    return scoring


@pytest.fixture
async def shadowed(
    built_repository: Path,
) -> AsyncIterator[tuple[Shadowed, Shadow, dict[str, np.ndarray]]]:
    plane = await plane_with(built_repository, "pruned-int8")
    try:
        scoring = shadowed_scheduler(plane)
        assert isinstance(scoring.shadow, Shadow)
        yield scoring, scoring.shadow, held_out_rows(built_repository, 100)
    finally:
        await plane.close()


def repeated(rows: dict[str, np.ndarray], times: int) -> dict[str, np.ndarray]:
    return {name: np.concatenate([array] * times) for name, array in rows.items()}


async def test_the_shadow_scores_only_once_the_live_device_has_no_work(
    shadowed: tuple[Shadowed, Shadow, dict[str, np.ndarray]],
) -> None:
    scoring, shadow, rows = shadowed
    assert not any(device.on_loop for device in scoring.devices)  # the candidate could overlap
    await scoring.submit_nowait(rows)  # sampled; answered at once
    busy = scoring.submit_nowait(repeated(rows, 600))  # 60,000 rows: the live device is busy
    compared_while_busy: list[int] = []
    busy.add_done_callback(lambda _: compared_while_busy.append(shadow.outcomes["compared"]))
    await busy
    assert compared_while_busy == [0]  # the first request's shadow waited for the busy one
    await wait_until(lambda: shadow.outcomes["compared"] == 2)
    tally = shadow.tallies["probability"]
    assert tally.requests == 2 and tally.spearman_min > 0.999, tally


async def test_what_cannot_be_scored_in_time_is_dropped_and_counted(built_repository: Path) -> None:
    plane = await plane_with(built_repository, "pruned-int8", wait_ms=1, max_pending=1)
    try:
        scoring = shadowed_scheduler(plane)
        rows = held_out_rows(built_repository, 100)
        first = scoring.submit_nowait(rows)  # sampled: waits for the busy one below, 1 ms at most
        busy = scoring.submit_nowait(repeated(rows, 300))  # sampled too: max_pending reached
        await asyncio.gather(first, busy)
        shadow = scoring.shadow
        assert isinstance(shadow, Shadow)
        await wait_until(lambda: shadow.outcomes["shed"] == 1)
        assert shadow.outcomes == {"shed": 1, "busy": 1}, shadow.outcomes
        assert plane.shadow(MODEL_NAME)["requests"] == {
            "compared": 0, "busy": 1, "shed": 1, "failed": 0,
        }  # fmt: skip
    finally:
        await plane.close()


async def test_a_random_share_is_sampled(built_repository: Path) -> None:
    plane = await plane_with(built_repository, "pruned-int8", sample_fraction=0.3)
    try:
        scoring = shadowed_scheduler(plane)
        rows = held_out_rows(built_repository, 10)
        for _ in range(200):
            await scoring.submit_nowait(rows)
        await wait_until(lambda: plane.shadow(MODEL_NAME)["pending"] == 0)
        assert isinstance(scoring.shadow, Shadow)
        sampled = scoring.shadow.outcomes.total()
        assert 35 <= sampled <= 85, sampled  # binomial(200, 0.3): 60, sd 6.5
        assert scoring.shadow.outcomes["compared"] == sampled
    finally:
        await plane.close()


async def wait_until(condition: Any, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition within the time"
        await asyncio.sleep(0.01)


def shadow_counter(url: str, candidate: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return (
        value(text, "recsys_shadow_requests_total", candidate=candidate, outcome="compared") or 0.0
    )


@pytest.mark.parametrize(
    ("candidate", "agrees", "workers"),
    [("pruned-int8", True, 1), ("baseline-fp32", False, 1), ("pruned-int8", True, 2)],
)
def test_a_server_reports_how_its_shadow_agrees(
    candidate: str, agrees: bool, workers: int, built_repository: Path, tmp_path: Path
) -> None:
    """With workers, the engine process shadows and each worker reports its status."""
    settings = {"SHADOW__CANDIDATES": json.dumps({MODEL_NAME: candidate}),
                "SHADOW__SAMPLE_FRACTION": "1", "SHADOW__TOP_K": "5", "SHADOW__MIN_REQUESTS": "20",
                "SERVER__WORKERS": str(workers)}  # fmt: skip
    with running_server(built_repository, settings, tmp_path / "server.log", DEVICES) as (_, url):
        with httpx.Client(base_url=url, timeout=30) as client:
            for user in range(1, 41):
                assert client.post("/v1/rank", json={"user_id": user, "k": 5}).status_code == 200

            def compared() -> int:
                report = client.get(f"/v2/models/{MODEL_NAME}/shadow").json()
                return int(report["requests"]["compared"])

            wait_for(lambda: compared() == 40, 30, "the 40 requests compared")
            wait_for(lambda: client.get(f"/v2/models/{MODEL_NAME}/shadow").json()["outputs"]
                     ["probability"]["gate"]["requests"] == 40, 30, "judged at 40")  # fmt: skip
            report = client.get(f"/v2/models/{MODEL_NAME}/versions/1/shadow").json()
            assert client.get("/v2/models/no-such-model/shadow").status_code == 404
        assert shadow_counter(url, candidate) == 40
    assert report["candidate"] == candidate and report["version"] == "1"
    assert report["sample_fraction"] == 1 and report["top_k"] == 5
    assert report["requests"] == {"compared": 40, "busy": 0, "shed": 0, "failed": 0}
    figures = report["outputs"]["probability"]
    assert figures["requests"] == 40
    gate = figures["gate"]
    assert gate["rows"] > 40 * 100, gate  # /v1/rank over the whole catalog: every item a row
    if agrees:  # INT8 of the same weights: the order kept, the top 5 the same
        assert figures["spearman"]["min"] > 0.999 and figures["top_k_overlap"]["mean"] > 0.9
        assert report["verdict"] == gate["state"] == "passes", gate
    else:  # the unpruned baseline: another model, measured as one and refused
        assert figures["spearman"]["mean"] < 0.99 and figures["max_abs_difference"] > 0.01
        assert report["verdict"] == gate["state"] == "fails", gate
        assert gate["reason"].startswith("Spearman 0.9"), gate


async def test_a_model_with_no_candidate_reports_none(built_repository: Path) -> None:
    settings = load_settings(model={"repository": built_repository}, devices=DEVICES)
    plane = in_process(settings).plane
    await plane.start()
    try:
        assert not isinstance(plane.model(MODEL_NAME).scheduler, Shadowed)
        assert plane.shadow(MODEL_NAME) == {"name": MODEL_NAME, "version": "1", "candidate": None}
    finally:
        await plane.close()
