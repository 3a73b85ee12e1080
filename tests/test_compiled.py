"""The compiled request path runs only when it was built from the sources beside it."""

from __future__ import annotations

import ast
import dataclasses
import importlib.machinery
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server import compiled
from server.compiled import GROUP, PURE_PYTHON_ENV, SourceFirst, interpreted_because, manifest_text

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
    if build:
        root.joinpath(f"{GROUP}__mypyc{SUFFIX}").write_bytes(b"not a shared library either")
    manifest = root / "pkg" / "built_from.json"
    manifest.write_text(manifest_text(MODULES, root, "pkg"))
    return manifest


def _why(root: Path, manifest: Path, environ: dict[str, str] | None = None) -> str:
    return interpreted_because(root, MODULES, manifest, environ or {}, "pkg")


def test_a_build_from_the_sources_beside_it_runs(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    assert _why(tmp_path, manifest) == ""


def test_no_build_is_interpreted_and_says_so(tmp_path: Path) -> None:
    manifest = _tree(tmp_path, build=False)
    assert _why(tmp_path, manifest) == "not compiled"


def test_an_edited_source_sends_every_module_to_its_source(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    tmp_path.joinpath("pkg", "sub", "faster.py").write_text("WHERE = 'edited'\n")
    reason = _why(tmp_path, manifest)
    assert reason == "pkg/sub/faster.py changed since the build (run ./.ci/setup to compile again)"


def test_a_source_the_compiled_modules_import_counts_too(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    tmp_path.joinpath("pkg", "types_they_use.py").write_text("Rows = int\n")  # not compiled, but typed against
    assert _why(tmp_path, manifest).startswith("pkg/types_they_use.py changed since the build")


def test_a_build_of_a_module_no_longer_listed_is_not_run(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    tmp_path.joinpath("pkg", "dropped.py").write_text("WHERE = 'source'\n")
    tmp_path.joinpath("pkg", "dropped").with_suffix(SUFFIX).write_bytes(b"an old build")
    assert _why(tmp_path, manifest).startswith("pkg.dropped has a build but is not to be compiled")


def test_a_build_without_its_shared_library_is_not_run(tmp_path: Path) -> None:
    """Each compiled module only loads the group's shared library, which sits beside the package: a package
    copied without it would fail on its first import instead of running its sources."""
    manifest = _tree(tmp_path)
    tmp_path.joinpath(f"{GROUP}__mypyc{SUFFIX}").unlink()
    assert _why(tmp_path, manifest) == (f"the compiled build is incomplete: {GROUP}__mypyc is not beside pkg/ "
                                        "(run ./.ci/setup, or reinstall the package)")


@pytest.mark.parametrize("damage", ["no-manifest", "unreadable-manifest", "a-build-missing"])
def test_an_incomplete_build_is_not_run(tmp_path: Path, damage: str) -> None:
    manifest = _tree(tmp_path)
    if damage == "no-manifest":
        manifest.unlink()
    elif damage == "unreadable-manifest":
        manifest.write_text("{not json")
    else:
        tmp_path.joinpath("pkg", "fast").with_suffix(SUFFIX).unlink()
    assert _why(tmp_path, manifest).startswith("the compiled build is incomplete")


def test_the_environment_variable_turns_the_build_off(tmp_path: Path) -> None:
    manifest = _tree(tmp_path)
    assert _why(tmp_path, manifest, {PURE_PYTHON_ENV: "1"}) == f"{PURE_PYTHON_ENV} is set"


def test_the_finder_imports_the_listed_modules_from_their_sources(tmp_path: Path) -> None:
    _tree(tmp_path)
    finder = f"sys.meta_path.insert(0, SourceFirst(Path({str(tmp_path)!r}), 'pkg')); "

    def run(with_finder: bool) -> subprocess.CompletedProcess[str]:
        script = (f"import sys; from pathlib import Path; from server.compiled import SourceFirst; "
                  f"sys.path.insert(0, {str(tmp_path)!r}); {finder if with_finder else ''}"
                  "import pkg.fast, pkg.sub.faster; print(pkg.fast.WHERE, '|', pkg.sub.faster.WHERE)")
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert run(with_finder=True).stdout.strip() == "source of pkg.fast | source of pkg.sub.faster"
    without = run(with_finder=False)  # the "build" is what Python chooses without the finder
    assert without.returncode != 0 and "ImportError" in without.stderr


def test_the_finder_leaves_other_packages_and_package_inits_alone(tmp_path: Path) -> None:
    _tree(tmp_path)
    finder = SourceFirst(tmp_path, "pkg")
    assert finder.find_spec("elsewhere.fast", None) is None
    assert finder.find_spec("pkg.sub", None) is None  # a package: imported as usual, from its __init__.py


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


# mypyc re-raises "the exception being handled" from the thread's state, which an await that suspends in between
# replaces: a failed explicit load answered OK (DataPlane._admin awaited its audit line in a `finally`). So in a
# compiled module nothing awaits between catching an exception and raising it again; an `async with` (its exit
# awaits __aexit__, then re-raises) is allowed only where __aexit__ never suspends.
ASYNC_WITH_ALLOWED = {
    ("server/grpc_api/service.py", "self._writing"): "an asyncio.Lock: its __aexit__ only releases",
    ("server/drift/tap.py", "asyncio.timeout(self._seconds_to_deadline())"): "asyncio.timeout: __aexit__ never awaits",
}


def _awaits(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith)) for n in ast.walk(node))


def test_no_compiled_module_awaits_while_an_exception_is_on_its_way_out() -> None:
    root = Path(compiled.__file__).resolve().parent.parent
    found = []
    for module in compiled.MODULES:
        path = root.joinpath(*module.split(".")).with_suffix(".py")
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try) and any(_awaits(stmt) for stmt in node.finalbody):
                found.append(f"{name}:{node.lineno}: an await in `finally`")
            if isinstance(node, ast.ExceptHandler):
                awaited = False
                for stmt in node.body:
                    if awaited and any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(stmt)):
                        found.append(f"{name}:{stmt.lineno}: `raise` after an await in `except`")
                    awaited = awaited or _awaits(stmt)
            if isinstance(node, ast.AsyncWith):
                for item in node.items:
                    if (name, ast.unparse(item.context_expr)) not in ASYNC_WITH_ALLOWED:
                        found.append(f"{name}:{node.lineno}: `async with {ast.unparse(item.context_expr)}`")
    assert found == []


def _build_requirements(root: Path) -> set[str]:
    requires = tomllib.loads((root / "pyproject.toml").read_text())["build-system"]["requires"]
    return {re.split(r"[<>=!~\[ ;]", item, maxsplit=1)[0].lower() for item in requires}


def test_a_compiled_class_that_extends_a_librarys_class_is_built_against_that_library() -> None:
    """pip builds in an isolated environment, where a dependency that is not among the build requirements
    is Any. mypyc compiles a class extending an Any base wrongly, and silently: as a native class it is laid
    out as if it had no base (HeaderDecoder read hpack's table at a wrong offset and spun); as a plain class
    the base is dropped from it (the table lost hpack's `__init__`, and every connection failed). Such a
    class must be a plain class (`mypyc_attr(native_class=False)`: a compiled class cannot extend an
    interpreted one), and the package its base comes from must be a build requirement (setup.py's
    `disallow_subclassing_any` then holds the build to it)."""
    root = Path(compiled.__file__).resolve().parent.parent
    requirements = _build_requirements(root)
    distributions = importlib.metadata.packages_distributions()
    found = []
    for module in compiled.MODULES:
        path = root.joinpath(*module.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text())
        library: dict[str, str] = {}  # a name bound by an import -> its top-level package
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                top = node.module.split(".")[0]
                if top != "server" and top not in sys.stdlib_module_names:
                    library.update((alias.asname or alias.name, top) for alias in node.names)
            elif isinstance(node, ast.Import):
                library.update(((a.asname or a.name).split(".")[0], a.name.split(".")[0]) for a in node.names
                               if a.name.split(".")[0] not in sys.stdlib_module_names)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            plain = any("native_class=False" in ast.unparse(d) for d in node.decorator_list)
            for base in (ast.unparse(b).split(".")[0].split("[")[0] for b in node.bases):
                if base not in library:
                    continue
                where = f"{path.relative_to(root)}:{node.lineno}: {node.name}"
                if not plain:
                    found.append(f"{where} is not marked native_class=False")
                packages = {d.lower() for d in distributions.get(library[base], [library[base]])}
                if not packages & requirements:
                    found.append(f"{where}: {'/'.join(sorted(packages))} is not a build requirement")
    assert found == []
    assert "disallow_subclassing_any = True" in (root / "setup.py").read_text()


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Name) and target.id == "dataclass"


def _dataclass_fields(cls: ast.ClassDef) -> list[tuple[str, str | None]]:
    """(name, default as written; 'factory' for field(default_factory=...), None when required)."""
    out: list[tuple[str, str | None]] = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            value = stmt.value
            if value is None:
                out.append((stmt.target.id, None))
            elif isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
                keywords = {k.arg: k.value for k in value.keywords}
                out.append((stmt.target.id, "factory" if "default_factory" in keywords
                            else ast.unparse(keywords["default"]) if "default" in keywords else None))
            else:
                out.append((stmt.target.id, ast.unparse(value)))
    return out


def test_a_dataclass_with_its_own_init_takes_and_sets_every_field() -> None:
    """Request-path dataclasses write their own __init__ (the generated one runs interpreted under mypyc):
    it must take each field in order, with the field's default (None for a default_factory, which it then
    makes), and set each one."""
    root = Path(compiled.__file__).resolve().parent.parent
    checked, found = [], []
    for module in compiled.MODULES:
        path = root.joinpath(*module.split(".")).with_suffix(".py")
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef) or not any(map(_is_dataclass_decorator, cls.decorator_list)):
                continue
            init = next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
            if init is None:
                continue
            where = f"{path.relative_to(root).as_posix()}:{cls.name}"
            checked.append(where)
            fields = _dataclass_fields(cls)
            params = init.args.args[1:]
            defaults = [None] * (len(params) - len(init.args.defaults)) + [ast.unparse(d) for d in init.args.defaults]
            taken = [(p.arg, d) for p, d in zip(params, defaults, strict=True)]
            wanted = [(name, "None" if default == "factory" else default) for name, default in fields]
            if taken != wanted:
                found.append(f"{where}: __init__ takes {taken}, the fields are {wanted}")
            assigned = {t.attr for s in ast.walk(init) if isinstance(s, ast.Assign) for t in s.targets
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
            if missing := [name for name, _ in fields if name not in assigned]:
                found.append(f"{where}: __init__ never sets {missing}")
    assert len(checked) >= 7, checked
    assert found == []


def test_a_defaulted_container_field_is_each_instances_own() -> None:
    """Where a field's default_factory would make a new list or dict, the hand-written __init__ does too."""
    from server.tensors import InferRequest, InferResponse, RequestedOutput

    checked = 0
    for make in (lambda: RequestedOutput("y"), lambda: InferRequest("m", {}, {}),
                 lambda: InferResponse("m", "1", {}, {})):
        first, second = make(), make()
        for field in dataclasses.fields(first):
            if field.default_factory is not dataclasses.MISSING:
                assert getattr(first, field.name) == field.default_factory()
                assert getattr(first, field.name) is not getattr(second, field.name)
                checked += 1
    assert checked == 4
