"""The packages of flashbench import one way only (ARCHITECTURE.md): each imports only packages of an
earlier layer, and the bundled kernels import nothing of flashbench's.  Lazy imports inside functions
count too: a cycle hidden in a function is still a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# packages of one layer may not import each other
LAYERS = [("model",), ("attention",), ("backends",), ("measure",), ("results",),
          ("analysis", "report", "execute"), ("profile",), ("cli",)]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def flashbench_imports(path: Path, package: str) -> set[str]:
    """The flashbench packages that ``path`` (a module of ``package``) imports, its own left out."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.startswith("flashbench."):
                found.add(module.split(".")[1])
            elif node.level == 2:  # from ..pkg import x, or from .. import pkg
                found.update([module.split(".")[0]] if module else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("flashbench."))
    return {p for p in found if p in RANK and p != package}


def test_every_package_is_in_a_layer():
    packages = {p.name for p in (ROOT / "flashbench").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK), "a new package needs its place in LAYERS and in ARCHITECTURE.md"


@pytest.mark.parametrize("package", sorted(RANK))
def test_a_package_imports_only_earlier_layers(package):
    wrong = []
    for path in sorted((ROOT / "flashbench" / package).rglob("*.py")):
        for target in flashbench_imports(path, package):
            if RANK[target] >= RANK[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_kernels_import_nothing_of_flashbench():
    wrong = []
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] == "flashbench"]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """The rule must be able to fail: a function-level import of a later layer is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ..measure.timer import time_call\n    from .. import cli\n")
    assert flashbench_imports(module, "model") == {"measure", "cli"}
