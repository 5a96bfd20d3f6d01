"""Time the bundled FA2 kernel's causal launch orders against each other and sdpa_flash.

What it measures
----------------
``CAUSAL_GROUP_PROGRAMS`` in ``kernels/flash_attn_v2.py`` sets the order in which causal programs
are launched: heads in groups of at least that many programs, the heaviest blocks of a group
first, or with 0 each head's blocks heaviest first (v6).  For each benchmark shape (bf16, 16k tokens: batch =
16384 // N, hidden 2048: heads = 2048 // D; causal; D in {64, 128}; N in {1k, 2k, 4k, 8k, 16k})
and mode (fwd, fwd_bwd) it:
  * checks every order against sdpa_flash on the same inputs (max abs difference of the output,
    and of dq, dk, dv for fwd_bwd; fail above 2.5e-2 or on any NaN);
  * times sdpa_flash and each order in ``--rounds`` interleaved rounds (A B C A B C ...,
    so that a slow spell of the GPU hits every variant alike) with
    ``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")``, and keeps the median
    over rounds.
The forward (mode fwd) runs the first configuration of its head-dim class's ``FWD_SPACE`` on the
pointer path, pinned, so that tuner noise cannot pick different tiles for different rows; in
fwd_bwd the autotuner chooses each kernel's configuration once per shape, on the first call, and
the other orders reuse it.  Either way the orders differ only in launch order.  FLOPs as in
scripts/bench_fa2.py (REFERENCE section 3).

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_causal_schedule.py --out $OUT/schedule [--rounds 5]

writes schedule.csv (D, N, mode, variant, status, max_abs_diff, ms, tflops, rounds_ms, config) and
schedule.log, and prints a table (TFLOP/s, x sdpa_flash, each order against per_head) last.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fa2 import _flops, _inputs, _sdpa, run_log  # noqa: E402  (one FLOP count, input recipe, log)

SHAPES = [(d, n) for d in (128, 64) for n in (1024, 2048, 4096, 8192, 16384)]
MODES = ("fwd", "fwd_bwd")
SCHEDULES = {"per_head": 0, "group128": 128, "group256": 256}  # variant: CAUSAL_GROUP_PROGRAMS
BENCH = dict(warmup=25, rep=100, return_mode="median")
TOL = 2.5e-2


def _fa2():
    import flashbench_kernels.flash_attn_v2 as fa2
    return fa2


def _call(variant, q, k, v, do, mode):
    """A zero-argument call of one variant in one mode; a kernel variant sets its launch order first."""
    fa2 = _fa2()
    if variant == "sdpa_flash":
        attn = lambda: _sdpa("flash")(q, k, v, True)  # noqa: E731
    else:
        def attn():
            fa2.CAUSAL_GROUP_PROGRAMS = SCHEDULES[variant]
            if mode == "fwd":
                fa2.FORCE_CONFIG["fwd"] = fa2.FWD_SPACE[fa2._dclass(q.shape[-1])][0]
                fa2.FORCE_PATH = "ptr"
            try:
                return fa2.flash_attn_v2(q, k, v, causal=True)
            finally:
                fa2.FORCE_CONFIG.pop("fwd", None)
                fa2.FORCE_PATH = None
    if mode == "fwd":
        return attn

    def fwd_bwd():
        o = attn()
        return (o,) + torch.autograd.grad(o, (q, k, v), do)
    return fwd_bwd


def _max_diff(got, ref):
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(got, ref))


def run(out_dir, rounds):
    import triton
    fa2 = _fa2()
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    log, lines = run_log()
    variants = ("sdpa_flash",) + tuple(SCHEDULES)
    default = fa2.CAUSAL_GROUP_PROGRAMS
    for d, n in SHAPES:
        for mode in MODES:
            t0 = time.time()
            q, k, v, do = _inputs(n, d, grad=mode != "fwd")
            flops = _flops(n, d, True, mode)
            rec = {name: dict(D=d, N=n, mode=mode, variant=name, status="ok", max_abs_diff="", ms="",
                              tflops="", config="") for name in variants}
            samples = {name: [] for name in variants}
            try:
                ref = _call("sdpa_flash", q, k, v, do, mode)()
                for name in SCHEDULES:
                    diff = _max_diff(_call(name, q, k, v, do, mode)(), ref)  # the first call tunes
                    rec[name]["max_abs_diff"] = f"{diff:.2e}"
                    used = ("fwd",) if mode == "fwd" else ("fwd", "bwd_dkdv", "bwd_dq")
                    rec[name]["config"] = ";".join(f"{k_}={fa2.last_configs()[k_]}" for k_ in used)
                    if not diff <= TOL:  # NaN fails too
                        rec[name]["status"] = "mismatch"
                del ref
                for _ in range(rounds):
                    for name in variants:
                        samples[name].append(triton.testing.do_bench(_call(name, q, k, v, do, mode), **BENCH))
            except Exception as e:
                for r in rec.values():
                    r["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                log(traceback.format_exc())
            finally:
                fa2.CAUSAL_GROUP_PROGRAMS = default
            for name in variants:
                r = rec[name]
                if samples[name]:
                    ms = statistics.median(samples[name])
                    r["ms"], r["tflops"] = f"{ms:.4f}", f"{flops / ms / 1e9:.1f}"
                    r["rounds_ms"] = " ".join(f"{x:.4f}" for x in samples[name])
                rows.append(r)
                log(f"D={d} N={n} {mode:7s} {name:10s} {r['status']:8s} {r['tflops']:>7s} TFLOP/s "
                    f"diff={r['max_abs_diff']} rounds={r.get('rounds_ms', '')}")
            log(f"[D={d} N={n} {mode}: {time.time() - t0:.0f}s]")
            del q, k, v, do
            torch.cuda.empty_cache()

    fields = ["D", "N", "mode", "variant", "status", "max_abs_diff", "ms", "tflops", "rounds_ms", "config"]
    with open(os.path.join(out_dir, "schedule.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    log("\nTFLOP/s, causal bf16 (x sdpa_flash) [x per_head]:")
    for d, n in SHAPES:
        for mode in MODES:
            sel = {r["variant"]: r for r in rows if (r["D"], r["N"], r["mode"]) == (d, n, mode)}
            tf = {k_: float(r["tflops"]) if r["tflops"] else None for k_, r in sel.items()}
            base, ref = tf.get("sdpa_flash"), tf.get("per_head")
            if not all(tf.values()):
                states = ", ".join(f"{k_} {r['status']}" for k_, r in sel.items())
                log(f"D={d:3d} N={n:5d} {mode:7s} incomplete: {states}")
                continue
            cells = [f"{k_} {tf[k_]:5.0f} ({tf[k_] / base:.2f}x) [{tf[k_] / ref:.3f}]" for k_ in SCHEDULES]
            bad = [k_ for k_, r in sel.items() if r["status"] != "ok"]
            log(f"D={d:3d} N={n:5d} {mode:7s} flash {base:5.0f} | " + " | ".join(cells) + (f" !{bad}" if bad else ""))
    with open(os.path.join(out_dir, "schedule.log"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="schedule")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only-d", type=int, default=None, help="one head dim")
    args = ap.parse_args()
    if args.only_d:
        SHAPES[:] = [s for s in SHAPES if s[0] == args.only_d]
    run(args.out, args.rounds)


if __name__ == "__main__":
    main()
