"""A/B of the bundled FA2 kernels against another git revision of them, in one process on one GPU.

Sweeps compare runs, and runs land on whatever GPU unit the machine has: two units of one model differ
under load by more than a kernel change of a few percent (README, "Unit margin"). This tool times the
kernels of the working tree ("new") and those of ``--base`` ("base") side by side instead, in interleaved
rounds, so both see the same unit, clocks and temperature:

  1. ``git archive BASE kernels`` is unpacked into a temporary folder as the package ``fbk_base`` (the
     kernels import each other relatively, so the copy imports as its own package and compiles its own
     kernels);
  2. each case's inputs are made once, as the harness makes them (bf16 by default, seed 0); both revisions
     are called once and their results compared (the largest absolute difference of each output: dQ
     differs by its reduce order);
  3. ``--rounds`` interleaved rounds time each revision with flashbench's held timer (L2 flushed, GPU time
     only); the table gives the median of the round medians, base / new, and new's TFLOP/s.

Below a case's row, one line per kernel whose configuration differs between the revisions (each revision's launch
log of its first call: the tuners' picks); ``--out``'s rows hold both logs whole (``configs``).

``--host`` times the HOST instead: the time to enqueue one call, as ``tools/host_path.py`` measures it. After
step 2, each revision is called 20 times more (the allocator's cache, the launchers' caches), then in each of
``--rounds`` interleaved rounds (default 20 with ``--host``: the host moves 20-40% from one hold to the next)
each revision gets one hold: a ``torch.cuda._sleep`` kernel is queued that keeps the GPU busy past the batch
(0.05 s + 0.01 s a call), ``--host-reps`` calls (default 12) are enqueued back to back behind it and timed with
``time.perf_counter`` (µs a call), then the GPU is synchronised. The table gives base's and new's median, p20
and minimum over the holds and new/base of the medians; a hold that ended before its batch was enqueued (a
call that waits for the GPU) is counted and warned of.

``--what`` picks the call: ``bwd`` the Gluon Hopper backward alone (``sm90_bwd.backward``, given the tree's
forward output, its base-2 LSE and Delta), ``fwd`` ``flash_attn_v2`` (tuned by each revision's own tuner
on the first call), ``fwd_bwd`` ``flash_attn_v2`` with ``torch.autograd.grad``.  A packed case
(``T16384,uniform128-8192,H16,D128``: ``host_path.parse_case``) calls ``flash_attn_varlen`` instead, as the
harness's ``triton_fa2`` does (offsets trusted, no host sync), with ``fwd`` or ``fwd_bwd``.

    python tools/kernel_ab.py --base HEAD~1 --what bwd --out ab.json
    python tools/kernel_ab.py --base /tmp/old/kernels --what fwd   # a copy of kernels/ (no git needed)
    python tools/kernel_ab.py --base main~3 --what fwd_bwd --cases B4,H16,N4096,D128,causal B1,H16,N16384,D128
    python tools/kernel_ab.py --what fwd --cases B2,H16,N32768,D128,causal,w4096   # a causal sliding window
    python tools/kernel_ab.py --what fwd --fwd-config 192,128,4,2,gluon_sm90 --cases B4,H32,N4096,D64,causal
    python tools/kernel_ab.py --base HEAD~1 --what fwd_bwd --host [--rounds 20] [--host-reps 12] --out host.json
    python tools/kernel_ab.py --base HEAD --what fwd_bwd --new-option dq_chunk_waves=4   # one option, A/B
    python tools/kernel_ab.py --what fwd_bwd --cases T16384,lognormal128-8192,H16,Hkv4,D128,causal   # packed

Needs a CUDA GPU (the backward: Hopper). Exit status 0, or 2 on a bad case or revision, a packed case with
``--what bwd``, a revision without the called function, or without a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from flashbench.analysis.clocks import ClockChange
from flashbench.attention.inputs import make_inputs
from flashbench.execute.order import rotated
from flashbench.model.config import Timing
from flashbench.model.flops import attention_flops
from flashbench.measure.environment import cuda_uuid
from flashbench.measure.sm_clock import sampler_for
from flashbench.measure.timer import time_cuda

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_path import HOST_REPS, held_batch_us, hold_seconds, parse_case  # noqa: E402  (the tools' case syntax, hold)

ROOT = Path(__file__).resolve().parents[1]
BASE_PACKAGE = "fbk_base"
# bf16, 16k tokens at hidden 2048: the fa2 sweep's shapes at N 4k-16k, D128 and D64, causal or not
DEFAULT_CASES = [f"B{16384 // n},H{2048 // d},N{n},D{d}{c}" for d in (128, 64) for c in ("", ",causal")
                 for n in (4096, 8192, 16384)]
WHAT = ("bwd", "fwd", "fwd_bwd")  # the case's mode for the FLOP count
ROUNDS, HOST_ROUNDS = 4, 20  # --rounds' default: GPU-time rounds (even: each revision first as often), or holds
HOST_WARMUP = 20             # calls of each revision before the holds (as tools/host_path.py warms up)


def snapshot(rev: str, dest: str) -> None:
    """Unpack ``kernels/`` of git revision ``rev`` into ``dest/fbk_base`` (ValueError naming a revision git
    cannot read).  ``rev`` may instead be a folder holding a copy of ``kernels/`` (``git archive REV kernels |
    tar -x -C DIR`` makes one as DIR/kernels), for a checkout without the history, such as a copy sent to a
    GPU machine."""
    if os.path.isdir(rev):
        if not os.path.isfile(os.path.join(rev, "flash_attn_v2", "__init__.py")):
            raise ValueError(f"--base {rev}: a folder, but not a copy of kernels/ (no flash_attn_v2/__init__.py)")
        shutil.copytree(rev, os.path.join(dest, BASE_PACKAGE))
        return
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "kernels"],
                          capture_output=True)
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise ValueError(f"--base {rev}: git cannot archive kernels/ there: {said[-1]}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    os.rename(os.path.join(dest, "kernels"), os.path.join(dest, BASE_PACKAGE))


def import_base(dest: str):
    """The ``flash_attn_v2`` package of the snapshot in ``dest``."""
    sys.path.insert(0, dest)
    return importlib.import_module(f"{BASE_PACKAGE}.flash_attn_v2")


def packed_refusal(case, what: str) -> str | None:
    """Why ``what`` cannot time this case (a packed case and ``bwd``, which times the dense Gluon backward alone),
    or None."""
    if case.workload == "varlen" and what == "bwd":
        return f"{case.label()}: a packed case takes --what fwd or fwd_bwd (bwd times the dense Gluon backward alone)"
    return None


def calls(what: str, case, new, base, fwd_config: tuple | None = None, new_options: dict | None = None):
    """{"new": fn, "base": fn} for one case, each fn returning its outputs (for the comparison).  ``fwd_config``:
    the forward configuration both revisions run (each revision's own ``FA2Options(configs={"fwd": ...})``)
    instead of each tuner's pick; ``new_options``: more ``FA2Options`` fields of the new revision's calls (fwd
    and fwd_bwd).  ``fn(launch_log=log)`` fills ``log`` with that call's launch log (kernel: configuration; fwd and
    fwd_bwd; ``bwd`` calls the Gluon backward directly and logs nothing); the timed calls pass none."""
    # the harness's inputs for the case with a backward (so with dO), as plain tensors: each call below
    # makes its own leaves where it needs gradients
    inputs = make_inputs(dataclasses.replace(case, mode="fwd_bwd"), "cuda", seed=0)
    q, k, v = (t.detach() for t in inputs.args[:3])
    do = inputs.do
    causal, window = case.causal, case.window
    packed = case.workload == "varlen"
    refusal = packed_refusal(case, what)
    if refusal is not None:
        raise ValueError(refusal)
    if packed:  # fixed once, as the harness's prepare does: the timed calls only enqueue
        cu, longest = inputs.args[3], max(case.sequence_lengths()[0])

    def attend(m, q, k, v, launch_log, kw):  # revision m's call: flash_attn_v2, or flash_attn_varlen packed
        if packed:  # the harness's call (triton_fa2's): offsets known good, never synced
            return m.flash_attn_varlen(q, k, v, cu, cu, longest, longest, causal=causal, window=window,
                                       check_values=False, launch_log=launch_log, **kw)
        return m.flash_attn_v2(q, k, v, causal=causal, window=window, launch_log=launch_log, **kw)

    def pinned(m) -> dict:  # the options keyword of revision m: its pinned forward and, new, its own options
        fields = dict(new_options or {}) if m is new else {}
        if fwd_config is not None:
            fields["configs"] = {"fwd": fwd_config}
        return {"options": m.FA2Options(**fields)} if fields else {}
    if what == "fwd":
        return {name: (lambda launch_log=None, m=m, kw=pinned(m): (attend(m, q, k, v, launch_log, kw),))
                for name, m in (("new", new), ("base", base))}
    if what == "fwd_bwd":
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

        def fb(m):
            kw = pinned(m)
            return lambda launch_log=None: torch.autograd.grad(attend(m, *leaves, launch_log, kw), leaves, do)
        return {"new": fb(new), "base": fb(base)}
    why = new.sm90_bwd.unsupported_reason(q, k, v, causal, case.has_window)
    if why is not None:
        raise ValueError(f"the Gluon backward cannot run {case.label()} here: {why}")
    o, lse = new.flash_attn_v2(q, k, v, causal=causal, window=window, return_lse=True)
    lse2 = (lse / math.log(2)).contiguous()  # the kernels' base-2 LSE
    delta = (do.float() * o.float()).sum(-1).contiguous()

    def bwd(m):
        grads = [torch.empty_like(t) for t in (q, k, v)]

        def call(launch_log=None):
            m.sm90_bwd.backward(q, k, v, do, lse2, delta, *grads, causal, case.head_dim ** -0.5,
                                window_left=case.window_left)
            return grads
        return call
    return {"new": bwd(new), "base": bwd(base)}


def compare(what: str, case, new, base, fwd_config: tuple | None = None, new_options: dict | None = None):
    """The case's calls (``calls``), each called once (compiling and tuning), the case as timed (its label and
    FLOP count), the largest absolute difference of each output, new against base, and each revision's launch
    log of that call ({} for ``bwd``, which calls the Gluon backward directly)."""
    fns = calls(what, case, new, base, fwd_config, new_options)
    logs = {name: {} for name in fns}
    outs = {name: [t.clone() for t in fn(launch_log=logs[name])] for name, fn in fns.items()}  # compiles, tunes
    torch.cuda.synchronize()
    diff = [(a.float() - b.float()).abs().max().item() for a, b in zip(outs["new"], outs["base"])]
    return fns, dataclasses.replace(case, mode=what), diff, logs


def interleaved(fns: dict, rounds: int, time_one) -> dict:
    """{name: [time_one(fn) of each round]}: each round times every revision once, round r starting with the r-th
    (rotated as ``flashbench run --rounds`` rotates backends): the one timed second ran slower by up to 5% on an
    H100 at its power limit (results/evidence/h100/backend_order/), so an even number of rounds times each
    revision first as often as second."""
    figures = {name: [] for name in fns}
    for r in range(rounds):
        for name in rotated(list(fns), r):
            figures[name].append(time_one(fns[name]))
    return figures


def round_figures(timings: dict) -> tuple[dict, dict, dict, dict]:
    """Of ``interleaved``'s timings, by name: each round's median ms and SM clock, then the median of the round
    medians and of the round clocks (None where a round has no clock: no NVML, or no reading in its window)."""
    medians = {name: [statistics.median(t.samples_ms) for t in ts] for name, ts in timings.items()}
    clocks = {name: [t.sm_clock_mhz for t in ts] for name, ts in timings.items()}
    ms = {name: statistics.median(x) for name, x in medians.items()}
    mhz = {name: statistics.median(x) if x and None not in x else None for name, x in clocks.items()}
    return medians, clocks, ms, mhz


def clock_sampler():
    """The SM clock sampler of the GPU in use, which reads each timing's clock (None without NVML)."""
    return sampler_for(cuda_uuid(torch.cuda.current_device()))


def measure(what: str, case, new, base, rounds: int, timing: Timing, fwd_config: tuple | None = None,
            new_options: dict | None = None) -> dict:
    fns, timed, diff, configs = compare(what, case, new, base, fwd_config, new_options)
    clock = clock_sampler()
    timings = interleaved(fns, rounds, lambda fn: time_cuda(fn, timing, clock=clock))
    medians, clocks, ms, mhz = round_figures(timings)
    cycles = (ClockChange(mhz["base"], mhz["new"], ms["base"], ms["new"]).cycles_ratio
              if None not in mhz.values() else None)
    flops = attention_flops(timed)
    return {"case": timed.label(), "what": what, "new_ms": ms["new"],
            "base_ms": ms["base"], "new_over_base": ms["new"] / ms["base"], "new_tflops": flops / ms["new"] / 1e9,
            "new_mhz": mhz["new"], "base_mhz": mhz["base"], "new_over_base_cycles": cycles,
            "round_medians_ms": medians, "round_sm_clock_mhz": clocks, "max_abs_diff": diff, "configs": configs}


def config_changes(configs: dict) -> list[str]:
    """One indented line per kernel whose configuration differs between the revisions' launch logs (a tuner's
    other pick, or a kernel one revision does not launch: "-")."""
    new, base = configs["new"], configs["base"]
    return [f"  {kernel}: base {base.get(kernel, '-')} | new {new.get(kernel, '-')}"
            for kernel in sorted(set(new) | set(base)) if new.get(kernel) != base.get(kernel)]


def p20(xs: list[float]) -> float:
    """The 20th percentile (linear between the sorted figures, as ``statistics.quantiles``' inclusive method)."""
    return statistics.quantiles(xs, n=5, method="inclusive")[0] if len(xs) > 1 else xs[0]


def measure_host(what: str, case, new, base, rounds: int, reps: int, fwd_config: tuple | None = None,
                 new_options: dict | None = None) -> dict:
    """The row of ``--host``: each revision's host µs a call over ``rounds`` interleaved holds."""
    fns, timed, diff, configs = compare(what, case, new, base, fwd_config, new_options)
    for _ in range(HOST_WARMUP):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    held = interleaved(fns, rounds, lambda fn: held_batch_us(fn, reps))
    us = {name: [u for u, _ in got] for name, got in held.items()}
    stats = {"median": statistics.median, "p20": p20, "min": min}
    host = {**us, **{key: {name: f(x) for name, x in us.items()} for key, f in stats.items()},
            "short_holds": {name: sum(short for _, short in got) for name, got in held.items()}}
    return {"case": timed.label(), "what": what, "host_us": host,
            "new_over_base": host["median"]["new"] / host["median"]["base"], "max_abs_diff": diff, "configs": configs}


GPU_HEAD = (f"{'case':<44} {'new ms':>8} {'base ms':>8} {'new/base':>8} {'TFLOP/s':>8} {'new MHz':>8} {'base MHz':>8} "
            f"{'cycles':>8}  max |new - base|")
HOST_HEAD = (f"{'case':<44} {'base med':>8} {'p20':>7} {'min':>7} {'new med':>8} {'p20':>7} {'min':>7} "
             f"{'new/base':>8}  max |new - base|")


def gpu_line(row: dict) -> str:
    """A case's GPU-time row; the clocks and new/base in cycles a call (ms × MHz) are "-" where NVML cannot read."""
    clocks = " ".join(f"{x:8.0f}" if x is not None else f"{'-':>8}" for x in (row["new_mhz"], row["base_mhz"]))
    cycles = f"{row['new_over_base_cycles']:8.3f}" if row["new_over_base_cycles"] is not None else f"{'-':>8}"
    return (f"{row['case']:<44} {row['new_ms']:8.3f} {row['base_ms']:8.3f} {row['new_over_base']:8.3f} "
            f"{row['new_tflops']:8.0f} {clocks} {cycles}  {', '.join(f'{d:.2g}' for d in row['max_abs_diff'])}")


def host_line(row: dict) -> str:
    h = row["host_us"]
    figures = " ".join(f"{h['median'][name]:8.1f} {h['p20'][name]:7.1f} {h['min'][name]:7.1f}"
                       for name in ("base", "new"))
    return (f"{row['case']:<44} {figures} {row['new_over_base']:8.3f}  "
            f"{', '.join(f'{d:.2g}' for d in row['max_abs_diff'])}")


def parse_fwd_config(text: str) -> tuple:
    """``--fwd-config``'s "128,128,4,2,gluon_sm90" as (128, 128, 4, 2, "gluon_sm90"): four ints and an optional tag
    (ValueError otherwise; FA2Options checks the values)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (4, 5) or not all(p.isdigit() for p in parts[:4]):
        raise ValueError("expected BLOCK_M,BLOCK_N,warps,stages[,tag], e.g. 128,128,4,2,gluon_sm90")
    return tuple(int(p) for p in parts[:4]) + tuple(parts[4:])


def parse_new_options(items: list[str]) -> dict:
    """``--new-option``'s "dq_chunk_waves=4" items as {"dq_chunk_waves": 4}: a value is an int, true or false, or
    else a string (ValueError on an item without "="; FA2Options checks names and values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        value = value.strip()
        lowered = value.lower()
        out[key.strip()] = (int(value) if value.lstrip("-").isdigit() else
                            lowered == "true" if lowered in ("true", "false") else value)
    return out


def geomean_ratio(rows: list[dict]) -> float:
    """The geometric mean of the rows' new/base time ratios (one figure for a change across cases)."""
    return math.exp(sum(math.log(r["new_over_base"]) for r in rows) / len(rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD",
                    help="git revision of kernels/ to compare against (default HEAD), or a folder holding a copy of it")
    ap.add_argument("--what", default="bwd", choices=WHAT)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                    help="B,H[,Hkv],N,D[,fp16][,causal[,wL]] as tools/host_path.py reads them "
                         "(wL: the causal sliding window (L, 0)); a packed batch: T,LENGTHS,H[,Hkv],D,... "
                         "(T16384,uniform128-8192,H16,D128; fwd and fwd_bwd)")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds (default {ROUNDS}; with --host the holds a "
                                                f"revision, default {HOST_ROUNDS})")
    ap.add_argument("--budget-ms", type=float, default=150.0, help="timer budget a revision a round")
    ap.add_argument("--host", action="store_true",
                    help="time the host's enqueueing of a call with the GPU held (tools/host_path.py's method), "
                         "not the GPU")
    ap.add_argument("--host-reps", type=int, default=HOST_REPS,
                    help=f"--host: calls enqueued and timed behind each hold (default {HOST_REPS})")
    ap.add_argument("--fwd-config", help="fwd and fwd_bwd: the forward configuration both revisions run instead of "
                                         "each tuner's pick, BLOCK_M,BLOCK_N,warps,stages[,tag] as FA2Options' "
                                         "configs take it (e.g. 128,128,4,2,gluon_sm90: the Gluon forward)")
    ap.add_argument("--new-option", action="append", default=[], metavar="NAME=VALUE",
                    help="fwd and fwd_bwd: an FA2Options field of the new revision's calls only, e.g. "
                         "dq_chunk_waves=4 (repeatable; base runs its defaults)")
    ap.add_argument("--out", help="write every row as JSON here")
    a = ap.parse_args()
    if a.rounds is None:
        a.rounds = HOST_ROUNDS if a.host else ROUNDS
    cases = []
    for text in a.cases:
        try:
            cases.append(parse_case(text))
        except ValueError as e:  # host_path's messages name its own --case option
            print(f"error: --cases {text}: {str(e).removeprefix('--case').lstrip(': ')}", file=sys.stderr)
            return 2
    refusal = next((r for r in (packed_refusal(c, a.what) for c in cases) if r is not None), None)
    if refusal is not None:  # before any GPU work
        print(f"error: --cases {refusal}", file=sys.stderr)
        return 2
    if a.rounds < 1:
        print(f"error: --rounds must be at least 1, got {a.rounds}", file=sys.stderr)
        return 2
    if a.host_reps < 1:
        print(f"error: --host-reps must be at least 1, got {a.host_reps}", file=sys.stderr)
        return 2
    from flashbench_kernels import flash_attn_v2 as new

    fwd_config = None
    if a.fwd_config is not None:
        try:
            fwd_config = parse_fwd_config(a.fwd_config)
            new.FA2Options(configs={"fwd": fwd_config})  # checked as each revision will take it
        except ValueError as e:
            print(f"error: --fwd-config {a.fwd_config}: {e}", file=sys.stderr)
            return 2

    try:
        new_options = parse_new_options(a.new_option)
        if new_options and a.what == "bwd":
            raise ValueError("options reach flash_attn_v2's calls: --what fwd or fwd_bwd")
        if new_options:
            new.FA2Options(**new_options)  # checked as the new revision will take them
    except (ValueError, TypeError) as e:
        print(f"error: --new-option: {e}", file=sys.stderr)
        return 2

    timing = Timing(warmup_ms=20, budget_ms=a.budget_ms, min_samples=10, max_samples=400)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:  # before the GPU check: a revision git cannot read is named on any machine
            snapshot(a.base, tmp)
            base = import_base(tmp)
        except (ValueError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print("error: needs a CUDA GPU", file=sys.stderr)
            return 2
        if a.host:
            print(f"host µs a call with the GPU held: {a.rounds} interleaved holds a revision of {a.host_reps} "
                  f"calls each; median, p20 and min over the holds, new/base of the medians")
        print(HOST_HEAD if a.host else GPU_HEAD)
        for case in cases:
            try:
                row = (measure_host(a.what, case, new, base, a.rounds, a.host_reps, fwd_config, new_options)
                       if a.host else measure(a.what, case, new, base, a.rounds, timing, fwd_config, new_options))
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except (AttributeError, TypeError) as e:  # a base revision whose API differs
                print(f"error: --base {a.base} cannot run {a.what} as this tree calls it: {e}", file=sys.stderr)
                return 2
            rows.append(row)
            print(host_line(row) if a.host else gpu_line(row), flush=True)
            for line in config_changes(row["configs"]):
                print(line, flush=True)
            short = row["host_us"]["short_holds"] if a.host else None
            if short and any(short.values()):
                print(f"warning: {row['case']}: the GPU hold ended before the batch was enqueued in "
                      f"{short['base']} holds of base and {short['new']} of new (a call that waits for the GPU?): "
                      f"those holds' figures may include waiting for it", file=sys.stderr)
            torch.cuda.empty_cache()
    summary = {"base": a.base, "what": a.what, "fwd_config": list(fwd_config) if fwd_config else None,
               "new_options": new_options,
               "geomean_new_over_base": geomean_ratio(rows)}
    if a.host:
        summary["host"] = {"unit": "host µs a call, GPU held", "holds": a.rounds, "reps": a.host_reps,
                           "hold_s": round(hold_seconds(a.host_reps), 6), "warmup_calls": HOST_WARMUP}
    print(f"geometric mean of new/base{' (host µs a call)' if a.host else ''} over {len(rows)} cases: "
          f"{summary['geomean_new_over_base']:.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({**summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
