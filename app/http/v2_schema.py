"""The KServe V2 inference request as a strict, typed schema: any wrong type is a 400 naming the
field, before any tensor work. Counts are bounded here too (inputs, outputs, dimensions), so a
body with thousands of tensors is refused before they are looked at."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from app.http.errors import UNION_MEMBERS, field_path
from scheduler.errors import InvalidInput

MAX_TENSORS = 64  # inputs or outputs in one request
MAX_DIMENSIONS = 16
MAX_DIMENSION = 2**31 - 1
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
Dimension = Annotated[StrictInt, Field(ge=0, le=MAX_DIMENSION)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class Parameters(BaseModel):
    """V2 parameters: a map of names to scalars; the ones the server reads are typed."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Scalar] = Field(init=False)


class InputParameters(Parameters):
    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = None


class OutputParameters(Parameters):
    binary_data: StrictBool | None = None


class RequestParameters(Parameters):
    binary_data_output: StrictBool | None = None
    timeout: Annotated[StrictInt | StrictFloat, Field(gt=0)] | None = Field(
        None, description="the request's deadline in microseconds (it may only shorten it)"
    )
    priority: Annotated[StrictInt, Field(ge=0)] | None = Field(
        None, description="1 is the highest; 0 or absent: the default priority"
    )
    routing_key: Annotated[StrictStr, Field(max_length=256)] | None = Field(
        None, description="a canary split's key ([canary]): the same key, the same version"
    )


class InputTensor(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: Name
    shape: list[Dimension] = Field(max_length=MAX_DIMENSIONS)
    datatype: StrictStr
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(None, description="row-major, flat or nested")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: Name
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[InputTensor] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestedOutput] | None = Field(None, max_length=MAX_TENSORS)


def decode_request(json_part: bytes) -> InferenceRequest:
    """The request, or InvalidInput naming the first field that is wrong. Counts are checked on
    the parsed JSON before anything is validated."""
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidInput("body: a JSON object is required")
    for key in ("inputs", "outputs"):
        tensors = document.get(key)
        if isinstance(tensors, list) and len(tensors) > MAX_TENSORS:
            raise InvalidInput(f"{key}: {len(tensors)} tensors, at most {MAX_TENSORS}")
    try:
        return InferenceRequest.model_validate(document)
    except PydanticValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        where = field_path(errors[0]["loc"])
        if errors[0]["loc"][-1:] and errors[0]["loc"][-1] in UNION_MEMBERS:
            kinds = [e["msg"].removeprefix("Input should be ") for e in errors
                     if field_path(e["loc"]) == where]  # fmt: skip
            raise InvalidInput(f"{where}: should be {' or '.join(kinds)}") from None
        raise InvalidInput(f"{where}: {errors[0]['msg']}") from None
