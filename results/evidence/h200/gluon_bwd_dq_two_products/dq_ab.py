"""Backward A/B: dQ as two products over the keys (own half first, the other's after the handshake; this tree's
kernels, "new"), the same with the own product issued before P^T dO retires ("v2", a copy in v2pkg/fbk_v2), against
one product after the handshake (the previous commit's kernels, basepkg/fbk_base, "base"); backward alone,
interleaved rounds, flashbench's held timer; and fwd_bwd against cuDNN at D128."""
import json, math, os, statistics, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "basepkg"))
sys.path.insert(0, os.path.join(here, "v2pkg"))
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import flash_attn_v2, sm90_bwd
from fbk_base.flash_attn_v2 import sm90_bwd as base_bwd
from fbk_v2.flash_attn_v2 import sm90_bwd as v2_bwd

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
    calls = {"new": bwd(sm90_bwd, "new"), "v2": bwd(v2_bwd, "v2"), "base": bwd(base_bwd, "base")}
    if D == 128 and N >= 8192:
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        lv = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]
        def fb():
            out = flash_attn_v2(*leaves, causal=causal)
            return torch.autograd.grad(out, leaves, do)
        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                out = F.scaled_dot_product_attention(*lv, is_causal=causal)
            return torch.autograd.grad(out, lv, do)
        calls.update(fb_new=fb, fb_cudnn=cudnn)
    for fn in calls.values():
        fn()
    torch.cuda.synchronize()
    err = {f"{var} max|d{n}|": (a.float() - b.float()).abs().max().item()
           for var in ("new", "v2") for n, a, b in zip("qkv", grads[var], grads["base"])}
    got = {name: [] for name in calls}
    for rnd in range(3):
        for name, fn in calls.items():
            got[name].append(med(fn))
    row = {"D": D, "causal": causal, "N": N, "B": B, "H": H, **{n: statistics.median(x) for n, x in got.items()},
           "rounds": got, **err}
    flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
    row["tflops_bwd_new"] = 2.5 * flops / row["new"] / 1e9
    rows.append(row)
    extra = (f"; fwd_bwd {row['fb_new']:.3f} cudnn {row['fb_cudnn']:.3f} -> x cudnn "
             f"{row['fb_cudnn'] / row['fb_new']:.3f}" if "fb_new" in row else "")
    print(f"D={D} causal={causal} N={N}: bwd new {row['new']:.3f} v2 {row['v2']:.3f} base {row['base']:.3f} "
          f"(new {row['new'] / row['base']:.3f}, v2 {row['v2'] / row['base']:.3f}, {row['tflops_bwd_new']:.0f} TFLOP/s)"
          f"{extra} diff {err}", flush=True)
    del q, k, v, do, o, grads, calls
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
