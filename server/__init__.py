"""Tessera: an Open Inference Protocol server for ONNX models."""

from .compiled import use_fresh_code as _use_fresh_code

__version__ = "0.1.0"
__all__ = ["__version__"]

_use_fresh_code()  # before any compiled module can be imported: a stale build must not run
