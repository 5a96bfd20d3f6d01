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

# (BLOCK, num_warps) tried by the ceiling measurement; the fastest of these and of the persistent
# configurations below is the ceiling
CONFIGS = ((8192, 8), (16384, 8), (4096, 4))
# (BLOCK, num_warps, programs per SM, pipeline stages) of the persistent read: a few programs per SM
# walk the buffer with software-pipelined loads, the way a split-KV decoder streams its cache, so a
# kernel that keeps several loads in flight per program is measured against its own kind of read
PERSISTENT_CONFIGS = ((4096, 4, 4, 3), (8192, 8, 2, 3), (4096, 8, 4, 4))


@triton.jit
def _read_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, eviction_policy="evict_first")
    tl.store(out_ptr + pid, tl.sum(x, axis=0))


@triton.jit
def _read_sum_persistent_kernel(x_ptr, out_ptr, n_blocks, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for b in tl.range(pid, n_blocks, tl.num_programs(0), num_stages=STAGES):
        offs = (tl.zeros([BLOCK], tl.int64) + b) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: buffers past 2^31
        acc += tl.load(x_ptr + offs, eviction_policy="evict_first")
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def _check_buffer(x: torch.Tensor, block: int) -> int:
    if x.dtype != torch.float32 or x.dim() != 1 or not x.is_contiguous():
        raise ValueError(f"x: must be a contiguous 1-D float32 tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block: must be a power of two, got {block}")
    if x.numel() == 0 or x.numel() % block:
        raise ValueError(f"x: its length ({x.numel()}) must be a positive multiple of block ({block})")
    return x.numel() // block


def _check_out(out: torch.Tensor, n: int, x: torch.Tensor) -> None:
    if out.dtype != torch.float32 or out.shape != (n,) or out.device != x.device:
        raise ValueError(f"out: must be float32 of shape ({n},) on {x.device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")


def read_sum_persistent(x: torch.Tensor, out: torch.Tensor, block: int = 4096, num_warps: int = 4,
                        stages: int = 3) -> torch.Tensor:
    """Partial sums of ``x`` into ``out``, one per program (``out.numel()`` programs, each walking
    every ``out.numel()``-th block); their total is ``x.sum()``. Returns ``out``."""
    blocks = _check_buffer(x, block)
    if out.dtype != torch.float32 or out.dim() != 1 or not 1 <= out.numel() <= blocks or out.device != x.device:
        raise ValueError(f"out: must be 1-D float32 on {x.device} with 1 to {blocks} elements (one per program)")
    _read_sum_persistent_kernel[(out.numel(),)](x, out, blocks, BLOCK=block, STAGES=stages, num_warps=num_warps)
    return out


def read_sum(x: torch.Tensor, out: torch.Tensor, block: int = 8192, num_warps: int = 8) -> torch.Tensor:
    """Per-block sums of ``x`` into ``out`` (``x.numel() // block`` fp32 values); returns ``out``."""
    blocks = _check_buffer(x, block)
    _check_out(out, blocks, x)
    _read_sum_kernel[(blocks,)](x, out, BLOCK=block, num_warps=num_warps)
    return out
