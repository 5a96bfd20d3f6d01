"""How long does FlexAttention take to compile per shape, static vs automatic-dynamic, and at what speed?

    python scripts/flex_compile_probe.py static|dynamic

Prints one JSON line per shape: compile seconds (first call) and TFLOP/s (flashbench's timer).
Used to choose how the `flex` backend compiles in a sweep (kernels/TUNING.md has no part in it).
"""
import json
import sys
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from flashbench.backends.flex import _raise_recompile_limits
from flashbench.calls import bind, make_inputs
from flashbench.cases import Case
from flashbench.flops import attention_flops
from flashbench.stats import summarize
from flashbench.timing import TimingSettings, time_cuda

mode = sys.argv[1]
_raise_recompile_limits()
compiled = torch.compile(flex_attention, dynamic=False if mode == "static" else None)
for n in (1024, 2048, 4096, 8192, 16384):
    for causal in (False, True):
        for m in ("fwd", "fwd_bwd"):
            case = Case(16384 // n, 16, 16, n, n, 128, "bfloat16", causal, m)
            bm = create_block_mask(lambda b, h, q, kv: kv <= q, None, None, n, n, device="cuda") if causal else None
            fn = lambda q, k, v: compiled(q, k, v, block_mask=bm)
            call = bind(fn, make_inputs(case, "cuda", 0), case)
            t0 = time.perf_counter()
            call()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            s = summarize(time_cuda(call, TimingSettings(warmup_ms=10, budget_ms=60)).samples_ms)
            print(json.dumps({"mode": mode, "n": n, "causal": causal, "m": m, "compile_s": round(compile_s, 2),
                              "tflops": round(attention_flops(case) / s.median_ms / 1e9, 1)}), flush=True)
