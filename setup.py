"""Compiles the request path (server/compiled.py lists its modules) to C extensions with mypyc, when asked.

Opt-in (`TESSERA_COMPILE=1 pip install ...`; README, "The compiled request path"): by default the package
installs interpreted and needs no C compiler. Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
compiled = runpy.run_path(str(ROOT / "server" / "compiled.py"))
MODULES: tuple[str, ...] = compiled["MODULES"]


_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"}


def _extensions() -> list[object]:
    manifest = ROOT / "server" / compiled["SOURCES_FILE"]
    # A module that left the list must not leave its old build behind (Python would import it).
    for stale in [*(ROOT / "server").rglob("*.so"), *ROOT.glob(f"{compiled['GROUP']}__mypyc*.so")]:
        stale.unlink()
    manifest.unlink(missing_ok=True)
    if os.environ.get(compiled["COMPILE_ENV"]) != "1" or os.environ.get(compiled["PURE_PYTHON_ENV"]):
        return []
    # pip runs this file three times a build: for the build's requirements (egg_info), its metadata
    # (dist_info), then to build. Only the last needs the extensions, and each type check starts afresh.
    if {"egg_info", "dist_info"} & set(sys.argv) and not _BUILDS & set(sys.argv):
        return []
    from mypyc.build import mypycify

    manifest.write_text(compiled["manifest_text"](MODULES, ROOT))
    paths = [str(Path(*module.split(".")).with_suffix(".py")) for module in MODULES]
    # Its own mypy settings: the build environment lacks most of our dependencies, whose types are then
    # Any; `mypy --strict` in CI is what checks the types. Two things it must still refuse:
    # - a compiled class whose base is Any: mypyc compiles it without that base, silently (hpack's
    #   HeaderTable vanished from the decoder's table that way); pyproject's build requirements bring in
    #   the packages such bases come from;
    # - a cache from an earlier build: a type it remembers (a package then installed) would make this build
    #   differ from a clean one, so each build type-checks from nothing.
    with tempfile.TemporaryDirectory(prefix="tessera-mypyc-") as work:
        config = Path(work, "mypy.ini")
        config.write_text(f"[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
                          f"[mypy-{','.join(MODULES)}]\ndisallow_subclassing_any = True\n")
        return mypycify(["--config-file", str(config), "--cache-dir", str(Path(work, "cache")), *paths],
                        opt_level="3", debug_level="0", group_name=compiled["GROUP"])


setup(ext_modules=_extensions())
