"""The bundled FA2 and cuDNN's attention beside each other under Nsight Compute, one call each.

Tuning and warm-up run outside an NVTX range named "profile"; inside it, one call of
``flashbench.flash_attn_v2`` (its tuned choice) and one of ``sdpa_cudnn``, so that ncu, told to profile only
that range, sees exactly the kernels of those two calls.  A call is a forward, or with ``fwd_bwd`` a forward and
the backward of a fixed output gradient (``torch.autograd.grad``), so the backward kernels can be compared.
The autograd engine launches a backward's kernels from its own thread, outside the caller's NVTX range, so
the same two calls are also bracketed by ``cudaProfilerStart``/``cudaProfilerStop``: for ``fwd_bwd`` give ncu
``--profile-from-start off`` instead of the NVTX options, with ``--kernel-name regex:"bwd|bprop"`` for the
backward kernels only.  Run it under ncu, e.g.::

    ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
        --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section Occupancy --csv --page details \
        python lab/ncu_forward_vs_cudnn.py B H N D [causal]

    ncu --clock-control none --profile-from-start off --kernel-name regex:"bwd|bprop" --section SpeedOfLight \
        --csv --page details python lab/ncu_forward_vs_cudnn.py B H N D [causal] fwd_bwd

``--clock-control none`` leaves the GPU's clocks alone (ncu locks them to base otherwise).  Before the range it
prints each backend's time a call over 20 back-to-back calls (CUDA events), for reference.
"""
from __future__ import annotations

import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashbench


def main(argv: list[str]) -> int:
    usage = ("usage: python lab/ncu_forward_vs_cudnn.py B H N D [causal] [fwd_bwd] "
             "(B, H, N, D positive integers)")
    words = argv[4:]
    if len(argv) < 4 or any(w not in ("causal", "fwd_bwd") for w in words) or len(set(words)) != len(words):
        print(usage, file=sys.stderr)
        return 2
    if not all(x.isdigit() and int(x) > 0 for x in argv[:4]):
        print(f"{usage}; got {' '.join(argv[:4])}", file=sys.stderr)
        return 2
    b, h, n, d = (int(x) for x in argv[:4])
    causal, backward = "causal" in words, "fwd_bwd" in words
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
               for _ in range(3))
    grad_out = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) if backward else None

    def call(attend):
        def run():
            out = attend()
            return torch.autograd.grad(out, (q, k, v), grad_out) if backward else out
        return run

    def attend_cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    ours = call(lambda: flashbench.flash_attn_v2(q, k, v, causal=causal))
    cudnn = call(attend_cudnn)
    what = f"{'causal' if causal else 'full'}{' fwd_bwd' if backward else ''}"

    for fn in (ours, cudnn):  # tune, compile, warm up
        for _ in range(5):
            fn()
    torch.cuda.synchronize()
    for name, fn in (("triton_fa2", ours), ("sdpa_cudnn", cudnn)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        print(f"B{b} H{h} N{n} D{d} {what} {name}: {start.elapsed_time(end) / 20:.3f} ms a call "
              f"(back to back)")
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    torch.cuda.nvtx.range_push("profile")
    ours()
    cudnn()
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
