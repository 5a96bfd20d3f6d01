"""Compile a sweep's kernels in parallel before the sweep is measured.

Triton compiles a kernel variant in about a second, one variant at a time, inside the process
that first calls it; an autotuned kernel compiles every candidate configuration of a shape
class. In the default sweep that made ``triton_fa2`` and ``triton_fa1`` spend most of their
wall time compiling, serially, in the measuring worker.

A backend that compiles declares :meth:`~flashbench.backends.base.Backend.compile_key`: cases
with equal keys share compiled code. Before the sweep, one representative case per key runs
once in a pool of short-lived processes (``python -m flashbench.execute.precompile``), several at a
time. That fills Triton's on-disk cache (``~/.triton/cache`` or ``TRITON_CACHE_DIR``, shared by
every process of the user), so the measuring worker later loads the binaries instead of
compiling them. Nothing is timed while this runs, and nothing it measures is kept: autotuning
still happens in the worker, on an idle GPU, because a choice made while other processes share
the GPU would be wrong.

Failures here are not errors: a case that fails to compile or crashes its process is compiled
(and reported) again by the worker, as if there had been no precompilation.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from .. import backends
from ..model.case import Case, Task
from .protocol import claim_stdio, die_with_parent, kill_group, recv_msg, send_msg

# Processes at most: each holds a CUDA context (~0.5 GB of GPU memory) and about 1.5 GB of RAM.
# A little more than one per core: much of a process's life is start-up and waiting on ptxas.
MAX_JOBS = 24
STARTUP_ALLOWANCE_S = 60.0  # a compile process's start (imports, a CUDA context) beside the per-task limit


@dataclass
class PrecompileSummary:
    groups: int = 0            # distinct compile keys found in the tasks
    processes: int = 0
    seconds: float = 0.0       # wall time of the whole phase
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # "backend case: first line of the error"
    timed_out: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def compile_groups(tasks: list[Task]) -> list[Task]:
    """One task per (backend, compile key): the smallest case of each group (least memory)."""
    groups: dict[tuple, Task] = {}
    for t in tasks:
        key_of = getattr(backends.get(t.backend), "compile_key", None)
        try:
            key = key_of(t.case) if key_of else None
            hash(key)
        except Exception:  # noqa: BLE001 - a plugin's broken compile_key: its cases compile in the worker
            key = None
        if key is None:
            continue
        best = groups.get((t.backend, key))
        if best is None or _size(t.case) < _size(best.case):
            groups[(t.backend, key)] = t
    return list(groups.values())


def _size(case: Case) -> int:
    return case.batch * case.heads * (case.seq_len_q + case.seq_len_kv) * case.head_dim


def _cost(task: Task) -> int:
    # a backward compiles two to three times as many kernels as a forward
    return 3 if task.case.has_backward else 1


def _assign(tasks: list[Task], n: int) -> list[list[Task]]:
    """Longest-first onto the least loaded process."""
    bins: list[list[Task]] = [[] for _ in range(n)]
    load = [0] * n
    for t in sorted(tasks, key=_cost, reverse=True):
        i = load.index(min(load))
        bins[i].append(t)
        load[i] += _cost(t)
    return [b for b in bins if b]


def warm_caches(tasks: list[Task], device: str, *, visible: str | None = None, jobs: int | None = None,
                timeout: float = 600.0, task_timeout: float | None = None) -> PrecompileSummary:
    """Run one case per compile group in parallel processes; return what happened.

    ``visible``: ``CUDA_VISIBLE_DEVICES`` for the processes (the GPU the sweep measures on);
    ``jobs``: at most this many processes (default: 1.5 per CPU core, at most MAX_JOBS);
    ``timeout``: seconds for the whole phase; ``task_timeout``: the sweep's per-task limit, so a process
    gets at most that much per group it compiles (a hanging compile costs what it would in the worker).
    However the phase ends (Ctrl-C, SIGTERM, an error), its processes are killed: none outlives it.
    """
    from ..backends.plugins import child_spec

    t0 = time.perf_counter()
    groups = compile_groups(tasks)
    summary = PrecompileSummary(groups=len(groups))
    if not groups:
        return summary
    n = max(1, min(len(groups), jobs or min(3 * (os.cpu_count() or 1) // 2, MAX_JOBS)))
    env = dict(os.environ)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    procs = []
    try:
        for share in _assign(groups, n):
            spec = {"device": "cuda" if device.startswith("cuda") else device, **child_spec(), "tasks": share}
            p = subprocess.Popen([sys.executable, "-m", "flashbench.execute.precompile"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
            # its reports are read as they come: a process must never block on a full pipe
            reports: dict = {}
            reader = threading.Thread(target=_read_reports, args=(p.stdout, reports), daemon=True)
            reader.start()
            procs.append((p, share, reports, reader))
            try:
                send_msg(p.stdin, spec)
                p.stdin.close()
            except (BrokenPipeError, OSError):
                pass  # the process died at once: its tasks are reported as failed below
        summary.processes = len(procs)
        for p, share, reported, reader in procs:
            deadline = t0 + timeout
            if task_timeout:
                deadline = min(deadline, t0 + STARTUP_ALLOWANCE_S + task_timeout * len(share))
            try:
                p.wait(timeout=max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                summary.timed_out = True
                kill_group(p)
            reader.join(timeout=10)
            for t in share:
                rep = reported.get((t.backend, t.case.label()))
                if rep and rep.get("ok"):
                    summary.ok += 1
                else:
                    why = rep.get("error", "") if rep else ("timed out" if summary.timed_out else
                                                            f"process ended with code {p.returncode}")
                    summary.failed.append(f"{t.backend} {t.case.label()}: {why}")
    finally:  # Ctrl-C, SIGTERM or an error here: no compile process is left running (in its own session)
        for p, *_ in procs:
            kill_group(p)
            try:
                p.stdout.close()
            except OSError:
                pass
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def _read_reports(stream, out: dict | None = None) -> dict[tuple[str, str], dict]:
    """The reports a finished (or killed) compile process wrote, until its output ends (into ``out``)."""
    out = {} if out is None else out
    while True:
        try:
            rep = recv_msg(stream)
        except Exception:  # torn by a kill mid-message, or the stream closed under it
            break
        if rep is None:
            break
        out[(rep["backend"], rep["label"])] = rep
    return out


def _compile_one(backend_name: str, case: Case, device: str) -> None:
    import torch

    from ..attention.inputs import make_inputs

    from ..backends.calling import outputs_of

    fn = backends.get(backend_name).prepare(case, device)
    outputs = outputs_of(fn, make_inputs(case, device, 0), case)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    del outputs


def main() -> int:
    proto_in, proto_out = claim_stdio()  # anything a library prints goes to stderr (discarded)
    parent = os.getppid()
    die_with_parent()  # a driver killed outright (SIGKILL) takes its compile processes with it
    if os.getppid() != parent:
        return 1
    spec = recv_msg(proto_in)
    if spec is None:
        return 0
    from ..backends.plugins import adopt_child_spec

    adopt_child_spec(spec)
    for task in spec["tasks"]:
        t0 = time.perf_counter()
        rep = {"backend": task.backend, "label": task.case.label(), "ok": True}
        try:
            _compile_one(task.backend, task.case, spec["device"])
        except BaseException as e:  # noqa: BLE001 - reported, and compiled again by the worker
            from ..measure.measurer import error_reason

            rep.update(ok=False, error=error_reason(e, limit=200))
        rep["seconds"] = round(time.perf_counter() - t0, 3)
        send_msg(proto_out, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
