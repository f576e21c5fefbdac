"""The documents the V2 protocol answers with, in Triton's JSON form: server and model metadata,
the model configuration (as completed from the graph and the model's config.toml) and the
statistics. REST returns them as they are; gRPC converts them to its messages."""

from __future__ import annotations

from typing import Any

from app.dataplane.devices import DEVICE_KIND_OF_BACKEND
from app.dataplane.serving import Serving

SERVER_NAME = "recsys-serve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
PLATFORMS = {"onnx": "onnxruntime_onnx", "openvino-ir": "openvino"}


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def platform(serving: Serving) -> str:
    return PLATFORMS[next(iter(serving.variants.values())).format]


def metadata(serving: Serving, versions: list[int]) -> dict[str, Any]:
    """`versions`: every version of the model served now."""
    signature = serving.version.signature
    return {
        "name": serving.version.model,
        "versions": [str(n) for n in versions],
        "platform": platform(serving),
        "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)}
                   for i in signature.inputs],
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                    for o in signature.outputs],
    }  # fmt: skip


def config(serving: Serving) -> dict[str, Any]:
    """The model configuration; `max_batch_size` 0 says the model is served without batching.
    Beyond Triton's schema, each instance group says its variant, why, its backend and threads."""
    version = serving.version
    batching = serving.scheduler.batching
    inner = slice(1, None) if version.batched else slice(None)
    document: dict[str, Any] = {
        "name": version.model,
        "platform": platform(serving),
        "max_batch_size": batching.max_batch_rows if version.batched else 0,
        "input": [
            {"name": i.name, "data_type": f"TYPE_{i.datatype}", "dims": list(i.shape[inner])}
            for i in version.signature.inputs
        ],
        "output": [
            {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": list(o.shape[inner])}
            for o in version.signature.outputs
        ],
        "instance_group": [
            {
                "name": device.name,
                "kind": f"KIND_{DEVICE_KIND_OF_BACKEND[serving.backends[device.name]].upper()}",
                "count": device.parallel_batches,
                "variant": serving.variants[device.name].name,
                "variant_reason": serving.reasons.get(device.name, ""),
                "backend": serving.backends[device.name],
                "threads": serving.threads.get(device.name, 0),
            }
            for device in serving.scheduler.devices
        ],
    }
    if version.batched:
        delay = int(batching.max_queue_delay_seconds * 1e6)
        document["dynamic_batching"] = {"max_queue_delay_microseconds": delay}
    return document


def statistics(servings: list[Serving]) -> dict[str, Any]:
    """Triton's statistics of model versions: what their scheduler served (every request that
    reached it, whatever the transport or route), counted once, where it runs."""
    stats = []
    for serving in servings:
        served = serving.scheduler.served
        requests = served.requests
        stats.append({
            "name": serving.version.model,
            "version": str(serving.version.number),
            "inference_count": served.rows,
            "execution_count": requests,
            "inference_stats": {
                "success": {"count": requests, "ns": int(served.total_seconds * 1e9)},
                "fail": {"count": served.failures, "ns": 0},
                "queue": {"count": requests, "ns": int(served.queue_seconds * 1e9)},
                "compute_infer": {"count": requests, "ns": int(served.compute_seconds * 1e9)},
            },
        })  # fmt: skip
    return {"model_stats": stats}
