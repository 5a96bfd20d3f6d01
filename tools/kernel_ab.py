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

``--what`` picks the call: ``bwd`` the Gluon Hopper backward alone (``sm90_bwd.backward``, given the tree's
forward output, its base-2 LSE and Delta), ``fwd`` ``flash_attn_v2`` (tuned by each revision's own tuner
on the first call), ``fwd_bwd`` ``flash_attn_v2`` with ``torch.autograd.grad``.

    python tools/kernel_ab.py --base HEAD~1 --what bwd --out ab.json
    python tools/kernel_ab.py --base /tmp/old/kernels --what fwd   # a copy of kernels/ (no git needed)
    python tools/kernel_ab.py --base main~3 --what fwd_bwd --cases B4,H16,N4096,D128,causal B1,H16,N16384,D128
    python tools/kernel_ab.py --what fwd --cases B2,H16,N32768,D128,causal,w4096   # a causal sliding window

Needs a CUDA GPU (the backward: Hopper). Exit status 0, or 2 on a bad case or revision, a revision without
the called function, or without a GPU.
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

from flashbench.measure.calls import make_inputs
from flashbench.model.config import Timing
from flashbench.model.flops import attention_flops
from flashbench.measure.timer import time_cuda

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_path import parse_case  # noqa: E402  (the tools' one case syntax)

ROOT = Path(__file__).resolve().parents[1]
BASE_PACKAGE = "fbk_base"
# bf16, 16k tokens at hidden 2048: the fa2 sweep's shapes at N 4k-16k, D128 and D64, causal or not
DEFAULT_CASES = [f"B{16384 // n},H{2048 // d},N{n},D{d}{c}" for d in (128, 64) for c in ("", ",causal")
                 for n in (4096, 8192, 16384)]
WHAT = ("bwd", "fwd", "fwd_bwd")  # the case's mode for the FLOP count


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


def calls(what: str, case, new, base):
    """{"new": fn, "base": fn} for one case, each fn returning its outputs (for the comparison)."""
    # the harness's inputs for the case with a backward (so with dO), as plain tensors: each call below
    # makes its own leaves where it needs gradients
    inputs = make_inputs(dataclasses.replace(case, mode="fwd_bwd"), "cuda", seed=0)
    q, k, v = (t.detach() for t in inputs.args[:3])
    do = inputs.do
    causal, window = case.causal, case.window
    if what == "fwd":
        return {name: (lambda m=m: (m.flash_attn_v2(q, k, v, causal=causal, window=window),)) for name, m in
                (("new", new), ("base", base))}
    if what == "fwd_bwd":
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

        def fb(m):
            return lambda: torch.autograd.grad(m.flash_attn_v2(*leaves, causal=causal, window=window), leaves, do)
        return {"new": fb(new), "base": fb(base)}
    why = new.sm90_bwd.unsupported_reason(q, k, v, causal, case.has_window)
    if why is not None:
        raise ValueError(f"the Gluon backward cannot run {case.label()} here: {why}")
    o, lse = new.flash_attn_v2(q, k, v, causal=causal, window=window, return_lse=True)
    lse2 = (lse / math.log(2)).contiguous()  # the kernels' base-2 LSE
    delta = (do.float() * o.float()).sum(-1).contiguous()

    def bwd(m):
        grads = [torch.empty_like(t) for t in (q, k, v)]

        def call():
            m.sm90_bwd.backward(q, k, v, do, lse2, delta, *grads, causal, case.head_dim ** -0.5,
                                window_left=case.window_left)
            return grads
        return call
    return {"new": bwd(new), "base": bwd(base)}


def measure(what: str, case, new, base, rounds: int, timing: Timing) -> dict:
    fns = calls(what, case, new, base)
    outs = {name: [t.clone() for t in fn()] for name, fn in fns.items()}  # compiles and tunes too
    torch.cuda.synchronize()
    diff = [(a.float() - b.float()).abs().max().item() for a, b in zip(outs["new"], outs["base"])]
    medians = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            medians[name].append(statistics.median(time_cuda(fn, timing).samples_ms))
    ms = {name: statistics.median(x) for name, x in medians.items()}
    timed = dataclasses.replace(case, mode=what)  # the case as timed: its label and FLOP count
    flops = attention_flops(timed)
    return {"case": timed.label(), "what": what, "new_ms": ms["new"],
            "base_ms": ms["base"], "new_over_base": ms["new"] / ms["base"], "new_tflops": flops / ms["new"] / 1e9,
            "round_medians_ms": medians, "max_abs_diff": diff}


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
                         "(wL: the causal sliding window (L, 0))")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-ms", type=float, default=150.0, help="timer budget a revision a round")
    ap.add_argument("--out", help="write every row as JSON here")
    a = ap.parse_args()
    cases = []
    for text in a.cases:
        try:
            cases.append(parse_case(text))
        except ValueError as e:  # host_path's messages name its own --case option
            print(f"error: --cases {text}: {str(e).removeprefix('--case').lstrip(': ')}", file=sys.stderr)
            return 2
    if a.rounds < 1:
        print(f"error: --rounds must be at least 1, got {a.rounds}", file=sys.stderr)
        return 2
    from flashbench_kernels import flash_attn_v2 as new

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
        print(f"{'case':<44} {'new ms':>8} {'base ms':>8} {'new/base':>8} {'TFLOP/s':>8}  max |new - base|")
        for case in cases:
            try:
                row = measure(a.what, case, new, base, a.rounds, timing)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except (AttributeError, TypeError) as e:  # a base revision whose API differs
                print(f"error: --base {a.base} cannot run {a.what} as this tree calls it: {e}", file=sys.stderr)
                return 2
            rows.append(row)
            print(f"{row['case']:<44} {row['new_ms']:8.3f} {row['base_ms']:8.3f} {row['new_over_base']:8.3f} "
                  f"{row['new_tflops']:8.0f}  {', '.join(f'{d:.2g}' for d in row['max_abs_diff'])}", flush=True)
            torch.cuda.empty_cache()
    summary = {"base": a.base, "what": a.what, "geomean_new_over_base": geomean_ratio(rows)}
    print(f"geometric mean of new/base over {len(rows)} cases: {summary['geomean_new_over_base']:.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({**summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
