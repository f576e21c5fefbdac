"""The one typed settings object, assembled from the sections each part owns.

The defaults are the schema's (`settings.toml` renders them, with every key's description); a
settings file passed with `--settings` overrides them, and environment variables override both:
`RECSYS_TRAINING__MAX_EPOCHS=3` sets `[training] max_epochs`. Each part is handed only its own
section.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.settings import (
    AdmissionSettings,
    CanarySettings,
    FeatureSettings,
    GrpcSettings,
    HttpSettings,
    LimitSettings,
    LoadBalancingSettings,
    ModelControlSettings,
    SelfAccelerationSettings,
    ServerSettings,
    ServingModelSettings,
    ShadowSettings,
)
from models.settings import (
    BenchmarkSettings,
    DataSettings,
    GateSettings,
    PruningSettings,
    QuantizationSettings,
    RepositorySettings,
    StudentSettings,
    TableSettings,
    TrainingSettings,
)
from scheduler.settings import (
    DEFAULT_DEVICES,
    BatchingSettings,
    DeviceSettings,
    FaultSettings,
    MetricsSettings,
    RoutingSettings,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data: DataSettings = DataSettings()
    table: TableSettings = TableSettings()
    training: TrainingSettings = TrainingSettings()
    student: StudentSettings = StudentSettings()
    pruning: PruningSettings = PruningSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    gate: GateSettings = GateSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    repository: RepositorySettings = RepositorySettings()
    server: ServerSettings = ServerSettings()
    http: HttpSettings = HttpSettings()
    grpc: GrpcSettings = GrpcSettings()
    model: ServingModelSettings = ServingModelSettings()
    model_control: ModelControlSettings = ModelControlSettings()
    batching: BatchingSettings = BatchingSettings()
    devices: tuple[DeviceSettings, ...] = DEFAULT_DEVICES
    routing: RoutingSettings = RoutingSettings()
    limits: LimitSettings = LimitSettings()
    admission: AdmissionSettings = AdmissionSettings()
    features: FeatureSettings = FeatureSettings()
    shadow: ShadowSettings = ShadowSettings()
    self_acceleration: SelfAccelerationSettings = SelfAccelerationSettings()
    canary: CanarySettings = CanarySettings()
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
    def _check_workers(self) -> Settings:
        several = self.server.workers > 1 or self.server.engine == "process"
        if several and self.model_control.mode != "none":
            raise ValueError(
                f"server.workers: {self.server.workers} worker processes serve the repository "
                f"as start-up loaded it; model_control.mode {self.model_control.mode!r} needs "
                "workers = 1"
            )
        return self

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        """Listeners on one port would share it (workers set SO_REUSEPORT) and split the
        connections between protocols, or fail to listen with no word why."""
        ports = {
            "server.port": self.server.port,
            "grpc.port": self.grpc.port,
            "load_balancing.agent_check_port": self.load_balancing.agent_check_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name}: {port} is {seen[port]} too; each listener needs its own")
            if port:  # 0: off (or, for the server, any free port)
                seen[port] = name
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


class SettingsError(ValueError):
    """A settings file or value that cannot be used, said in one line naming the file and key."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """The schema's defaults, then the settings file at `path` (if given: it must exist), then
    RECSYS_* environment variables, then `overrides` ({section: {key: value}}). Raises
    SettingsError, one line naming the file and the problem."""
    file_values: dict[str, Any] = {}
    source = "RECSYS_* variables" if path is None else f"{path} or RECSYS_* variables"
    if path is not None:
        try:
            with path.open("rb") as f:
                file_values = tomllib.load(f)
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read the settings file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    try:
        settings = Settings(**file_values)
        if overrides:
            merged = settings.model_dump()
            for section, values in overrides.items():
                current = merged[section]
                merged[section] = {**current, **values} if isinstance(current, dict) else values
            settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(f"{source}: invalid settings: {problems(exc)}") from None
    return settings


def problems(exc: ValidationError) -> str:
    """Pydantic's errors as `section.key: message; ...`."""
    return "; ".join(
        ".".join(str(p) for p in e["loc"]) + ": " * bool(e["loc"])
        + e["msg"].removeprefix("Value error, ")
        for e in exc.errors()
    )  # fmt: skip
