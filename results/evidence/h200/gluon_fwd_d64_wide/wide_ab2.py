"""Forward A/B, interleaved rounds, flashbench's held timer (GPU time only), bf16, 16k tokens, hidden 2048.
D64: the three-consumer build with its partial program first (this tree) against the same build with it last
(fbk_mid, the commit before) and sdpa_cudnn.  D128: the two-consumer build of this tree against the one of the
previous commit (fbk_prev; the same PTX) and sdpa_cudnn, to see how far one GPU moves identical kernels."""
import json, os, statistics, sys, torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mid"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "prevhead"))
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import sm90
from fbk_mid.flash_attn_v2 import sm90 as sm90_mid
from fbk_prev.flash_attn_v2 import sm90 as sm90_prev

S = Timing(warmup_ms=20, budget_ms=120, min_samples=10, max_samples=400)
ROUNDS = 3
rows = []
cells = [(64, N, c) for N in (1024, 2048, 4096, 8192, 16384) for c in (False, True)] + \
        [(128, N, c) for N in (4096, 8192, 16384) for c in (False, True)]
for D, N, causal in cells:
    H, B = 2048 // D, 16384 // N
    g = torch.Generator(device="cuda").manual_seed(N + causal + D)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    o = {n: torch.empty_like(q) for n in ("new", "base")}
    lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    sc = D ** -0.5
    if D == 64:
        fns = {"new": lambda: sm90.forward(q, k, v, o["new"], lse, causal, sc, 256, 2, block_rows=192),
               "base": lambda: sm90_mid.forward(q, k, v, o["base"], lse, causal, sc, 256, 2, block_rows=192)}
    else:
        fns = {"new": lambda: sm90.forward(q, k, v, o["new"], lse, causal, sc, 256, 2),
               "base": lambda: sm90_prev.forward(q, k, v, o["base"], lse, causal, sc, 256, 2)}
    fns["cudnn"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
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
    rows.append({"D": D, "N": N, "B": B, "H": H, "causal": causal, "ms": med, "rounds_ms": got, "tflops": tf,
                 "max_err_vs_cudnn": err})
    print(f"D={D} N={N:5d} {'causal' if causal else 'nc    '} " + " ".join(f"{n} {tf[n]:.0f}" for n in fns)
          + f" | new/base time {med['new'] / med['base']:.3f} new/cudnn {tf['new'] / tf['cudnn']:.3f} | err {err}",
          flush=True)
    del q, k, v, o, ref
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
