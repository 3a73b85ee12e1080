"""The bare-bones HTTP/2 reference server answers what ONNX Runtime computes: a measuring stick that
answered wrongly (or stalled on a big message) would make every ratio taken against it meaningless."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from benchmarks.server_process import ServerProcess, free_port, tcp_ready
from tests.sample_models import make_models

ROOT = Path(__file__).resolve().parents[2]


def test_answers_model_infer_with_the_models_outputs(tmp_path: Path) -> None:
    make_models.make_mlp(tmp_path / "repo", "mlp", [16, 32, 4], config_extra="dynamic_batching { }\n")
    session = ort.InferenceSession(str(tmp_path / "repo" / "mlp" / "1" / "model.onnx"))
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.h2_inline_server", "--model-repository", str(tmp_path / "repo"),
            "--port", str(port)]
    with ServerProcess(argv, ready=tcp_ready(port), log=tmp_path / "server.log", cwd=ROOT):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert [t.name for t in client.get_model_metadata("mlp").inputs] == [input_name]
        # 64 rows, then 40,000 rows (2.5 MB: many DATA frames, the connection window given back as read)
        for rows, request_id in ((64, "small"), (40_000, "big")):
            x = np.random.default_rng(rows).random((rows, 16), dtype=np.float32)
            tensor = grpcclient.InferInput(input_name, [rows, 16], "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("mlp", [tensor], request_id=request_id)
            np.testing.assert_allclose(result.as_numpy(output_name), session.run(None, {input_name: x})[0],
                                       rtol=1e-5, atol=1e-6)
            assert result.get_response().id == request_id
        client.close()
