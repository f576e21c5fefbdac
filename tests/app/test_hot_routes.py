"""The hot routes (POST /v1/rank, V2 infer) answered by `app.http.hot` in front of FastAPI answer
exactly as FastAPI's own routes for them: the same statuses, bodies and headers, for good and for
wrong requests, and the latency histogram counts them under the same route templates. (The live
servers of the other tests serve through the hot layer; here both paths run side by side.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from app.assembly import in_process
from app.http.hot import HotRoutes, hot_route
from app.serve import rest_app
from config.settings import load_settings

pytestmark = pytest.mark.timeout(120)
DEVICE = [{"name": "cpu", "backend": "onnxruntime-cpu"}]


def test_only_the_hot_paths_are_taken() -> None:
    infer, versioned = "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"
    assert hot_route("POST", "/v1/rank") == ("/v1/rank", "", None)
    assert hot_route("POST", "/v2/models/m/infer") == (infer, "m", None)
    assert hot_route("POST", "/v2/models/m/versions/3/infer") == (versioned, "m", "3")
    assert hot_route("GET", "/v1/rank") is None
    for path in ["/v1/score", "/v2/models//infer", "/v2/models/m/ready", "/v2/models/m/x/3/infer",
                 "/v2/models/m/versions//infer", "/v1/rank/"]:  # fmt: skip
        assert hot_route("POST", path) is None, path


def v2_body(inputs: dict[str, list[list[float]]], **extra: Any) -> dict[str, Any]:
    datatypes = {"categorical": "INT64", "dense": "FP32"}
    tensors = [{"name": name, "datatype": datatypes[name], "shape": [len(rows), len(rows[0])],
                "data": rows} for name, rows in inputs.items()]  # fmt: skip
    return {"inputs": tensors, **extra}


async def test_hot_routes_answer_as_fastapis_routes(built_repository: Path) -> None:
    settings = load_settings(model={"repository": built_repository}, devices=DEVICE)
    assembled = in_process(settings)
    app = rest_app(settings, assembled)
    hot = HotRoutes(app, assembled.latency, settings.admission.overload_status)
    name = settings.model.name
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as fastapi,
        httpx.AsyncClient(transport=httpx.ASGITransport(hot), base_url="http://a") as client,
    ):
        examples = (await fastapi.get("/v1/examples", params={"ids": 5, "rows": 3})).json()
        inputs = examples["inputs"]
        good_rank = {"user_id": examples["user_ids"][0], "candidates": examples["item_ids"], "k": 2}
        requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
            ("/v1/rank", good_rank, {}),
            ("/v1/rank", good_rank, {"X-Request-Priority": "low", "X-Request-Timeout-Ms": "500"}),
            ("/v1/rank", good_rank, {"X-Request-Priority": "urgent"}),
            ("/v1/rank", good_rank, {"X-Request-Timeout-Ms": "-3"}),
            ("/v1/rank", {"user_id": "1", "candidates": "x"}, {}),
            ("/v1/rank", {**good_rank, "candidates": ["1"] * 100_000}, {}),
            (f"/v2/models/{name}/infer", v2_body(inputs, id="r1"), {}),
            (f"/v2/models/{name}/versions/1/infer", v2_body(inputs), {}),
            (f"/v2/models/{name}/versions/9/infer", v2_body(inputs), {}),
            ("/v2/models/nobody/infer", v2_body(inputs), {}),
            (f"/v2/models/{name}/infer", v2_body(inputs, parameters={"priority": -1}), {}),
            (
                f"/v2/models/{name}/infer",
                v2_body(inputs, outputs=[{"name": "nothing"}]),
                {},
            ),
            (
                f"/v2/models/{name}/infer",
                v2_body(inputs, parameters={"binary_data_output": True}),
                {},
            ),
            (f"/v2/models/{name}/infer", {"inputs": []}, {}),
            (f"/v2/models/{name}/infer", v2_body(inputs), {"Inference-Header-Content-Length": "x"}),
        ]
        statuses = []
        for path, body, headers in requests:
            expected = await fastapi.post(path, json=body, headers=headers)
            answered = await client.post(path, json=body, headers=headers)
            assert answered.status_code == expected.status_code, (path, body, answered.text)
            assert answered.content == expected.content, (path, headers)
            for header in ("content-type", "retry-after", "inference-header-content-length"):
                assert answered.headers.get(header) == expected.headers.get(header), header
            statuses.append(answered.status_code)
        assert {200, 400, 404, 413, 422} <= set(statuses), statuses
        priority = {"X-Request-Priority": "x"}
        bad = await client.post("/v1/rank", content=b"{not json", headers=priority)
        assert bad.status_code == 422 and bad.json()["error"].startswith("body: not valid JSON")
    scraped = generate_latest(assembled.registry).decode()
    # Both paths observe the one histogram: each hot request doubled the count of its labels.
    assert 'endpoint="/v2/models/{name}/versions/{version}/infer",status="404"' in scraped
    assert 'recsys_request_duration_seconds_count{endpoint="/v1/rank",status="200"} 4.0' in scraped
