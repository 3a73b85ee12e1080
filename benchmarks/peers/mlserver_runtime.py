# mypy: disable-error-code="import-not-found,misc,untyped-decorator,var-annotated"
"""A small ONNX Runtime runtime for MLServer (runs in the peers venv, not the project's).

MLServer's adaptive batching (max_batch_size / max_batch_time in model-settings.json) stacks
requests before `predict`; the session uses the same thread settings as the other peers.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


def session_options() -> ort.SessionOptions:
    """One intra-op thread, no spinning: the server has one core (see benchmarks/peers/bench.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        assert self.settings.parameters is not None and self.settings.parameters.uri is not None
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, session_options(), providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results, strict=True)],
        )
