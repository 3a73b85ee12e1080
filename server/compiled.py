"""Which of Tessera's modules run compiled to C (mypyc), and the rule that keeps a stale build from running.

setup.py compiles MODULES when the package is installed: the request path, where the interpreter's own work
was most of a small request's CPU (BENCHMARKS.md, "The request path compiled with mypyc"). The .py files stay
the source and the fallback: installed or run with TESSERA_PURE_PYTHON=1, Tessera runs them interpreted.

Python imports an extension module in preference to the .py beside it, so a source edited or checked out
after the build would silently run its old build. The build records each source's hash (SOURCES_FILE);
`use_fresh_code`, called as the `server` package is imported, compares them, and when any differs (or
TESSERA_PURE_PYTHON is set) every module of the list is imported from its source. All or none: compiled
modules call one another directly, not through their Python modules.

Standard library only: setup.py runs this file before any dependency is installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["MODULES", "PURE_PYTHON_ENV", "SOURCES_FILE", "SourceFirst", "interpreted_because", "source_hashes",
           "state", "use_fresh_code"]

MODULES = (
    # gRPC: HTTP/2 framing, calls, the service
    "server.grpc_api.h2.connection",
    "server.grpc_api.h2.events",
    "server.grpc_api.h2.frames",
    "server.grpc_api.h2.headers",
    "server.grpc_api.h2.limits",
    "server.grpc_api.h2.streams",
    "server.grpc_api.calls",
    "server.grpc_api.context",
    "server.grpc_api.credentials",
    "server.grpc_api.errors",
    "server.grpc_api.messages",
    "server.grpc_api.rpc",
    "server.grpc_api.server",
    "server.grpc_api.service",
    # HTTP: the routes and their codecs (the connection protocol subclasses uvicorn's, and stays interpreted)
    "server.http_api.body",
    "server.http_api.errors",
    "server.http_api.routes",
    "server.protocol.grpc_codec",
    "server.protocol.http_codec",
    "server.protocol.limits",
    "server.protocol.request_core",
    # one request through the dataplane and the batcher, and what it feeds on the way
    "server.admission",
    "server.batching.batcher",
    "server.batching.fairness",
    "server.batching.stacking",
    "server.dataplane",
    "server.datatypes",
    "server.drift.tap",
    "server.executor.runner",
    "server.metrics",
    "server.model_statistics",
    "server.names",
    "server.observation",
    "server.routing.router",
    "server.tensors",
    "server.validation",
)
"""Not here, on purpose: server.errors (exceptions take attributes set from anywhere: `note_route`), server.auth
(tests replace an Authorizer's method), and anything off the request path, where compiling buys nothing."""

PURE_PYTHON_ENV = "TESSERA_PURE_PYTHON"
SOURCES_FILE = "_compiled_sources.json"
"""Beside this file: module -> sha256 of the source each compiled module was built from (written by setup.py)."""

_ROOT = Path(__file__).resolve().parent.parent  # the directory that holds `server/`
_reason = "not compiled"


def _source(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _built(root: Path, module: str) -> bool:
    source = _source(root, module)
    return any(source.with_suffix(suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def source_hashes(modules: Sequence[str] = MODULES, root: Path = _ROOT) -> dict[str, str]:
    """Each module's source, hashed."""
    return {module: hashlib.sha256(_source(root, module).read_bytes()).hexdigest() for module in modules}


def interpreted_because(root: Path, modules: Sequence[str], manifest: Path, environ: Mapping[str, str]) -> str:
    """Why `modules` (under `root`) must run from their sources: "" when their compiled build may run."""
    if not any(_built(root, module) for module in modules):
        return "not compiled"
    if environ.get(PURE_PYTHON_ENV):
        return f"{PURE_PYTHON_ENV} is set"
    if not all(_built(root, module) for module in modules) or not manifest.exists():
        return "the compiled build is incomplete (run ./.ci/setup, or reinstall the package)"
    built_from = json.loads(manifest.read_text())
    changed = [module for module, digest in source_hashes(modules, root).items() if built_from.get(module) != digest]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        return f"{changed[0]}{more} changed since the build (run ./.ci/setup to compile again)"
    return ""


class SourceFirst(importlib.abc.MetaPathFinder):
    """Imports `modules` (under `root`) from their .py files, whatever is built beside them."""

    def __init__(self, root: Path, modules: Sequence[str]) -> None:
        self._root = root
        self._names = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self._names:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(self._root, fullname))


def use_fresh_code() -> None:
    """Import MODULES from their sources unless every compiled module was built from the source beside it."""
    global _reason
    _reason = interpreted_because(_ROOT, MODULES, Path(__file__).with_name(SOURCES_FILE), os.environ)
    if _reason and _reason != "not compiled" and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst(_ROOT, MODULES))


def state() -> str:
    """What the start-up log says: whether the request path runs compiled, and why not."""
    return "compiled" if not _reason else f"interpreted: {_reason}"
