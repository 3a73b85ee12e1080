"""The peer benchmark: Tessera against MLServer, a naive FastAPI server, a bare grpc.aio server and
in-process ONNX Runtime (`python -m benchmarks.peers.bench`)."""

from __future__ import annotations

__all__: list[str] = []
