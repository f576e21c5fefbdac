"""The one JSON error format for what no route expected: an unexpected exception is a 500 with
`{"error": ...}` (the traceback goes to the log), through the app's own handler."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from app.http import errors


async def test_an_unexpected_exception_is_a_json_500(caplog: pytest.LogCaptureFixture) -> None:
    request = Request({"type": "http", "method": "POST", "path": "/v1/rank", "headers": []})
    response = await errors.internal_error(request, RuntimeError("a bug"))
    assert response.status_code == 500
    assert response.media_type == "application/json"
    assert json.loads(bytes(response.body)) == {"error": "internal error"}
    assert "unexpected error on /v1/rank" in caplog.text and "a bug" in caplog.text


def test_pydantic_locations_read_as_the_request_spells_them() -> None:
    assert errors.field_path(("inputs", 0, "shape", 1)) == "inputs[0].shape[1]"
    assert errors.field_path(("body", "candidates", 2, "str")) == "candidates[2]"
    assert errors.field_path(()) == "body"
