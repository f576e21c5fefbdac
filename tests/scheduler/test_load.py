from __future__ import annotations

from scheduler.load import RecentWork, Saturation, headroom, runs_at_once


def test_saturation_has_hysteresis() -> None:
    saturation = Saturation(threshold_seconds=0.2)
    assert [saturation.update(w) for w in (0.1, 0.25, 0.15, 0.11, 0.09, 0.15)] == [
        False, True, True, True, False, False,
    ]  # fmt: skip


def test_headroom_follows_the_nearer_limit() -> None:
    assert headroom(0.0, 0.0, 0.2) == 100
    assert headroom(0.25, 0.0, 0.2) == 75
    assert headroom(0.1, 0.1, 0.2) == 50  # half the saturation wait
    assert headroom(1.5, 0.0, 0.2) == 0


def test_recent_work_forgets_old_batches() -> None:
    recent = RecentWork(window_seconds=5.0)
    recent.record(0.0, 1000, queue_seconds=0.002, compute_seconds=0.001)
    recent.record(4.0, 500, queue_seconds=0.0, compute_seconds=0.001)
    assert recent.rows_per_second(4.0) == 300
    assert recent.queue_to_compute_ratio(4.0) == 1.0
    assert recent.rows_per_second(6.0) == 100  # the first batch left the window


def test_a_lone_request_runs_at_once_only_where_requests_arrive_seldom() -> None:
    # A 0.2 ms run, a 50 ms window: at once while arrivals are 0.8 ms apart or more on average.
    assert runs_at_once(mean_gap_seconds=0.0016, predicted_seconds=0.0002, window_seconds=0.05)
    assert runs_at_once(mean_gap_seconds=0.0008, predicted_seconds=0.0002, window_seconds=0.05)
    assert not runs_at_once(mean_gap_seconds=0.0005, predicted_seconds=0.0002, window_seconds=0.05)
    # A run longer than the window is not what an elastic window lets leave at once.
    assert not runs_at_once(mean_gap_seconds=1.0, predicted_seconds=0.06, window_seconds=0.05)
