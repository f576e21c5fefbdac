"""The scheduler's Prometheus metrics, built on a registry the caller passes in.

`SchedulerMetrics` holds the families, once per registry; each model's scheduler records through
`for_model(name)`, so what a batch, a device or the batching window did carries a `model` label
(the models loaded only, so cardinality stays bounded; an unloaded model's series are removed).
Queue depth, refusals and the load figures are the server's, across its models.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from scheduler.batch import Batch
    from scheduler.device import Device
    from scheduler.load import LoadReport

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
ROW_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# One process sets these: the server, or the engine of a server with workers, whose gauges every
# worker's /metrics reads from prometheus_client's multiprocess files (a dead engine's vanish).
OneWriterGauge = partial(Gauge, multiprocess_mode="livemostrecent")


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str = "recsys") -> None:
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds", "Time rows waited in the queue before their batch ran",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            f"{prefix}_batch_rows", "Rows per batch", ["model", "device"], buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.window = Histogram(
            f"{prefix}_batching_window_seconds",
            "How long the batcher held a batch's oldest row to let it grow, by what closed the "
            "window: idle (a device was idle: at once), full (max_batch_rows) or window (the "
            "max_queue_delay_ms limit)",
            ["model", "closed_by"], buckets=(0.0, *LATENCY_BUCKETS), registry=registry,
        )  # fmt: skip
        self.batch_fill = Histogram(
            f"{prefix}_batch_fill_ratio", "Batch rows / max_batch_rows", ["model"],
            buckets=FILL_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            f"{prefix}_batch_execution_seconds", "Backend time per batch", ["model", "device"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.rows_scored = Counter(
            f"{prefix}_rows_scored", "Rows scored", ["model", "device"], registry=registry
        )
        self.refused = Counter(
            f"{prefix}_refused_requests", "Requests refused", ["reason"], registry=registry
        )
        self.device_failures = Counter(
            f"{prefix}_device_failures", "Batches a device failed or timed out on",
            ["model", "device"], registry=registry,
        )  # fmt: skip
        self.batch_retries = Counter(
            f"{prefix}_batch_retries", "Batches retried on another device", ["model"],
            registry=registry,
        )  # fmt: skip
        self.device_healthy = OneWriterGauge(
            f"{prefix}_device_healthy", "1 while a device is in routing, 0 while it is out",
            ["model", "device"], registry=registry,
        )  # fmt: skip
        self.predicted_wait = OneWriterGauge(
            f"{prefix}_predicted_wait_seconds", "Predicted time to score every queued row",
            registry=registry,
        )  # fmt: skip
        self.headroom = OneWriterGauge(
            f"{prefix}_headroom", "0 (saturated) to 100 (idle)", registry=registry
        )
        self.recent_throughput = OneWriterGauge(
            f"{prefix}_recent_rows_per_second",
            "Rows scored per second, last 5 s",
            registry=registry,
        )
        self.queue_compute_ratio = OneWriterGauge(
            f"{prefix}_queue_to_compute_ratio",
            "Recent mean queue wait over mean batch compute time (an autoscaling target)",
            registry=registry,
        )
        self.saturated = OneWriterGauge(
            f"{prefix}_saturated",
            "1 while the predicted wait is over the threshold",
            registry=registry,
        )
        self.queue_requests = OneWriterGauge(
            f"{prefix}_queue_requests", "Requests waiting in the queue", registry=registry
        )
        self.queue_rows = OneWriterGauge(
            f"{prefix}_queue_rows", "Rows waiting in the queue", registry=registry
        )
        self.in_flight = OneWriterGauge(
            f"{prefix}_device_batches_in_flight", "Batches running or waiting on a device",
            ["model", "device"], registry=registry,
        )  # fmt: skip
        self.fixed_seconds = OneWriterGauge(
            f"{prefix}_device_latency_fixed_seconds", "Latency model: a in a + b * rows",
            ["model", "device"], registry=registry,
        )  # fmt: skip
        self.seconds_per_row = OneWriterGauge(
            f"{prefix}_device_latency_seconds_per_row", "Latency model: b in a + b * rows",
            ["model", "device"], registry=registry,
        )  # fmt: skip

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def refresh_load(self, report: LoadReport) -> None:
        wait = report.predicted_wait_seconds
        self.predicted_wait.set(wait if wait != float("inf") else -1)
        self.headroom.set(report.headroom)
        self.recent_throughput.set(report.recent_rows_per_second)
        self.queue_compute_ratio.set(report.queue_to_compute_ratio)
        self.saturated.set(1 if report.saturated else 0)
        self.queue_requests.set(report.queued_requests)
        self.queue_rows.set(report.queued_rows)


class ModelMetrics:
    """One model's view of the families: every series it records carries its `model` label."""

    def __init__(self, families: SchedulerMetrics, model: str) -> None:
        self.families = families
        self.model = model
        self._queue_wait = families.queue_wait.labels(model=model)
        self._batch_fill = families.batch_fill.labels(model=model)
        # The series each batch records, resolved once (labels() costs microseconds a call).
        self._windows: dict[str, Any] = {}
        self._per_device: dict[str, tuple[Any, Any, Any]] = {}

    def observe_dispatch(self, batch: Batch, now: float, max_batch_rows: int) -> None:
        for part in batch.parts:
            self._queue_wait.observe(now - part.request.enqueued_at)
        self._batch_fill.observe(batch.rows / max_batch_rows)

    def observe_window(self, seconds: float, closed_by: str) -> None:
        window = self._windows.get(closed_by)
        if window is None:
            window = self.families.window.labels(self.model, closed_by)
            self._windows[closed_by] = window
        window.observe(max(seconds, 0.0))

    def observe_batch(self, device: Device, rows: int, seconds: float) -> None:
        series = self._per_device.get(device.name)
        if series is None:
            f, labels = self.families, (self.model, device.name)
            series = (f.batch_rows.labels(*labels), f.batch_seconds.labels(*labels),
                      f.rows_scored.labels(*labels))  # fmt: skip
            self._per_device[device.name] = series
        batch_rows, batch_seconds, rows_scored = series
        batch_rows.observe(rows)
        batch_seconds.observe(seconds)
        rows_scored.inc(rows)

    def device_failed(self, device: Device) -> None:
        self.families.device_failures.labels(model=self.model, device=device.name).inc()

    def batch_retried(self) -> None:
        self.families.batch_retries.labels(model=self.model).inc()

    def refused(self, reason: str) -> None:
        self.families.refused.labels(reason=reason).inc()

    def refresh_devices(self, devices: list[Device]) -> None:
        """Gauges read at scrape time, so they cost nothing on the hot path."""
        f = self.families
        for device in devices:
            fit = device.latency.fit
            labels = {"model": self.model, "device": device.name}
            f.in_flight.labels(**labels).set(device.in_flight_batches)
            f.device_healthy.labels(**labels).set(1 if device.healthy else 0)
            f.fixed_seconds.labels(**labels).set(fit.fixed_seconds)
            f.seconds_per_row.labels(**labels).set(fit.seconds_per_row)

    def forget(self, devices: list[str]) -> None:
        """Remove the model's series (it is no longer served): bounded cardinality."""
        f = self.families
        series: list[tuple[Histogram | Counter | Gauge, tuple[str, ...]]] = [
            (family, (self.model,)) for family in (f.queue_wait, f.batch_fill, f.batch_retries)
        ]
        series += [(f.window, (self.model, closed)) for closed in ("idle", "full", "window")]
        per_device = (
            f.batch_rows, f.batch_seconds, f.rows_scored, f.device_failures, f.device_healthy,
            f.in_flight, f.fixed_seconds, f.seconds_per_row,
        )  # fmt: skip
        series += [(family, (self.model, d)) for family in per_device for d in devices]
        for family, labels in series:
            with contextlib.suppress(KeyError):  # never recorded
                family.remove(*labels)
