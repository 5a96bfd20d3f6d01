"""lab/ holds experiments on flashbench's public API only (lab/README.md): every name a lab script imports from
flashbench is in its module's ``__all__``, so that a refactor of flashbench's internals cannot break an experiment
without changing what flashbench promises."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[2] / "lab"


def _flashbench_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of each import from flashbench or flashbench_kernels (name None: the module itself)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("flashbench", "flashbench_kernels"):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names
                      if alias.name.split(".")[0] in ("flashbench", "flashbench_kernels")]
    return found


@pytest.mark.parametrize("path", sorted(LAB.glob("*.py")), ids=lambda p: p.name)
def test_lab_scripts_import_only_public_names(path):
    for line, module, name in _flashbench_imports(path):
        where = f"{path.name}:{line}"
        assert module.split(".")[0] == "flashbench", f"{where}: imports the kernels package directly ({module})"
        public = getattr(importlib.import_module(module), "__all__", None)
        assert public is not None, f"{where}: {module} declares no public names (__all__)"
        assert name is None or name in public, f"{where}: {name} is not in {module}.__all__"


def test_the_check_sees_a_private_import(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("from flashbench.backends.triton_kernels import TritonBackend\n")
    assert _flashbench_imports(script) == [(1, "flashbench.backends.triton_kernels", "TritonBackend")]
    assert "TritonBackend" not in getattr(importlib.import_module("flashbench.backends.triton_kernels"), "__all__", [])
