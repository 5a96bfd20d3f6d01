"""Executors: a plan's runnable tasks in, one record per task out, in any order.

- ``inprocess`` (:class:`InProcessExecutor`, here): measures in the driver process; for debugging.
- ``local`` (:class:`~flashbench.execute.local.LocalExecutor`): isolated worker processes, one per
  device (the default of ``flashbench run``): crashes and hangs become ``crashed``/``timeout`` rows.
- ``ray`` (:class:`~flashbench.execute.ray_executor.RayExecutor`): one Ray task per case on a cluster.
"""
from __future__ import annotations

from typing import Iterator, Protocol

from ..measure.measurer import MeasureSettings, Measurer, for_run
from ..model.case import Task
from ..model.schema import Record

EXECUTORS = ("local", "inprocess", "ray")


class Executor(Protocol):
    """Runs tasks and yields one record per task, in any order.

    ``device_indices``: the local GPUs it measures on (their state is recorded before and after the
    sweep; empty for a remote cluster). ``identities``: label -> the device identity each worker
    reported, recorded as ``devices`` in results.json. ``run(tasks, check=False)`` times the tasks
    without checking their results (:func:`~flashbench.measure.measurer.for_run`: the later rounds
    of a sweep).
    """

    device_indices: list[int | None]
    identities: dict[str, dict]

    def run(self, tasks: list[Task], check: bool = True) -> Iterator[Record]: ...


class InProcessExecutor:
    """Measures in this process. Fast, but a crashing kernel takes the sweep with it."""

    def __init__(self, settings: MeasureSettings, device: str):
        self.settings = settings
        self.measurer = Measurer(settings, device)
        self.device_indices = [self.measurer.identity.get("device_index")]
        self.identities = {"inprocess": dict(self.measurer.identity)}

    def run(self, tasks: list[Task], check: bool = True) -> Iterator[Record]:
        self.measurer.settings = for_run(self.settings, check)
        for t in tasks:
            yield self.measurer.measure(t)


def make_executor(name: str, settings: MeasureSettings, device: str, **options) -> Executor:
    """An executor by name: ``local`` (options: devices, timeout, log_dir, on_activity), ``inprocess``,
    or ``ray`` (options: see :class:`~flashbench.execute.ray_executor.RayExecutor`)."""
    if name == "inprocess":
        return InProcessExecutor(settings, device)
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(settings, device, **options)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(settings, device, **options)
    raise ValueError(f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")
