"""The data plane's own metrics, shared by every transport: request latency by endpoint and status
(a REST route's path, or a gRPC method's full name), and failed model loads."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scheduler.metrics import LATENCY_BUCKETS


def request_latency(registry: CollectorRegistry, prefix: str) -> Histogram:
    return Histogram(
        f"{prefix}_request_duration_seconds", "Request latency (REST and gRPC), by endpoint and "
        "HTTP status (a gRPC call's: its error's, 200 when it succeeded)", ["endpoint", "status"],
        buckets=LATENCY_BUCKETS, registry=registry,
    )  # fmt: skip


def served_variant_gauge(registry: CollectorRegistry, prefix: str) -> Gauge:
    """1 per (model, version, device) for the variant it serves and what gated it."""
    return Gauge(
        f"{prefix}_served_variant", "The variant each device serves a model version with (1), "
        "and what gated it: build, held-out rows, live traffic (self-acceleration), or source "
        "(the file as dropped in)", ["model", "version", "device", "variant", "gated_on"],
        registry=registry,
    )  # fmt: skip


def load_failure_counter(registry: CollectorRegistry, prefix: str) -> Callable[[str], None]:
    """What a registry calls when a model fails to load: a counter by model."""
    failures = Counter(
        f"{prefix}_model_load_failures",
        "Model loads and reloads that failed (what served before kept serving)",
        ["model"], registry=registry,
    )  # fmt: skip
    return lambda name: failures.labels(model=name).inc()
