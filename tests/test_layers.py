"""The package's layers: arrows point down only, no cycles, nothing below the front ends imports Qt or napari."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_vitcam"
ROOT_MODULE = "napari_vitcam"

#: Each layer folder and its height: a module may import from its own layer and from lower ones.
LAYERS: dict[str, float] = {
    "core": 0,
    "engine": 1,
    "models": 2,
    "volumes": 2,
    "pipeline": 3,
    "evaluation": 3.5,
    "batch": 3.75,
    "_napari": 4,
    "cli": 4,
    "demo": 5,
    "testing": 5,
}
BELOW_FRONT_ENDS = [name for name, height in LAYERS.items() if height < 4]
GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy", "superqt")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package uses absolute imports)"
            base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


GRAPH = {
    module: {name for name in imports_of(path) if name in MODULES and name != module}
    for module, path in MODULES.items()
}


def test_every_module_lives_in_a_layer_folder():
    top = sorted(m for m in MODULES if m != ROOT_MODULE and layer_of(m) not in LAYERS)
    assert top == [], f"modules outside the layer folders: {top}"
    files = sorted(p.name for p in PACKAGE.iterdir() if p.is_file())
    assert files == ["__init__.py"], files


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != ROOT_MODULE))
def test_imports_point_down_only(module):
    here = layer_of(module)
    assert here is not None
    for target in GRAPH[module]:
        assert target != ROOT_MODULE, f"{module} imports the public API module; import the layer module instead"
        there = layer_of(target)
        assert there is not None
        same = there == here
        assert same or LAYERS[there] < LAYERS[here], f"{module} ({here}) imports {target} ({there}): arrows point down"


@pytest.mark.parametrize("layer", BELOW_FRONT_ENDS)
def test_no_gui_import_below_the_front_ends_in_the_source(layer):
    for module in (m for m in MODULES if layer_of(m) == layer):
        for name in imports_of(MODULES[module]):
            assert name.split(".")[0] not in GUI_PACKAGES, f"{module} imports {name}"


@pytest.mark.parametrize("layer", BELOW_FRONT_ENDS)
def test_importing_a_layer_loads_neither_qt_nor_napari(layer):
    modules = sorted(m for m in MODULES if layer_of(m) == layer)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(GUI_PACKAGES)!r})\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {layer} loaded {result.stdout.strip()}"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a module that imports from a higher layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from napari_vitcam.pipeline.explain import explain_volume\n")
    targets = {name for name in imports_of(bad) if name in MODULES}
    assert targets == {"napari_vitcam.pipeline.explain"}
    assert LAYERS[layer_of("napari_vitcam.pipeline.explain")] > LAYERS["engine"]
