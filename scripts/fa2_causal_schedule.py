"""Time the bundled FA2 kernel's causal launch orders against each other and sdpa_flash.

What it measures
----------------
``CAUSAL_SCHEDULE`` in ``kernels/flash_attn_v2.py`` picks the order in which causal programs are
launched: "grouped" (heaviest blocks of a group of heads first, the shipped order) or "per_head"
(v6: each head's blocks heaviest first).  For each benchmark shape (bf16, 16k tokens: batch =
16384 // N, hidden 2048: heads = 2048 // D; causal; D in {64, 128}; N in {1k, 2k, 4k, 8k, 16k})
and mode (fwd, fwd_bwd) it:
  * checks both orders against sdpa_flash on the same inputs (max abs difference of the output,
    and of dq, dk, dv for fwd_bwd; fail above 2.5e-2 or on any NaN);
  * times sdpa_flash, grouped and per_head in ``--rounds`` interleaved rounds (A B C A B C ...,
    so that a slow spell of the GPU hits every variant alike) with
    ``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")``, and keeps the median
    over rounds.
The autotuner chooses each kernel's configuration once per shape, on the first call (grouped);
the other order reuses it, so the two differ only in launch order.  FLOPs as in
scripts/bench_fa2.py (REFERENCE section 3).

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_causal_schedule.py --out $OUT/schedule [--rounds 3]

writes schedule.csv (D, N, mode, variant, status, max_abs_diff, ms, tflops, config) and
schedule.log, and prints a table (TFLOP/s, x sdpa_flash, grouped / per_head) last.
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
from bench_fa2 import _flops, _inputs, _sdpa  # noqa: E402  (one FLOP count and input recipe)

SHAPES = [(d, n) for d in (128, 64) for n in (1024, 2048, 4096, 8192, 16384)]
MODES = ("fwd", "fwd_bwd")
SCHEDULES = ("grouped", "per_head")
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
            fa2.CAUSAL_SCHEDULE = variant
            return fa2.flash_attn_v2(q, k, v, causal=True)
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
    lines, rows = [], []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    variants = ("sdpa_flash",) + SCHEDULES
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
                    rec[name]["config"] = ";".join(f"{k_}={c}" for k_, c in sorted(fa2.last_configs().items()))
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
                fa2.CAUSAL_SCHEDULE = "grouped"
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
    log("\nTFLOP/s, causal bf16 (x sdpa_flash); grouped / per_head:")
    for d, n in SHAPES:
        for mode in MODES:
            sel = {r["variant"]: r for r in rows if (r["D"], r["N"], r["mode"]) == (d, n, mode)}
            tf = {k_: float(r["tflops"]) if r["tflops"] else None for k_, r in sel.items()}
            base, g, p = tf.get("sdpa_flash"), tf.get("grouped"), tf.get("per_head")
            if not (base and g and p):
                log(f"D={d:3d} N={n:5d} {mode:7s} incomplete: " + ", ".join(f"{k_} {r['status']}" for k_, r in sel.items()))
                continue
            bad = [k_ for k_, r in sel.items() if r["status"] != "ok"]
            log(f"D={d:3d} N={n:5d} {mode:7s} flash {base:5.0f} | grouped {g:5.0f} ({g / base:.2f}x) | "
                f"per_head {p:5.0f} ({p / base:.2f}x) | grouped/per_head {g / p:.3f}" + (f" !{bad}" if bad else ""))
    with open(os.path.join(out_dir, "schedule.log"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="schedule")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only-d", type=int, default=None, help="one head dim")
    args = ap.parse_args()
    if args.only_d:
        SHAPES[:] = [s for s in SHAPES if s[0] == args.only_d]
    run(args.out, args.rounds)


if __name__ == "__main__":
    main()
