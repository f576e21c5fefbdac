"""What the server can serve from a model repository folder, with or without the build's manifest.

`<root>/<model>/<version>/` holds either a plain model file (`model.onnx`, or OpenVINO IR
`model.xml` + `model.bin`), described by its own graph, or what `python -m models build` wrote: a
manifest with accuracy-gated variants, feature tables and provenance (then the manifest describes
the tensors and every file is checked against its SHA-256). A plain file may have a checksum beside
it (`model.onnx.sha256`, as `sha256sum` writes it), which is then verified too. A plain version
that `python -m models accelerate` went through also serves the variants its `acceleration.json`
records as servable, each file checked against the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.artifacts.acceleration_record import (
    RECORD,
    AccelerationRecord,
    cpu_model,
    fastest,
    live_note,
    read_record,
)
from models.artifacts.checksum import sha256_file
from models.artifacts.model_config import (
    CONFIG_FILE,
    ModelConfig,
    TensorOverride,
    read_model_config,
)
from models.artifacts.repository import (
    MANIFEST,
    Manifest,
    ModelVersion,
    RepositoryError,
    TensorSpec,
    open_version,
)
from models.artifacts.signature import Signature, read_signature

PLAIN_FILES = ("model.onnx", "model.xml")
PLAIN_VARIANT = "model"
AS_EXPORTED = "as exported"  # a plain file's precision: whatever its graph holds
ANOTHER_CPU = "the record was measured on another CPU"
Runtime = Literal["onnxruntime", "openvino"]


@dataclass(frozen=True)
class VariantFile:
    """One model file a device may run."""

    name: str
    path: Path
    format: Literal["onnx", "openvino-ir"]
    precision: str  # fp32, fp16, bf16, int8; AS_EXPORTED for a plain file
    runtimes: tuple[Runtime, ...]
    execution_hint: str | None = None  # OpenVINO's inference precision (bf16 execution)
    device: str = "any"  # "gpu": made for the CUDA provider only


@dataclass(frozen=True)
class ServableVersion:
    model: str
    number: int
    path: Path
    config: ModelConfig
    signature: Signature  # the graph's tensors, with the config's overrides applied
    variants: Mapping[str, VariantFile]  # the servable ones only
    default_variants: Mapping[str, str]  # backend or device kind ("cpu", "gpu") -> variant
    built: ModelVersion | None  # the build's manifest and tables, when it has them
    default_reasons: Mapping[str, str] = field(default_factory=dict)  # the same keys -> why
    # Backends whose default is timed at start-up: the record was measured on another CPU.
    timed_defaults: frozenset[str] = frozenset()
    record: AccelerationRecord | None = None  # a plain version's acceleration.json, if any

    @property
    def gated_on(self) -> str:
        """What gated its variants: "build" (a manifest), the record's "held-out rows" or "live
        traffic"; "" for a plain file alone."""
        if self.built is not None:
            return "build"
        return self.record.gated_on if self.record is not None else ""

    @property
    def batched(self) -> bool:
        return self.signature.batched and self.config.max_batch_rows != 0


def model_names(root: Path) -> list[str]:
    """The models of a repository: its folders holding a version folder or a config.toml."""
    if not root.is_dir():
        raise RepositoryError(f"{root}: the model repository is not a folder")
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and ((p / CONFIG_FILE).is_file() or versions_on_disk(p))
    )  # fmt: skip


def versions_on_disk(model_path: Path) -> list[int]:
    return sorted(int(p.name) for p in model_path.iterdir() if p.is_dir() and p.name.isdigit()
                  and int(p.name) > 0)  # fmt: skip


def open_servable(root: Path, model: str, number: int, config: ModelConfig | None = None,
                  max_batch_rows: int | None = None) -> ServableVersion:  # fmt: skip
    """Open and check `<root>/<model>/<number>`; a RepositoryError names the file and problem.
    `max_batch_rows`: the largest batch the server will run it in (a recorded speed counts at
    the batch sizes up to it)."""
    config = read_model_config(root / model) if config is None else config
    path = root / model / str(number)
    record: AccelerationRecord | None = None
    if (path / MANIFEST).exists():
        built = open_version(root, model, number)
        manifest = built.manifest
        signature = Signature(manifest.inputs, manifest.outputs)
        variants = {
            v.name: VariantFile(v.name, built.file(v.file), v.format, v.precision, v.runtimes)
            for v in manifest.variants
            if v.servable
        }
        defaults: dict[str, str] = {str(k): v for k, v in manifest.default_variants.items()}
        defaults |= _runnable_defaults(manifest, defaults.get("cpu"))
    else:
        built = None
        file = _plain_file(path)
        signature = read_signature(file)
        onnx = file.suffix == ".onnx"
        runtimes: tuple[Runtime, ...] = ("onnxruntime", "openvino") if onnx else ("openvino",)
        variant = VariantFile(
            PLAIN_VARIANT, file, "onnx" if onnx else "openvino-ir", AS_EXPORTED, runtimes
        )
        variants = {PLAIN_VARIANT: variant}
        defaults = {"cpu": PLAIN_VARIANT, "gpu": PLAIN_VARIANT}
        reasons: dict[str, str] = {}
        timed: frozenset[str] = frozenset()
        if (path / RECORD).is_file():
            rows = config.max_batch_rows or max_batch_rows
            accelerated, defaults, reasons, record = _accelerated(path, file, rows)
            variants |= accelerated
            timed = frozenset(b for b, why in reasons.items() if why.startswith(ANOTHER_CPU))
    signature = _apply_overrides(signature, config, root / model / CONFIG_FILE)
    for device, name in config.variants.items():
        if name not in variants:
            raise RepositoryError(
                f"{root / model / CONFIG_FILE}: variants.{device}: {model} version {number} has "
                f"no servable variant {name!r} (it has {', '.join(sorted(variants))})"
            )
    if built is not None:
        cpu, timed = defaults.get("cpu"), frozenset()
        reasons = {key: "the manifest's default" if key in ("cpu", "gpu") else
                   f"the manifest's CPU default {cpu!r} is not run by this runtime; "
                   f"{defaults[key]!r} is the float variant it comes from"
                   for key in defaults}  # fmt: skip
    return ServableVersion(
        model,
        number,
        path,
        config,
        signature,
        variants,
        defaults,
        built,
        reasons,
        timed,
        record,
    )


Accelerated = tuple[dict[str, VariantFile], dict[str, str], dict[str, str], AccelerationRecord]


def _accelerated(path: Path, source: Path, max_rows: int | None) -> Accelerated:
    """The servable variants `python -m models accelerate` recorded, each file checked, the
    default per backend: the record's fastest where it was measured on this CPU model; else none
    (a speed measured on another CPU says little here: the server times them at start-up), and
    the record itself."""
    record = read_record(path)
    if record.source.file != source.name or sha256_file(source) != record.source.sha256:
        raise RepositoryError(
            f"{path / RECORD} describes another {record.source.file} (its SHA-256 differs): run "
            "`python -m models accelerate` on this version again"
        )
    variants = {}
    for v in record.variants:
        if not v.servable or v.name == PLAIN_VARIANT:
            continue
        for ref in (v.file, *([v.weights_file] if v.weights_file else [])):
            target = path / ref.file
            if not target.is_file():
                raise RepositoryError(f"{target} is named in {RECORD} but missing")
            if sha256_file(target) != ref.sha256:
                raise RepositoryError(f"{target} has another SHA-256 than {RECORD} says")
        variants[v.name] = VariantFile(v.name, path / v.file.file, v.format, v.precision,
                                       v.runtimes, v.execution_hint, v.device)  # fmt: skip
    here = cpu_model()
    defaults, reasons = {"cpu": PLAIN_VARIANT, "gpu": PLAIN_VARIANT}, {}
    for backend, name in record.default_variants.items():
        if name != PLAIN_VARIANT and name not in variants:
            continue
        if backend.endswith("-cpu") and record.cpu != here:
            reasons[backend] = f"{ANOTHER_CPU} ({record.cpu}): timed at start-up"
            continue
        defaults[backend] = name
        reasons[backend] = record.default_reasons.get(backend, "the record's default")
        runtime = backend.removesuffix("-cpu")
        if backend.endswith("-cpu") and max_rows is not None:
            defaults[backend], reasons[backend] = fastest(record.variants, runtime, max_rows)
            reasons[backend] += live_note(record, defaults[backend])
    return variants, defaults, reasons, record


def _runnable_defaults(manifest: Manifest, cpu_default: str | None) -> dict[str, str]:
    """For a CPU runtime that cannot run the manifest's CPU default (an ONNX Runtime INT8 file on
    an OpenVINO device, in versions built before the default had to suit both), the float
    variant that default was derived from, else the first servable CPU variant it runs."""
    if cpu_default is None:
        return {}
    default = manifest.variant(cpu_default)
    fallbacks = {}
    for backend, runtime in (("openvino-cpu", "openvino"), ("onnxruntime-cpu", "onnxruntime")):
        if runtime in default.runtimes:
            continue
        runnable = [v for v in manifest.variants if v.servable and v.device == "cpu"
                    and runtime in v.runtimes]  # fmt: skip
        source = next((v for v in runnable if v.name == default.derived_from), None)
        if source or runnable:
            fallbacks[backend] = (source or runnable[0]).name
    return fallbacks


def _plain_file(path: Path) -> Path:
    if not path.is_dir():
        raise RepositoryError(f"{path}: no such version folder")
    present = [path / name for name in PLAIN_FILES if (path / name).is_file()]
    if not present:
        raise RepositoryError(f"{path}: holds no {' or '.join(PLAIN_FILES)} (nor a {MANIFEST})")
    if len(present) > 1:
        raise RepositoryError(f"{path}: holds both {' and '.join(PLAIN_FILES)}; keep one")
    file = present[0]
    checked = [file] + ([file.with_suffix(".bin")] if file.suffix == ".xml" else [])
    for target in checked:
        _verify_sidecar(target)
    return file


def _verify_sidecar(target: Path) -> None:
    sidecar = target.with_name(target.name + ".sha256")
    if not sidecar.is_file() or not target.is_file():
        return
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    expected = words[0].lower() if words else ""
    actual = sha256_file(target)
    if actual != expected:
        raise RepositoryError(
            f"{target} has SHA-256 {actual}, {sidecar.name} says {expected[:64]!r}"
        )


def _apply_overrides(signature: Signature, config: ModelConfig, where: Path) -> Signature:
    def apply(specs: tuple[TensorSpec, ...], overrides: Mapping[str, TensorOverride], kind: str,
              ) -> tuple[TensorSpec, ...]:  # fmt: skip
        names = {spec.name for spec in specs}
        for name in overrides:
            if name not in names:
                raise RepositoryError(
                    f"{where}: {kind}.{name}: the graph has no {kind[:-1]} {name!r} "
                    f"(it has {', '.join(sorted(names))})"
                )
        result = []
        for spec in specs:
            override = overrides.get(spec.name)
            if override is None:
                result.append(spec)
            else:
                batch_axis = bool(spec.shape) and spec.shape[0] == -1
                graph_dims = spec.shape[1:] if batch_axis else spec.shape
                if len(override.dims) != len(graph_dims) or any(
                    g not in (-1, d) for g, d in zip(graph_dims, override.dims, strict=True)
                ):
                    raise RepositoryError(
                        f"{where}: {kind}.{spec.name}.dims: {list(override.dims)} does not fit "
                        f"the graph's {list(graph_dims)}"
                    )
                shape = ((-1,) if batch_axis else ()) + override.dims
                result.append(TensorSpec(name=spec.name, datatype=spec.datatype, shape=shape))
        return tuple(result)

    return Signature(
        apply(signature.inputs, config.inputs, "inputs"),
        apply(signature.outputs, config.outputs, "outputs"),
    )
