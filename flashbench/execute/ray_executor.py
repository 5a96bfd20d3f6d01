"""Cluster scale-out on Ray: one Ray task per case (or per small group of cases).

``flashbench run CONFIG --executor ray [--address ray://head:10001]`` submits every case as a task
that asks for one GPU (``num_gpus=1``; on CPU-only clusters and in tests ``--ray-num-gpus 0``
and/or a custom resource, ``--ray-resources fake_gpu=1``), streams the finished rows back with
``ray.wait`` and writes them to the same results files as the local executors.

Scheduling is Ray's: placement, queueing, and ``max_retries`` for tasks lost with their node or
worker. flashbench does not re-implement any of it. Inside a task the case's backends are
measured, by default through the isolated local executor (one worker subprocess on the GPU Ray
assigned), so a crashing or hanging kernel becomes a ``crashed``/``timeout`` row with its reason
and the per-task timeout applies; with ``isolate=False`` the Ray worker measures directly (less
start-up, no timeout, a crash kills the Ray worker). A task that Ray gives up on (worker or node
died after its retries, cancelled, out of memory) becomes ``crashed`` rows for its tasks; finish
them later with ``flashbench run --resume DIR --retry-failed``.

Ray is an optional dependency (``pip install 'flashbench[ray]'``); it is imported only here.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Iterator

from ..measure.measurer import for_run
from ..model.case import Task
from ..model.schema import Record
from .local import DEFAULT_TIMEOUT_S
from .order import group_by_case

ActivityFn = Callable[[str, str], None]
_FORWARDED_ENV = ("FLASHBENCH_PLUGINS", "TRITON_INTERPRET", "PYTHONPATH")


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached (an environment problem, exit 3)."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"--executor ray needs Ray: pip install 'flashbench[ray]' ({e})") from None
    return ray


def _gpu_index() -> int | None:
    import ray

    try:
        ids = ray.get_gpu_ids()
    except Exception:
        return None
    if not ids:
        return None
    try:
        return int(ids[0])
    except (TypeError, ValueError):
        return None


_MEASURER = {}


def measure_group(tasks: list[Task], settings, device: str, plugins: list[str], timeout: float | None,
                  isolate: bool) -> dict:
    """The body of one Ray task: measure ``tasks`` (one case, all its backends) on this node."""
    from ..backends.plugins import load_plugins

    load_plugins(plugins)
    index = _gpu_index()
    if isolate:
        from .local import DeviceSpec, LocalExecutor

        label = f"gpu{index}" if index is not None else "ray"
        ex = LocalExecutor(settings, device, [DeviceSpec(index, None, label)], timeout=timeout, plugins=plugins)
        records = list(ex.run(tasks))
    else:
        from ..measure.measurer import Measurer

        key = (device, repr(settings))
        m = _MEASURER.get(key)
        if m is None:
            _MEASURER.clear()
            m = _MEASURER[key] = Measurer(settings, device)
        if index is not None:
            m.identity["device_index"] = index
        records = [m.measure(t) for t in tasks]
    return {"host": socket.gethostname(), "records": records}


class RayExecutor:
    """Runs case groups as Ray tasks and yields their records as they finish.

    ``address``: the cluster (None: ``RAY_ADDRESS`` or a local Ray started for this run).
    ``num_gpus``/``resources``: what each task asks for. ``group_size``: cases per task.
    ``max_retries``: Ray's retries for tasks lost with a worker or node. ``timeout``: per task
    (case × backend), applied when ``isolate``. ``init_kwargs``: extra ``ray.init`` arguments
    (tests: ``num_cpus``, ``resources``).
    """

    def __init__(self, settings, device: str, address: str | None = None, num_gpus: float = 1.0,
                 resources: dict[str, float] | None = None, group_size: int = 1, max_retries: int = 3,
                 timeout: float | None = DEFAULT_TIMEOUT_S, isolate: bool = True, init_kwargs: dict | None = None,
                 on_activity: ActivityFn | None = None, plugins: list[str] | None = None):
        if group_size < 1:
            raise ValueError("group_size must be >= 1")
        self.settings, self.device, self.address = settings, device, address
        self.num_gpus, self.resources, self.group_size = num_gpus, dict(resources or {}), group_size
        self.max_retries, self.isolate = max_retries, isolate
        self.timeout = timeout if timeout and timeout > 0 else None
        self.init_kwargs = dict(init_kwargs or {})
        self.on_activity = on_activity
        self.plugins = plugins
        self.device_indices: list = []  # the GPUs are on the cluster: no driver-side GPU state
        self.identities: dict[str, dict] = {}

    def _activity(self, text: str) -> None:
        if self.on_activity:
            try:
                self.on_activity("ray", text)
            except Exception:
                pass

    def _init(self, ray) -> bool:
        """Connect (or start a local Ray); True when this executor started it (and shuts it down)."""
        if ray.is_initialized():
            return False
        kw = {"log_to_driver": False, "logging_level": "WARNING", **self.init_kwargs}
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
            if env:
                kw.setdefault("runtime_env", {"env_vars": env})
            kw["address"] = address
        else:
            kw.setdefault("include_dashboard", False)
        try:
            ray.init(**kw)
        except Exception as e:
            raise RayUnavailable(f"cannot start or reach Ray ({address or 'local'}): {type(e).__name__}: {e}") from None
        return True

    def _task_resources(self) -> dict[str, float]:
        """What each task asks Ray for: a GPU for CUDA sweeps only (a CPU sweep asks for none)."""
        gpus = self.num_gpus if self.device.startswith("cuda") else 0
        return {**({"GPU": gpus} if gpus > 0 else {}), **self.resources}

    def _check_resources(self, ray) -> None:
        """Refuse before submitting when no node has what a task asks for: Ray would queue the tasks
        forever (e.g. a GPU on a CPU-only machine)."""
        have = ray.cluster_resources()
        short = {k: v for k, v in self._task_resources().items() if have.get(k, 0) < v}
        if not short:
            return
        lacks = ", ".join(f"{v:g} {k}" for k, v in short.items())
        owned = ", ".join(f"{v:g} {k}" for k, v in sorted(have.items()) if k in ("CPU", "GPU") or k in short) or "nothing"
        fix = ("add a GPU node to the cluster, or run on the CPU with --ray-num-gpus 0" if "GPU" in short else
               "add nodes with those resources, or change --ray-resources")
        raise RayUnavailable(f"the Ray cluster cannot run a task: each asks for {lacks}, the cluster has {owned}: {fix}")

    def _crashed(self, tasks: list[Task], why: str) -> list[Record]:
        return [Record.for_task(t, status="crashed", reason=why) for t in tasks]

    def run(self, tasks: list[Task], check: bool = True) -> Iterator[Record]:
        if not tasks:
            return
        ray = _import_ray()
        from ..backends.plugins import active_plugins

        plugins = self.plugins if self.plugins is not None else active_plugins()
        cases = group_by_case(tasks)
        groups = [sum(cases[i:i + self.group_size], []) for i in range(0, len(cases), self.group_size)]
        started = self._init(ray)
        pending: dict = {}
        try:  # from here on, a Ray this executor started is shut down whatever happens (errors, Ctrl-C)
            self._check_resources(ray)
            asks = self._task_resources()
            opts = {"num_gpus": asks.pop("GPU", 0), "max_retries": self.max_retries}
            if asks:
                opts["resources"] = asks
            remote = ray.remote(measure_group).options(**opts)
            settings_ref = ray.put(for_run(self.settings, check))
            for g in groups:
                ref = remote.remote(g, settings_ref, "cuda" if self.device.startswith("cuda") else self.device,
                                    plugins, self.timeout, self.isolate)
                pending[ref] = g
            done_groups, t0 = 0, time.perf_counter()
            self._activity(f"{len(groups)} task(s) submitted")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    g = pending.pop(ref)
                    done_groups += 1
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, NodeDiedError, ...
                        msg = " ".join(str(e).split())[:400]
                        yield from self._crashed(g, f"ray task failed ({type(e).__name__}): {msg}")
                        continue
                    host = result.get("host", "?")
                    for r in result["records"]:
                        if r.device_name:
                            label = f"{host}:{'gpu' + str(r.device_index) if r.device_index is not None else 'cpu'}"
                            self.identities.setdefault(label, {"host": host, "device_name": r.device_name,
                                                               "device_uuid": r.device_uuid,
                                                               "device_index": r.device_index})
                        yield r
                self._activity(f"{done_groups}/{len(groups)} task(s) done, {len(pending)} queued or running "
                               f"({time.perf_counter() - t0:.0f} s)")
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            if started:
                try:
                    ray.shutdown()
                except Exception:
                    pass
