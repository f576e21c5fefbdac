"""The /v1 request and response bodies (strict: no coercion, unknown fields refused)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Id = Annotated[
    StrictStr | StrictInt, Field(description="a raw id as in the data set; unknown ids are scored")
]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: Id
    candidates: list[Id] | None = Field(
        None, min_length=1, description="item ids to rank; omitted: the whole catalog"
    )
    k: int = Field(10, ge=1)
    exclude_seen: bool = Field(False, description="drop items the user rated in training")
    context: dict[str, list[float]] | None = Field(
        None, description="request-side model inputs (the model's ranking spec names them), "
        "the same for every candidate",
    )  # fmt: skip


class RankedItem(BaseModel):
    item_id: str
    score: float


class RankResponse(BaseModel):
    model_name: str
    model_version: int
    variants: dict[str, str] = Field(description="device -> variant, for the devices that scored")
    user_known: bool
    unknown_items: list[str] = Field(description="candidates scored through the OOV slot")
    items: list[RankedItem]
    degraded: list[Literal["user", "items", "seen"]] | None = Field(
        None, description="present when the online feature store ([features] source = redis) "
        "failed to give these in time: the user's or the items' rows were scored through the OOV "
        "row, or seen items were not excluded",
    )  # fmt: skip


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    categorical: list[list[int]] = Field(min_length=1, description="per-field vocabulary indices")
    dense: list[list[float]] = Field(min_length=1, description="dense features (genre bag)")


class ScoreResponse(BaseModel):
    model_name: str
    model_version: int
    variants: dict[str, str]
    scores: list[float]
