"""The sweep runner: tasks in, records out, written as they finish.

``plan`` expands a config into tasks and settles every skip that needs no device (a backend
that is unavailable or does not support a case). ``run_sweep`` hands the rest to an executor
(in-process here; isolated workers and Ray executors implement the same ``Executor`` contract),
and writes each record to the results directory the moment it arrives.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from . import backends
from .cases import Task
from .config import LoadedConfig
from .env import collect_environment, gpu_state, throttle_warning
from .grid import expand_loaded
from .measure import MeasureSettings, Measurer
from .results_io import ResultsWriter
from .schema import Record
from .timing import TimingSettings


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
        timing=TimingSettings(**c.timing.model_dump()),
        correctness=c.correctness,
        tolerances={d: c.tolerance(d) for d in ("float16", "bfloat16", "float32")},
        seed=c.seed,
    )


def plan(loaded: LoadedConfig, backend_names: list[str] | None = None, device: str | None = None) -> Plan:
    """Expand the grid; raise ConfigError on a bad grid or an unknown backend."""
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
    """Runs tasks and yields one record per task, in any order."""

    def run(self, tasks: list[Task]) -> Iterator[Record]: ...


class InProcessExecutor:
    """Measures in this process. Fast, but a crashing kernel takes the sweep with it."""

    def __init__(self, settings: MeasureSettings, device: str):
        self.measurer = Measurer(settings, device)

    def run(self, tasks: list[Task]) -> Iterator[Record]:
        for t in tasks:
            yield self.measurer.measure(t)


def run_metadata(p: Plan) -> dict:
    cfg = p.loaded
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"path": cfg.path, "name": cfg.config.name, "sha256": cfg.sha256, "text": cfg.text},
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
    before = gpu_state() if on_cuda else {}
    writer.update_meta(gpu_state_before=before)
    done: list[Record] = []

    def emit(records: Iterable[Record]):
        for r in records:
            writer.add(r)
            done.append(r)
            if on_record:
                on_record(r)

    emit(p.skipped)
    emit(executor.run(p.runnable))
    after = gpu_state() if on_cuda else {}
    warnings = [w for w in (throttle_warning(before), throttle_warning(after)) if w]
    if p.device == "cpu":
        warnings.append("CPU run: these timings are CPU timings, not GPU timings")
    writer.update_meta(gpu_state_after=after, finished=True, warnings=writer.meta.get("warnings", []) + warnings)
    return done
