"""The /v1 API against a real server and a real model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.artifacts import repository
from models.runtime import OnnxRuntimeSession
from tests.app.conftest import MAX_BODY_BYTES, MAX_CANDIDATES
from tests.conftest import MODEL_NAME, ROOT


@pytest.fixture(scope="module")
def version(built_repository: Path) -> repository.ModelVersion:
    return repository.open_version(built_repository, MODEL_NAME)


def test_rank_returns_the_top_k_of_the_whole_catalog(client: httpx.Client) -> None:
    response = client.post("/v1/rank", json={"user_id": 196, "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == 1
    assert body["user_known"] is True and body["unknown_items"] == []
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
    assert set(body["variants"]) <= {"cpu-openvino", "cpu-onnxruntime"}


def test_rank_scores_match_the_model_file(
    client: httpx.Client, version: repository.ModelVersion
) -> None:
    candidates = ["1", "50", "100", "181", "258"]
    body = client.post("/v1/rank", json={"user_id": "13", "candidates": candidates, "k": 5}).json()
    tables = version.tables
    items = tables.item_rows(candidates)
    inputs = tables.assemble(np.full(5, tables.user_rows(["13"])[0]), items)
    variant = version.manifest.variant(next(iter(body["variants"].values())))
    scores = OnnxRuntimeSession(version.file(variant.file)).run(inputs)
    expected = dict(zip(candidates, scores, strict=True))
    for item in body["items"]:
        assert item["score"] == pytest.approx(float(expected[item["item_id"]]), abs=1e-5)


def test_unknown_ids_are_scored_and_reported(client: httpx.Client) -> None:
    body = client.post(
        "/v1/rank", json={"user_id": "no-such-user", "candidates": [1, "no-such-item"], "k": 2}
    ).json()
    assert body["user_known"] is False
    assert body["unknown_items"] == ["no-such-item"]
    assert len(body["items"]) == 2


def test_exclude_seen_drops_items_rated_in_training(
    client: httpx.Client, version: repository.ModelVersion
) -> None:
    seen = version.load_seen_items()
    assert seen is not None
    indptr, item_rows = seen
    user_row = int(version.tables.user_rows(["196"])[0])
    rated = [
        str(version.tables.item_ids[r - 1])
        for r in item_rows[indptr[user_row] : indptr[user_row + 1]]
    ]
    assert rated
    candidates = [*rated[:3], "1682"]
    body = client.post(
        "/v1/rank", json={"user_id": 196, "candidates": candidates, "k": 4, "exclude_seen": True}
    ).json()
    returned = {item["item_id"] for item in body["items"]}
    assert not returned & set(rated)


def test_score_returns_one_probability_per_row(client: httpx.Client) -> None:
    rows = {"categorical": [[1, 2, 1, 3, 4, 5, 2], [0] * 7], "dense": [[0.5, 0.5] + [0.0] * 17] * 2}
    body = client.post("/v1/score", json=rows).json()
    assert len(body["scores"]) == 2 and all(0 < s < 1 for s in body["scores"])


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/v1/rank", {"user_id": 1, "k": 0}, 422, "k"),
        ("/v1/rank", {"user_id": 1, "k": "ten"}, 422, "k"),
        ("/v1/rank", {"user_id": 1, "k": 100_000}, 422, "k"),
        ("/v1/rank", {"user_id": 1, "candidates": []}, 422, "candidates"),
        (
            "/v1/rank",
            {"user_id": 1, "candidates": list(range(MAX_CANDIDATES + 1))},
            413,
            "candidates",
        ),
        ("/v1/rank", {"k": 3}, 422, "user_id"),
        ("/v1/rank", {"user_id": 1, "surprise": True}, 422, "surprise"),
        ("/v1/score", {"categorical": [[1] * 7], "dense": [[0.0] * 18]}, 422, "dense"),
        ("/v1/score", {"categorical": [[10**6] * 7], "dense": [[0.0] * 19]}, 422, "categorical"),
        ("/v1/score", {"categorical": [], "dense": []}, 422, "categorical"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    client: httpx.Client, path: str, payload: dict[str, object], status: int, field: str
) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]


def test_a_body_over_the_limit_is_refused(client: httpx.Client) -> None:
    response = client.post(
        "/v1/score", content=b"[" + b"0," * MAX_BODY_BYTES + b"0]",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413 and "body" in response.json()["error"]


def test_nan_is_refused_naming_where(client: httpx.Client) -> None:
    # NaN is not JSON (RFC 8259): refused where it stands; a NaN in V2 binary data is refused by
    # the finite check, naming the input (tests/app/test_v2_and_metrics.py).
    body = b'{"categorical": [[1, 1, 1, 1, 1, 1, 1]], "dense": [[NaN' + b", 0" * 18 + b"]]}"
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"] and "column 53" in response.json()["error"]


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/rank" in paths and "/v1/score" in paths


def test_invalid_settings_stop_start_up_naming_the_key() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_BATCHING__MAX_BATCH_ROWS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "batching.max_batch_rows" in result.stderr


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(client: httpx.Client) -> None:
    response = client.post(
        "/v1/rank", json={"user_id": 1, "k": 5}, headers={"X-Request-Timeout-Ms": "0.001"}
    )
    assert response.status_code == 503, response.text
    assert "cannot finish within" in response.json()["error"]
    assert int(response.headers["Retry-After"]) >= 1
    ok = client.post("/v1/rank", json={"user_id": 1, "k": 5}, headers={"X-Request-Priority": "low"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("header", "value"), [("X-Request-Timeout-Ms", "soon"), ("X-Request-Priority", "urgent")]
)
def test_bad_deadline_or_priority_headers_are_named(
    client: httpx.Client, header: str, value: str
) -> None:
    response = client.post("/v1/rank", json={"user_id": 1}, headers={header: value})
    assert response.status_code == 400 and header in response.json()["error"]
