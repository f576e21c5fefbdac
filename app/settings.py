"""The HTTP layer's settings: the server and its protocol bounds, the model it serves, request
limits, admission and load-balancer integration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from config import Section


class ServerSettings(Section):
    """Where `python -m app` listens, and how it drains on SIGTERM: readiness turns false and new
    requests are refused (503) at once; after drain_delay_seconds the listener closes; requests
    already accepted then have graceful_shutdown_seconds to finish before the process exits 0."""

    host: str = Field(
        "127.0.0.1",
        description="listen address (the Docker image sets RECSYS_SERVER__HOST=0.0.0.0)",
    )
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="critical | error | warning | info | debug (no access log)"
    )
    drain_delay_seconds: float = Field(
        0.0, ge=0, description="after SIGTERM, how long the listener stays open refusing with "
        "503 (time for a load balancer's health check to notice)",
    )  # fmt: skip
    graceful_shutdown_seconds: float = Field(
        30.0, gt=0, description="time accepted requests have to finish once the listener closed"
    )
    workers: int = Field(
        0, ge=0, le=64, description="HTTP worker processes on the one port, feeding one engine "
        "process that owns the schedulers and devices (batches form across all their requests); "
        "1: one process does both; 0: chosen for the host: one process on 1-2 cores (or while "
        "model_control reloads), else a worker per core (at most 16), each a whole server on "
        "CPUs alone (engine per_worker), feeding one engine where a GPU device is available",
    )  # fmt: skip
    engine: Literal["auto", "process", "per_worker"] = Field(
        "auto", description="auto: the engine has its own process when workers > 1 (with "
        "workers = 0, chosen with the worker count: see workers); process: "
        "even with one worker (what the split costs); per_worker: each worker is a whole server "
        "with its own schedulers and sessions, as `uvicorn --workers` gives (batches form per "
        "worker; its gauges in /metrics are one worker's)",
    )  # fmt: skip
    shared_memory_slot_kib: int = Field(
        256, ge=4, le=65536, description="workers > 1: a request's arrays cross to the engine in "
        "a slot of this size in shared memory (one slot per request a worker may have in "
        "flight); larger requests cross inline, over the socket",
    )  # fmt: skip


class GrpcSettings(Section):
    """The KServe V2 gRPC service (`inference.GRPCInferenceService`, tritonclient.grpc's), beside
    REST in the same process: the same models, admission, deadlines and scheduler. Messages are
    bounded by `[limits] max_body_bytes`."""

    port: int = Field(
        0, ge=0, le=65535, description="listen port on [server] host; 0: no gRPC service "
        "(Triton's is 8001)",
    )  # fmt: skip
    max_concurrent_streams: int = Field(
        256, ge=1, description="calls one connection may have open at once"
    )


class HttpSettings(Section):
    """Bounds on what one client may make the HTTP layer hold: request heads, slow senders,
    connections (nginx, gunicorn and Envoy anchor the defaults). Each refusal is a JSON error,
    then the connection closes."""

    max_request_line_bytes: int = Field(
        8192, ge=256, description="longest request target (URL); longer: 414"
    )
    max_header_count: int = Field(
        100, ge=8, description="most header fields in one request; more: 431"
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="largest request head in bytes; larger: 431 (an unfinished "
        "header line is cut off here, never buffered whole)",
    )  # fmt: skip
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a request's head must arrive within this of the accept or of "
        "its first byte; else 408 (a connection that sent nothing is just closed)",
    )  # fmt: skip
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="its body must arrive within this after the head; else 408 (a "
        "request counts against admission only once its body is complete)",
    )  # fmt: skip
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        4096, ge=16, description="open connections at most, kept 128 below the descriptor limit "
        "(raised toward the hard limit at start-up); beyond it the connection idle longest is "
        "closed, or with none idle the new one refused with 503",
    )  # fmt: skip


class ServingModelSettings(Section):
    """The model repository the server serves (`<repository>/<model>/<version>/`, each model with
    an optional config.toml), and the model the /v1 ranking API serves."""

    repository: Path = Field(Path("model_repository"), description="the model repository's folder")
    name: str = Field(
        "movielens-dcnv2", description="the model /v1/rank, /v1/score and /v1/examples serve (one "
        "built with feature tables); V2 serves every model loaded",
    )  # fmt: skip
    version: int | None = Field(
        None, description="serve only this version of that model; unset: its version_policy"
    )


class ModelControlSettings(Section):
    """Which models are loaded, and how they are reloaded without a restart (Triton's model
    control modes)."""

    mode: Literal["none", "explicit", "poll"] = Field(
        "none", description="none: the repository is read at start-up only; explicit: also "
        "POST /v2/repository/models/{name}/load and /unload; poll: a model is reloaded when its "
        "folder changes (a new version, a changed file or config.toml)",
    )  # fmt: skip
    poll_seconds: float = Field(
        5.0, gt=0, description="poll mode: how often the repository is checked for changes"
    )
    startup_models: tuple[str, ...] = Field(
        ("*",), description="the models loaded at start-up (\"*\": every model in the "
        "repository); a model that fails to load stops the start-up",
    )  # fmt: skip


class LimitSettings(Section):
    """Bounds on one request; beyond them it is refused naming the field."""

    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest request body; larger: 413 before it is read"
    )
    max_rows_per_request: int = Field(
        8192, ge=1, description="most rows one request may score (/v1/score categorical rows, "
        "a V2 batch); more: 413 on /v1, 422 on V2",
    )  # fmt: skip
    max_candidates: int = Field(
        5000, ge=1, description="most candidates one /v1/rank names; more: 413"
    )
    max_k: int = Field(1000, ge=1, description="largest k a /v1/rank may ask for; larger: 422")


class AdmissionSettings(Section):
    """What is refused at once, with Retry-After, rather than served late."""

    default_timeout_ms: float = Field(
        1000.0, gt=0, description="every request's deadline; a caller may shorten it "
        "(X-Request-Timeout-Ms on /v1, the V2 timeout parameter in microseconds), never "
        "lengthen it. Predicted to miss it: refused at once; passed while queued: 504",
    )  # fmt: skip
    overload_status: Literal[503, 429] = Field(
        503, description="the status of an overload refusal: 503 or 429"
    )
    default_priority: Literal["high", "low"] = Field(
        "high", description="high | low (X-Request-Priority on /v1; V2 priority: 1 high, 2 or "
        "more low)",
    )  # fmt: skip
    low_priority_deadline_fraction: float = Field(
        0.5, gt=0, le=1, description="a low-priority request is admitted only if predicted to "
        "finish within this fraction of its deadline, so under pressure it is shed first",
    )  # fmt: skip
    max_in_flight_requests: int = Field(
        64, ge=1, description="HTTP requests in progress beyond which an inference request is "
        "refused at once, before its body is parsed (the HTTP layer saturates a core before the "
        "scheduler's queue grows); headroom reaches 0 here",
    )  # fmt: skip
    low_priority_in_flight_fraction: float = Field(
        0.5, gt=0, le=1, description="a low-priority inference request is refused already at "
        "this fraction of max_in_flight_requests",
    )  # fmt: skip


class LoadBalancingSettings(Section):
    """What a load balancer acts on: readiness, GET /v1/load and the HAProxy agent check."""

    saturation_wait_ms: float = Field(
        200.0, gt=0, description="readiness turns false while the predicted queueing delay "
        "exceeds this, and true again below half of it (hysteresis)",
    )  # fmt: skip
    agent_check_port: int = Field(
        0, ge=0, le=65535, description="HAProxy agent-check listener (0: off): \"up N%\" with N "
        "the headroom (at least 1), \"drain\" while draining, \"down\" with no healthy device",
    )  # fmt: skip
    agent_check_host: str = Field("127.0.0.1", description="the agent-check listener's address")


class FeatureSettings(Section):
    """Where /v1/rank reads the user's row, the candidates' rows and the user's seen items: the
    version's own tables (frozen at build time), or Redis at request time (fresh rows; the key
    layout is `models/artifacts/feature_rows.py`'s, `python -m models publish-features` writes a
    built version's tables there). A Redis miss, timeout or outage scores the entity through the
    out-of-vocabulary row, counted and reported; the server keeps answering."""

    source: Literal["tables", "redis"] = Field(
        "tables", description="tables: the version's feature_tables.npz and seen_items.npz; "
        "redis: rows and seen items from redis_url at request time",
    )  # fmt: skip
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="the Redis server (redis:// or unix:// URL)"
    )
    key_prefix: str = Field(
        "recsys", pattern=r"^[A-Za-z0-9_.-]+$", description="keys are <prefix>:<model>:user:<id>, "
        ":item:<id> and :seen:<id>",
    )  # fmt: skip
    timeout_ms: float = Field(
        20.0, gt=0, description="the longest a request waits for its rows; less when its "
        "deadline leaves less (deadline_fraction of what remains)",
    )  # fmt: skip
    deadline_fraction: float = Field(
        0.25, gt=0, le=1, description="share of a request's remaining deadline its lookups may take"
    )
    max_pending_requests: int = Field(
        1024, ge=1, le=65536, description="rank requests waiting for Redis's replies at most (one "
        "pipelined connection a process); beyond, a request gets the default rows at once",
    )  # fmt: skip
    item_cache_entries: int = Field(
        100_000, ge=0, description="item rows kept in this process (0: no cache; the oldest "
        "read dropped first); user rows and seen items are always read fresh",
    )  # fmt: skip
    item_cache_ttl_seconds: float = Field(
        60.0, gt=0, description="how long a cached item row is used before it is read again"
    )


class ShadowSettings(Section):
    """Shadow scoring ([shadow]): a candidate variant scores a sampled share of a model's live
    requests at low priority, compared with what was sent (`GET /v2/models/{name}/shadow`)."""

    candidates: dict[str, str] = Field(
        default_factory=dict, description="model name -> the variant of its served version that "
        "shadows it (a name in its manifest or variants); none: shadow scoring is off",
    )  # fmt: skip
    versions: dict[str, int] = Field(
        default_factory=dict, description="model name -> a version that shadows the latest "
        "other version served (serve both; with a [canary] share of 0 none of the traffic "
        "reaches it): a new version seen on live requests before it serves any",
    )  # fmt: skip
    sample_fraction: float = Field(
        0.05, gt=0, le=1, description="share of live requests the candidate scores, drawn at "
        "random",
    )  # fmt: skip
    top_k: int = Field(10, ge=1, description="k of the top-k overlap within a request")
    max_pending: int = Field(
        4, ge=1, description="sampled requests waiting for or in the candidate at once; more are "
        "dropped (outcome busy)",
    )  # fmt: skip
    wait_ms: float = Field(
        1000, gt=0, description="how long a sampled request may wait for the live scheduler to "
        "be idle and the candidate to score it; later: dropped (outcome shed)",
    )  # fmt: skip
    min_requests: int = Field(
        2000, ge=1, description="compared requests before the candidate is judged by [gate]'s "
        "no-label thresholds (numerics_min_spearman, numerics_max_distinct_change), and again "
        "after each as many more",
    )  # fmt: skip
    pool_rows: int = Field(
        100_000, ge=100, description="the most recent compared rows the judgement pools, per output"
    )


VariantKind = Literal["bf16", "int8", "int8-tables", "openvino-int8", "openvino-fp16", "fp16"]


class SelfAccelerationSettings(Section):
    """Self-acceleration ([self_acceleration]): for a plain ONNX model with no acceleration
    record, the server builds `python -m models accelerate`'s variants from sampled live rows,
    shadows them ([shadow]'s sample_fraction, min_requests and gate), promotes the fastest that
    agrees and keeps watching it (`GET /v2/models/{name}/shadow`)."""

    enabled: bool = Field(True, description="self-accelerate plain models with no record")
    kinds: tuple[VariantKind, ...] = Field(
        ("bf16", "int8", "openvino-int8"), description="variant kinds tried (bf16: the source at "
        "BF16 on OpenVINO where the CPU executes it, no file; int8: ONNX Runtime static INT8, "
        "needs onnx; openvino-int8: NNCF, needs nncf, which the serving install lacks; "
        "int8-tables, openvino-fp16, fp16 as `accelerate` makes them)",
    )  # fmt: skip
    calibration_rows: int = Field(
        2000, ge=16, description="live input rows sampled to build and time the variants on (INT8 "
        "is calibrated on them)",
    )  # fmt: skip
    min_speedup: float = Field(
        1.1, ge=1, description="a variant is shadowed only if it runs this many times faster "
        "than the source at the batch sizes served (single-threaded, timed at build)",
    )  # fmt: skip
    watch_fraction: float = Field(
        0.01, gt=0, le=1, description="after promotion: the share of live requests the source "
        "scores beside the promoted variant; the variant is demoted when they drift apart",
    )  # fmt: skip
    build_cores: int = Field(
        1, ge=1, description="CPU budget: cores the build (a child process at the lowest "
        "priority) may run on",
    )  # fmt: skip
    build_cpu_seconds: int = Field(
        600, ge=10, description="CPU budget: CPU seconds the build may take; beyond it, it is "
        "stopped and the source keeps serving",
    )  # fmt: skip


class CanarySplit(Section):
    version: int = Field(ge=1, description="the canary version (the rest go to the latest other)")
    share: float = Field(0.0, ge=0, le=1, description="share of keyed requests it takes")
    promoted: bool = Field(
        False, description="every request that names no version goes to it, keyed or not"
    )


class CanarySettings(Section):
    """Canary versions ([canary]): a share of a model's requests, sticky by key (the user id for
    /v1/rank, V2's `routing_key` parameter otherwise), go to a new version; both versions must be
    served (the model's version_policy)."""

    splits: dict[str, CanarySplit] = Field(
        default_factory=dict, description="model name -> {version, share}; none: no canary"
    )
