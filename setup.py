"""Compiles the request path (server/compiled.py lists its modules) to C extensions with mypyc, when asked.

Opt-in (`TESSERA_COMPILE=1 pip install ...`; README, "The compiled request path"): by default the package
installs interpreted and needs no C compiler. Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
compiled = runpy.run_path(str(ROOT / "server" / "compiled.py"))
MODULES: tuple[str, ...] = compiled["MODULES"]


def _extensions() -> list[object]:
    manifest = ROOT / "server" / compiled["SOURCES_FILE"]
    # A module that left the list must not leave its old build behind (Python would import it).
    for stale in [*(ROOT / "server").rglob("*.so"), *ROOT.glob("tessera__mypyc*.so")]:
        stale.unlink()
    manifest.unlink(missing_ok=True)
    if os.environ.get(compiled["COMPILE_ENV"]) != "1" or os.environ.get(compiled["PURE_PYTHON_ENV"]):
        return []
    from mypyc.build import mypycify

    manifest.write_text(compiled["manifest_text"](MODULES, ROOT))
    paths = [str(Path(*module.split(".")).with_suffix(".py")) for module in MODULES]
    # Its own mypy settings: the build environment lacks the type stubs of our dependencies, which are then
    # Any; `mypy --strict` in CI is what checks the types.
    return mypycify(["--config-file", os.devnull, "--ignore-missing-imports", "--follow-imports=silent",
                     "--cache-dir", str(Path("build") / "mypyc-cache"), *paths],
                    opt_level="3", debug_level="0", group_name="tessera")


setup(ext_modules=_extensions())
