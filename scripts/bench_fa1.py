#!/usr/bin/env python3
"""Check and time the bundled Triton FlashAttention-1 kernel on a CUDA GPU (one call of the device machine).

    python3 scripts/bench_fa1.py [--no-tests] [--sweep] [--out DIR]

1. makes ``flashbench_kernels`` importable (``pip install -e .``, or a symlink on sys.path if the
   project does not install yet);
2. runs the GPU tests (``pytest -m gpu tests/test_flash_attn_v1.py``) in parallel shards while other
   processes compile every kernel variant the timing will use (Triton's on-disk cache is shared);
3. times FA1 (and FA2 from ``flashbench_kernels.flash_attn_v2`` if it imports) with
   ``triton.testing.do_bench(..., return_mode="median")``: bf16, D 64 / 128, N 1k / 4k / 16k at 16k
   tokens (batch = 16384 // N, heads = 2048 // D), fwd and fwd+bwd, causal and not; TFLOP/s counted
   as in REFERENCE.md section 3 (fwd 4·B·H·N²·D, causal half, fwd+bwd 3.5x);
4. with --sweep, times a few alternative FA1 block configs at N = 4096 (non-causal);
5. writes everything under --out (default $OUT or ./bench_out) and prints a short table last.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_importable() -> dict:
    """Return the environment (PYTHONPATH) under which flashbench_kernels and flashbench.reference import."""
    env = dict(os.environ)
    try:
        importlib.import_module("flashbench_kernels")
        return env
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", ROOT],
                       capture_output=True, text=True)
    importlib.invalidate_caches()
    try:
        importlib.import_module("flashbench_kernels")
        return env
    except ImportError:
        print("pip install -e . failed (project mid-construction?); using a symlink on sys.path", flush=True)
        print(r.stderr[-800:], flush=True)
    link_dir = tempfile.mkdtemp(prefix="fbk_")
    os.symlink(os.path.join(ROOT, "kernels"), os.path.join(link_dir, "flashbench_kernels"))
    sys.path[:0] = [link_dir, ROOT]
    env["PYTHONPATH"] = os.pathsep.join([link_dir, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    importlib.invalidate_caches()
    importlib.import_module("flashbench_kernels")
    return env


def flops(B, H, N, D, causal, mode):
    f = 4.0 * B * H * N * N * D * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwd_bwd" else 1.0)


BENCH_DS = (64, 128)
BENCH_NS = (1024, 4096, 16384)
SWEEP = {  # head dim -> ("fwd"|"bwd", (BLOCK_M, BLOCK_N, num_warps, num_stages)) alternatives to the table
    64: [("fwd", (64, 128, 4, 2)), ("fwd", (128, 128, 8, 2)), ("fwd", (128, 256, 8, 2)),
         ("bwd", (64, 128, 8, 1)), ("bwd", (128, 128, 8, 2)), ("bwd", (128, 64, 8, 1))],
    128: [("fwd", (64, 128, 8, 2)), ("fwd", (128, 64, 8, 2)), ("fwd", (64, 256, 8, 1)),
          ("bwd", (64, 64, 8, 1)), ("bwd", (128, 64, 8, 1)), ("bwd", (128, 128, 8, 1))],
}


def make_case(D, N, causal, mode, dtype):
    import torch
    B, H = 16384 // N, 2048 // D
    g = torch.Generator(device="cuda")
    g.manual_seed(N * 7 + D)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=g) for _ in range(4))
    return B, H, q, k, v, do


def make_fn(fa, q, k, v, do, causal, mode):
    import torch
    if mode == "fwd":
        return lambda: fa(q, k, v, causal=causal)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def run():
        o = fa(qg, kg, vg, causal=causal)
        torch.autograd.grad(o, (qg, kg, vg), do)
    return run


def set_cfg(fa1, D, which, cfg):
    table = fa1._FWD_TABLE if which == "fwd" else fa1._BWD_TABLE
    old = table[D]
    table[D] = cfg
    return old


def warm(part: int, nparts: int, sweep: bool):
    """Compile (run once, small batch) every kernel variant the timing will use; part/nparts of them."""
    import torch
    from flashbench_kernels import flash_attn_v1 as fa1
    # FA2 compiles its whole autotune space: one such job per process, first
    jobs = [("fa2", D, causal, None, None) for D in BENCH_DS for causal in (False, True)]
    for D in BENCH_DS:
        for causal in (False, True):
            jobs.append(("fa1", D, causal, None, None))
        for which, cfg in (SWEEP[D] if sweep else []):  # the sweep times non-causal only
            jobs.append(("fa1", D, False, which, cfg))
    for idx, (kern, D, causal, which, cfg) in enumerate(jobs):
        if idx % nparts != part:
            continue
        old = set_cfg(fa1, D, which, cfg) if which else None
        try:
            if kern == "fa1":
                fn = fa1.flash_attn_v1
            else:
                fn = importlib.import_module("flashbench_kernels.flash_attn_v2").flash_attn_v2
            q, k, v, do = (torch.randn(1, 2, 1024, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            q.requires_grad_()
            fn(q, k, v, causal=causal).backward(do)
        except Exception as e:  # noqa: BLE001 - reported, the timing phase will report it again
            print(f"warm {kern} D={D} causal={causal} {which} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            if which:
                set_cfg(fa1, D, which, old)
    torch.cuda.synchronize()


def time_fn(fn):
    import triton
    fn()  # compile / autotune outside the samples
    return triton.testing.do_bench(fn, warmup=25, rep=300, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "bench_out"))
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also time a few alternative FA1 block configs at N=4096")
    ap.add_argument("--warm", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    env = ensure_importable()
    if args.warm:
        warm(args.warm[0], args.warm[1], bool(args.warm[2]))
        return 0

    import torch
    import triton
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    log = open(os.path.join(args.out, "bench_fa1.log"), "w")

    def say(*a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    say(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")

    # 1+2. GPU tests in parallel shards, compiling the timing variants beside them
    procs = []
    if not args.no_tests:
        shard_k = ["D32 or D96 or D256 or fp32", "D64 and not fp32", "D128 and not fp32", "large"]
        for i, kexpr in enumerate(shard_k):
            procs.append(("tests%d" % i, subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-k", kexpr, "-p", "no:cacheprovider",
                 os.path.join(ROOT, "tests", "test_flash_attn_v1.py")],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    nwarm = 6
    for i in range(nwarm):
        procs.append(("warm%d" % i, subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--warm", str(i), str(nwarm), str(int(args.sweep))],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    test_summary = []
    for name, p in procs:
        out, _ = p.communicate()
        log.write(f"===== {name} (rc={p.returncode}) =====\n{out}\n")
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] if out.strip() else [""]
        if name.startswith("tests"):
            test_summary.append(f"{name}: rc={p.returncode} {tail[0]}")
            if p.returncode not in (0, 5):
                say(out[-3000:])
        elif p.returncode != 0 or "warm fa" in out:
            say(f"{name} rc={p.returncode}: {out[-1500:]}")
    for s in test_summary:
        say(s)
    say(f"tests + compile: {time.time() - t0:.1f}s")

    # 3. timing
    from flashbench_kernels import flash_attn_v1 as fa1
    backends = {"fa1": fa1.flash_attn_v1}
    try:
        fa2 = importlib.import_module("flashbench_kernels.flash_attn_v2")
        backends["fa2"] = fa2.flash_attn_v2
    except Exception as e:  # noqa: BLE001
        say(f"flash_attn_v2 not timed: {type(e).__name__}: {e}")
    rows = []
    for D in BENCH_DS:
        for N in BENCH_NS:
            B, H, q, k, v, do = make_case(D, N, False, "fwd", torch.bfloat16)
            for causal in (False, True):
                for mode in ("fwd", "fwd_bwd"):
                    row = {"D": D, "N": N, "B": B, "H": H, "causal": causal, "mode": mode}
                    for name, fa in backends.items():
                        try:
                            ms = time_fn(make_fn(fa, q, k, v, do, causal, mode))
                            row[name + "_ms"] = ms
                            row[name + "_tflops"] = flops(B, H, N, D, causal, mode) / ms / 1e9
                        except Exception as e:  # noqa: BLE001
                            row[name + "_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    row["fa1_configs"] = fa1.last_configs()
                    rows.append(row)
                    say(json.dumps(row))
            del q, k, v, do
            torch.cuda.empty_cache()
    say(f"timing done: {time.time() - t0:.1f}s")

    # 4. config sweep at N = 4096 (fwd for fwd configs, fwd_bwd for bwd configs), non-causal and causal
    sweep_rows = []
    if args.sweep:
        N = 4096
        for D in BENCH_DS:
            B, H, q, k, v, do = make_case(D, N, False, "fwd", torch.bfloat16)
            for causal in (False,):
                for which, cfg in [("fwd", fa1._FWD_TABLE[D]), ("bwd", fa1._BWD_TABLE[D])] + SWEEP[D]:
                    mode = "fwd" if which == "fwd" else "fwd_bwd"
                    old = set_cfg(fa1, D, which, cfg)
                    r = {"D": D, "N": N, "causal": causal, "kernel": which, "cfg": list(cfg), "mode": mode}
                    try:
                        ms = time_fn(make_fn(fa1.flash_attn_v1, q, k, v, do, causal, mode))
                        r["ms"] = ms
                        r["tflops"] = flops(B, H, N, D, causal, mode) / ms / 1e9
                    except Exception as e:  # noqa: BLE001
                        r["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    set_cfg(fa1, D, which, old)
                    sweep_rows.append(r)
                    say(json.dumps(r))
            del q, k, v, do
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, "bench_fa1.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                   "tests": test_summary, "rows": rows, "sweep": sweep_rows}, f, indent=1)

    # 5. short table last
    say("")
    say("sweep (N=4096, bf16): D causal kernel cfg(BM,BN,warps,stages) TFLOP/s")
    for r in sweep_rows:
        say(f"  {r['D']:>3} {str(r['causal']):>5} {r['kernel']} {r['cfg']} {r.get('tflops', float('nan')):7.1f} {r.get('error', '')[:60]}")
    say("")
    say(f"{'mode':<8}{'D':>4}{'causal':>7}{'N':>6}{'FA1 ms':>10}{'FA1 TF/s':>10}{'FA2 TF/s':>10}{'FA2/FA1':>9}")
    for r in rows:
        f1 = r.get("fa1_tflops", float("nan"))
        f2 = r.get("fa2_tflops", float("nan"))
        say(f"{r['mode']:<8}{r['D']:>4}{str(r['causal']):>7}{r['N']:>6}{r.get('fa1_ms', float('nan')):>10.2f}"
            f"{f1:>10.1f}{f2:>10.1f}{(f2 / f1 if f1 == f1 and f2 == f2 else float('nan')):>9.2f}"
            + ("  ERR " + r.get("fa1_error", r.get("fa2_error", ""))[:60] if ("fa1_error" in r or "fa2_error" in r) else ""))
    for s in test_summary:
        say(s)
    say(f"total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
