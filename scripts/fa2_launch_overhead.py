"""Host cost of one FA2 forward call (Python, descriptors, launch) against its GPU time, per kernel.

What it measures
----------------
A forward whose host path (input checks, tuner lookup, TMA descriptors, Triton's launcher) takes
longer than the kernel leaves the GPU idle between calls, and every per-call timer (flashbench's
and ``do_bench``: events around each call after an L2 flush) then counts part of the host path.
For each variant (the Triton forward, ``SM90_FORWARD = False``; the Gluon Hopper forward, pinned
through ``FORCE_CONFIG``) and shape (bf16, 16k tokens, hidden 2048, D=128; N 1k and 4k, causal and
not) it reports, after warm-up:
  * host_us: ``time.perf_counter`` around ``--calls`` back-to-back calls with no synchronisation,
    per call (the GPU queue absorbs the kernels, so this is the host path alone);
  * gpu_us: CUDA events around the same number of back-to-back calls, per call (kernels plus any
    idle gap the host leaves between them);
  * launch_bound: host_us > 0.9 * gpu_us.
With ``--jitter`` it instead times two default-sweep cells whose FA2 samples spread widely in
device call 5 (bf16 D128: B8 H16 N2048 non-causal, B32 H16 N512 causal) with flashbench's own timer
(``flashbench.timing.time_call``, default settings) five times per variant: Triton forward, Gluon
forward, and each with Python's garbage collector disabled during the timing (as ``timeit`` does),
printing median and p20-p80 of each repetition.
With ``--profile`` it also prints, per variant, the 25 functions with the most cumulative time
over the host loop of the N=1k causal shape (cProfile), to see where the host path goes.

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_launch_overhead.py [--calls 200] [--profile] > $OUT/launch_overhead.txt
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fa2 import _inputs  # noqa: E402  (one input recipe)

SHAPES = [(1024, False), (1024, True), (4096, False), (4096, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile the host loop at N=1k causal")
    ap.add_argument("--jitter", action="store_true", help="sample spread of two sweep cells, GC on and off")
    args = ap.parse_args()
    if args.jitter:
        return jitter()
    import flashbench_kernels.flash_attn_v2 as fa2
    gluon = next(t for t in fa2.FWD_SPACE["mid"] if fa2._is_gluon(t))
    variants = {"triton": dict(SM90_FORWARD=False, FORCE_CONFIG={}),
                "gluon": dict(SM90_FORWARD=True, FORCE_CONFIG={"fwd": gluon})}
    profiles = []
    print(f"{'N':>5} {'causal':>6} {'variant':>7} {'host_us':>8} {'gpu_us':>8} launch_bound  config")
    for n, causal in SHAPES:
        q, k, v, _ = _inputs(n, 128)
        for name, settings in variants.items():
            for attr, value in settings.items():
                setattr(fa2, attr, dict(value) if isinstance(value, dict) else value)
            call = lambda: fa2.flash_attn_v2(q, k, v, causal=causal)  # noqa: E731
            for _ in range(10):
                call()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                call()
            host_us = (time.perf_counter() - t0) / args.calls * 1e6
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.calls):
                call()
            end.record()
            torch.cuda.synchronize()
            gpu_us = start.elapsed_time(end) / args.calls * 1e3
            print(f"{n:>5} {causal!s:>6} {name:>7} {host_us:8.1f} {gpu_us:8.1f} {str(host_us > 0.9 * gpu_us):>12}  "
                  f"{fa2.last_configs()['fwd']}", flush=True)
            if args.profile and (n, causal) == (1024, True):
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.calls):
                    call()
                prof.disable()
                torch.cuda.synchronize()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
                profiles.append(f"--- {name}, N={n} causal, {args.calls} calls ---\n{out.getvalue()}")
        fa2.SM90_FORWARD, fa2.FORCE_CONFIG = True, {}
    print("\n".join(profiles))


def jitter() -> None:
    import gc
    import statistics

    import flashbench_kernels.flash_attn_v2 as fa2
    from flashbench.timing import TimingSettings, time_call
    gluon = next(t for t in fa2.FWD_SPACE["mid"] if fa2._is_gluon(t))
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, n, causal in ((8, 2048, False), (32, 512, True)):
        q, k, v = (torch.randn(b, 16, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        for name, forced in (("triton", fa2.FWD_SPACE["mid"][0]), ("gluon", gluon)):
            for gc_off in (False, True):
                fa2.FORCE_CONFIG = {"fwd": forced}
                call = lambda: fa2.flash_attn_v2(q, k, v, causal=causal)  # noqa: E731
                cells = []
                for _ in range(5):
                    if gc_off:
                        gc.disable()
                    try:
                        ms = sorted(time_call(call, TimingSettings(), "cuda").samples_ms)
                    finally:
                        gc.enable()
                    q20, q80 = ms[len(ms) // 5], ms[(4 * len(ms)) // 5]
                    cells.append(f"{statistics.median(ms):.3f} [{q20:.3f}-{q80:.3f}]")
                print(f"B{b} N{n} causal={causal:d} {name:6s} gc_off={gc_off:d}: " + "  ".join(cells), flush=True)
        fa2.FORCE_CONFIG = {}


if __name__ == "__main__":
    main()
