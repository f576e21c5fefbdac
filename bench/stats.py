"""Summaries of a load run: throughput, latency percentiles, refusals and errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.loadgen import CLIENT_TIMEOUT, UNSENT, LoadResult

REFUSED = (429, 503)
PERCENTILES = (50, 90, 99, 99.9)


@dataclass(frozen=True)
class Summary:
    offered_per_second: float
    ok_per_second: float  # goodput: 200s per second of the run
    latency_ms: dict[str, float]  # of the 200s: p50, p90, p99, p99.9
    refused: int  # 503 or 429: shed on purpose
    refusal_rate: float  # refused over the requests offered
    refusal_p99_ms: float
    deadline_exceeded: int  # 504: accepted, then its deadline passed in the queue
    errors: int  # any other status, 5xx included
    client_timeouts: int
    unsent: int  # the generator had no free connection
    error_rate: float  # everything but 200s and planned refusals, over the requests offered
    send_lag_p99_ms: float


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if len(values) else float("nan")


def summarize(result: LoadResult, which: np.ndarray | None = None) -> Summary:
    """`which`: a boolean mask over the requests to summarise (default: all)."""
    statuses = np.asarray(result.statuses)
    latencies = np.asarray(result.latencies)
    if which is not None:
        statuses, latencies = statuses[which], latencies[which]
    ok = statuses == 200
    refused = np.isin(statuses, REFUSED)
    expired = statuses == 504
    timeouts = statuses == CLIENT_TIMEOUT
    unsent = statuses == UNSENT
    errors = ~(ok | refused | expired | timeouts | unsent)
    failed = int(errors.sum() + expired.sum() + timeouts.sum() + unsent.sum())
    return Summary(
        offered_per_second=len(statuses) / result.seconds,
        ok_per_second=float(ok.sum()) / result.seconds,
        latency_ms={f"p{q:g}": percentile(latencies[ok], q) for q in PERCENTILES},
        refused=int(refused.sum()),
        refusal_rate=float(refused.sum()) / max(len(statuses), 1),
        refusal_p99_ms=percentile(latencies[refused], 99),
        deadline_exceeded=int(expired.sum()),
        errors=int(errors.sum()),
        client_timeouts=int(timeouts.sum()),
        unsent=int(unsent.sum()),
        error_rate=failed / max(len(statuses), 1),
        send_lag_p99_ms=result.send_lag_p99 * 1e3,
    )
