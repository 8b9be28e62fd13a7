"""transforms/ is layered as docs/architecture.md draws it: every import points down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imagepush.transforms

TRANSFORMS = Path(imagepush.transforms.__file__).parent

#: Each layer and the layers it may import (itself included). The foundation modules
#: import nothing of the project; ``audit`` reads and writes records.
MAY_IMPORT = {
    "errors": {"errors"},
    "records": {"records"},
    "pool": {"pool"},
    "backoff": {"backoff"},
    "pacing": {"pacing"},
    "formats": {"formats", "errors"},
    "stores": {"stores", "formats", "errors", "pool", "backoff", "pacing"},
    "audit": {"audit", "records"},
    "engine": {"engine", "stores", "formats", "errors", "records", "pool", "audit", "backoff", "pacing"},
    "beam": {"beam", "engine", "stores", "formats", "errors", "records", "pool", "audit", "backoff", "pacing"},
}


def layer_of(path: Path) -> str:
    relative = path.relative_to(TRANSFORMS)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_layers(path: Path) -> set[str]:
    """The transforms layers a module imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    prefix = "imagepush.transforms."
    return {n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix)}


MODULES = sorted(p for p in TRANSFORMS.rglob("*.py") if p.name != "__init__.py" or p.parent != TRANSFORMS)


def test_every_module_belongs_to_a_layer():
    assert {layer_of(p) for p in MODULES} == set(MAY_IMPORT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TRANSFORMS)))
def test_a_module_imports_only_its_own_layer_and_those_below(path):
    assert imported_layers(path) <= MAY_IMPORT[layer_of(path)]


def test_nothing_in_transforms_imports_the_program():
    for path in MODULES:
        assert "imagepush.pipeline" not in path.read_text(), path
