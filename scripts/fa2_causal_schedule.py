"""Time variants of the bundled FA2 kernel against each other and the SDPA backends, in interleaved rounds.

What it measures
----------------
Two sets of variants (``--set``), each a few module settings of ``kernels/flash_attn_v2.py``:

  * ``schedule``: the causal launch orders.  ``CAUSAL_GROUP_PROGRAMS`` sets the order in which
    causal programs are launched: heads in groups of at least that many programs, the heaviest
    blocks of a group first, or with 0 each head's blocks heaviest first (v6).  Causal only,
    modes fwd and fwd_bwd, on the Triton forward (the Gluon one off).  The forward (mode fwd)
    runs the first configuration of its head-dim class's ``FWD_SPACE`` on the pointer path,
    pinned, so that tuner noise cannot pick different tiles for different rows; in fwd_bwd the
    autotuner chooses each kernel's configuration once per shape, on the first call, and the
    other orders reuse it.  Either way the orders differ only in launch order.
  * ``sm90``: the Gluon Hopper forward (kernels/flash_attn_v2_sm90.py) pinned with 2 and 3 K/V
    stages against the autotuned Triton forward (``SM90_FORWARD = False``: the tuner never offers
    the Gluon one) and against the shipped tuner's choice (``tuned``), causal and not, mode fwd,
    with sdpa_cudnn timed too.

For each benchmark shape (bf16, 16k tokens: batch = 16384 // N, hidden 2048: heads = 2048 // D;
D in {64, 128}; N in {1k, 2k, 4k, 8k, 16k}) it:
  * checks every variant against sdpa_flash on the same inputs (max abs difference of the output,
    and of dq, dk, dv for fwd_bwd; fail above 2.5e-2 or on any NaN);
  * times the SDPA backends and each variant in ``--rounds`` interleaved rounds (A B C A B C ...,
    so that a slow spell of the GPU hits every variant alike) with
    ``triton.testing.do_bench(warmup=25, rep=100, return_mode="median")``, and keeps the median
    over rounds.
FLOPs as in scripts/bench_fa2.py (REFERENCE section 3).

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_causal_schedule.py --out $OUT/schedule [--set sm90] [--rounds 5]

writes <set>.csv (D, N, causal, mode, variant, status, max_abs_diff, ms, tflops, rounds_ms,
config) and <set>.log, and prints a table (TFLOP/s, x sdpa_flash, each variant against the set's
first) last.
"""
from __future__ import annotations

import argparse
import copy
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
# variant: the flash_attn_v2 module settings it runs with; the first variant is the set's baseline
SETS = {
    "schedule": dict(causal=(True,), modes=("fwd", "fwd_bwd"), peers=("sdpa_flash",), pin_fwd=True,
                     variants={name: {"CAUSAL_GROUP_PROGRAMS": g, "SM90_FORWARD": False}
                               for name, g in (("per_head", 0), ("group128", 128), ("group256", 256))}),
    "sm90": dict(causal=(False, True), modes=("fwd",), peers=("sdpa_flash", "sdpa_cudnn"), pin_fwd=False,
                 variants={"triton": {"SM90_FORWARD": False},
                           "gluon_s2": {"FORCE_CONFIG": {"fwd": (128, 128, 4, 2, "gluon_sm90")}},
                           "gluon_s3": {"FORCE_CONFIG": {"fwd": (128, 128, 4, 3, "gluon_sm90")}},
                           "tuned": {}}),
}
BENCH = dict(warmup=25, rep=100, return_mode="median")
TOL = 2.5e-2


def _fa2():
    import flashbench_kernels.flash_attn_v2 as fa2
    return fa2


def _owner(module, name):
    """(object, attribute) for a setting: "X" is module.X, "a.X" is module.a.X."""
    *path, attr = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, attr


def _call(variant, q, k, v, do, causal, mode, spec):
    """A zero-argument call of one variant in one mode; a kernel variant applies its settings for the call."""
    fa2 = _fa2()
    if variant in spec["peers"]:
        attn = lambda: _sdpa(variant.split("_")[1])(q, k, v, causal)  # noqa: E731
    else:
        def attn():
            saved = {name: getattr(*_owner(fa2, name)) for name in spec["variants"][variant]}
            for name, value in spec["variants"][variant].items():
                setattr(*_owner(fa2, name), copy.deepcopy(value))  # the call may change it (FORCE_CONFIG)
            if mode == "fwd" and spec["pin_fwd"]:
                fa2.FORCE_CONFIG["fwd"] = fa2.FWD_SPACE[fa2._dclass(q.shape[-1])][0]
                fa2.FORCE_PATH = "ptr"
            try:
                return fa2.flash_attn_v2(q, k, v, causal=causal)
            finally:
                fa2.FORCE_CONFIG.pop("fwd", None)
                fa2.FORCE_PATH = None
                for name, value in saved.items():
                    setattr(*_owner(fa2, name), value)
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


def run(out_dir, rounds, set_name):
    import triton
    fa2 = _fa2()
    spec = SETS[set_name]
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    log, lines = run_log()
    kernels = tuple(spec["variants"])
    variants = spec["peers"] + kernels
    for d, n in SHAPES:
        for causal in spec["causal"]:
            for mode in spec["modes"]:
                t0 = time.time()
                q, k, v, do = _inputs(n, d, grad=mode != "fwd")
                flops = _flops(n, d, causal, mode)
                rec = {name: dict(D=d, N=n, causal=causal, mode=mode, variant=name, status="ok", max_abs_diff="",
                                  ms="", tflops="", config="") for name in variants}
                samples = {name: [] for name in variants}
                try:
                    ref = _call("sdpa_flash", q, k, v, do, causal, mode, spec)()
                    for name in kernels:
                        diff = _max_diff(_call(name, q, k, v, do, causal, mode, spec)(), ref)  # the first call tunes
                        rec[name]["max_abs_diff"] = f"{diff:.2e}"
                        used = ("fwd",) if mode == "fwd" else ("fwd", "bwd_dkdv", "bwd_dq")
                        rec[name]["config"] = ";".join(f"{k_}={fa2.last_configs()[k_]}" for k_ in used)
                        if not diff <= TOL:  # NaN fails too
                            rec[name]["status"] = "mismatch"
                    del ref
                    for _ in range(rounds):
                        for name in variants:
                            call = _call(name, q, k, v, do, causal, mode, spec)
                            samples[name].append(triton.testing.do_bench(call, **BENCH))
                except Exception as e:
                    for r in rec.values():
                        r["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    log(traceback.format_exc())
                for name in variants:
                    r = rec[name]
                    if samples[name]:
                        ms = statistics.median(samples[name])
                        r["ms"], r["tflops"] = f"{ms:.4f}", f"{flops / ms / 1e9:.1f}"
                        r["rounds_ms"] = " ".join(f"{x:.4f}" for x in samples[name])
                    rows.append(r)
                    log(f"D={d} N={n} causal={causal:d} {mode:7s} {name:10s} {r['status']:8s} {r['tflops']:>7s} "
                        f"TFLOP/s diff={r['max_abs_diff']} rounds={r.get('rounds_ms', '')}")
                log(f"[D={d} N={n} causal={causal:d} {mode}: {time.time() - t0:.0f}s]")
                del q, k, v, do
                torch.cuda.empty_cache()

    fields = ["D", "N", "causal", "mode", "variant", "status", "max_abs_diff", "ms", "tflops", "rounds_ms", "config"]
    with open(os.path.join(out_dir, f"{set_name}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    log(f"\nTFLOP/s, bf16 (x sdpa_flash) [x {kernels[0]}]:")
    for d, n in SHAPES:
        for causal in spec["causal"]:
            for mode in spec["modes"]:
                sel = {r["variant"]: r for r in rows if (r["D"], r["N"], r["causal"], r["mode"]) == (d, n, causal, mode)}
                tf = {k_: float(r["tflops"]) if r["tflops"] else None for k_, r in sel.items()}
                base, ref = tf.get("sdpa_flash"), tf.get(kernels[0])
                where = f"D={d:3d} N={n:5d} causal={causal:d} {mode:7s}"
                if not all(tf.values()):
                    states = ", ".join(f"{k_} {r['status']}" for k_, r in sel.items())
                    log(f"{where} incomplete: {states}")
                    continue
                cells = [f"{k_} {tf[k_]:5.0f} ({tf[k_] / base:.2f}x) [{tf[k_] / ref:.3f}]"
                         for k_ in variants if k_ != "sdpa_flash"]
                bad = [k_ for k_, r in sel.items() if r["status"] != "ok"]
                log(f"{where} flash {base:5.0f} | " + " | ".join(cells) + (f" !{bad}" if bad else ""))
    with open(os.path.join(out_dir, f"{set_name}.log"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="schedule")
    ap.add_argument("--set", default="schedule", choices=sorted(SETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only-d", type=int, default=None, help="one head dim")
    ap.add_argument("--only-n", type=int, nargs="*", default=None, help="these sequence lengths only")
    args = ap.parse_args()
    SHAPES[:] = [s for s in SHAPES if (args.only_d in (None, s[0])) and (not args.only_n or s[1] in args.only_n)]
    run(args.out, args.rounds, args.set)


if __name__ == "__main__":
    main()
