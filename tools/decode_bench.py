"""Decode read bandwidth: ``flashbench.flash_decode`` against SDPA (cuDNN, flash) on the issue's decode shapes.

For each (B, N) and number of new tokens: GQA 32/8, D 128, bf16 (by default), every sequence N keys
long.  ``flash_decode`` runs on the contiguous cache and on paged copies in shuffled pages; each
layout is called once with its values checked (which also tunes its shape class), then timed with
``check_values=False`` (no host synchronisation, as a serving loop calls it).  SDPA runs on the same
tensors in SDPA layout (Nq > 1 with a bottom-right causal mask).  Times are medians of flashbench's
held timer (``flashbench.measure.timer.time_cuda``, as ``flashbench run``: L2 flushed before every
call, the stream held while a batch is enqueued, so GPU time only; the host's enqueue time per call
is reported beside it).  Not ``do_bench``: its events around each call time the host's enqueueing too
when that outlasts the L2 flush before the call, as it does for ``flash_decode`` at small batches
(20-50 us calls, 0.13-0.22 ms of host path on the H200); GB/s = minimum bytes (K + V + Q + O, and
the block table for paged calls) / time.  The read roof is the best read rate measured in the run:
``torch.sum`` over a large buffer, or any decode call that read faster.

Each row is checked against the targets of issue 18: contiguous >= 1.0x the faster SDPA backend;
>= 85% of the read roof where the cache is >= 1 GiB (75% at B = 1, N = 128k); paged >= 0.9x
contiguous.  Prints a table and writes everything (with each call's launch log) as JSON.

    python tools/decode_bench.py --out decode_bench.json
    python tools/decode_bench.py --shapes 1x131072,8x4096 --nq 1 --pages 16 --out small.json
    python tools/decode_bench.py --sequential-combine --out sequential.json   # the combine not overlapped
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

import flashbench
from flashbench.measure.timer import time_cuda
from flashbench.model.config import Timing

SHAPES = "1x131072,1x32768,8x4096,8x32768,64x4096,64x32768"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SDPA = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
GIB = 1 << 30


def add_call_args(p: argparse.ArgumentParser, shapes: str, warmup_ms: int, rep_ms: int) -> None:
    """The arguments this tool shares with ``decode_grid.py``: shapes, heads, head dim, dtype, timing."""
    p.add_argument("--shapes", default=shapes, help=f"BxN list (default {shapes})")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--warmup", type=int, default=warmup_ms, help="warm-up before sampling, ms")
    p.add_argument("--rep", type=int, default=rep_ms, help="sampling budget per call, ms")
    p.add_argument("--out", required=True, help="JSON file to write")


def read_shapes(p: argparse.ArgumentParser, args) -> None:
    """``args.shapes`` from "BxN,BxN" to [(B, N), ...], or a usage error (exit 2)."""
    try:
        args.shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
    except ValueError:
        p.error(f"--shapes must look like 1x131072,8x4096; got {args.shapes!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_call_args(p, SHAPES, warmup_ms=25, rep_ms=100)
    p.add_argument("--nq", type=int, nargs="+", default=[1, 4], help="new tokens a sequence (default 1 4)")
    p.add_argument("--pages", type=int, nargs="*", default=[16, 256], help="page sizes of the paged copies")
    p.add_argument("--roof-gib", type=float, default=2.0, help="size of the torch.sum read measurement, GiB")
    p.add_argument("--sequential-combine", action="store_true",
                   help="launch the split combine after the split kernel (DecodeOptions(overlap_combine=False))")
    args = p.parse_args(argv)
    read_shapes(p, args)
    return args


def bench(fn, args) -> dict:
    """``ms``: the median GPU time of ``fn`` by the held timer; ``host_ms``: the host's median enqueue time of
    one call (None where the stream could not be held); ``timing_method``: the timer's name for how it ran."""
    r = time_cuda(fn, Timing(warmup_ms=args.warmup, budget_ms=args.rep, min_samples=10, max_samples=1000))
    return {"ms": statistics.median(r.samples_ms), "host_ms": r.host_ms, "timing_method": r.method}


def _timing(timed: dict) -> dict:
    """The part of ``bench``'s result that goes into a row."""
    return {k: timed[k] for k in ("ms", "host_ms", "timing_method")}


def paged_copy(k, v, page: int, generator):
    """k, v (B, N, H_kv, D) as pages of ``page`` keys in a shuffled pool, and the block table."""
    B, N, Hkv, D = k.shape
    blocks = B * N // page
    order = torch.randperm(blocks, device=k.device, generator=generator)
    where = order.argsort()
    kp = k.reshape(blocks, page, Hkv, D)[where].contiguous()
    vp = v.reshape(blocks, page, Hkv, D)[where].contiguous()
    return kp, vp, order.reshape(B, N // page).to(torch.int32)


def time_decode(q, k, v, lens, table, args) -> dict:
    log = {}
    opts = flashbench.DecodeOptions(overlap_combine=not args.sequential_combine)
    out = flashbench.flash_decode(q, k, v, lens, block_table=table, launch_log=log, options=opts)  # tunes the class
    timed = bench(lambda: flashbench.flash_decode(q, k, v, lens, block_table=table, check_values=False,
                                                  options=opts), args)
    return timed | {"log": log, "out": out}


def time_sdpa(q, k, v, backend, args) -> dict:
    Nq, N = q.shape[1], k.shape[1]
    qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = None if Nq == 1 else causal_lower_right(Nq, N)

    def call():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)

    try:
        call()
        return bench(call, args)
    except Exception as e:  # a backend that cannot run this shape is a row entry, not a crash
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def error_vs_fp32(out, q, k, v) -> float:
    """Max error of sequence 0 against fp32 SDPA math (one sequence keeps the reference small)."""
    qs, ks, vs = (t[:1].transpose(1, 2).float() for t in (q, k, v))
    Nq, N = q.shape[1], k.shape[1]
    visible = torch.ones(Nq, N, dtype=torch.bool, device=q.device).tril(N - Nq)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, enable_gqa=True)
    return (out[:1].float().transpose(1, 2) - ref).abs().max().item()


def measure_row(B, N, Nq, args, generator) -> dict:
    H, Hkv, D, dtype = args.heads, args.kv_heads, args.head_dim, DTYPES[args.dtype]
    q = torch.randn(B, Nq, H, D, device="cuda", dtype=dtype, generator=generator)
    k = torch.randn(B, N, Hkv, D, device="cuda", dtype=dtype, generator=generator)
    v = torch.randn(B, N, Hkv, D, device="cuda", dtype=dtype, generator=generator)
    lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
    cache_bytes = 2 * k.numel() * k.element_size()
    min_bytes = cache_bytes + 2 * q.numel() * q.element_size()
    row = {"B": B, "N": N, "Nq": Nq, "cache_bytes": cache_bytes, "min_bytes": min_bytes, "decode": {}, "sdpa": {}}

    contiguous = time_decode(q, k, v, lens, None, args)
    row["err_vs_fp32"] = error_vs_fp32(contiguous["out"], q, k, v)
    row["decode"]["contiguous"] = {**_timing(contiguous), "gbps": min_bytes / contiguous["ms"] / 1e6,
                                   "log": contiguous["log"]}
    for page in args.pages:
        kp, vp, table = paged_copy(k, v, page, generator)
        paged = time_decode(q, kp, vp, lens, table, args)
        nbytes = min_bytes + table.numel() * table.element_size()
        row["decode"][f"paged{page}"] = {**_timing(paged), "gbps": nbytes / paged["ms"] / 1e6, "log": paged["log"],
                                         "max_diff_vs_contiguous":
                                             (paged["out"].float() - contiguous["out"].float()).abs().max().item()}
        del kp, vp, paged
    for name, backend in SDPA.items():
        r = time_sdpa(q, k, v, backend, args)
        if "ms" in r:
            r["gbps"] = min_bytes / r["ms"] / 1e6
        row["sdpa"][name] = r
    return row


def read_roof(args) -> dict:
    """torch.sum over ``--roof-gib`` GiB: a plain streaming read of HBM."""
    buf = torch.randn(int(args.roof_gib * GIB) // 2, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: buf.sum(), args)["ms"]
    return {"torch_sum_gib": args.roof_gib, "torch_sum_gbps": buf.numel() * 2 / ms / 1e6}


def judge(rows, roof_gbps: float) -> None:
    """Adds each row's ratios and the issue's targets (True / False / None where one does not apply)."""
    for r in rows:
        fd = r["decode"]["contiguous"]["gbps"]
        sdpa = [s["gbps"] for s in r["sdpa"].values() if "gbps" in s]
        pct_roof = 100 * fd / roof_gbps
        big = r["cache_bytes"] >= GIB
        r["vs_best_sdpa"] = fd / max(sdpa) if sdpa else None
        r["pct_of_read_roof"] = pct_roof
        r["paged_vs_contiguous"] = {k: d["gbps"] / fd for k, d in r["decode"].items() if k != "contiguous"}
        r["targets"] = {
            "ge_1x_best_sdpa": None if not sdpa else r["vs_best_sdpa"] >= 1.0,
            "ge_85pct_roof_if_1gib": pct_roof >= 85 if big else None,
            "ge_75pct_roof_b1_128k": pct_roof >= 75 if (r["B"], r["N"]) == (1, 131072) else None,
            "paged_within_10pct": (all(x >= 0.9 for x in r["paged_vs_contiguous"].values())
                                   if r["paged_vs_contiguous"] else None),
        }


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_table(rows, roof: dict) -> None:
    pages = [k for k in rows[0]["decode"] if k != "contiguous"] if rows else []
    head = ["B", "N", "Nq", "fd GB/s", *[f"{p} GB/s" for p in pages], "cudnn", "flash", "x best sdpa", "% roof",
            "fd host ms", "config (contiguous)", "targets"]
    print(f"read roof {roof['roof_gbps']:.0f} GB/s ({roof['roof_source']}); torch.sum {roof['torch_sum_gbps']:.0f} GB/s")
    print(" | ".join(head))
    for r in rows:
        log = r["decode"]["contiguous"]["log"]
        sdpa = [f"{r['sdpa'][n]['gbps']:.0f}" if "gbps" in r["sdpa"][n] else "error" for n in SDPA]
        failed = [k for k, ok in r["targets"].items() if ok is False]
        cells = [r["B"], r["N"], r["Nq"], f"{r['decode']['contiguous']['gbps']:.0f}",
                 *[f"{r['decode'][p]['gbps']:.0f}" for p in pages], *sdpa,
                 "-" if r["vs_best_sdpa"] is None else f"{r['vs_best_sdpa']:.2f}", f"{r['pct_of_read_roof']:.0f}",
                 _ms(r["decode"]["contiguous"]["host_ms"]), f"{log['block_n']}/{log['num_warps']}w/{log['num_stages']}s/{log['num_splits']} splits",
                 "ok" if not failed else "MISSED " + ",".join(failed)]
        print(" | ".join(str(c) for c in cells))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for B, N in args.shapes:
        for Nq in args.nq:
            rows.append(measure_row(B, N, Nq, args, generator))
            torch.cuda.empty_cache()
            print(json.dumps({k: rows[-1][k] for k in ("B", "N", "Nq")} | {
                k: round(d["gbps"]) for k, d in rows[-1]["decode"].items()}), file=sys.stderr, flush=True)
    roof = read_roof(args)
    best_decode = max([d["gbps"] for r in rows for d in r["decode"].values()]
                      + [s["gbps"] for r in rows for s in r["sdpa"].values() if "gbps" in s])
    roof["roof_gbps"] = max(roof["torch_sum_gbps"], best_decode)
    roof["roof_source"] = "torch.sum" if roof["torch_sum_gbps"] >= best_decode else "fastest decode call of the run"
    judge(rows, roof["roof_gbps"])
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": args.dtype,
            "timer": {"warmup_ms": args.warmup, "budget_ms": args.rep, "statistic": "median GPU time (held timer)"}}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "read_roof": roof, "rows": rows}, f, indent=1)
    print_table(rows, roof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
