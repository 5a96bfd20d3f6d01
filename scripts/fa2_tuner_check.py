"""Does the FA2 forward's autotuner pick the configuration a careful benchmark picks?

What it measures
----------------
For a few benchmark shapes (bf16, 16k tokens: batch = 16384 // N, hidden 2048: heads =
2048 // D) it
  * runs the forward's tuner as a sweep does: the tuner's cache cleared, the GPU left idle for
    ``--idle`` seconds, then one ``flash_attn_v2`` call; the configuration it chose and the
    times it measured for every candidate are recorded.  This is repeated ``--repeats`` times
    for two tuners over the same candidates: "sequential" (v6: Triton's autotuner, candidates
    timed one after another, 10th percentile of 60 ms each) and "interleaved" (the shipped
    ``kernels/_tuner.py``: rounds A B C A B C ...);
  * times every candidate the tuner saw, pinned through ``FORCE_CONFIG``/``FORCE_PATH``, in
    ``--rounds`` interleaved rounds of ``triton.testing.do_bench(warmup=25, rep=100, median)``:
    the reference ranking.
A tuner pick is "right" when it is the reference's fastest candidate or within 1% of it.

Run on the device machine, from the checkout root, after ``source .whl/setup.sh``:

    python3 scripts/fa2_tuner_check.py --out $OUT/tuner_check

writes tuner_check.json (every pick, every timing) and prints a table last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fa2 import _flops, _inputs  # noqa: E402  (one FLOP count and input recipe)
from fa2_fwd_configs import _label as _config_label  # noqa: E402  (one name per configuration)

SHAPES = [(128, True, 4096), (128, True, 16384), (128, False, 4096), (64, True, 4096), (64, False, 4096)]
BENCH = dict(warmup=25, rep=100, return_mode="median")


def _fa2():
    import flashbench_kernels.flash_attn_v2 as fa2
    return fa2


def _v6_bench(fn, quantiles=None):
    """v6's tuning benchmark: the 10th percentile of 60 ms of calls."""
    import triton
    t = triton.testing.do_bench(fn, warmup=10, rep=60, quantiles=(0.1,))
    t = t[0] if isinstance(t, (list, tuple)) else t
    return [t, t, t] if quantiles is not None else t


class SequentialTuner:
    """v6's tuner (Triton's autotuner over the same candidates, pruner and key) behind the launcher's
    tuner interface, so that ``flash_attn_v2`` runs it unchanged."""

    def __init__(self):
        import triton
        fa2 = _fa2()
        self.tuned = triton.autotune(
            fa2._all_configs(fa2.FWD_SPACE), key=fa2._TUNE_KEY + ["EVEN_KV"],
            prune_configs_by={"early_config_prune": fa2._fwd_tuner.prune},
            do_bench=_v6_bench)(fa2._fwd_kernel)
        self.cache = self.tuned.cache
        self.timings = {}

    def run(self, grid_fn, args, meta):
        self.tuned[grid_fn](*args, **meta)
        self.timings = {c: [t[0]] for c, t in getattr(self.tuned, "configs_timings", {}).items()}
        return self.tuned.best_config


def _as_tuple(cfg):
    """A triton.Config of the forward as FORCE_CONFIG's tuple, and the tile path it runs on."""
    return _fa2()._sig(cfg), ("tma" if cfg.kwargs["USE_TMA"] else "ptr")


def _label(t, path):
    return _config_label(t) + f"_{path}"


def tune_once(q, k, v, causal, tuner, idle_s):
    """One tuning session as in a sweep: cache cleared, GPU idle, one call. (pick, {label: [ms]}, configs)."""
    fa2 = _fa2()
    tuner.cache.clear()
    torch.cuda.synchronize()
    time.sleep(idle_s)
    fa2.flash_attn_v2(q, k, v, causal=causal)
    torch.cuda.synchronize()
    cfgs = list(tuner.timings)
    timings = {_label(*_as_tuple(c)): [float(x) for x in ms] for c, ms in tuner.timings.items()}
    pick = next(iter(tuner.cache.values()))
    return _label(*_as_tuple(pick)), timings, cfgs


def reference(q, k, v, causal, configs, rounds):
    """Median over interleaved rounds of each pinned candidate's do_bench median (ms)."""
    import triton
    fa2 = _fa2()
    samples = {}
    for _ in range(rounds):
        for cfg in configs:
            t, path = _as_tuple(cfg)
            fa2.FORCE_CONFIG["fwd"], fa2.FORCE_PATH = t, path
            try:
                ms = triton.testing.do_bench(lambda: fa2.flash_attn_v2(q, k, v, causal=causal), **BENCH)
            finally:
                fa2.FORCE_CONFIG.pop("fwd", None)
                fa2.FORCE_PATH = None
            samples.setdefault(_label(t, path), []).append(ms)
    return {name: statistics.median(x) for name, x in samples.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tuner_check")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle", type=float, default=1.0, help="seconds the GPU idles before each tuning session")
    args = ap.parse_args()
    fa2 = _fa2()
    shipped = fa2._fwd_tuner
    tuners = {"sequential": SequentialTuner(), "interleaved": shipped}
    os.makedirs(args.out, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    report, table = [], []
    for d, causal, n in SHAPES:
        q, k, v, _ = _inputs(n, d)
        flops = _flops(n, d, causal, "fwd")
        row = dict(D=d, causal=causal, N=n, sessions=[])
        configs = None
        try:
            for name, tuner in tuners.items():
                fa2._fwd_tuner = tuner
                for _ in range(args.repeats):
                    pick, timings, configs = tune_once(q, k, v, causal, tuner, args.idle)
                    row["sessions"].append(dict(tuner=name, pick=pick, tuner_ms=timings))
                    print(f"D={d} causal={causal} N={n} {name}: pick {pick}  "
                          + " ".join(f"{k_}=" + "/".join(f"{x:.4f}" for x in ms) for k_, ms in timings.items()),
                          flush=True)
        finally:
            fa2._fwd_tuner = shipped
        ref = reference(q, k, v, causal, configs, args.rounds)
        row["reference_ms"] = ref
        best = min(ref, key=ref.get)
        row["reference_best"] = best
        right = {name: sum(ref[x["pick"]] <= 1.01 * ref[best] for x in row["sessions"] if x["tuner"] == name)
                 for name in tuners}
        row["right_picks"] = right
        report.append(row)
        table.append(f"D={d:3d} causal={int(causal)} N={n:5d} reference: "
                     + " ".join(f"{k_} {flops / ms / 1e9:.0f}" for k_, ms in sorted(ref.items(), key=lambda kv: kv[1]))
                     + " | right picks: " + ", ".join(f"{name} {r}/{args.repeats}" for name, r in right.items()))
        del q, k, v
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "tuner_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("\nTFLOP/s of each candidate (reference, fastest first); tuner picks within 1% of the fastest:")
    print("\n".join(table))


if __name__ == "__main__":
    main()
