"""Plugin modules: extra backends registered explicitly, in the driver and in every worker.

Worker processes (``flashbench run --executor local``, Ray tasks) start a fresh interpreter, so a
backend registered by calling :func:`flashbench.backends.register` in the driver alone would be
unknown there. Name the modules that register extra backends in the environment variable::

    FLASHBENCH_PLUGINS=my_pkg.attention_backends,other_module flashbench run my.yaml

Each module is imported (once per process) by :func:`load_plugins`: by :func:`flashbench.execute.plan.plan`
in the driver and at start-up in every worker, and its import calls ``register(...)``. There is no
discovery: only the named modules are imported, and they must be importable in the workers
(installed, or on ``PYTHONPATH``; local workers also inherit the driver's ``sys.path``).
"""
from __future__ import annotations

import importlib
import os
import sys

ENV_VAR = "FLASHBENCH_PLUGINS"

_loaded: list[str] = []


def plugin_names(spec: str | None = None) -> list[str]:
    """The module names in ``spec`` (default: the ``FLASHBENCH_PLUGINS`` environment variable)."""
    if spec is None:
        spec = os.environ.get(ENV_VAR, "")
    return [m.strip() for m in spec.replace(";", ",").split(",") if m.strip()]


def load_plugins(spec: str | list[str] | None = None) -> list[str]:
    """Import the plugin modules (each once); return the names loaded so far in this process.

    Raises :class:`flashbench.model.config.ConfigError` (exit code 2 in the CLI) naming the module that
    failed to import and why.
    """
    from ..model.yaml_input import ConfigError

    names = spec if isinstance(spec, list) else plugin_names(spec)
    problems = []
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure is a user error here
            problems.append(f"{ENV_VAR}: cannot import plugin module {name!r}: {type(e).__name__}: {e}")
            continue
        _loaded.append(name)
    if problems:
        raise ConfigError(problems)
    return list(_loaded)


def loaded_plugins() -> list[str]:
    return list(_loaded)


def active_plugins() -> list[str]:
    """The modules a child process must load: named in the environment or loaded here."""
    return list(dict.fromkeys(plugin_names() + loaded_plugins()))


def child_spec(plugins: list[str] | None = None) -> dict:
    """What a child process (worker, precompile) needs to see this process's backends:
    the plugin modules (default :func:`active_plugins`) and this process's ``sys.path``."""
    return {"plugins": active_plugins() if plugins is None else plugins, "sys_path": [p for p in sys.path if p]}


def adopt_child_spec(spec: dict) -> None:
    """In the child: extend ``sys.path`` and load the plugins named by :func:`child_spec`."""
    for p in spec.get("sys_path", []):
        if p not in sys.path:
            sys.path.append(p)
    load_plugins(spec.get("plugins") or [])
