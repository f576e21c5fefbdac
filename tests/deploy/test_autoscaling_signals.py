"""The autoscaling signal, proven with real parts on loopback: a real Prometheus (Debian's package)
scrapes three live replicas; the queries the overlays render (the Prometheus adapter's rule, as the
HPA's pods metric reads it, and KEDA's trigger; both from components/autoscaling-signal) are
evaluated through Prometheus's HTTP API, and the HPA's formula on them asks for more replicas under
load and fewer once it stops, the same number from either autoscaler."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests import debian
from tests.app.servers import free_port, stop, wait_for
from tests.deploy.kustomize import one
from tests.deploy.replicas import Load, Replica, replicas

pytestmark = pytest.mark.timeout(300)
NAMESPACE = "recsys"
# The manifests average over 1m; here over 10 s, so that the test takes seconds, not minutes.
# That window is the only change made to the queries they render.
WINDOW, TEST_WINDOW = "[1m]", "[10s]"


def desired_replicas(current: int, usage_ratio: float, minimum: int, maximum: int,
                     tolerance: float = 0.1) -> int:  # fmt: skip
    """The HPA's rule: ceil(current x usage ratio), unchanged within the tolerance of 1, clamped
    to [minimum, maximum]. The usage ratio is the metric over its target (pods metric: the mean
    over pods; external AverageValue, KEDA's: the value over target x current)."""
    wanted = current if abs(usage_ratio - 1) <= tolerance else math.ceil(current * usage_ratio)
    return max(minimum, min(maximum, wanted))


@dataclass(frozen=True)
class Signal:
    """What the rendered overlays ask of Prometheus, with the test's window."""

    per_pod: str  # the adapter rule's metricsQuery, rendered as the adapter renders it
    total: str  # KEDA's trigger query
    hpa_target: float
    keda_threshold: float
    minimum: int
    maximum: int


def rendered_signal(pods: list[str]) -> Signal:
    hpa, scaled = one("hpa", "HorizontalPodAutoscaler"), one("keda", "ScaledObject")
    adapter = yaml.safe_load(one("hpa", "ConfigMap")["data"]["config.yaml"])
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rule = next(r for r in adapter["rules"] if r["seriesQuery"].startswith(metric + "{"))
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    per_pod = (rule["metricsQuery"].replace("<<.Series>>", metric)
               .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))  # fmt: skip
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    for query in (per_pod, trigger["query"]):
        assert query.count(WINDOW) == 1 and metric in query, query
    return Signal(
        per_pod=per_pod.replace(WINDOW, TEST_WINDOW),
        total=trigger["query"].replace(WINDOW, TEST_WINDOW),
        hpa_target=float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]),
        keda_threshold=float(trigger["threshold"]),
        minimum=hpa["spec"]["minReplicas"],
        maximum=hpa["spec"]["maxReplicas"],
    )


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str, at: float) -> dict[str, float]:
        """An instant query's vector as {pod (or "") : value}."""
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": promql, "time": at},
                          timeout=10)  # fmt: skip
        reply.raise_for_status()  # 503 in plain text while Prometheus starts
        answer = reply.json()
        assert answer["status"] == "success", answer
        return {s["metric"].get("pod", ""): float(s["value"][1]) for s in answer["data"]["result"]}


@pytest.fixture
def prometheus(replicas3: list[Replica], tmp_path: Path) -> Iterator[Prometheus]:
    binary = debian.binary("prometheus", "prometheus")
    port = free_port()
    targets = [
        {"targets": [f"127.0.0.1:{r.port}"], "labels": {"namespace": NAMESPACE, "pod": r.name}}
        for r in replicas3
    ]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "recsys", "static_configs": targets}]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")

        def all_scraped() -> bool:
            try:
                up = server.query('up{job="recsys"}', time.time())
            except httpx.HTTPError:
                return False
            return sorted(up) == [r.name for r in replicas3] and set(up.values()) == {1.0}

        wait_for(all_scraped, 60, "Prometheus scraping the three replicas")
        yield server
    finally:
        stop(process)


@pytest.fixture
def replicas3(built_repository: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    with replicas(built_repository, 3, tmp_path, {}) as started:
        yield started


@dataclass(frozen=True)
class Reading:
    per_pod: dict[str, float]
    total: float
    hpa: int  # what the HPA's pods metric asks for
    keda: int  # what KEDA's external metric asks for


def read(server: Prometheus, signal: Signal, current: int) -> Reading:
    at = time.time()  # both queries at one instant, as the two autoscalers would see it
    per_pod = server.query(signal.per_pod, at)
    total = sum(server.query(signal.total, at).values())
    mean = sum(per_pod.values()) / current
    return Reading(
        per_pod, total,
        hpa=desired_replicas(current, mean / signal.hpa_target, signal.minimum, signal.maximum),
        keda=desired_replicas(current, total / (signal.keda_threshold * current),
                              signal.minimum, signal.maximum),
    )  # fmt: skip


def test_the_autoscalers_ask_for_more_replicas_under_load_and_fewer_after(
    replicas3: list[Replica], prometheus: Prometheus
) -> None:
    current = len(replicas3)
    signal = rendered_signal([r.name for r in replicas3])
    readings: list[Reading] = []

    def latest() -> Reading:
        reading = read(prometheus, signal, current)
        readings.append(reading)
        assert reading.hpa == reading.keda, reading  # one signal, one answer
        return reading

    idle = read(prometheus, signal, current)
    assert idle.total < signal.hpa_target and idle.hpa < current, idle
    with Load([r.url for r in replicas3], clients=12) as load:
        wait_for(lambda: latest().hpa > current, 90, "a scale-up asked for")
    loaded = readings[-1]
    assert len(loaded.per_pod) == current and load.statuses[200] > 0, (loaded, load.statuses)
    wait_for(lambda: latest().hpa < current, 90, "a scale-down once the load stopped")
    after = readings[-1]
    print(
        f"\nidle: sum {idle.total:.2f} -> {idle.hpa} replicas; under load: per pod "
        + ", ".join(f"{p} {v:.2f}" for p, v in sorted(loaded.per_pod.items()))
        + f", sum {loaded.total:.2f}, mean/target {loaded.total / current / signal.hpa_target:.2f}"
        f" -> ceil({current} x {loaded.total / current / signal.hpa_target:.2f}) = {loaded.hpa};"
        f" after: sum {after.total:.2f} -> {after.hpa} (min {signal.minimum});"
        f" requests {dict(load.statuses)}"
    )
    assert loaded.hpa == min(signal.maximum, math.ceil(loaded.total / signal.hpa_target))
