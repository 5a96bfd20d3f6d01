"""Decode: every tile x split count of flash_decode, timed by flashbench's held timer (GPU time only) and by
triton's do_bench median (as tools/decode_bench.py), beside cuDNN; and what the tuner picks in this process."""
import json, sys, statistics
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import flashbench
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench import DecodeOptions
from flashbench_kernels.flash_decode import tuning, choose_num_splits

S = Timing(warmup_ms=10, budget_ms=60, min_samples=10, max_samples=300)
out = []
def held(fn):
    r = time_cuda(fn, S)
    return statistics.median(r.samples_ms), r.host_ms
def dob(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
g = torch.Generator(device="cuda").manual_seed(0)
for B, N in [(1, 4096), (1, 32768), (8, 4096), (8, 32768), (64, 4096), (1, 131072)]:
    H, Hkv, D = 32, 8, 128
    q = torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, N, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
    nbytes = 2 * k.numel() * 2
    qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
    row = {"B": B, "N": N, "cudnn_held": held(cudnn), "cudnn_dob": dob(cudnn)}
    log = {}
    flashbench.flash_decode(q, k, v, lens, launch_log=log)
    row["tuned"] = {kk: log.get(kk) for kk in ("block_n", "num_warps", "num_stages", "num_splits")}
    f = lambda: flashbench.flash_decode(q, k, v, lens, check_values=False)
    row["tuned_held"], row["tuned_dob"] = held(f), dob(f)
    h = choose_num_splits(B * Hkv, N, torch.cuda.get_device_properties(0).multi_processor_count)
    splits = sorted({s for s in (max(1, h // 2), h, min(2 * h, 128), 1) if s >= 1})
    cands = tuning.candidates(D, 16, 0, N, 2)
    grid = []
    for t in cands:
        for s in splits:
            opt = DecodeOptions(config=tuple(t), tune_splits=False)
            fn = lambda: flashbench.flash_decode(q, k, v, lens, num_splits=s, check_values=False, options=opt)
            try:
                fn()
                hm, host = held(fn)
                grid.append({"tile": list(t), "splits": s, "held": hm, "host": host, "dob": dob(fn)})
            except Exception as e:
                grid.append({"tile": list(t), "splits": s, "error": str(e)[:200]})
    row["grid"] = grid
    out.append(row)
    ok = [x for x in grid if "held" in x]
    best = min(ok, key=lambda x: x["held"])
    bestd = min(ok, key=lambda x: x["dob"])
    gb = lambda ms: nbytes / ms / 1e6
    print(f"B{B} N{N}: cudnn held {gb(row['cudnn_held'][0]):.0f} dob {gb(row['cudnn_dob']):.0f} | tuned {row['tuned']} "
          f"held {gb(row['tuned_held'][0]):.0f} (host {row['tuned_held'][1]}) dob {gb(row['tuned_dob']):.0f} | "
          f"best held {best['tile']}/{best['splits']} {gb(best['held']):.0f} | best dob {bestd['tile']}/{bestd['splits']} {gb(bestd['dob']):.0f}", flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
