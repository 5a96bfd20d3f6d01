"""Time fixed forward configurations of the bundled FA2 kernel, warp-specialised ones included.

What it measures
----------------
For each benchmark shape (bf16, 16k tokens: batch = 16384 // N, hidden 2048: heads = 2048 // D;
D in {64, 128}, causal and not, N in {4096, 16384}) every configuration in the head-dim class's
``FWD_SPACE`` of ``kernels/flash_attn_v2.py`` (warp-specialised entries for non-causal shapes only,
as the tuner offers them; plain entries on the pointer path, as the tuner runs them) and every
``EXTRA`` candidate is pinned through ``FORCE_CONFIG["fwd"]`` and run
through the public ``flash_attn_v2`` (so the launcher, the tile path and the one-loop
warp-specialised forward are exactly what users get), checked against ``sdpa_flash`` on the same
inputs (max abs difference of the output; fail above 2.5e-2 or on any NaN) and timed with
``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")`` next to the autotuned
kernel and ``sdpa_flash``.  FLOPs as in scripts/bench_fa2.py (REFERENCE section 3).

Every configuration is compiled first in parallel processes (``--no-precompile`` turns it off) so
that the timed process only loads binaries; a configuration that fails to compile or to run is a
row with its error, never an abort.

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_fwd_configs.py --out $OUT/fwd_configs [--only-d 128]

writes fwd_configs.csv (D, causal, N, variant, config, status, max_abs_diff, ms, tflops) and
fwd_configs.log, and prints a table (TFLOP/s, x sdpa_flash) last.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fa2 import _flops, _inputs, _sdpa, run_log  # noqa: E402  (one FLOP count, input recipe, log)

SHAPES = [(d, c, n) for d in (128, 64) for c in (False, True) for n in (4096, 16384)]
# Candidates outside FWD_SPACE, timed beside it: warp-specialised tiles not shipped (TUNING.md v6).
EXTRA = {64: [(128, 128, 4, 2, "ws")], 128: [(128, 64, 4, 2, "ws")]}
BENCH = dict(warmup=25, rep=100, return_mode="median")
TOL = 2.5e-2


def _fa2():
    import flashbench_kernels.flash_attn_v2 as fa2
    return fa2


def _space(d, causal):
    """The class's configurations (warp-specialised ones only where they may run) and the extras."""
    fa2 = _fa2()
    cand = list(fa2.FWD_SPACE[fa2._dclass(d)]) + EXTRA.get(d, [])
    return [t for t in cand if not (causal and fa2._is_ws(t))]


def _label(t):
    return "x".join(str(x) for x in t[:2]) + f"_w{t[2]}_s{t[3]}" + (f"_{t[4]}" if len(t) > 4 else "")


def _compile_job(job):
    """Compile one (D, causal, config) in its own process; small N shares the binary (N is not specialised)."""
    d, causal, t = job
    t0 = time.time()
    try:
        fa2 = _fa2()
        fa2.FORCE_CONFIG["fwd"] = tuple(t)
        fa2.FORCE_PATH = None if len(t) > 4 else "ptr"  # warp-specialised and Gluon entries: TMA only
        q, k, v, _ = _inputs(256, d)
        fa2.flash_attn_v2(q[:1], k[:1], v[:1], causal=causal)
        torch.cuda.synchronize()
        return f"compile D={d} causal={causal} {_label(t)}: ok {time.time() - t0:.1f}s"
    except Exception as e:
        return f"compile D={d} causal={causal} {_label(t)}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def precompile(log, workers=16):
    jobs = [(d, c, t) for d, c in sorted({(d, c) for d, c, _ in SHAPES}) for t in _space(d, c)]
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as ex:
        for r in ex.map(_compile_job, jobs):
            log(r)


def run(out_dir, do_precompile=True):
    import triton
    fa2 = _fa2()
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    log, lines = run_log()
    if do_precompile:
        t0 = time.time()
        precompile(log)
        log(f"[precompile took {time.time() - t0:.0f}s]")

    for d, causal, n in SHAPES:
        q, k, v, _ = _inputs(n, d)
        flops = _flops(n, d, causal, "fwd")
        ref = _sdpa("flash")(q, k, v, causal)
        variants = [("sdpa_flash", None), ("autotuned", None)] + [(_label(t), t) for t in _space(d, causal)]
        for name, t in variants:
            row = dict(D=d, causal=causal, N=n, variant=name, config="", status="ok", max_abs_diff="", ms="", tflops="")
            try:
                if name == "sdpa_flash":
                    fn = lambda: _sdpa("flash")(q, k, v, causal)  # noqa: E731
                else:
                    if t is None:
                        fa2.FORCE_CONFIG.pop("fwd", None)
                    else:  # pinned: a plain config on the pointer path, as the tuner runs it
                        fa2.FORCE_CONFIG["fwd"] = tuple(t)
                        fa2.FORCE_PATH = None if len(t) > 4 else "ptr"  # warp-specialised and Gluon entries: TMA only
                    o = fa2.flash_attn_v2(q, k, v, causal=causal)
                    row["config"] = fa2.last_configs()["fwd"]
                    diff = (o.float() - ref.float()).abs().max().item()
                    row["max_abs_diff"] = f"{diff:.2e}"
                    if not diff <= TOL:  # NaN fails too
                        row["status"] = "mismatch"
                    fn = lambda: fa2.flash_attn_v2(q, k, v, causal=causal)  # noqa: E731
                ms = triton.testing.do_bench(fn, **BENCH)
                row["ms"], row["tflops"] = f"{ms:.4f}", f"{flops / ms / 1e9:.1f}"
            except Exception as e:
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                log(traceback.format_exc())
            finally:
                fa2.FORCE_CONFIG.pop("fwd", None)
                fa2.FORCE_PATH = None
            rows.append(row)
            log(f"D={d} causal={causal} N={n} {name:22s} {row['status']:8s} {row['tflops']:>7s} TFLOP/s "
                f"diff={row['max_abs_diff']} {row['config']}")
        del q, k, v, ref
        torch.cuda.empty_cache()

    with open(os.path.join(out_dir, "fwd_configs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    log("\nTFLOP/s (x sdpa_flash), bf16 forward:")
    for d, causal, n in SHAPES:
        sel = [r for r in rows if (r["D"], r["causal"], r["N"]) == (d, causal, n)]
        base = next((float(r["tflops"]) for r in sel if r["variant"] == "sdpa_flash" and r["tflops"]), None)
        cells = []
        for r in sel:
            if r["tflops"] and r["variant"] != "sdpa_flash":
                x = f" {float(r['tflops']) / base:.2f}x" if base else ""
                cells.append(f"{r['variant']} {float(r['tflops']):.0f}{x}" + ("" if r["status"] == "ok" else " !" + r["status"]))
        log(f"D={d:3d} causal={int(causal)} N={n:5d} flash={base or 0:.0f} | " + " | ".join(cells))
    with open(os.path.join(out_dir, "fwd_configs.log"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="fwd_configs")
    ap.add_argument("--no-precompile", action="store_true")
    ap.add_argument("--only-d", type=int, default=None, help="one head dim")
    args = ap.parse_args()
    if args.only_d:
        SHAPES[:] = [s for s in SHAPES if s[0] == args.only_d]
    run(args.out, do_precompile=not args.no_precompile)


if __name__ == "__main__":
    main()
