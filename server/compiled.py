"""Which of Tessera's modules run compiled to C (mypyc), and the rule that keeps a stale build from running.

setup.py compiles MODULES when the package is installed with TESSERA_COMPILE=1 (opt-in): the request path,
where the interpreter's own work was most of a small request's CPU (BENCHMARKS.md, "The request path compiled
with mypyc"). The .py files stay the source and the default: without it, or run with TESSERA_PURE_PYTHON=1,
Tessera runs them interpreted.

Python imports an extension module in preference to the .py beside it, so a source edited or checked out
after the build would silently run its old build. The build records the hash of every source of the package
(SOURCES_FILE: a compiled module also depends on the types of what it imports); `use_fresh_code`, called as
the `server` package is imported, compares them, and when any differs, a module is built that is not listed
(or the reverse), or TESSERA_PURE_PYTHON is set, every module of the package is imported from its source.
All or none: compiled modules call one another directly, not through their Python modules.

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

__all__ = ["COMPILE_ENV", "GROUP", "MODULES", "PURE_PYTHON_ENV", "SOURCES_FILE", "SourceFirst", "interpreted_because",
           "manifest_text", "source_hashes", "state", "use_fresh_code"]

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
    "server.protocol.infer_wire",
    "server.protocol.limits",
    "server.protocol.protobuf_wire",
    "server.protocol.request_core",
    # one request through the dataplane and the batcher, and what it feeds on the way
    "server.admission",
    "server.batching.batcher",
    "server.batching.fairness",
    "server.batching.load",
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

COMPILE_ENV = "TESSERA_COMPILE"
"""=1 at install time compiles MODULES (opt-in: see README, "The compiled request path")."""
PURE_PYTHON_ENV = "TESSERA_PURE_PYTHON"
SOURCES_FILE = "_compiled_sources.json"
"""Beside this file, written by setup.py: the modules compiled, and the sha256 of every source of the package
they were built with."""
GROUP = "tessera"
"""setup.py's mypyc group: the C of every compiled module is one shared library, `tessera__mypyc`, installed
beside the package (not in it); each module's own extension only loads it."""

_ROOT = Path(__file__).resolve().parent.parent  # the directory that holds `server/`
_reason = "not compiled"


def _source(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _builds(root: Path, package: str) -> dict[str, Path]:
    """module -> its extension module file, for every one built under `root/package`."""
    found: dict[str, Path] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:  # the most specific first: ".cpython-311-...so", ".so"
        for path in (root / package).rglob(f"*{suffix}"):
            if path not in found.values():
                found[path.relative_to(root).as_posix()[: -len(suffix)].replace("/", ".")] = path
    return found


def source_hashes(root: Path = _ROOT, package: str = "server") -> dict[str, str]:
    """Every source of the package, hashed: a compiled module depends on the types of what it imports too."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((root / package).rglob("*.py"))}


def manifest_text(modules: Sequence[str], root: Path = _ROOT, package: str = "server") -> str:
    """What setup.py writes beside this file as it builds `modules`."""
    return json.dumps({"modules": sorted(modules), "sources": source_hashes(root, package)}, indent=1) + "\n"


def interpreted_because(root: Path, modules: Sequence[str], manifest: Path, environ: Mapping[str, str],
                        package: str = "server", group: str = GROUP) -> str:
    """Why the package's modules (under `root`) must run from their sources: "" when its compiled build may run."""
    builds = _builds(root, package)
    if not builds:
        return "not compiled"
    if environ.get(PURE_PYTHON_ENV):
        return f"{PURE_PYTHON_ENV} is set"
    if unlisted := sorted(set(builds) - set(modules)):
        return f"{unlisted[0]} has a build but is not to be compiled (run ./.ci/setup to compile again)"
    try:
        built = json.loads(manifest.read_text())
        built_modules, built_from = built["modules"], built["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        built_modules, built_from = None, {}
    if set(builds) != set(modules) or built_modules != sorted(modules):
        return "the compiled build is incomplete (run ./.ci/setup, or reinstall the package)"
    library = f"{group}__mypyc"
    if not any((root / f"{library}{suffix}").is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        # A package copied without it: every compiled module would fail to import.
        return (f"the compiled build is incomplete: {library} is not beside {package}/ (run ./.ci/setup, "
                "or reinstall the package)")
    now = source_hashes(root, package)
    changed = sorted(path for path in now.keys() | built_from.keys() if now.get(path) != built_from.get(path))
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        return f"{changed[0]}{more} changed since the build (run ./.ci/setup to compile again)"
    return ""


class SourceFirst(importlib.abc.MetaPathFinder):
    """Imports every module of `package` (under `root`) from its .py file, whatever is built beside it."""

    def __init__(self, root: Path, package: str) -> None:
        self._root = root
        self._prefix = package + "."

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        source = _source(self._root, fullname)
        if not fullname.startswith(self._prefix) or not source.is_file():
            return None  # not ours, or a package (its __init__.py is imported as usual)
        return importlib.util.spec_from_file_location(fullname, source)


def use_fresh_code() -> None:
    """Import the package from its sources unless its compiled build was made from exactly these sources."""
    global _reason
    _reason = interpreted_because(_ROOT, MODULES, Path(__file__).with_name(SOURCES_FILE), os.environ)
    if _reason and _reason != "not compiled" and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst(_ROOT, "server"))


def state() -> str:
    """What the start-up log says: whether the request path runs compiled, and why not."""
    return "compiled" if not _reason else f"interpreted: {_reason}"
