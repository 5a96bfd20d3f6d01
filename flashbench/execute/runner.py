"""The sweep runner: tasks in, records out, written as they finish.

``plan`` expands a config into tasks and settles every skip that needs no device (a backend
that is unavailable or does not support a case). ``run_sweep`` hands the rest to an executor
and writes each record to the results directory the moment it arrives.

Executors (all implement :class:`Executor`):

- :class:`InProcessExecutor` (here): measures in the driver process; for debugging.
- :class:`flashbench.execute.local.LocalExecutor`: isolated worker processes, one per device (the
  default of ``flashbench run``): crashes and hangs become ``crashed``/``timeout`` rows.
- :class:`flashbench.execute.ray_executor.RayExecutor`: one Ray task per case on a Ray cluster.

:func:`make_executor` builds one by name; :mod:`flashbench.execute.resume` finishes interrupted runs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from .. import backends
from ..model.case import Task
from ..model.config import LoadedConfig
from ..measure.environment import collect_environment, gpu_state, throttle_warning
from ..measure.gpu_monitor import GpuMonitor, compute_processes
from ..model.grid import expand_loaded
from ..measure.measurer import MeasureSettings, Measurer
from ..results.files import ResultsWriter
from ..model.schema import Record


@dataclass
class Plan:
    loaded: LoadedConfig
    device: str
    runnable: list[Task]
    skipped: list[Record]  # settled without touching a device

    @property
    def total(self) -> int:
        return len(self.runnable) + len(self.skipped)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def measure_settings(loaded: LoadedConfig) -> MeasureSettings:
    c = loaded.config
    return MeasureSettings(
        timing=c.timing,
        correctness=c.correctness,
        tolerances={d: c.tolerance(d) for d in ("float16", "bfloat16", "float32")},
        seed=c.seed,
    )


def plan(loaded: LoadedConfig, backend_names: list[str] | None = None, device: str | None = None) -> Plan:
    """Expand the grid; raise ConfigError on a bad grid, an unknown backend or a plugin that fails
    to import (plugins named in ``FLASHBENCH_PLUGINS`` are imported first, see flashbench.backends.plugins)."""
    from ..backends.plugins import load_plugins

    load_plugins()
    device = resolve_device(device or loaded.config.device)
    tasks = expand_loaded(loaded, backend_names, set(backends.REGISTRY))
    runnable, skipped = [], []
    kind = "cuda" if device.startswith("cuda") else device
    for t in tasks:
        why = backends.get(t.backend).unsupported_reason(t.case, kind)
        if why:
            skipped.append(Record.for_task(t, status="skipped", reason=why))
        else:
            runnable.append(t)
    return Plan(loaded, device, runnable, skipped)


class Executor(Protocol):
    """Runs tasks and yields one record per task, in any order.

    Optional attributes the runner uses when present: ``device_indices`` (the GPUs it measures
    on, for the GPU state recorded before and after) and ``identities`` (label -> the device
    identity each worker reported, recorded as ``devices`` in results.json).
    """

    def run(self, tasks: list[Task]) -> Iterator[Record]: ...


class InProcessExecutor:
    """Measures in this process. Fast, but a crashing kernel takes the sweep with it."""

    def __init__(self, settings: MeasureSettings, device: str):
        self.measurer = Measurer(settings, device)

    def run(self, tasks: list[Task]) -> Iterator[Record]:
        for t in tasks:
            yield self.measurer.measure(t)


EXECUTORS = ("local", "inprocess", "ray")


def make_executor(name: str, p: Plan, **options) -> Executor:
    """An executor by name: ``local`` (isolated workers; options: devices, timeout, log_dir,
    on_activity), ``inprocess``, or ``ray`` (options: see RayExecutor)."""
    settings = measure_settings(p.loaded)
    if name == "inprocess":
        return InProcessExecutor(settings, p.device)
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(settings, p.device, **options)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(settings, p.device, **options)
    raise ValueError(f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")


def backend_selection(p: Plan) -> list[str]:
    """The backends this plan was expanded with, in config order."""
    return list(dict.fromkeys([t.backend for t in p.runnable] + [r.backend for r in p.skipped]))


def run_metadata(p: Plan, backend_names: list[str] | None = None, executor: str | None = None) -> dict:
    cfg = p.loaded
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"path": cfg.path, "name": cfg.config.name, "sha256": cfg.sha256, "text": cfg.text},
        "backends": list(backend_names or cfg.config.backends),
        "executor": executor,
        "reference_backend": cfg.config.reference_backend,
        "environment": collect_environment(p.device),
        "tasks_total": p.total,
        "finished": False,
        "warnings": [],
    }


def run_sweep(p: Plan, writer: ResultsWriter, executor: Executor,
              on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Run a plan, writing every record as it arrives. Returns the records of this call."""
    on_cuda = p.device.startswith("cuda")
    # GPUs whose state (clocks, throttling) is recorded: the executor's, none for a remote cluster
    indices = [i if i is not None else 0 for i in getattr(executor, "device_indices", [0])]
    on_cuda = on_cuda and bool(indices)
    before = gpu_state(indices[0]) if on_cuda else {}
    extra_before = {str(i): gpu_state(i) for i in indices[1:]} if on_cuda else {}
    writer.update_meta(gpu_state_before=before, **({"gpu_states_before": extra_before} if extra_before else {}))
    done: list[Record] = []

    def emit(records: Iterable[Record]):
        for r in records:
            writer.add(r)
            done.append(r)
            if on_record:
                on_record(r)

    emit(p.skipped)
    monitor = GpuMonitor(indices[0]) if on_cuda else None
    # processes on the GPU before the sweep, plus the one that measures (a worker or this process)
    expected = ((compute_processes(indices[0]) or 0) + 1) if on_cuda else 0
    records = executor.run(p.runnable)
    try:
        with monitor if monitor else contextlib.nullcontext():
            emit(records)
    finally:  # stop workers now (Ctrl-C, errors), not when the traceback is collected
        close = getattr(records, "close", None)
        if close:
            close()
        identities = getattr(executor, "identities", None)
        if identities:
            writer.update_meta(devices={k: dict(v) for k, v in identities.items()})
        if monitor:
            writer.update_meta(gpu_monitor=monitor.summary())
    after = gpu_state(indices[0]) if on_cuda else {}
    extra_after = {str(i): gpu_state(i) for i in indices[1:]} if on_cuda else {}
    warnings = [w for w in (throttle_warning(before), throttle_warning(after)) if w]
    warnings += monitor.warnings(expected) if monitor else []
    warnings += [w for st in (*extra_before.values(), *extra_after.values()) if (w := throttle_warning(st))]
    if p.device == "cpu":
        warnings.append("CPU run: these timings are CPU timings, not GPU timings")
    if extra_after:
        writer.update_meta(gpu_states_after=extra_after)
    writer.update_meta(gpu_state_after=after, finished=True, warnings=writer.meta.get("warnings", []) + warnings)
    return done
