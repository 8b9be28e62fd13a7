"""pipeline/ is layered: each module imports only the modules below it, never one above."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import imagepush.pipeline

PIPELINE = Path(imagepush.pipeline.__file__).parent

#: Bottom to top. ``samples`` builds test images and stands apart; ``__main__`` is the entry.
LAYERS = ["exits", "platforms", "sides", "options", "graph", "launch", "config", "progress", "commands", "cli", "__main__"]


def _pipeline_imports(module: str) -> set[str]:
    """The pipeline modules ``module`` imports, at the top or inside a function."""
    tree = ast.parse((PIPELINE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    prefix = "imagepush.pipeline."
    return {n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix)} & {p.stem for p in PIPELINE.glob("*.py")}


def test_every_pipeline_module_has_a_layer():
    assert {p.stem for p in PIPELINE.glob("*.py")} - {"__init__"} == set(LAYERS) | {"samples"}


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_the_layers_below_it(module):
    below = set(LAYERS[: LAYERS.index(module)])
    assert _pipeline_imports(module) <= below


def test_samples_import_nothing_of_the_program():
    assert _pipeline_imports("samples") == set()
    assert _loaded_by_importing("samples") == {"samples"}


def _loaded_by_importing(module: str) -> set[str]:
    """The pipeline modules loaded by importing ``module`` first in a fresh interpreter."""
    code = (f"import sys, imagepush.pipeline.{module}\n"
            "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('imagepush.pipeline.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", LAYERS[:-1])
def test_each_module_imports_alone_and_loads_only_what_is_below_it(module):
    assert module in _loaded_by_importing(module) <= set(LAYERS[: LAYERS.index(module) + 1])


def test_the_run_model_does_not_import_the_command_line():
    assert "cli" not in _pipeline_imports("config")
    assert "cli" not in _loaded_by_importing("config")
