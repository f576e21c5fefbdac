"""`bench.ledger`'s reading of py-spy samples: each sample to the stage of its innermost frame
that names one, the process frame to the server's role."""

from __future__ import annotations

from bench.ledger import role_of, shares, stage_of

LOOP = "Runner.run (asyncio/runners.py:118)"
HOT = "HotRoutes.answer (app/http/hot.py:103)"


def test_the_innermost_named_frame_decides() -> None:
    parse = "json_values (app/http/v2_codec.py:75)"
    assert stage_of([LOOP, HOT, "infer_body (app/http/v2.py:120)", parse]) == "parse"
    assert stage_of([LOOP, HOT, parse, "_amin (numpy/_core/_methods.py:45)"]) == "parse"
    session = "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)"
    assert stage_of([LOOP, "Device.execute (scheduler/device.py:159)", session]) == "runtime"
    assert stage_of([LOOP]) == "event loop and sockets (native)"
    assert stage_of([LOOP, HOT]) == "hot routes"
    grpc = "InferenceService.ModelInfer (app/grpc/service.py:246)"
    assert stage_of([LOOP, grpc, "decode (app/grpc/service.py:98)"]) == "gRPC service"
    assert stage_of(["somewhere (elsewhere.py:1)"]) == "other"


def test_samples_are_shared_by_role_and_stage() -> None:
    engine = 'process 7:"python -m app --role engine --engine-socket /tmp/s"'
    server = 'process 6:"python -m app --port 8000"'
    raw = f"{server};{LOOP} 3\n{server};{engine};{LOOP};{HOT} 1\n\n"  # children nest
    assert role_of(engine) == "engine" and role_of(server) == "server"
    assert shares(raw) == {
        ("server", "event loop and sockets (native)"): 0.75,
        ("engine", "hot routes"): 0.25,
    }
    # py-spy writes some samples with no process frame: the sampled process's own.
    assert shares(f"{LOOP};{HOT} 1\n{engine};{LOOP} 1") == {
        ("server", "hot routes"): 0.5,
        ("engine", "event loop and sockets (native)"): 0.5,
    }
