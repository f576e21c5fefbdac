"""LitServe serving an ONNX ranker: a `LitAPI` whose request is V2 JSON tensors and whose answer is
V2 JSON, ONNX Runtime with one thread (the server gets one core), LitServe's defaults otherwise.
`python litserve_ranker.py MODEL PORT`."""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort

DTYPES = {"INT64": np.int64, "FP32": np.float32}


class Ranker(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])

    # Unannotated, as LitServe's docs write them: it makes the annotations the route's types.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return {
            t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in request["inputs"]
        }

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, inputs)[0])

    def encode_response(self, scores):  # type: ignore[no-untyped-def]
        return {"outputs": [{"name": "score", "datatype": "FP32", "shape": list(scores.shape),
                             "data": scores.ravel().tolist()}]}  # fmt: skip


if __name__ == "__main__":
    model, port = sys.argv[1], int(sys.argv[2])
    ls.LitServer(Ranker(model), accelerator="cpu").run(port=port, generate_client_file=False)
