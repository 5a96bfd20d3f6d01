"""GPU time of the dQ conversion: the Triton kernel (basepkg/fbk_base) against torch.mul(out=) (this tree),
flashbench's held timer, interleaved rounds; the fp32 accumulator of 16k tokens, hidden 2048 (B16 H16 N1k D128)."""
import os, statistics, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "basepkg"))
import torch
from flashbench.model.config import Timing
from flashbench.measure.timer import time_cuda
from flashbench_kernels.flash_attn_v2 import sm90_bwd as new_bwd
from fbk_base.flash_attn_v2 import sm90_bwd as old_bwd
S = Timing(warmup_ms=20, budget_ms=150, min_samples=10, max_samples=400)
for shape in [(16, 16, 1024, 128), (1, 16, 16384, 128), (16, 32, 1024, 64)]:
    acc = torch.randn(shape, device="cuda", dtype=torch.float32)
    dq = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    calls = {"triton": lambda: old_bwd._dq_convert(acc, dq, 0.088), "torch.mul": lambda: new_bwd._dq_convert(acc, dq, 0.088)}
    got = {n: [] for n in calls}
    for _ in range(5):
        for n, fn in calls.items():
            got[n].append(statistics.median(time_cuda(fn, S).samples_ms) * 1e3)
    mb = acc.numel() * 6 / 1e6
    print(shape, {n: f"{statistics.median(x):.1f} us ({mb / statistics.median(x):.2f} TB/s)" for n, x in got.items()},
          "rounds", {n: [round(y, 1) for y in x] for n, x in got.items()}, flush=True)
