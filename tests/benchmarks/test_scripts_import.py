"""Every benchmark module still imports, and every script answers `--help`: the figures in
BENCHMARKS.md are only reproducible while the commands quoted beside them run (one broke unnoticed
when the harness's modules moved)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks

ROOT = Path(__file__).resolve().parents[2]
# Run inside a peer server's own environment (MLServer, FastAPI), not this one's.
PEER_SIDE = {"benchmarks.peers.mlserver_runtime", "benchmarks.peers.naive_fastapi"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.")
                 if not m.ispkg and m.name not in PEER_SIDE)


def _is_script(module: str) -> bool:
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text()
    return 'if __name__ == "__main__":' in source


@pytest.mark.parametrize("module", MODULES)
def test_the_module_imports_and_a_script_answers_help(module: str) -> None:
    importlib.import_module(module)
    if not _is_script(module):
        return
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
