"""The compiled request path runs only when it was built from the sources beside it."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path

import pytest

from server import compiled
from server.compiled import PURE_PYTHON_ENV, SourceFirst, interpreted_because, source_hashes

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = ("pkg.fast", "pkg.sub.faster")


def _tree(root: Path, *, build: bool = True) -> Path:
    """A package of two modules whose "compiled builds" are files no loader could load: importing one of them
    fails, so a test that imports them shows which file the import took."""
    for module in MODULES:
        source = root.joinpath(*module.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.with_name("__init__.py").touch()
        source.write_text(f"WHERE = 'source of {module}'\n")
        if build:
            source.with_suffix(SUFFIX).write_bytes(b"not an extension module")
    manifest = root / "pkg" / "built_from.json"
    manifest.write_text(json.dumps(source_hashes(MODULES, root)))
    return manifest


def test_a_build_from_the_sources_beside_it_runs(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    assert interpreted_because(tmp_path, MODULES, manifest, {}) == ""


def test_no_build_is_interpreted_and_says_so(tmp_path: Path) -> None:
    manifest = _tree(tmp_path, build=False)
    assert interpreted_because(tmp_path, MODULES, manifest, {}) == "not compiled"


def test_an_edited_source_sends_every_module_to_its_source(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    tmp_path.joinpath("pkg", "sub", "faster.py").write_text("WHERE = 'edited'\n")
    reason = interpreted_because(tmp_path, MODULES, manifest, {})
    assert reason == "pkg.sub.faster changed since the build (run ./.ci/setup to compile again)"


@pytest.mark.parametrize("damage", ["no-manifest", "a-build-missing"])
def test_an_incomplete_build_is_not_run(tmp_path: Path, damage: str) -> None:
    manifest = _tree(tmp_path)
    if damage == "no-manifest":
        manifest.unlink()
    else:
        tmp_path.joinpath("pkg", "fast").with_suffix(SUFFIX).unlink()
    assert interpreted_because(tmp_path, MODULES, manifest, {}).startswith("the compiled build is incomplete")


def test_the_environment_variable_turns_the_build_off(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    assert interpreted_because(tmp_path, MODULES, manifest, {PURE_PYTHON_ENV: "1"}) == f"{PURE_PYTHON_ENV} is set"


def test_the_finder_imports_the_listed_modules_from_their_sources(tmp_path: Path) -> None:
    _tree(tmp_path)
    finder = f"sys.meta_path.insert(0, SourceFirst(Path({str(tmp_path)!r}), {MODULES!r})); "

    def run(with_finder: bool) -> subprocess.CompletedProcess[str]:
        script = (f"import sys; from pathlib import Path; from server.compiled import SourceFirst; "
                  f"sys.path.insert(0, {str(tmp_path)!r}); {finder if with_finder else ''}"
                  "import pkg.fast, pkg.sub.faster; print(pkg.fast.WHERE, '|', pkg.sub.faster.WHERE)")
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert run(with_finder=True).stdout.strip() == "source of pkg.fast | source of pkg.sub.faster"
    without = run(with_finder=False)  # the "build" is what Python chooses without the finder
    assert without.returncode != 0 and "ImportError" in without.stderr


def test_the_finder_leaves_other_modules_alone(tmp_path: Path) -> None:
    assert SourceFirst(tmp_path, MODULES).find_spec("pkg.other", None) is None


def test_the_server_runs_its_sources_when_told_to() -> None:
    script = "import server.compiled as c, server.dataplane as d; print(c.state()); print(d.__file__)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", PURE_PYTHON_ENV: "1"})
    state, where = done.stdout.split("\n")[:2]
    assert where.endswith("dataplane.py")
    assert state in (f"interpreted: {PURE_PYTHON_ENV} is set", "interpreted: not compiled")


def test_every_listed_module_exists() -> None:
    root = Path(compiled.__file__).resolve().parent.parent
    assert all(root.joinpath(*m.split(".")).with_suffix(".py").exists() for m in compiled.MODULES)
