"""A model's own settings, `<root>/<model>/config.toml` (optional; Triton's config.pbtxt in TOML).

Every key is optional: a model without the file is served on what its graph declares and the
server's settings. An unknown key or a bad value is a RepositoryError naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.artifacts.ranking_spec import RankingSpec
from models.artifacts.repository import RepositoryError

CONFIG_FILE = "config.toml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionPolicy(Strict):
    """Which version folders are served: the `latest` N (default 1), `all`, or `specific` ones."""

    latest: int | None = Field(None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def one_kind(self) -> VersionPolicy:
        if sum((self.latest is not None, self.all, self.specific is not None)) > 1:
            raise ValueError("give one of latest, all or specific")
        return self

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to serve among those on disk, newest first."""
        newest_first = sorted(on_disk, reverse=True)
        if self.all:
            return newest_first
        if self.specific is not None:
            return [v for v in newest_first if v in self.specific]
        return newest_first[: self.latest or 1]


class TensorOverride(Strict):
    """Fixes dimensions the graph leaves open: the dims after an open first (batch) axis, or the
    whole shape of a tensor without one; -1 stays open."""

    dims: tuple[int, ...] = Field(description="the tensor's dimensions after the batch axis")


class ModelConfig(Strict):
    max_batch_rows: int | None = Field(
        None, ge=0, description="rows one batch holds at most (unset: [batching] max_batch_rows; "
        "0: no batching, each request runs alone, as Triton's max_batch_size 0)",
    )  # fmt: skip
    max_queue_delay_ms: float | None = Field(
        None, ge=0, description="the batching window (unset: [batching] max_queue_delay_ms)"
    )
    devices: tuple[str, ...] | None = Field(
        None, description="the server's [[devices]] (by name) that serve this model; unset: all"
    )
    variants: dict[str, str] = Field(
        default_factory=dict, description="device name -> the variant it runs (unset: default)"
    )
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    default_timeout_ms: float | None = Field(
        None, gt=0, description="this model's request deadline (unset: [admission]'s)"
    )
    default_priority: Literal["high", "low"] | None = Field(
        None, description="this model's default priority (unset: [admission]'s)"
    )
    inputs: dict[str, TensorOverride] = Field(default_factory=dict)
    outputs: dict[str, TensorOverride] = Field(default_factory=dict)
    ranking: RankingSpec | None = Field(
        None, description="how /v1/rank builds this model's inputs from feature tables"
    )


def read_model_config(model_path: Path) -> ModelConfig:
    """The model's config.toml, or every default when it has none."""
    path = model_path / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RepositoryError(f"{path}: not valid TOML: {exc}") from None
    try:
        return ModelConfig.model_validate(document)
    except ValidationError as exc:
        raise RepositoryError(f"{path}: {one_line(exc)}") from None


def one_line(error: ValidationError) -> str:
    """A pydantic error as one line: each problem as `key.path: message`."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "file"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
