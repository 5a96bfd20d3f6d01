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
import time
from dataclasses import asdict, dataclass, field

from .. import backends
from ..model.case import Case, Task
from .protocol import claim_stdio, recv_msg, send_msg

# Processes at most: each holds a CUDA context (~0.5 GB of GPU memory) and about 1.5 GB of RAM.
# A little more than one per core: much of a process's life is start-up and waiting on ptxas.
MAX_JOBS = 24


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
        key = key_of(t.case) if key_of else None
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
                timeout: float = 600.0) -> PrecompileSummary:
    """Run one case per compile group in parallel processes; return what happened.

    ``visible``: ``CUDA_VISIBLE_DEVICES`` for the processes (the GPU the sweep measures on);
    ``jobs``: at most this many processes (default: 1.5 per CPU core, at most MAX_JOBS).
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
    for share in _assign(groups, n):
        spec = {"device": "cuda" if device.startswith("cuda") else device, **child_spec(), "tasks": share}
        p = subprocess.Popen([sys.executable, "-m", "flashbench.execute.precompile"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            send_msg(p.stdin, spec)
            p.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the process died at once: its tasks are reported as failed below
        procs.append((p, share))
    summary.processes = len(procs)
    deadline = t0 + timeout
    for p, share in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            summary.timed_out = True
            p.kill()
            p.wait()
        reported = _read_reports(p.stdout)
        p.stdout.close()
        for t in share:
            rep = reported.get((t.backend, t.case.label()))
            if rep and rep.get("ok"):
                summary.ok += 1
            else:
                why = rep.get("error", "") if rep else ("timed out" if summary.timed_out else
                                                        f"process ended with code {p.returncode}")
                summary.failed.append(f"{t.backend} {t.case.label()}: {why}")
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def _read_reports(stream) -> dict[tuple[str, str], dict]:
    """The reports a finished (or killed) compile process wrote, until its output ends."""
    out = {}
    while True:
        try:
            rep = recv_msg(stream)
        except Exception:  # torn by a kill mid-message
            break
        if rep is None:
            break
        out[(rep["backend"], rep["label"])] = rep
    return out


def _compile_one(backend_name: str, case: Case, device: str) -> None:
    import torch

    from ..measure.calls import make_inputs, outputs_of

    fn = backends.get(backend_name).prepare(case, device)
    outputs = outputs_of(fn, make_inputs(case, device, 0), case)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    del outputs


def main() -> int:
    proto_in, proto_out = claim_stdio()  # anything a library prints goes to stderr (discarded)
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
