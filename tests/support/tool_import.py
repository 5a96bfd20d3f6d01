"""Importing a script of ``tools/`` in a test, as its own command line would find its neighbours."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def imported_tool(monkeypatch, name: str, also: tuple[str, ...] = ()):
    """A fixture's body: yields ``tools/NAME.py`` imported with ``tools/`` on the path, then forgets it and the tools
    it imported (``also``), so that the next test imports them afresh."""
    monkeypatch.syspath_prepend(str(TOOLS))
    yield importlib.import_module(name)
    for module in (name, *also):
        sys.modules.pop(module, None)
