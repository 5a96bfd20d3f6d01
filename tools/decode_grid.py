"""Decode tile x split-count grid: every tile ``flash_decode`` offers for a shape, pinned, at each split count.

For each (B, N) and cache layout (contiguous, or shuffled pages of the given sizes): GQA 32/8, D 128,
bf16 (by default), one new token, every sequence N keys long.  Each candidate tile of the shape's
class (``flashbench_kernels.flash_decode.tuning.candidates``, what the tuner chooses among) runs
pinned at every split count of ``--splits`` (no tuning), timed by flashbench's held timer as
``tools/decode_bench.py`` times it (L2 flushed, GPU time only); cuDNN's time and the tuner's own
choice for the shape are given beside.  It shows whether the tuner's choice is the grid's best, and
which split counts the tuner should be offered.  Prints the best four cells of each shape; writes every
cell as JSON.

    python tools/decode_grid.py --shapes 1x4096,8x4096 --pages 16 --splits 4 8 16 32 64 --out grid.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import flashbench
from flashbench import DecodeOptions
from flashbench_kernels.flash_decode import launch, tuning

from decode_bench import DTYPES, SDPA, add_call_args, bench, paged_copy, read_shapes, time_sdpa


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_call_args(p, "1x4096,8x4096", warmup_ms=10, rep_ms=50)
    p.add_argument("--pages", type=int, nargs="*", default=[16], help="page sizes of the paged copies (default 16)")
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="split counts to pin")
    args = p.parse_args(argv)
    read_shapes(p, args)
    if any(s < 1 or s > tuning.MAX_SPLITS for s in args.splits):
        p.error(f"--splits must lie in 1..{tuning.MAX_SPLITS}")
    return args


def grid(q, k, v, lens, table, page: int, capacity: int, args) -> list[dict]:
    """Every candidate tile pinned at every split count: ms, or the error that kept it from running."""
    cells = []
    call = launch.prepare_call(q, k, v, lens, table, 1.0, capacity, page)  # the launcher's tile rows and width
    for tile in tuning.candidates(call.block_d, call.block_m, page, capacity, q.element_size()):
        for splits in args.splits:
            opt = DecodeOptions(config=tuple(tile), tune_splits=False)

            def call():
                return flashbench.flash_decode(q, k, v, lens, block_table=table, num_splits=splits,
                                               check_values=False, options=opt)

            try:
                call()
                cells.append({"tile": list(tile), "splits": splits, "ms": bench(call, args)["ms"]})
            except Exception as e:  # a tile that does not build here is a cell, not a crash
                cells.append({"tile": list(tile), "splits": splits, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return cells


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_grid needs a CUDA GPU", file=sys.stderr)
        return 2
    dtype, H, Hkv, D = DTYPES[args.dtype], args.heads, args.kv_heads, args.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for B, N in args.shapes:
        q = torch.randn(B, 1, H, D, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(B, N, Hkv, D, device="cuda", dtype=dtype, generator=g)
        v = torch.randn_like(k)
        lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
        nbytes = 2 * k.numel() * k.element_size()
        cudnn = time_sdpa(q, k, v, SDPA["cudnn"], args).get("ms")
        for page in [0, *args.pages]:
            kc, vc, table = (k, v, None) if not page else paged_copy(k, v, page, g)
            log = {}
            flashbench.flash_decode(q, kc, vc, lens, block_table=table, launch_log=log)  # tunes the class
            tuned = bench(lambda: flashbench.flash_decode(q, kc, vc, lens, block_table=table, check_values=False),
                          args)["ms"]
            cells = grid(q, kc, vc, lens, table, page, N, args)
            rows.append({"B": B, "N": N, "page": page, "bytes": nbytes, "cudnn_ms": cudnn, "tuned_ms": tuned,
                         "tuned": {f: log.get(f) for f in ("block_n", "num_warps", "num_stages", "num_splits")},
                         "cells": cells})
            gbps = lambda ms: nbytes / ms / 1e6
            best = sorted((c for c in cells if "ms" in c), key=lambda c: c["ms"])[:4]
            t = rows[-1]["tuned"]
            print(f"B{B} N{N} {'page ' + str(page) if page else 'contiguous'}: cudnn "
                  f"{gbps(cudnn) if cudnn else float('nan'):.0f} GB/s | tuned {t['block_n']}/{t['num_warps']}w/"
                  f"{t['num_stages']}s/{t['num_splits']} splits {gbps(tuned):.0f} | best "
                  + ", ".join(f"{c['tile'][0]}/{c['tile'][1]}w/{c['tile'][2]}s/{c['splits']} {gbps(c['ms']):.0f}"
                              for c in best), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
