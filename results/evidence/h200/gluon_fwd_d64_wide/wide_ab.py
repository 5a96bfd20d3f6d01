"""D64 forward: the three-consumer Gluon build (192x128, 2 and 3 stages) against the two-consumer one, the
tuned Triton forward and sdpa_cudnn; 16k tokens, hidden 2048 (H 32), bf16; interleaved rounds, flashbench's
held timer (GPU time only), medians of round medians; TFLOP/s."""
import json, statistics, sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, sm90

S = Timing(warmup_ms=20, budget_ms=120, min_samples=10, max_samples=400)
ROUNDS = 3
rows = []
D, H = 64, 32
for N in (1024, 2048, 4096, 8192, 16384):
    B = 16384 // N
    for causal in (False, True):
        g = torch.Generator(device="cuda").manual_seed(N + causal)
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        o = {n: torch.empty_like(q) for n in ("g2", "w2", "w3")}
        lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
        sc = D ** -0.5
        tri = FA2Options(sm90_forward=False)
        fns = {
            "cudnn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
            "triton": lambda: flash_attn_v2(q, k, v, causal=causal, options=tri),
            "g2": lambda: sm90.forward(q, k, v, o["g2"], lse, causal, sc, 256, 2),
            "w2": lambda: sm90.forward(q, k, v, o["w2"], lse, causal, sc, 256, 2, block_rows=192),
            "w3": lambda: sm90.forward(q, k, v, o["w3"], lse, causal, sc, 256, 3, block_rows=192),
        }
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ref = fns["cudnn"]()
            for fn in fns.values():
                fn()
            torch.cuda.synchronize()
            err = {n: (o[n].float() - ref.float()).abs().max().item() for n in o}
            got = {n: [] for n in fns}
            for _ in range(ROUNDS):
                for n, fn in fns.items():
                    got[n].append(statistics.median(time_cuda(fn, S).samples_ms))
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        med = {n: statistics.median(x) for n, x in got.items()}
        tf = {n: flops / (m * 1e-3) / 1e12 for n, m in med.items()}
        rows.append({"N": N, "B": B, "causal": causal, "ms": med, "rounds_ms": got, "tflops": tf, "max_err_vs_cudnn": err})
        print(f"N={N:5d} {'causal' if causal else 'nc    '} " + " ".join(f"{n} {tf[n]:.0f}" for n in fns)
              + f" | w2/cudnn {tf['w2'] / tf['cudnn']:.3f} w3/cudnn {tf['w3'] / tf['cudnn']:.3f} "
              f"best-triton/cudnn {tf['triton'] / tf['cudnn']:.3f} | err {err}", flush=True)
        del q, k, v, o, ref
        torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
