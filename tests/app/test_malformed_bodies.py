"""Malformed V2 and /v1 bodies get a 4xx in the JSON error format naming what is wrong, never a
5xx: a regression test for each body that once got a 500 or was wrongly accepted, and a
property-based test (hypothesis) over generated and mutated bodies against the real server."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.app.conftest import MAX_BODY_BYTES, MAX_CANDIDATES
from tests.conftest import MODEL_NAME

INFER = f"/v2/models/{MODEL_NAME}/infer"
CATEGORICAL: dict[str, Any] = {
    "name": "categorical",
    "shape": [1, 7],
    "datatype": "INT64",
    "data": [1] * 7,
}
DENSE: dict[str, Any] = {"name": "dense", "shape": [1, 19], "datatype": "FP32", "data": [0.0] * 19}
VALID: dict[str, Any] = {"inputs": [CATEGORICAL, DENSE]}


def with_input(index: int, **changes: object) -> dict[str, Any]:
    inputs = [dict(CATEGORICAL), dict(DENSE)]
    inputs[index].update(changes)
    return {"inputs": inputs}


V2_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "parameters-string": ({**VALID, "parameters": "x"}, "parameters"),
    "parameters-number": ({**VALID, "parameters": 3}, "parameters"),
    "parameters-list": ({**VALID, "parameters": []}, "parameters"),
    "input-parameters-string": (with_input(0, parameters="x"), "inputs[0].parameters"),
    "output-parameters-list": (
        {**VALID, "outputs": [{"name": "probability", "parameters": [1]}]},
        "outputs[0].parameters",
    ),
    "outputs-not-a-list": ({**VALID, "outputs": "probability"}, "outputs"),
    "datatype-list": (with_input(0, datatype=["INT64"]), "inputs[0].datatype"),
    "datatype-object": (with_input(0, datatype={}), "inputs[0].datatype"),
    "datatype-bytes": (with_input(0, datatype="BYTES"), "BYTES"),
    "binary-size-float": (with_input(0, parameters={"binary_data_size": 56.0}), "binary_data_size"),
    "shape-overflows": (with_input(0, shape=[2**31 - 1] * 4, data=[]), "inputs[0].data"),
    "shape-too-deep": (with_input(0, shape=[1] * 65), "inputs[0].shape"),
    "shape-dimension-huge": (with_input(0, shape=[2**63, 7]), "inputs[0].shape[0]"),
    "duplicate-names": ({"inputs": [CATEGORICAL, CATEGORICAL, DENSE]}, "given twice"),
    "int-out-of-range": (with_input(0, data=[2**70] * 7), "inputs[0].data"),
    "string-as-number": (with_input(1, data=["0.5"] * 19), "inputs[1].data"),
    "priority-string": ({**VALID, "parameters": {"priority": "1"}}, "parameters.priority"),
    "timeout-negative": ({**VALID, "parameters": {"timeout": -5}}, "parameters.timeout"),
    "id-number": ({**VALID, "id": 7}, "id"),
    "not-an-object": ([VALID], "body"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize(("body", "named"), V2_BODIES.values(), ids=V2_BODIES.keys())
def test_malformed_v2_bodies_get_400_naming_the_field(
    client: httpx.Client, body: dict[str, Any], named: str
) -> None:
    response = client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert named in response.json()["error"]


def binary_body(sizes: tuple[int, int]) -> tuple[bytes, int]:
    header = {"inputs": [
        {**CATEGORICAL, "data": None, "parameters": {"binary_data_size": sizes[0]}},
        {**DENSE, "data": None, "parameters": {"binary_data_size": sizes[1]}},
    ]}  # fmt: skip
    head = json.dumps(header).encode()
    return head + struct.pack("<7q", *[1] * 7) + struct.pack("<19f", *[0.0] * 19), len(head)


def test_binary_tensors_must_match_their_shapes_and_fill_the_tail(client: httpx.Client) -> None:
    body, length = binary_body((56, 76))
    ok = client.post(INFER, content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert ok.status_code == 200, ok.text
    # The second input's size disagrees with its shape (the bytes are all there).
    body, length = binary_body((56, 72))
    bad = client.post(INFER, content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert bad.status_code == 400 and "inputs[1].parameters.binary_data_size" in bad.json()["error"]
    for header in ("²", "-1", "1e3", str(len(body) + 1)):
        headers = {b"inference-header-content-length": header.encode()}  # '²' as UTF-8
        answer = client.post(INFER, content=body, headers=headers)
        assert answer.status_code == 400, header
        assert "Inference-Header-Content-Length" in answer.json()["error"]
    extra = client.post(INFER, content=body + b"\0" * 4,
                        headers={"Inference-Header-Content-Length": str(length)})  # fmt: skip
    assert extra.status_code == 400


def test_nan_in_binary_dense_is_refused_naming_the_input(client: httpx.Client) -> None:
    body, length = binary_body((56, 76))
    body = body[:-4] + struct.pack("<f", float("nan"))
    answer = client.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": str(length)}
    )
    assert answer.status_code == 422 and "dense" in answer.json()["error"]


def test_thousands_of_inputs_are_refused_by_their_count_with_a_short_message(
    client: httpx.Client,
) -> None:
    inputs = [
        {"name": f"i{i}", "shape": [1], "datatype": "FP32", "data": [0]} for i in range(10_000)
    ]
    answer = client.post(INFER, json={"inputs": inputs})
    assert answer.status_code == 400
    assert answer.json()["error"] == "inputs: 10000 tensors, at most 64"


V1_BODIES: dict[str, tuple[str, bytes, int, str]] = {
    "score-index-beyond-int64": (
        "/v1/score", json.dumps({"categorical": [[2**70] * 7], "dense": [[0.0] * 19]}).encode(),
        422, "categorical",
    ),
    "lone-surrogate-id": (
        "/v1/rank", b'{"user_id": 1, "candidates": ["\\ud800"]}', 422, "not valid JSON"
    ),
    "boolean-candidate": ("/v1/rank", b'{"user_id": 1, "candidates": [true]}', 422, "candidates"),
    "boolean-user": ("/v1/rank", b'{"user_id": false}', 422, "user_id"),
    "k-float": ("/v1/rank", b'{"user_id": 1, "k": 2.5}', 422, "k"),
    "not-json": ("/v1/rank", b"{", 422, "not valid JSON"),
    "too-many-candidates": (
        "/v1/rank", b'{"user_id": 1, "candidates": [' + b"1," * 200_000 + b"1]}", 413,
        "candidates: 200001 items",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "named"), V1_BODIES.values(),
                         ids=V1_BODIES.keys())  # fmt: skip
def test_malformed_v1_bodies_get_4xx_naming_the_field(
    client: httpx.Client, path: str, body: bytes, status: int, named: str
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert named in response.json()["error"]
    assert len(response.json()["error"]) < 400  # short, whatever the body held


def test_chunked_bodies_are_bounded_like_the_others(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": 1, "candidates": ['
        for _ in range(MAX_BODY_BYTES // 8192 + 2):
            yield b"1," * 4096

    response = client.post(
        "/v1/rank", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"error": f"body: larger than the limit of {MAX_BODY_BYTES} bytes"}


def test_unknown_routes_and_methods_answer_in_the_json_error_format(client: httpx.Client) -> None:
    missing = client.get("/no/such/route")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    method = client.get("/v1/rank")
    assert method.status_code == 405 and method.json() == {"error": "Method Not Allowed"}


def test_openapi_documents_errors_and_the_v2_body_without_a_stray_version(
    client: httpx.Client,
) -> None:
    schema = client.get("/openapi.json").json()
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"400", "404", "413", "503", "504"} <= set(infer["responses"])
    assert [p["name"] for p in infer["parameters"]] == ["name"]
    versioned = schema["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert {p["name"] for p in versioned["parameters"]} == {"name", "version"}
    rank = schema["paths"]["/v1/rank"]["post"]
    assert (
        "candidates" in rank["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    assert {"413", "422", "503"} <= set(rank["responses"])


# Property-based: any JSON in any field of a V2 or /v1 body, and bodies mutated from valid ones.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIXTURES = [HealthCheck.function_scoped_fixture]  # the client fixture is reused on purpose
V2_FIELDS = ("id", "parameters", "inputs", "outputs")
INPUT_FIELDS = ("name", "shape", "datatype", "parameters", "data")


@st.composite
def mutated_v2(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [dict(CATEGORICAL), dict(DENSE)]}
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            body[draw(st.sampled_from(V2_FIELDS))] = draw(json_values)
        elif isinstance(body.get("inputs"), list) and body["inputs"]:
            target = body["inputs"][draw(st.integers(0, len(body["inputs"]) - 1))]
            if isinstance(target, dict):
                target[draw(st.sampled_from(INPUT_FIELDS))] = draw(json_values)
    return body


@st.composite
def mutated_rank(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": 1, "candidates": [1, 2, 3], "k": 2}
    key = draw(st.sampled_from(["user_id", "candidates", "k", "exclude_seen", "other"]))
    body[key] = draw(json_values)
    return body


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(mutated_v2(), json_values))
def test_no_v2_body_gets_a_5xx(client: httpx.Client, body: Any) -> None:
    response = client.post(INFER, json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(mutated_rank(), json_values))
def test_no_rank_body_gets_a_5xx(client: httpx.Client, body: Any) -> None:
    response = client.post("/v1/rank", json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


def test_the_candidate_limit_is_the_configured_one(client: httpx.Client) -> None:
    body = {"user_id": 1, "candidates": list(range(MAX_CANDIDATES + 1))}
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 413 and f"limit {MAX_CANDIDATES}" in response.json()["error"]
