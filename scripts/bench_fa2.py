"""Check and time the bundled Triton FlashAttention-2 kernel against SDPA (flash, cuDNN) on one GPU.

Run on the device machine (see kernels/TUNING.md for results):

    export TRITON_CACHE_DIR=$PWD/.tcache
    python3 scripts/bench_fa2.py --precompile      # compile every config in parallel processes
    python3 -m pytest -q -m gpu -n 8 tests/test_flash_attn_v2.py
    python3 scripts/bench_fa2.py --out $OUT        # correctness at bench shapes, timings, table last

Shapes: bf16, 16k tokens (batch = 16384 // N), hidden 2048 (heads = 2048 // D).
FLOPs (REFERENCE section 3): fwd 4*B*H*Nq*Nkv*D, half when causal; fwd_bwd 3.5x fwd.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import torch

SHAPES = [(n, d, c) for d in (64, 128) for n in (1024, 4096, 16384) for c in (False, True)]

EXPLORE_N = 16384


def _fa2():
    import flashbench_kernels.flash_attn_v2 as fa2
    return fa2


def _inputs(n, d, dtype=torch.bfloat16, grad=False, seed=0):
    b, h = max(1, 16384 // n), 2048 // d
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g) for _ in range(4))
    if grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v, do


def _warm_job(job):
    """Compile one (mode, D, causal, path) slice of the autotuning space in a separate process.

    Fills TRITON_CACHE_DIR so that the timed process only loads binaries.  The tile path is forced,
    which compiles the same binaries the autotuner later picks from (the path is a constexpr).
    """
    mode, d, causal, path = job
    t0 = time.time()
    try:
        fa2 = _fa2()
        fa2.FORCE_PATH = path
        q, k, v, do = _inputs(256, d, grad=True)
        if mode == "bwd":  # one forward config only: the fwd slice is compiled by its own job
            cls = fa2._dclass(d)
            fa2.FWD_SPACE[cls] = fa2.FWD_SPACE[cls][:1]
        o = fa2.flash_attn_v2(q, k, v, causal=causal)
        if mode == "bwd":
            torch.autograd.grad(o, (q, k, v), do)
        torch.cuda.synchronize()
        return f"{job}: ok {time.time() - t0:.1f}s"
    except Exception as e:  # a config that does not compile is reported, not fatal
        return f"{job}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]} ({time.time() - t0:.1f}s)"


def precompile(workers):
    jobs = [(m, d, c, p) for m in ("bwd", "fwd") for d in (128, 64) for c in (False, True) for p in ("tma", "ptr")]
    with ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
        for r in ex.map(_warm_job, jobs):
            print("precompile", r, flush=True)


def _flops(n, d, causal, mode):
    b, h = max(1, 16384 // n), 2048 // d
    f = 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[mode]


def _sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def fn(q, k, v, causal):
        with sdpa_kernel(be):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return fn


def _ours(q, k, v, causal):
    return _fa2().flash_attn_v2(q, k, v, causal=causal)


def _time(fn, q, k, v, do, causal, mode):
    import triton
    if mode == "fwd":
        call = lambda: fn(q, k, v, causal)  # noqa: E731
    elif mode == "bwd":
        o = fn(q, k, v, causal)
        call = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)  # noqa: E731
    else:
        def call():
            o = fn(q, k, v, causal)
            torch.autograd.grad(o, (q, k, v), do)
    call()
    torch.cuda.synchronize()
    return triton.testing.do_bench(call, return_mode="median")


_SEEN_TUNINGS = set()


def _log_tuning(log, label):
    """Log every candidate's per-round times of each tuning session since the last call."""
    fa2 = _fa2()
    for kname, tuner in (("fwd", fa2._fwd_tuner), ("bwd_dkdv", fa2._dkdv_tuner), ("bwd_dq", fa2._dq_tuner)):
        ct = tuner.timings
        if ct and id(ct) not in _SEEN_TUNINGS:
            _SEEN_TUNINGS.add(id(ct))
            log(f"autotune {kname} {label}: " + "; ".join(
                f"{fa2._fmt(c)} " + "/".join(f"{t:.3f}" for t in ts) + "ms"
                for c, ts in sorted(ct.items(), key=lambda x: sorted(x[1])[len(x[1]) // 2])))


def _relerr(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def correctness(log):
    """Relative errors vs an fp32 reference at N=1024 (autotuned configs), and vs cuDNN at N=16k."""
    sys.path.insert(0, os.getcwd())
    from flashbench.reference import reference_attention
    fa2 = _fa2()
    rows = []
    for d in (64, 128):
        for causal in (False, True):
            q, k, v, do = _inputs(1024, d, grad=True, seed=1)
            qs, ks, vs = (t[:4].detach().requires_grad_() for t in (q, k, v))  # 4 of 16 batches for the reference
            ref = reference_attention(qs, ks, vs, causal, compute_dtype=torch.float32)
            rg = torch.autograd.grad(ref, (qs, ks, vs), do[:4].float())
            for name, fn in (("ours", _ours), ("sdpa_flash", _sdpa("flash"))):
                o = fn(q, k, v, causal)
                g = torch.autograd.grad(o, (q, k, v), do)
                _log_tuning(log, f"N=1024 D={d} causal={causal}")
                errs = [_relerr(o[:4], ref)] + [_relerr(a[:4], b) for a, b in zip(g, rg)]
                finite = bool(torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in g))
                rows.append((d, causal, name, errs, finite))
                log(f"correct N=1024 D={d} causal={causal} {name:10s} rel err out/dq/dk/dv = "
                    + " ".join(f"{e:.2e}" for e in errs) + ("" if finite else "  NON-FINITE")
                    + (f"  cfg={fa2.last_configs()}" if name == "ours" else ""))
    for d in (64, 128):
        for causal in (False, True):
            q, k, v, _ = _inputs(16384, d, seed=2)
            e = _relerr(_ours(q, k, v, causal), _sdpa("cudnn")(q, k, v, causal))
            _log_tuning(log, f"N=16384 D={d} causal={causal}")
            log(f"correct N=16384 D={d} causal={causal} ours vs sdpa_cudnn rel diff out = {e:.2e}")
    return rows


def explore(log):
    """Backward-only throughput with the tuned configurations (the fwd_bwd table hides it)."""
    fa2 = _fa2()
    for d in (64, 128):
        for causal in (False, True):
            q, k, v, do = _inputs(EXPLORE_N, d, grad=True, seed=3)
            ms = _time(_ours, q, k, v, do, causal, "bwd")
            log(f"bwd only D={d} causal={causal} N={EXPLORE_N}: {ms:.3f} ms = "
                f"{_flops(EXPLORE_N, d, causal, 'bwd') / ms / 1e9:.0f} TFLOP/s  cfg={fa2.last_configs()}")
            del q, k, v, do


def run_log():
    """(log, lines): log prints a line at once and keeps it in lines; the device line comes first."""
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
        f"triton {__import__('triton').__version__}")
    return log, lines


def bench(out_dir):
    fa2 = _fa2()
    log, lines = run_log()
    t0 = time.time()
    try:
        correctness(log)
    except Exception:
        log("correctness FAILED:\n" + traceback.format_exc())
    log(f"[correctness took {time.time() - t0:.0f}s]")

    results = []
    t0 = time.time()
    for n, d, causal in SHAPES:
        q, k, v, do = _inputs(n, d, grad=True)
        for mode in ("fwd", "fwd_bwd"):
            row = {"N": n, "D": d, "causal": causal, "mode": mode}
            for name, fn in (("ours", _ours), ("sdpa_flash", _sdpa("flash")), ("sdpa_cudnn", _sdpa("cudnn"))):
                try:
                    ms = _time(fn, q, k, v, do, causal, mode)
                    row[name] = _flops(n, d, causal, mode) / ms / 1e9
                    row[name + "_ms"] = ms
                except Exception as e:
                    row[name] = float("nan")
                    log(f"{name} {mode} N={n} D={d} causal={causal}: {type(e).__name__}: {str(e)[:200]}")
                if name == "ours":
                    row["configs"] = fa2.last_configs()
                    _log_tuning(log, f"N={n} D={d} causal={causal}")
            results.append(row)
            log(json.dumps(row))
        del q, k, v, do
    log(f"[timing took {time.time() - t0:.0f}s]")

    t0 = time.time()
    try:
        explore(log)
    except Exception:
        log("explore FAILED:\n" + traceback.format_exc())
    log(f"[explore took {time.time() - t0:.0f}s]")

    table = ["", f"TFLOP/s, bf16, {torch.cuda.get_device_name()}, median of do_bench (16k tokens, hidden 2048)",
             f"{'mode':8s} {'D':>4s} {'causal':>6s} {'N':>6s} {'ours':>6s} {'flash':>6s} {'cudnn':>6s} "
             f"{'x_flash':>7s} {'x_cudnn':>7s}"]
    for r in results:
        table.append(f"{r['mode']:8s} {r['D']:4d} {str(r['causal']):>6s} {r['N']:6d} {r['ours']:6.0f} "
                     f"{r['sdpa_flash']:6.0f} {r['sdpa_cudnn']:6.0f} {r['ours'] / r['sdpa_flash']:7.2f} "
                     f"{r['ours'] / r['sdpa_cudnn']:7.2f}")
    for s in table:
        log(s)
    if out_dir:
        with open(os.path.join(out_dir, "bench_fa2.log"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(out_dir, "bench_fa2.json"), "w") as f:
            json.dump(results, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precompile", action="store_true")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.precompile:
        precompile(a.workers)
    else:
        bench(a.out)


if __name__ == "__main__":
    main()
