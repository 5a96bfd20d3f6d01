"""A streaming read of a large buffer: the read-bandwidth ceiling.

Each program reads one contiguous block of ``BLOCK`` fp32 elements once (every element of the
buffer exactly once, no re-reads), in wide vectorised loads (the block is contiguous and 16-byte
aligned, so each thread loads ``BLOCK / (32·num_warps)`` elements as 16-byte vectors, all in flight
before the sum uses them), marked evict-first (the data is never read again), and writes the block's
sum: ``numel / BLOCK`` fp32 values, 1/BLOCK of the bytes read. Many programs (one per block)
keep every SM's load units busy. It supports fp32 buffers whose length is a multiple of ``BLOCK``;
nothing else (the ceiling chooses its buffer).

An attention kernel that reads its inputs once cannot read faster than this: the memory roof that
``pct_hbm`` and ``flashbench profile`` use (a copy both reads and writes, and ``torch.sum`` is not
tuned for bandwidth alone).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# (BLOCK, num_warps) tried by the ceiling measurement; the fastest is the ceiling
CONFIGS = ((8192, 8), (16384, 8), (4096, 4))


@triton.jit
def _read_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, eviction_policy="evict_first")
    tl.store(out_ptr + pid, tl.sum(x, axis=0))


def read_sum(x: torch.Tensor, out: torch.Tensor, block: int = 8192, num_warps: int = 8) -> torch.Tensor:
    """Per-block sums of ``x`` into ``out`` (``x.numel() // block`` fp32 values); returns ``out``."""
    if x.dtype != torch.float32 or x.dim() != 1 or not x.is_contiguous():
        raise ValueError(f"x: must be a contiguous 1-D float32 tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block: must be a power of two, got {block}")
    if x.numel() == 0 or x.numel() % block:
        raise ValueError(f"x: its length ({x.numel()}) must be a positive multiple of block ({block})")
    blocks = x.numel() // block
    if out.dtype != torch.float32 or out.shape != (blocks,) or out.device != x.device:
        raise ValueError(f"out: must be float32 of shape ({blocks},) on {x.device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    _read_sum_kernel[(blocks,)](x, out, BLOCK=block, num_warps=num_warps)
    return out
