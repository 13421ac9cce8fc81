"""The distribution installs one top-level name, `task_ingress`, holding every package folder.

An embedder with its own `runtime` or `messages` package must not shadow ours (or have pip
overwrite it), and the suite must exercise the installed package, not the checkout.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import itertools
import re
import tomllib
from pathlib import Path

import task_ingress

REPO = Path(__file__).resolve().parents[1]
MAPPED = ("actors", "messages", "runtime", "bench", "testing")
PRODUCTION = ("actors", "messages", "runtime", "bench", "src")


def _installed() -> importlib.metadata.Distribution:
    """The installed distribution (not the egg-info a build leaves in this checkout). The
    README's venv lives in the checkout (`.venv`): a site-packages there is an install."""
    for dist in importlib.metadata.distributions(name="task-ingress"):
        where = Path(str(dist.locate_file(""))).resolve()
        if where != REPO and (REPO not in where.parents or "site-packages" in where.parts):
            return dist
    raise AssertionError("task-ingress is not installed outside the checkout")


def _editable_mapping(dist: importlib.metadata.Distribution) -> dict[str, str] | None:
    """The name → folder map of a setuptools editable install, or None for a real install."""
    for file in dist.files or []:
        name = file.name
        if name.startswith("__editable__") and name.endswith("_finder.py"):
            tree = ast.parse(Path(str(file.locate())).read_text())
            for node in tree.body:
                target = (node.target if isinstance(node, ast.AnnAssign)
                          else node.targets[0] if isinstance(node, ast.Assign) else None)
                if isinstance(target, ast.Name) and target.id == "MAPPING" and node.value:
                    mapping: dict[str, str] = ast.literal_eval(node.value)
                    return mapping
    return None


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    mapping = _editable_mapping(dist)
    if mapping is not None:
        return {name.split(".")[0] for name in mapping}
    names = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".data")) or first == "..":  # console script in bin/
            continue
        names.add(first.removesuffix(".py"))
    return names


def test_distribution_installs_no_top_level_name_but_task_ingress() -> None:
    dist = _installed()
    assert _top_level_names(dist) == {"task_ingress"}


def test_every_package_folder_of_the_repository_is_installed() -> None:
    folders = [p.parent for d in MAPPED for p in (REPO / d).rglob("__init__.py")
               if "__pycache__" not in p.parts]
    assert folders, "the repository's package folders were not found"
    for folder in folders:
        dotted = "task_ingress." + ".".join(folder.relative_to(REPO).parts)
        module = importlib.import_module(dotted)
        assert module.__file__ is not None, dotted


def _package_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name. Found through each mapped
    package's spec: with an editable install task_ingress/ holds only the root's files."""
    modules = {("task_ingress" if p.stem == "__init__" else f"task_ingress.{p.stem}"): p
               for p in Path(task_ingress.__file__).parent.glob("*.py")}
    for top in MAPPED:
        spec = importlib.util.find_spec(f"task_ingress.{top}")
        assert spec is not None and spec.origin is not None, top
        folder = Path(spec.origin).parent
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules["task_ingress." + ".".join(parts)] = path
    return modules


def test_every_package_folder_is_listed_in_pyproject() -> None:
    # An editable install imports an unlisted subpackage through its parent's folder, so
    # only a real install (.ci/run) would miss it: read the hand-kept list itself.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"task_ingress." + ".".join(p.parent.relative_to(REPO).parts)
               for d in MAPPED for p in (REPO / d).rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert folders - set(setuptools["packages"]) == set()
    assert {f"task_ingress.{d}" for d in MAPPED} <= set(setuptools["package-dir"])


def test_old_top_level_names_are_not_importable_from_the_package() -> None:
    # The package's own modules refer to each other only through task_ingress.*.
    paths = list(_package_modules().values())
    assert len(paths) > 100, "the package's modules were not found"
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in MAPPED, f"{path}: from {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in MAPPED, f"{path}: import {alias.name}"


def test_suite_runs_against_the_installed_package_not_a_checkout_copy() -> None:
    # With a real install the modules live in site-packages; with an editable install the
    # finder maps task_ingress.* onto this checkout's folders. Either way nothing imports
    # the bare top-level folders.
    dist = _installed()
    actors = importlib.import_module("task_ingress.actors")
    assert actors.__file__ is not None
    if _editable_mapping(dist) is None:
        # From the install's site-packages (which may sit in the checkout's .venv), never
        # from the checkout's own folders.
        site = Path(str(dist.locate_file(""))).resolve()
        assert site in Path(actors.__file__).resolve().parents
        assert Path(actors.__file__).resolve().parent != REPO / "actors"
    else:
        assert Path(actors.__file__).resolve().parent == REPO / "actors"


def _imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_no_production_module_imports_the_testing_module() -> None:
    # Test seams are installed (multiprocess actor children load them by dotted name) but
    # only a test may name them: neither an import nor a dotted-name string in production.
    testing = re.compile(r"task_ingress\.testing(\.\w+)*")
    files = [p for d in PRODUCTION for p in (REPO / d).rglob("*.py")]
    assert len(files) > 50, "the production modules were not found"
    for path in files:
        tree = ast.parse(path.read_text())
        for name in _imported_modules(tree):
            assert not testing.fullmatch(name), f"{path}: imports {name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not testing.fullmatch(node.value), f"{path}: names {node.value}"


def _room(module: str) -> str:
    """Where a module stands in the house: a folder below a top package (runtime.nats,
    actors.storage) is one room, any other module is a room of its own."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if len(parts) >= 3 else ".".join(parts) or "task_ingress"


def _imports_between_rooms() -> dict[str, dict[str, set[str]]]:
    """room -> room it imports -> the importing modules (lazy imports in functions too)."""
    modules = _package_modules()
    edges: dict[str, dict[str, set[str]]] = {}
    for name, path in modules.items():
        for imported in _imported_modules(ast.parse(path.read_text())):
            # `from pkg import mod` names the submodule, `from mod import f` names mod
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and _room(imported) != _room(name):
                edges.setdefault(_room(name), {}).setdefault(_room(imported), set()).add(name)
    return edges


def test_the_package_imports_in_one_direction_with_no_circle_of_rooms() -> None:
    # A strict stack: a lower layer never imports a higher one, so each folder reads without
    # what is built on it (the NATS transport without cluster mode, the rules without actors).
    edges = _imports_between_rooms()
    assert "runtime.cluster" in edges.get("runtime.cli", {}), "the import graph was not read"
    circles: list[str] = []

    def visit(room: str, path: list[str]) -> None:
        for target in edges.get(room, {}):
            if target in path:
                loop = [*path[path.index(target):], target]
                circles.append(" -> ".join(loop) + "  (" + ", ".join(
                    sorted(f for a, b in itertools.pairwise(loop)
                           for f in edges[a][b])) + ")")
            elif target not in done:
                visit(target, [*path, target])
        done.add(room)

    done: set[str] = set()
    for room in sorted(edges):
        visit(room, [room])
    assert circles == []
