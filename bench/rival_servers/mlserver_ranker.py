"""MLServer serving an ONNX ranker: a custom runtime (`MLModel`) over ONNX Runtime with one thread
(the server gets one core), MLServer's defaults otherwise (its V2 REST route, one inference
worker process). `bench.rivals` writes the model folder that names it."""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class Ranker(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        scores = self.session.run(None, inputs)[0]
        outputs = [NumpyCodec.encode_output("score", scores)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
