"""From a validated config to a plan: the tasks to measure, and the rows settled without a device.

:func:`split_runnable` is the one skip decision (a backend that is unavailable here or does not
support a case becomes a ``skipped`` row with its reason); ``flashbench run`` and ``flashbench
profile`` both use it. Nothing here touches a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import backends
from ..measure.measurer import MeasureSettings, error_reason
from ..model.case import DTYPES, MODES, Case, Task
from ..model.config import LoadedConfig
from ..model.grid import dropped_combinations, expand_loaded, unmatched_rules
from ..model.schema import MAX_REASON_CHARS, Record, printable_line


@dataclass
class Plan:
    loaded: LoadedConfig
    device: str
    runnable: list[Task]
    skipped: list[Record]  # settled without touching a device
    notes: list[str] = field(default_factory=list)  # axes' combinations left out, rules that match nothing

    @property
    def total(self) -> int:
        return len(self.runnable) + len(self.skipped)

    def without(self, done: set[tuple]) -> "Plan":
        """This plan minus the tasks whose key (:meth:`Task.key`) is in ``done``."""
        return replace(self, runnable=[t for t in self.runnable if t.key() not in done],
                       skipped=[r for r in self.skipped if r.task().key() not in done])

    def backend_names(self) -> list[str]:
        """The backends this plan was expanded with, in config order."""
        return list(dict.fromkeys([t.backend for t in self.runnable] + [r.backend for r in self.skipped]))


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def device_kind(device: str) -> str:
    """What backends declare support for: "cuda" for any CUDA device, else the device itself."""
    return "cuda" if device.startswith("cuda") else device


def measure_settings(loaded: LoadedConfig) -> MeasureSettings:
    c = loaded.config
    return MeasureSettings(timing=c.timing, correctness=c.correctness,
                           tolerances={d: c.tolerance(d) for d in DTYPES}, seed=c.seed)


class ReasonFailed(Exception):
    """A backend's ``unsupported_reason`` (or ``availability``) raised: the message says which and why."""


def skip_reason(backend, case: Case, device: str) -> str | None:
    """Why ``backend`` cannot run ``case`` on ``device`` (a bounded str), or None. A plugin's
    ``unsupported_reason`` may return any object (a non-empty one is a reason, written as text) or raise
    (:class:`ReasonFailed`)."""
    try:
        why = backend.unsupported_reason(case, device_kind(device))
    except Exception as e:  # noqa: BLE001 - a plugin's bug is that backend's rows, not the sweep's end
        raise ReasonFailed(f"{backend.name}.unsupported_reason() failed: {error_reason(e, 300)}") from None
    return printable_line(why, MAX_REASON_CHARS) if why else None  # one line, as results files hold it


def split_runnable(tasks: list[Task], device: str) -> tuple[list[Task], list[Record]]:
    """Runnable tasks, and records settled without a device: ``skipped`` with the backend's reason, or
    ``error`` where the backend's ``unsupported_reason`` raised (the other backends run as planned)."""
    runnable, skipped = [], []
    for t in tasks:
        try:
            why = skip_reason(backends.get(t.backend), t.case, device)
        except ReasonFailed as e:
            skipped.append(Record.for_task(t, status="error", reason=str(e), rounds=0))
            continue
        if why:
            skipped.append(Record.for_task(t, status="skipped", reason=why, rounds=0))
        else:
            runnable.append(t)
    return runnable, skipped


def runs_here(backend, device: str) -> str:
    """What ``backend`` can run on ``device``, in words, by the same skip decision as a sweep
    (:func:`split_runnable`) asked about each mode × dtype: "skips every case here: <why>", or the
    modes and dtypes it takes, with its head-dim, causal and GQA limits."""
    d = (backend.head_dims or (64,))[0]
    takes, first_reason = [], None
    for mode in MODES:
        for dtype in DTYPES:
            try:
                why = skip_reason(backend, Case(1, 2, 2, 128, 128, d, dtype, False, mode), device)
            except ReasonFailed as e:
                return f"skips every case here: {e}"
            if why is None:
                takes.append((mode, dtype))
            first_reason = first_reason or why
    if not takes:
        return f"skips every case here: {first_reason}"
    parts = [", ".join(dict.fromkeys(m for m, _ in takes)), ", ".join(dict.fromkeys(t for _, t in takes))]
    if backend.head_dims is not None:
        parts.append(f"head_dim {', '.join(map(str, backend.head_dims))}")
    parts += [x for x, ok in (("no causal", backend.supports_causal), ("no GQA", backend.supports_gqa)) if not ok]
    return " · ".join(parts)


def plan(loaded: LoadedConfig, backend_names: list[str] | None = None, device: str | None = None) -> Plan:
    """Expand the grid; raise ConfigError on a bad grid, an unknown backend or a plugin that fails
    to import (plugins named in ``FLASHBENCH_PLUGINS`` are imported first, see
    :mod:`flashbench.backends.plugins`)."""
    from ..backends.plugins import load_plugins

    load_plugins()
    device = resolve_device(device or loaded.config.device)
    tasks = expand_loaded(loaded, backend_names, set(backends.REGISTRY))
    runnable, skipped = split_runnable(tasks, device)
    notes = dropped_combinations(loaded.config) + unmatched_rules(loaded.config, loaded.path)
    return Plan(loaded, device, runnable, skipped, notes)
