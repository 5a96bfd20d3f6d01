"""Backward A/B: P^T dO issued before dS^T is written to shared memory (this tree's kernels, "new") against after it
(the previous commit's kernels, basepkg/fbk_base, "base"); backward alone, interleaved rounds, flashbench's held
timer."""
import json, math, os, statistics, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "basepkg"))
import torch
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import flash_attn_v2, sm90_bwd
from fbk_base.flash_attn_v2 import sm90_bwd as base_bwd

S = Timing(warmup_ms=20, budget_ms=150, min_samples=10, max_samples=400)
def med(fn):
    return statistics.median(time_cuda(fn, S).samples_ms)
rows = []
for D, causal, N in [(128, False, 4096), (128, False, 8192), (128, False, 16384), (128, True, 4096),
                     (128, True, 8192), (128, True, 16384), (64, False, 4096), (64, False, 16384), (64, True, 4096),
                     (64, True, 16384)]:
    B, H = 16384 // N, 2048 // D
    g = torch.Generator(device="cuda").manual_seed(N + D)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    scale = D ** -0.5
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True)
    lse2 = (lse / math.log(2)).contiguous()
    delta = (do.float() * o.float()).sum(-1).contiguous()
    grads = {}
    def bwd(mod, name):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grads[name] = (dq, dk, dv)
        return lambda: mod.backward(q, k, v, do, lse2, delta, dq, dk, dv, causal, scale)
    calls = {"new": bwd(sm90_bwd, "new"), "base": bwd(base_bwd, "base")}
    for fn in calls.values():
        fn()
    torch.cuda.synchronize()
    err = {f"{var} max|d{n}|": (a.float() - b.float()).abs().max().item()
           for var in ("new",) for n, a, b in zip("qkv", grads[var], grads["base"])}
    got = {name: [] for name in calls}
    for rnd in range(3):
        for name, fn in calls.items():
            got[name].append(med(fn))
    row = {"D": D, "causal": causal, "N": N, "B": B, "H": H, **{n: statistics.median(x) for n, x in got.items()},
           "rounds": got, **err}
    flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
    row["tflops_bwd_new"] = 2.5 * flops / row["new"] / 1e9
    rows.append(row)
    print(f"D={D} causal={causal} N={N}: bwd new {row['new']:.3f} base {row['base']:.3f} "
          f"(new {row['new'] / row['base']:.3f}, {row['tflops_bwd_new']:.0f} TFLOP/s)"
          f" diff {err}", flush=True)
    del q, k, v, do, o, grads, calls
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
