"""Kernel breakdown of one task under ``torch.profiler``.

The backend's call (:func:`flashbench.backends.calling.bind`, the same call the timer runs) is warmed up
outside the profiler (compilation, autotuning), then run ``calls`` times inside it, each call in
a ``record_function("flashbench_call")`` range. A Chrome/Perfetto trace is written per task
(``trace_<backend>_<case>.json``, open it in https://ui.perfetto.dev or chrome://tracing).

The table lists, per call:
- with CUDA: the **device kernels** (trace events of category ``kernel``, plus ``gpu_memcpy`` and
  ``gpu_memset``), grouped by name: launches per call, device time per call, share of the
  device time. This is what shows naive attention's separate matmul / softmax / matmul kernels
  against FlashAttention's one fused kernel;
- without CUDA: the **CPU operators** (``aten::bmm``, ``aten::_softmax``, ...) by *self* CPU time,
  since there are no kernels; the table says so.

The profiler's own native log lines (Kineto's "profiler_start"/"profiler_stop", CUPTI notes),
written straight to the process's stderr, go to ``profiler.log`` in the output directory unless
``verbose``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import backends
from ..backends.base import Unsupported
from ..attention.inputs import make_inputs
from ..backends.calling import bind
from ..model.case import Task
from ..measure.measurer import free_memory

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
ANNOTATION = "flashbench_call"


@dataclass
class KernelRow:
    name: str            # full name as the profiler reports it
    count_per_call: float
    ms_per_call: float
    share: float         # of the device (or CPU self) time per call, 0..1

    @property
    def short_name(self) -> str:
        return short_kernel_name(self.name)


@dataclass
class TraceResult:
    backend: str
    case_label: str
    kind: str                       # "device kernels" | "CPU operators (self time)"
    rows: list[KernelRow] = field(default_factory=list)
    trace_path: str | None = None
    calls: int = 0
    status: str = "ok"              # ok | skipped | error | oom
    reason: str = ""

    @property
    def total_ms_per_call(self) -> float:
        return sum(r.ms_per_call for r in self.rows)

    @property
    def launches_per_call(self) -> float:
        return sum(r.count_per_call for r in self.rows)


def case_slug(label: str) -> str:
    """A file-name-safe form of :meth:`Case.label` (``B1_H16_N4096_D128_bfloat16_full_fwd``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("/", "-")).strip("_")


def trace_file_name(backend: str, label: str) -> str:
    return f"trace_{backend}_{case_slug(label)}.json"


def short_kernel_name(name: str, width: int = 90) -> str:
    """``void ns::kernel<long, args>(params)`` -> ``ns::kernel<…>``, cut to ``width`` characters."""
    s = name.strip().replace("(anonymous namespace)", "{anon}")
    if s.startswith("void "):
        s = s[5:]
    out, depth = [], 0
    for ch in s:
        if ch == "(" and depth == 0:
            break  # the parameter list
        if ch == "<":
            if depth == 0:
                out.append("<…>")
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    s = "".join(out).strip().replace("{anon}", "(anon)") or name
    return s if len(s) <= width else s[: width - 1] + "…"


def device_kernel_rows(trace: dict, calls: int) -> list[KernelRow]:
    """Group the device events of a Chrome trace by name (durations are in µs in the trace)."""
    by_name: dict[str, list[float]] = {}
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("cat") in DEVICE_CATEGORIES:
            by_name.setdefault(ev.get("name", "?"), []).append(float(ev.get("dur", 0.0)))
    total = sum(sum(v) for v in by_name.values()) or 1.0
    rows = [KernelRow(n, len(d) / calls, sum(d) / calls / 1e3, sum(d) / total) for n, d in by_name.items()]
    return sorted(rows, key=lambda r: -r.ms_per_call)


def cpu_operator_rows(prof, calls: int) -> list[KernelRow]:
    """Operators by self CPU time (nested operators are not double counted)."""
    events = [e for e in prof.key_averages()
              if not e.key.startswith(("flashbench", "ProfilerStep", "## ")) and e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [KernelRow(e.key, e.count / calls, e.self_cpu_time_total / calls / 1e3, e.self_cpu_time_total / total)
            for e in events]
    return sorted(rows, key=lambda r: -r.ms_per_call)


PROFILER_LOG = "profiler.log"


@contextlib.contextmanager
def native_stderr_to(path: Path | None):
    """Send what native code writes to file descriptor 2 to ``path`` while inside (None: leave it);
    Python's own stderr is flushed first, so nothing of it lands in the file."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def trace_task(task: Task, device: str, out_dir: str | Path, calls: int = 3, warmup: int = 2, seed: int = 0,
               verbose: bool = False) -> TraceResult:
    """Profile ``calls`` calls of one task; write its trace; never raises for a failing backend.
    The profiler's native log lines go to ``out_dir/profiler.log`` unless ``verbose``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from ..measure.measurer import error_reason, is_oom

    case = task.case
    on_cuda = str(device).startswith("cuda")
    res = TraceResult(task.backend, case.label(), "device kernels" if on_cuda else "CPU operators (self time)", calls=calls)
    try:
        backend = backends.get(task.backend)
        why = backend.unsupported_reason(case, "cuda" if on_cuda else device)
        if why:
            raise Unsupported(why)
        fn = backend.prepare(case, device)
        inputs = make_inputs(case, device, seed)
        call = bind(fn, inputs, case)
        for _ in range(max(1, warmup)):  # compilation and autotuning stay out of the trace
            call()
        if on_cuda:
            torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        path = Path(out_dir) / trace_file_name(task.backend, case.label())
        path.parent.mkdir(parents=True, exist_ok=True)
        with native_stderr_to(None if verbose else Path(out_dir) / PROFILER_LOG):
            with profile(activities=activities) as prof:
                for _ in range(calls):
                    with record_function(ANNOTATION):
                        call()
                if on_cuda:
                    torch.cuda.synchronize()
            prof.export_chrome_trace(str(path))
        res.trace_path = str(path)
        if on_cuda:
            res.rows = device_kernel_rows(json.loads(path.read_text()), calls)
        else:
            res.rows = cpu_operator_rows(prof, calls)
    except Unsupported as e:
        res.status, res.reason = "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - a failing backend is a row, not a crash
        res.status = "oom" if is_oom(e) else "error"
        res.reason = error_reason(e, 300)
    finally:
        free_memory()
    return res
