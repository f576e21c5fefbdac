"""What crosses between a worker and the engine (`app.workers.wire`), and the supervisor's pure
decisions: no processes here."""

from __future__ import annotations

import numpy as np
import pytest

from app.assembly import (
    auto_process_model,
    cpu_budget,
    gpu_available,
    runtime_cores,
    with_process_model,
)
from app.workers.supervisor import worker_count, worker_settings
from app.workers.wire import (
    ALIGN,
    FrameReader,
    error_message,
    error_of,
    frame,
    inline_bytes,
    layout_of,
    read_arrays,
    write_arrays,
)
from config.settings import SettingsError, load_settings
from scheduler.errors import BatchFailed, DeadlineExceeded, InvalidInput, NotReady, Overloaded


def test_frames_come_out_whole_however_the_stream_splits_them() -> None:
    sent = [({"op": "infer", "id": i, "text": "x" * i}, bytes(range(i % 7))) for i in range(40)]
    stream = b"".join(frame(message, inline) for message, inline in sent)
    for step in (1, 3, 64, len(stream)):
        reader = FrameReader()
        received = [
            item
            for start in range(0, len(stream), step)
            for item in reader.feed(stream[start : start + step])
        ]
        assert received == sent


def test_a_frame_announcing_a_gigabyte_is_refused() -> None:
    with pytest.raises(ValueError, match="not a peer"):
        list(FrameReader().feed(b"\xff\xff\xff\x7f\x00\x00\x00\x00"))


def test_arrays_round_trip_through_a_slot_each_on_a_cache_line() -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "categorical": rng.integers(0, 1000, (100, 7), dtype=np.int64),
        "dense": rng.random((100, 19), dtype=np.float32),
        "flag": np.array([True, False, True]),
        "half": rng.random(5).astype(np.float16),
    }
    layout, total = layout_of(arrays)
    assert [offset % ALIGN for *_, offset in layout] == [0, 0, 0, 0]
    assert total == layout[-1][3] + arrays["half"].nbytes
    slot = memoryview(bytearray(total + 100))
    write_arrays(arrays, layout, slot)
    views = read_arrays(slot, layout, copy=False)
    copies = read_arrays(slot, layout, copy=True)
    slot[:] = bytes(len(slot))  # the slot reused: views see it, copies do not
    for name, array in arrays.items():
        assert copies[name].dtype == array.dtype and np.array_equal(copies[name], array)
        assert not views[name].any()
    inline = read_arrays(inline_bytes(arrays, layout, total), layout, copy=False)
    assert all(np.array_equal(inline[name], array) for name, array in arrays.items())


@pytest.mark.parametrize(
    "error",
    [Overloaded("queue full", retry_after_seconds=0.25), DeadlineExceeded("passed"),
     NotReady("not yet"), BatchFailed("device cpu failed"), InvalidInput("bad rows")],
)  # fmt: skip
def test_a_failure_crosses_as_the_same_error(error: Exception) -> None:
    crossed = error_of(error_message(7, error))
    assert type(crossed) is type(error) and str(crossed) == str(error)
    if isinstance(error, Overloaded):
        assert isinstance(crossed, Overloaded) and crossed.retry_after_seconds == 0.25


def test_an_unexpected_failure_crosses_as_a_500_and_a_value_error_as_a_400() -> None:
    assert type(error_of(error_message(1, RuntimeError("boom")))) is BatchFailed
    assert type(error_of(error_message(1, ValueError("no rows")))) is InvalidInput


def test_worker_count_and_each_workers_share_of_the_in_flight_limit() -> None:
    assert worker_count(3, 64) == 3
    assert worker_count(0, 6) == 6 and worker_count(0, 64) == 16 and worker_count(0, 0) == 1
    settings = load_settings(admission={"max_in_flight_requests": 5})
    assert worker_settings(settings, 2).admission.max_in_flight_requests == 3
    assert worker_settings(settings, 2).server.workers == 2  # `workers = 0` resolved
    assert worker_settings(settings, 8).admission.max_in_flight_requests == 1


def test_workers_serve_the_repository_as_loaded_at_start_up() -> None:
    with pytest.raises(SettingsError, match=r"server\.workers: 2 .* needs workers = 1"):
        load_settings(server={"workers": 2}, model_control={"mode": "poll"})
    with pytest.raises(SettingsError, match=r"server\.workers"):
        load_settings(server={"engine": "process"}, model_control={"mode": "explicit"})


def test_an_engines_runtimes_leave_each_worker_a_core() -> None:
    cores = cpu_budget().cores
    assert runtime_cores(load_settings()) == cores
    assert runtime_cores(load_settings(server={"workers": 2})) == max(1, cores - 2)
    one_worker = {"workers": 1, "engine": "process"}
    assert runtime_cores(load_settings(server=one_worker)) == max(1, cores - 1)
    # Independent servers share the machine's cores out (a runtime thread each on a worker per
    # core: each then runs its batches on its event loop's thread).
    per_worker = {"workers": 2, "engine": "per_worker"}
    assert runtime_cores(load_settings(server=per_worker)) == max(1, cores // 2)


def test_the_default_process_model_fits_the_host() -> None:
    assert auto_process_model(1, gpu=False, reloads=False) == (1, "auto")
    assert auto_process_model(2, gpu=True, reloads=False) == (1, "auto")
    assert auto_process_model(8, gpu=False, reloads=False) == (8, "per_worker")
    assert auto_process_model(64, gpu=False, reloads=False) == (16, "per_worker")
    assert auto_process_model(8, gpu=True, reloads=False) == (8, "process")
    assert auto_process_model(8, gpu=False, reloads=True) == (1, "auto")
    # Reloads with the default workers are accepted: the default then is one process.
    settings = load_settings(model_control={"mode": "explicit"})
    assert with_process_model(settings).server.workers == 1
    defaults = load_settings()
    resolved = with_process_model(defaults).server
    cores = cpu_budget().cores
    gpu = cores > 2 and gpu_available(defaults)
    assert (resolved.workers, resolved.engine) == auto_process_model(cores, gpu, False)
    explicit = with_process_model(load_settings(server={"engine": "per_worker"})).server
    assert (explicit.workers, explicit.engine) == (min(cores, 16), "per_worker")
