"""D128 forward: three consumers with 64-key blocks (192x64; 2, 3 and 4 stages) against the two-consumer build
(128x128, 2 stages) and sdpa_cudnn; bf16, 16k tokens, hidden 2048 (H 16); interleaved rounds, held timer."""
import json, statistics, sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import sm90

S = Timing(warmup_ms=20, budget_ms=120, min_samples=10, max_samples=400)
rows = []
D, H = 128, 16
for N in (1024, 2048, 4096, 8192, 16384):
    B = 16384 // N
    for causal in (False, True):
        g = torch.Generator(device="cuda").manual_seed(N + causal)
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        names = ("g2", "w2", "w3", "w4")
        o = {n: torch.full_like(q, float("nan")) for n in names}
        lse = {n: torch.empty(B, H, N, device="cuda", dtype=torch.float32) for n in names}
        sc = D ** -0.5
        fns = {"g2": lambda: sm90.forward(q, k, v, o["g2"], lse["g2"], causal, sc, 256, 2),
               "w2": lambda: sm90.forward(q, k, v, o["w2"], lse["w2"], causal, sc, 256, 2, block_rows=192),
               "w3": lambda: sm90.forward(q, k, v, o["w3"], lse["w3"], causal, sc, 256, 3, block_rows=192),
               "w4": lambda: sm90.forward(q, k, v, o["w4"], lse["w4"], causal, sc, 256, 4, block_rows=192),
               "cudnn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ref = fns["cudnn"]()
            for fn in fns.values():
                fn()
            torch.cuda.synchronize()
            err = {n: (o[n].float() - ref.float()).abs().max().item() for n in names}
            lse_err = {n: (lse[n] - lse["g2"]).abs().max().item() for n in names}
            got = {n: [] for n in fns}
            for _ in range(3):
                for n, fn in fns.items():
                    got[n].append(statistics.median(time_cuda(fn, S).samples_ms))
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        med = {n: statistics.median(x) for n, x in got.items()}
        tf = {n: flops / (m * 1e-3) / 1e12 for n, m in med.items()}
        rows.append({"N": N, "B": B, "causal": causal, "ms": med, "rounds_ms": got, "tflops": tf, "max_err_vs_cudnn": err,
                     "lse_diff_vs_g2": lse_err})
        print(f"N={N:5d} {'causal' if causal else 'nc    '} " + " ".join(f"{n} {tf[n]:.0f}" for n in fns)
              + f" | w2/g2 time {med['w2'] / med['g2']:.3f} best-w/cudnn {max(tf['w2'], tf['w3'], tf['w4']) / tf['cudnn']:.3f}"
              f" g2/cudnn {tf['g2'] / tf['cudnn']:.3f} | err {max(err.values()):.2e} lse {max(lse_err.values()):.1e}", flush=True)
        del q, k, v, o, ref
        torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
