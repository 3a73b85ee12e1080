"""Our own measurements of Tessera against peers and ceilings: serving, side paths, perf_analyzer, the
gRPC client floor, a bare server, in-process ONNX Runtime, and Python peers (`peers/`).

Not part of the wheel: run from a checkout, each by the command BENCHMARKS.md names
(`python -m benchmarks.<script> ...`). Benchmarks may import the load harness (`loadtests`); the harness
never imports them.
"""

from __future__ import annotations

__all__: list[str] = []
