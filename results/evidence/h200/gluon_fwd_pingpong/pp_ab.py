"""Gluon forward, two consumers: issued in turn (ping-pong, FA3 3.1) against as the warp scheduler finds
them ready; D128 (and D64's two-consumer build), bf16, 16k tokens, hidden 2048; interleaved rounds, held
timer; outputs compared bit for bit."""
import json, statistics, sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import sm90

S = Timing(warmup_ms=20, budget_ms=120, min_samples=10, max_samples=400)
rows = []
cells = [(128, N, c) for N in (1024, 2048, 4096, 8192, 16384) for c in (False, True)] + \
        [(64, N, c) for N in (4096, 16384) for c in (False, True)]
for D, N, causal in cells:
    H, B = 2048 // D, 16384 // N
    g = torch.Generator(device="cuda").manual_seed(N + causal + D)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    o = {n: torch.empty_like(q) for n in ("pp", "base")}
    lse = {n: torch.empty(B, H, N, device="cuda", dtype=torch.float32) for n in ("pp", "base")}
    sc = D ** -0.5
    fns = {"pp": lambda: sm90.forward(q, k, v, o["pp"], lse["pp"], causal, sc, 256, 2, pingpong=True),
           "base": lambda: sm90.forward(q, k, v, o["base"], lse["base"], causal, sc, 256, 2),
           "cudnn": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
    if D == 64:
        fns["wide"] = lambda: sm90.forward(q, k, v, torch.empty_like(q), lse["base"].clone(), causal, sc, 256, 2,
                                           block_rows=192)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for fn in fns.values():
            fn()
        torch.cuda.synchronize()
        same = bool(torch.equal(o["pp"], o["base"]) and torch.equal(lse["pp"], lse["base"]))
        got = {n: [] for n in fns}
        for _ in range(3):
            for n, fn in fns.items():
                got[n].append(statistics.median(time_cuda(fn, S).samples_ms))
    flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
    med = {n: statistics.median(x) for n, x in got.items()}
    tf = {n: flops / (m * 1e-3) / 1e12 for n, m in med.items()}
    rows.append({"D": D, "N": N, "B": B, "causal": causal, "ms": med, "rounds_ms": got, "tflops": tf, "bitwise_equal": same})
    print(f"D={D} N={N:5d} {'causal' if causal else 'nc    '} " + " ".join(f"{n} {tf[n]:.0f}" for n in fns)
          + f" | pp/base time {med['pp'] / med['base']:.3f} pp/cudnn {tf['pp'] / tf['cudnn']:.3f} "
          f"base/cudnn {tf['base'] / tf['cudnn']:.3f} | bitwise {same}", flush=True)
    del q, k, v, o
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
