# mypy: disable-error-code="import-not-found,misc,untyped-decorator,var-annotated"
"""The naive peer: FastAPI + pydantic + ONNX Runtime, one session run per request, no batching.
V2 JSON over HTTP only (runs in the peers venv).

    python benchmarks/peers/naive_fastapi.py --repository DIR --port 8000
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
}
V2_TO_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceRequest(BaseModel):
    inputs: list[RequestInput]


def build_app(repository: Path) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        p.parent.parent.name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for p in repository.glob("*/1/model.onnx")
    }
    app = FastAPI()

    def tensors(args: list[Any]) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "datatype": ORT_TO_V2[a.type], "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in args
        ]

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    def metadata(name: str) -> dict[str, Any]:
        if name not in sessions:
            raise HTTPException(404, f"unknown model {name}")
        s = sessions[name]
        return {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": tensors(s.get_inputs()),
            "outputs": tensors(s.get_outputs()),
        }

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, request: InferenceRequest) -> dict[str, Any]:
        if name not in sessions:
            raise HTTPException(404, f"unknown model {name}")
        session = sessions[name]
        feeds = {i.name: np.asarray(i.data, dtype=V2_TO_NUMPY[i.datatype]).reshape(i.shape) for i in request.inputs}
        results = session.run(None, feeds)
        return {
            "model_name": name,
            "outputs": [
                {"name": o.name, "datatype": ORT_TO_V2[o.type], "shape": list(r.shape), "data": r.ravel().tolist()}
                for o, r in zip(session.get_outputs(), results, strict=True)
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.repository),
        host=args.host,
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
