"""The build's model versions (numpy and pydantic only; the serving path reads them).

Layout: `<root>/<model>/<version>/` holding `manifest.json`, the exported model files, the feature
tables, the test split and the report. The manifest is the artifact's contract: a reader validates
its schema, every file's SHA-256, and that the feature tables agree with the declared inputs and
vocabularies, and refuses the version with a RepositoryError that says what is wrong. A version
without a manifest, a plain model file, is read by `models/artifacts/servable.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.artifacts.checksum import sha256_file
from models.artifacts.feature_tables import FeatureTables

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FEATURE_TABLES = "feature_tables.npz"
TEST_SPLIT = "test_split.npz"
VOCABULARIES = "vocabularies.json"
SEEN_ITEMS = "seen_items.npz"


# KServe V2 datatype names, the ones served here (every one both runtimes accept; not BYTES).
Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


class RepositoryError(RuntimeError):
    """A model version that cannot be used; the message names the file and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # -1 is the dynamic batch axis


class FileRef(Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RuntimePrecision(Strict):
    runtime: Literal["onnxruntime", "openvino", "pytorch"]
    requested: str
    executed: str
    max_abs_difference_vs_pytorch: float | None = None


class Variant(Strict):
    name: str
    file: FileRef
    weights_file: FileRef | None = None  # an OpenVINO IR's .bin beside its .xml
    format: Literal["onnx", "openvino-ir"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    device: Literal["cpu", "gpu"]
    runtimes: tuple[Literal["onnxruntime", "openvino"], ...]  # that may serve it
    derived_from: str | None = None
    parameters: int = Field(ge=0)
    flops_per_row: int = Field(ge=0)
    test_auc: float = Field(ge=0, le=1)
    test_log_loss: float = Field(ge=0)
    scored_with: RuntimePrecision  # the runtime and precision the test figures come from
    servable: bool
    gate: str  # one line: why it is (not) servable
    parity: tuple[RuntimePrecision, ...] = ()


class Dataset(Strict):
    name: str
    source: str
    interactions: int
    users: int
    items: int
    label: str


class SplitSpec(Strict):
    method: str
    seed: int
    fractions: tuple[float, float, float]
    rows: dict[str, int]


class Manifest(Strict):
    schema_version: Literal[1]
    model_name: str
    model_version: int = Field(ge=1)
    created_at: str
    dataset: Dataset
    split: SplitSpec
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    categorical_fields: tuple[str, ...]
    dense_fields: tuple[str, ...]
    vocabulary_sizes: dict[str, int]
    feature_tables: FileRef
    test_split: FileRef
    vocabularies: FileRef  # field -> tokens; token i has index i + 1 (0 is OOV)
    seen_items: FileRef | None = None  # per user row, the item rows rated in training (CSR)
    variants: tuple[Variant, ...]
    default_variants: dict[Literal["cpu", "gpu"], str]

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


@dataclass(frozen=True)
class TestSplit:
    user_rows: npt.NDArray[np.int64]
    item_rows: npt.NDArray[np.int64]
    labels: npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelVersion:
    """One validated version of a model: manifest, feature tables and paths to its files."""

    path: Path
    manifest: Manifest
    tables: FeatureTables

    def file(self, ref: FileRef) -> Path:
        return self.path / ref.file

    def variant_path(self, name: str) -> Path:
        return self.file(self.manifest.variant(name).file)

    def load_seen_items(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """(indptr, item rows): user row u rated item rows[indptr[u]:indptr[u + 1]] in training."""
        if self.manifest.seen_items is None:
            return None
        with np.load(self.file(self.manifest.seen_items), allow_pickle=False) as data:
            return data["indptr"], data["item_rows"]

    def load_test_split(self) -> TestSplit:
        with np.load(self.file(self.manifest.test_split), allow_pickle=False) as data:
            return TestSplit(data["user_rows"], data["item_rows"], data["labels"])


def file_ref(directory: Path, name: str) -> FileRef:
    return FileRef(file=name, sha256=sha256_file(directory / name))


def latest_version(root: Path, model_name: str) -> int:
    versions = [int(p.name) for p in (root / model_name).glob("*") if p.name.isdigit()]
    if not versions:
        raise RepositoryError(f"no versions of model {model_name!r} under {root}")
    return max(versions)


def open_version(root: Path, model_name: str, version: int | None = None) -> ModelVersion:
    """Open and validate `<root>/<model_name>/<version>` (the latest version when None)."""
    number = latest_version(root, model_name) if version is None else version
    path = root / model_name / str(number)
    manifest = read_manifest(path)
    if (manifest.model_name, manifest.model_version) != (model_name, number):
        raise RepositoryError(
            f"{path / MANIFEST} describes {manifest.model_name} version {manifest.model_version}, "
            f"but lies at {model_name}/{number}"
        )
    for ref in _file_refs(manifest):
        _verify_file(path, ref)
    tables = FeatureTables.load(path / manifest.feature_tables.file)
    _check_tables(manifest, tables)
    return ModelVersion(path=path, manifest=manifest, tables=tables)


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RepositoryError(f"cannot read {manifest_path}: {exc}") from exc
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise RepositoryError(f"{manifest_path} is not a valid manifest: {exc}") from exc
    names = [v.name for v in manifest.variants]
    if len(set(names)) != len(names):
        raise RepositoryError(f"{manifest_path} names a variant twice: {names}")
    for device, name in manifest.default_variants.items():
        if name not in names or not manifest.variant(name).servable:
            raise RepositoryError(
                f"{manifest_path}: default {device} variant {name!r} is not a servable variant"
            )
    return manifest


def write_manifest(path: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2)
    (path / MANIFEST).write_text(text + "\n", encoding="utf-8")


def _file_refs(manifest: Manifest) -> list[FileRef]:
    refs = [manifest.feature_tables, manifest.test_split, manifest.vocabularies]
    refs += [manifest.seen_items] if manifest.seen_items else []
    for variant in manifest.variants:
        refs += [variant.file] + ([variant.weights_file] if variant.weights_file else [])
    return refs


def _verify_file(path: Path, ref: FileRef) -> None:
    target = path / ref.file
    if not target.is_file():
        raise RepositoryError(f"{target} is named in the manifest but missing")
    actual = sha256_file(target)
    if actual != ref.sha256:
        raise RepositoryError(f"{target} has SHA-256 {actual}, the manifest says {ref.sha256}")


def _check_tables(manifest: Manifest, tables: FeatureTables) -> None:
    where = manifest.feature_tables.file
    if tables.categorical_fields != manifest.categorical_fields:
        raise RepositoryError(
            f"{where} has categorical fields {tables.categorical_fields}, "
            f"the manifest says {manifest.categorical_fields}"
        )
    if tables.dense_fields != manifest.dense_fields:
        raise RepositoryError(f"{where} dense fields differ from the manifest's")
    inputs = {spec.name: spec for spec in manifest.inputs}
    widths = {"categorical": len(tables.categorical_fields), "dense": len(tables.dense_fields)}
    for name, width in widths.items():
        spec = inputs.get(name)
        if spec is None or spec.shape != (-1, width):
            raise RepositoryError(
                f"manifest input {name!r} does not match the tables' width {width}"
            )
    columns = [*tables.user_categorical.T, *tables.item_categorical.T]
    for field, column in zip(tables.categorical_fields, columns, strict=True):
        size = manifest.vocabulary_sizes.get(field)
        if size is None or int(column.max()) >= size or int(column.min()) < 0:
            raise RepositoryError(f"{where}: field {field!r} has indices outside its vocabulary")
