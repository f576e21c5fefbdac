"""Load-balancer integration on a real server: /v1/load, gauges, the HAProxy agent check."""

from __future__ import annotations

import socket

import httpx


def test_load_report_and_gauges(client: httpx.Client) -> None:
    for _ in range(5):
        assert client.post("/v1/rank", json={"user_id": 1, "k": 3}).status_code == 200
    report = client.get("/v1/load").json()
    assert set(report["in_flight_batches"]) == {"cpu-openvino", "cpu-onnxruntime"}
    assert report["healthy_devices"] == ["cpu-openvino", "cpu-onnxruntime"]
    assert report["recent_rows_per_second"] > 0 and report["capacity_rows_per_second"] > 0
    assert 0 <= report["headroom"] <= 100 and report["saturated"] is False
    assert report["draining"] is False and report["queued_rows"] == 0
    metrics = client.get("/metrics").text
    for name in ("recsys_headroom", "recsys_predicted_wait_seconds",
                 "recsys_queue_to_compute_ratio", "recsys_recent_rows_per_second"):  # fmt: skip
        assert f"\n{name} " in metrics, name


def test_haproxy_agent_check_reports_the_headroom(server: str, agent_port: int) -> None:
    with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as connection:
        reply = connection.recv(64).decode()
    assert reply.startswith("up ") and reply.endswith("%\n")
    assert 1 <= int(reply[3:-2]) <= 100
