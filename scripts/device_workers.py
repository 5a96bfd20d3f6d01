#!/usr/bin/env python3
"""Device check of the isolated worker executor (flashbench.workers) against the in-process path.

On one GPU, in one script (< ~60 s):

1. a small sweep (bf16, D=128, N 1024 and 4096 at 16k tokens, hidden 2048, fwd; sdpa_flash and
   sdpa_cudnn) through the in-process executor (A), the local worker executor (W), and the
   in-process executor again (B): per-task medians side by side, W against the mean of A and B,
   with |A - B| as the noise level;
2. the overhead of the worker path: worker start-up (spawn + imports + CUDA init), and per task
   the driver-observed time minus the time measured inside the worker (pipe + pickling), and
   minus the in-process driver-observed time (the mean of A and B);
3. a real CUDA fault: a backend whose Triton kernel stores far out of bounds (illegal memory
   access) between two good tasks. It must cost only its own task (an ``error`` row with the
   CUDA error, worker retired, or a ``crashed`` row), and the next task must be ``ok`` on a new worker.

Usage (GPU machine, project installed):   python scripts/device_workers.py
Writes $OUT/workers/device_workers.json (and results directories beside it); OUT defaults to /tmp/out.
``--cpu`` runs the same script logic on the CPU (naive and sdpa, fault = os.abort) to check it.

This file is also the plugin that registers the fault backend in the workers
(FLASHBENCH_PLUGINS=device_workers; the workers inherit this script's sys.path).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from flashbench.backends import register
from flashbench.backends.base import Backend


class IllegalAccessBackend(Backend):
    """fault_ima: launches a Triton kernel that stores 4 TiB past its buffer (CUDA: illegal memory
    access); on the CPU (--cpu check) it aborts the process instead."""

    name = "fault_ima"
    description = "device_workers.py fault injection"
    devices = ("cuda", "cpu")

    def prepare(self, case, device):
        if not str(device).startswith("cuda"):
            def abort(q, k, v):
                os.abort()
            return abort
        import torch
        import triton
        import triton.language as tl

        @triton.jit
        def bad_store(ptr):
            tl.store(ptr + (1 << 40), 1.0)

        def fn(q, k, v):
            buf = torch.empty(16, device=q.device, dtype=torch.float32)
            bad_store[(1,)](buf)
            torch.cuda.synchronize()
            return q
        return fn


register(IllegalAccessBackend())

CONFIG = """\
name: device_workers
description: isolated workers vs in-process, bf16 D=128 fwd
axes:
  tokens: 16384
  hidden: 2048
  seq_len: [1024, 4096]
  head_dim: 128
  dtype: bfloat16
  causal: false
  mode: fwd
backends: [sdpa_flash, sdpa_cudnn]
reference_backend: sdpa_flash
timing: {warmup_ms: 25, budget_ms: 150, min_samples: 20, max_samples: 500}
"""
CPU_CONFIG = """\
name: device_workers_cpu
axes: {batch: 1, heads: 4, seq_len: [128, 256], head_dim: 64, dtype: float32, causal: false, mode: fwd}
backends: [naive, sdpa]
reference_backend: naive
timing: {warmup_ms: 5, budget_ms: 30, min_samples: 10, max_samples: 200}
"""


def loaded_config(text: str):
    from flashbench.config import LoadedConfig, parse_config

    return LoadedConfig(path="scripts/device_workers.py", text=text, sha256=hashlib.sha256(text.encode()).hexdigest(),
                        config=parse_config(text, "device_workers"))


class _Timed:
    """Wraps an executor: the driver-observed seconds of each task (between consecutive records,
    from the first pull of the executor's iterator)."""

    def __init__(self, inner):
        self.inner, self.task_s = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, tasks):
        last = time.perf_counter()
        for r in self.inner.run(tasks):
            now = time.perf_counter()
            self.task_s[r.task().key()] = now - last
            last = now
            yield r


def timed_sweep(p, executor, directory: Path) -> tuple[dict, float]:
    """Run a plan (writing a results directory); return {task key: record}, total wall seconds."""
    from flashbench.results_io import ResultsWriter
    from flashbench.runner import run_metadata, run_sweep

    writer = ResultsWriter(directory, run_metadata(p, executor=type(executor.inner).__name__))
    t0 = time.perf_counter()
    records = run_sweep(p, writer, executor)
    return {r.task().key(): r for r in records}, time.perf_counter() - t0


def main() -> int:
    cpu = "--cpu" in sys.argv
    import torch

    if not cpu and not torch.cuda.is_available():
        print("no CUDA device: run this on the GPU machine (or pass --cpu to check the script)")
        return 3
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ["FLASHBENCH_PLUGINS"] = ",".join(filter(None, [os.environ.get("FLASHBENCH_PLUGINS"), "device_workers"]))
    from flashbench.cases import Task
    from flashbench.runner import InProcessExecutor, measure_settings, plan
    from flashbench.workers import LocalExecutor, parse_devices

    out = Path(os.environ.get("OUT", "/tmp/out")) / "workers"
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if cpu else "cuda"
    loaded = loaded_config(CPU_CONFIG if cpu else CONFIG)
    p = plan(loaded, None, device)
    settings = measure_settings(loaded)
    print(f"{len(p.runnable)} tasks on {device}"
          + ("" if cpu else f" ({torch.cuda.get_device_name(0)}, torch {torch.__version__}); "
                            f"--devices all -> {len(parse_devices('all', 'cuda'))} GPU(s)"))
    t_all = time.perf_counter()

    a_ex, b_ex = _Timed(InProcessExecutor(settings, device)), _Timed(InProcessExecutor(settings, device))
    wex = LocalExecutor(settings, device, timeout=300, log_dir=out / "worker_logs")
    a_rows, a_wall = timed_sweep(p, a_ex, out / "inprocess_a")
    w_rows, w_wall = timed_sweep(p, _Timed(wex), out / "worker")
    b_rows, b_wall = timed_sweep(p, b_ex, out / "inprocess_b")

    rows = []
    hdr = f"{'case':<34} {'backend':<11} {'A ms':>9} {'W ms':>9} {'B ms':>9} {'W vs A/B':>9} {'|A-B|':>7} " \
          f"{'W task s':>8} {'A task s':>8} {'pipe ms':>8}"
    print(hdr)
    for key, ra in a_rows.items():
        if key not in a_ex.task_s:
            continue  # skipped in planning
        rw, rb = w_rows[key], b_rows[key]
        # worker: from sending the task to its record (start-up excluded); in-process: between records
        ta, tb, tw = a_ex.task_s[key], b_ex.task_s[key], wex.stats["task_roundtrip_s"][key]
        row = {"backend": ra.backend, "case": ra.case().label(), "status": [ra.status, rw.status, rb.status],
               "median_ms": {"inprocess_a": ra.median_ms, "worker": rw.median_ms, "inprocess_b": rb.median_ms},
               "wall_s": {"inprocess_a": ra.wall_s, "worker": rw.wall_s, "inprocess_b": rb.wall_s},
               "driver_task_s": {"inprocess_a": ta, "worker": tw, "inprocess_b": tb},
               "device_name": rw.device_name, "device_uuid": rw.device_uuid, "device_index": rw.device_index}
        if None not in (ra.median_ms, rw.median_ms, rb.median_ms):
            ref = (ra.median_ms + rb.median_ms) / 2
            row["worker_vs_inprocess_pct"] = 100 * (rw.median_ms / ref - 1)
            row["inprocess_noise_pct"] = 100 * abs(ra.median_ms - rb.median_ms) / ref
            row["within_noise"] = abs(rw.median_ms - ref) <= max(abs(ra.median_ms - rb.median_ms), 0.02 * ref)
        row["pipe_overhead_ms"] = 1e3 * (tw - (rw.wall_s or 0))
        row["worker_minus_inprocess_task_s"] = tw - (ta + tb) / 2
        rows.append(row)
        f = lambda x: f"{x:9.4f}" if x is not None else f"{'–':>9}"  # noqa: E731
        pct = f"{row.get('worker_vs_inprocess_pct', float('nan')):+8.1f}%"
        noise = f"{row.get('inprocess_noise_pct', float('nan')):6.1f}%"
        print(f"{ra.case().label():<34} {ra.backend:<11} {f(ra.median_ms)} {f(rw.median_ms)} {f(rb.median_ms)} {pct} "
              f"{noise} {tw:8.3f} {ta:8.3f} {row['pipe_overhead_ms']:8.2f}")
    startup = wex.stats["startup_s"]
    overhead = {
        "worker_startup_s": startup,
        "pipe_overhead_ms_mean": statistics.mean(r["pipe_overhead_ms"] for r in rows) if rows else None,
        "pipe_overhead_ms_max": max(r["pipe_overhead_ms"] for r in rows) if rows else None,
        "worker_minus_inprocess_task_s_mean": statistics.mean(r["worker_minus_inprocess_task_s"] for r in rows) if rows else None,
        "sweep_wall_s": {"inprocess_a": a_wall, "worker": w_wall, "inprocess_b": b_wall},
    }
    print(f"worker start-up {', '.join(f'{s:.2f}' for s in startup)} s; per task: pipe+pickle "
          f"{overhead['pipe_overhead_ms_mean']:.2f} ms mean ({overhead['pipe_overhead_ms_max']:.2f} max), worker task "
          f"minus in-process task {overhead['worker_minus_inprocess_task_s_mean'] * 1e3:+.1f} ms mean; sweep wall "
          f"A {a_wall:.2f} s, W {w_wall:.2f} s (incl. start-up), B {b_wall:.2f} s")

    # --- a real fault between two good tasks -----------------------------------------------------
    first = p.runnable[0]
    fault_tasks = [first, Task(first.case, "fault_ima"), Task(first.case, first.backend)]
    fex = LocalExecutor(settings, device, timeout=120, log_dir=out / "fault_logs")
    t0 = time.perf_counter()
    frecs = list(fex.run(fault_tasks))
    fault = {"statuses": [r.status for r in frecs], "reasons": [r.reason[:600] for r in frecs],
             "workers_started": fex.stats["workers_started"], "wall_s": time.perf_counter() - t0}
    fault["contained"] = (frecs[0].status == "ok" and frecs[1].status in ("error", "crashed")
                          and frecs[2].status == "ok" and fex.stats["workers_started"] == 2)
    print(f"fault injection: statuses {fault['statuses']}, workers started {fault['workers_started']}, "
          f"contained: {fault['contained']}\n  fault row: {frecs[1].reason[:300]}")

    doc = {"device": device, "torch": torch.__version__,
           "gpu": None if cpu else torch.cuda.get_device_name(0), "rows": rows, "overhead": overhead,
           "fault": fault, "script_wall_s": time.perf_counter() - t_all}
    (out / "device_workers.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {out / 'device_workers.json'} ({doc['script_wall_s']:.1f} s)")
    return 0 if fault["contained"] and all(r["status"] == ["ok"] * 3 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
