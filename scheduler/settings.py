"""The scheduler's settings: batching, the devices, routing, faults and metric names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from config import Section


class BatchingSettings(Section):
    """The dynamic-batching queue."""

    max_batch_rows: int = Field(
        1024, ge=1, description="rows per batch at most; a larger request is split across "
        "batches and reassembled",
    )  # fmt: skip
    max_queue_delay_ms: float = Field(
        0.5, ge=0, description="elastic window: a batch leaves at once while an idle device "
        "would score the queued rows within it; otherwise rows wait, growing the batch, until a "
        "device turns idle or this long after the first one (0: every batch at once)",
    )  # fmt: skip
    elastic: bool = Field(
        True, description="false: a fixed window, every batch waits max_queue_delay_ms or until "
        "full (for comparison: python -m bench.windows)",
    )  # fmt: skip
    max_queue_rows: int = Field(
        65536, ge=1, description="the queue's bound in rows; beyond it a request is refused at "
        "once (503 or 429)",
    )  # fmt: skip


class DeviceSettings(Section):
    """One device: a backend on its own executor thread(s), at most parallel_batches at once. A
    device whose library or GPU is not there is left out, with one log line."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="the device's name in "
                      "metrics, logs and the fault endpoints")  # fmt: skip
    backend: Literal["openvino-cpu", "onnxruntime-cpu", "onnxruntime-gpu", "cpu"] = Field(
        description="openvino-cpu | onnxruntime-cpu | onnxruntime-gpu | cpu (either CPU "
        "runtime: for each model, the faster of the two on its warm-up batches)"
    )
    variant: str = Field(
        "default", description="a variant named in the manifest, or default: the manifest's "
        "default for the device kind",
    )  # fmt: skip
    threads: int = Field(
        0, ge=0, description="runtime threads; 0: fitted to the cores this process may use (its "
        "CPU affinity and cgroup limit, less one for the event loop), shared by the CPU devices",
    )  # fmt: skip
    streams: int = Field(1, ge=1, description="OpenVINO streams")
    parallel_batches: int = Field(1, ge=1, description="batches the device runs at once")


class RoutingSettings(Section):
    """Which device a batch goes to, and the latency model behind the choice."""

    policy: Literal["earliest-completion", "shortest-queue", "round-robin"] = Field(
        "earliest-completion", description="earliest-completion | shortest-queue | round-robin"
    )
    latency_window_batches: int = Field(
        256, ge=2, description="recent batches each device's latency model (seconds = a + b "
        "rows) is fitted on",
    )  # fmt: skip
    warmup_rows: tuple[int, ...] = Field(
        (1, 64, 256, 1024), description="batch sizes timed at start-up, three runs each "
        "(readiness waits for them): they seed the latency model and, where runtimes or variants "
        "are timed against each other, pick the fastest by each size's fastest run, summed",
    )  # fmt: skip


class FaultSettings(Section):
    """A device whose batch fails or stalls leaves routing (its batch retried once on another
    device); after the cool-down a one-row probe may bring it back."""

    batch_timeout_ms: float = Field(
        2000.0, gt=0, description="a batch running longer than this has failed"
    )
    stall_multiple: float = Field(
        20.0, ge=1, description="sooner while another device can take the batch: one that has "
        "run this many times its predicted time has stalled, so its retry still meets deadlines",
    )  # fmt: skip
    stall_floor_ms: float = Field(
        50.0, gt=0, description="a batch counts as stalled no sooner than this"
    )
    cool_down_seconds: float = Field(
        5.0, gt=0, description="a tripped device stays out of routing at least this long"
    )
    probe_interval_seconds: float = Field(
        0.5, gt=0, description="how often tripped devices past their cool-down are probed"
    )
    admin_enabled: bool = Field(
        False, description="fault injection for tests: POST /admin/faults/{device} {\"mode\": "
        "\"fail\" | \"stall\" | \"perturb\" | \"none\"} (`<device>.shadow`: its shadow "
        "candidates); never on a server others can reach",
    )  # fmt: skip
    admin_token: str = Field(
        "", description="the bearer token the fault endpoints require (Authorization: Bearer), "
        "16 characters or more; required with admin_enabled. When set, the repository API's load "
        "and unload (REST and gRPC) require it too",
    )  # fmt: skip
    allow_remote_admin: bool = Field(
        False, description="allow admin_enabled on a host other than loopback (the server "
        "refuses to start otherwise)",
    )  # fmt: skip


class MetricsSettings(Section):
    """Prometheus metrics at /metrics."""

    prefix: str = Field(
        "recsys", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="prefix of every metric name"
    )


DEFAULT_DEVICES = (
    # Either CPU runtime: for each model, the faster on its warm-up batches (on the built-in
    # pruned model, ONNX Runtime: a sixth of OpenVINO's time on them on this machine's Xeon).
    DeviceSettings(name="cpu", backend="cpu"),
    DeviceSettings(name="gpu-onnxruntime", backend="onnxruntime-gpu", parallel_batches=2),
)
