"""The package's layout as a rule: a method's code is reached only through the registry.

Every module under ``globallocal/`` is parsed (not imported) and each of its
imports resolved to a module name. A method folder
(``globallocal/methods/<name>/``) may be imported only by itself and by the
registry (``globallocal/methods/__init__.py``); the generic stages (data,
models, proposals, runs, outputs) and everything else go through the
registry's names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "globallocal"
METHODS = PACKAGE / "methods"
METHOD_FOLDERS = sorted(path.name for path in METHODS.iterdir() if (path / "method.py").is_file())


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth in the file), relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            # ``from . import name`` may name a submodule: count it as one.
            found.update(f"{module}.{alias.name}" for alias in node.names)
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
    assert {"globallocal.runs.sweep", "globallocal.methods.hybridgl.method"} <= sweep
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
