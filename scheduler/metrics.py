"""The scheduler's Prometheus metrics, built on a registry the caller passes in."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str = "recsys") -> None:
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds", "Time rows waited in the queue before their batch ran",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            f"{prefix}_batch_rows", "Rows per batch", ["device"], buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.window = Histogram(
            f"{prefix}_batching_window_seconds",
            "How long the batcher held a batch's oldest row to let it grow, by what closed the "
            "window: idle (a device was idle: at once), full (max_batch_rows) or window (the "
            "max_queue_delay_ms limit)",
            ["closed_by"], buckets=(0.0, *LATENCY_BUCKETS), registry=registry,
        )  # fmt: skip
        self.batch_fill = Histogram(
            f"{prefix}_batch_fill_ratio", "Batch rows / max_batch_rows", buckets=FILL_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            f"{prefix}_batch_execution_seconds", "Backend time per batch", ["device"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.rows_scored = Counter(
            f"{prefix}_rows_scored", "Rows scored", ["device"], registry=registry
        )
        self.refused = Counter(
            f"{prefix}_refused_requests", "Requests refused", ["reason"], registry=registry
        )
        self.device_failures = Counter(
            f"{prefix}_device_failures", "Batches a device failed or timed out on", ["device"],
            registry=registry,
        )  # fmt: skip
        self.batch_retries = Counter(
            f"{prefix}_batch_retries", "Batches retried on another device", registry=registry
        )
        self.device_healthy = Gauge(
            f"{prefix}_device_healthy", "1 while a device is in routing, 0 while it is out",
            ["device"], registry=registry,
        )  # fmt: skip
        self.predicted_wait = Gauge(
            f"{prefix}_predicted_wait_seconds", "Predicted time to score every queued row",
            registry=registry,
        )  # fmt: skip
        self.headroom = Gauge(
            f"{prefix}_headroom", "0 (saturated) to 100 (idle)", registry=registry
        )
        self.recent_throughput = Gauge(
            f"{prefix}_recent_rows_per_second",
            "Rows scored per second, last 5 s",
            registry=registry,
        )
        self.queue_compute_ratio = Gauge(
            f"{prefix}_queue_to_compute_ratio",
            "Recent mean queue wait over mean batch compute time (an autoscaling target)",
            registry=registry,
        )
        self.saturated = Gauge(
            f"{prefix}_saturated",
            "1 while the predicted wait is over the threshold",
            registry=registry,
        )
        self.queue_requests = Gauge(
            f"{prefix}_queue_requests", "Requests waiting in the queue", registry=registry
        )
        self.queue_rows = Gauge(
            f"{prefix}_queue_rows", "Rows waiting in the queue", registry=registry
        )
        self.in_flight = Gauge(
            f"{prefix}_device_batches_in_flight", "Batches running or waiting on a device",
            ["device"], registry=registry,
        )  # fmt: skip
        self.fixed_seconds = Gauge(
            f"{prefix}_device_latency_fixed_seconds", "Latency model: a in a + b * rows",
            ["device"], registry=registry,
        )  # fmt: skip
        self.seconds_per_row = Gauge(
            f"{prefix}_device_latency_seconds_per_row", "Latency model: b in a + b * rows",
            ["device"], registry=registry,
        )  # fmt: skip

    def observe_dispatch(self, batch: Batch, now: float, max_batch_rows: int) -> None:
        for part in batch.parts:
            self.queue_wait.observe(now - part.request.enqueued_at)
        self.batch_fill.observe(batch.rows / max_batch_rows)

    def observe_window(self, seconds: float, closed_by: str) -> None:
        self.window.labels(closed_by=closed_by).observe(max(seconds, 0.0))

    def observe_batch(self, device: Device, rows: int, seconds: float) -> None:
        self.batch_rows.labels(device=device.name).observe(rows)
        self.batch_seconds.labels(device=device.name).observe(seconds)
        self.rows_scored.labels(device=device.name).inc(rows)

    def refresh_load(self, report: LoadReport) -> None:
        wait = report.predicted_wait_seconds
        self.predicted_wait.set(wait if wait != float("inf") else -1)
        self.headroom.set(report.headroom)
        self.recent_throughput.set(report.recent_rows_per_second)
        self.queue_compute_ratio.set(report.queue_to_compute_ratio)
        self.saturated.set(1 if report.saturated else 0)

    def refresh_gauges(self, devices: list[Device], queued_requests: int, queued_rows: int) -> None:
        """Gauges read at scrape time, so they cost nothing on the hot path."""
        self.queue_requests.set(queued_requests)
        self.queue_rows.set(queued_rows)
        for device in devices:
            fit = device.latency.fit
            self.in_flight.labels(device=device.name).set(device.in_flight_batches)
            self.device_healthy.labels(device=device.name).set(1 if device.healthy else 0)
            self.fixed_seconds.labels(device=device.name).set(fit.fixed_seconds)
            self.seconds_per_row.labels(device=device.name).set(fit.seconds_per_row)
