"""The package's layout as a rule: a method's code is reached only through the registry.

Every module under ``globallocal/`` is parsed (not imported) and each of its
imports resolved to a module name. A method folder
(``globallocal/methods/<name>/``) may be imported only by itself and by the
registry (``globallocal/methods/__init__.py``); the generic stages (data,
models, proposals, runs, outputs) and everything else go through the
registry's names. The stages import downwards only, with no exception, and no
circle runs through the package.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "globallocal"
METHODS = PACKAGE / "methods"
METHOD_FOLDERS = sorted(path.name for path in METHODS.iterdir() if (path / "method.py").is_file())


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def from_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from module import name`` in ``path`` (at any depth), relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.extend((module, alias.name) for alias in node.names)
    return found


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth in the file), relative imports resolved."""
    found = {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
             for alias in node.names}
    for module, name in from_imports(path):
        # ``from . import name`` may name a submodule: count it as one.
        found.update((module, f"{module}.{name}"))
    return found


def method_of(module: str) -> str | None:
    """The method folder a module belongs to, if any."""
    parts = module.split(".")
    if parts[:2] == ["globallocal", "methods"] and len(parts) > 2 and parts[2] in METHOD_FOLDERS:
        return parts[2]
    return None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_check_sees_every_method_and_resolves_relative_imports():
    assert {"global_local", "hybridgl", "tcl"} <= set(METHOD_FOLDERS)
    sweep = imported_modules(PACKAGE / "methods" / "hybridgl" / "sweep.py")
    assert {"globallocal.methods.sweeps", "globallocal.methods.hybridgl.method"} <= sweep
    assert method_of("globallocal.methods.tcl.blend") == "tcl" and method_of("globallocal.methods.base") is None


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_method_folders_are_imported_only_by_themselves_and_the_registry(path):
    here = module_name(path)
    if here == "globallocal.methods":
        return
    own = method_of(here)
    foreign = sorted(m for m in imported_modules(path) if method_of(m) not in (None, own))
    assert not foreign, f"{here} imports {foreign}: reach a method through globallocal.methods (the registry)"


def test_the_registry_is_the_only_place_that_names_every_method():
    """The generic stages import no method by module path (strings included, e.g. importlib)."""
    for stage in ("data", "models", "proposals", "runs", "outputs", "serve", "commands"):
        for path in (PACKAGE / stage).rglob("*.py"):
            text = path.read_text()
            named = [folder for folder in METHOD_FOLDERS if f"methods.{folder}" in text or f"methods/{folder}" in text]
            assert not named, f"{path.relative_to(PACKAGE)} names the method module(s) {named}"


def test_the_command_line_lives_in_the_package():
    """No top-level module is installed into site-packages beside the package (a module named ``cli`` would
    shadow, or be shadowed by, any other project's)."""
    setup = (PACKAGE.parent / "setup.cfg").read_text()
    assert "py_modules" not in setup
    assert "globallocal = globallocal.cli:main" in setup
    assert not [path.name for path in PACKAGE.parent.glob("*.py")]


STAGES = ("data", "models", "proposals", "methods", "runs", "outputs", "commands")
"""The stages in the order a photo passes them; each imports only from the stages before it (and itself)."""


def _package_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (type-checking and function-level imports too:
    each is a dependency a reader has to follow)."""
    modules = {module_name(path): path for path in MODULES}
    return {name: {other for other in imported_modules(path) if other in modules and other != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]] and _cycles({"a": {"b"}, "b": set()}) == []


def test_no_circle_among_the_package_modules():
    assert _cycles(_package_graph()) == []


PATHS = {module_name(path): path for path in MODULES}


def package_from_imports(module: str) -> list[tuple[str, str]] | None:
    """:func:`from_imports` of one of the package's modules; None for any other module."""
    return from_imports(PATHS[module]) if module in PATHS else None


def origin(module: str, name: str, imports: Callable[[str], list[tuple[str, str]] | None]) -> str:
    """The module ``name`` really comes from when taken from ``module``: followed through the modules that
    themselves take it with ``from ... import`` (``imports``: a module's (module, name) pairs), since a re-export
    is no way round the stages' order."""
    seen = set()
    while (module, name) not in seen:
        seen.add((module, name))
        source = next((other for other, taken in imports(module) or () if taken == name), None)
        if source is None:
            break
        module = source
    return module


def test_a_name_is_followed_to_the_module_it_comes_from():
    """What data/grefcoco.py once did: a stage above taken, for type checking, through a sibling that took it."""
    imports = {
        "globallocal.data.grefcoco": [("globallocal.data.refer", "Proposals"), ("globallocal.data.refer", "Ref")],
        "globallocal.data.refer": [("globallocal.proposals", "Proposals"), ("globallocal.data.refer", "Ref")],
    }
    assert origin("globallocal.data.refer", "Proposals", imports.get) == "globallocal.proposals"
    assert origin("globallocal.data.refer", "Ref", imports.get) == "globallocal.data.refer"  # a circle stops
    assert origin("globallocal.data.refer", "ImageRecord", imports.get) == "globallocal.data.refer"
    # The package's own modules: ``Proposals`` is the proposals stage's, however it is reached.
    assert origin("globallocal.proposals.files", "Proposals", package_from_imports) == "globallocal.proposals"


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_downwards_only(stage):
    """``proposals`` imports neither ``runs`` nor ``methods``, ``data`` nothing above it, and so on; a name taken
    from a module of the same stage counts where it comes from."""
    later = set(STAGES[STAGES.index(stage) + 1:])
    for path in sorted((PACKAGE / stage).rglob("*.py")):
        taken = imported_modules(path) | {origin(module, name, package_from_imports) for module, name in
                                          from_imports(path)}
        upward = sorted(m for m in taken if m.split(".")[1:2] and m.split(".")[1] in later)
        assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}: a stage imports only from those before it"
