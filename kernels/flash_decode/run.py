"""Launch one configuration of a prepared ``flash_decode`` call: the split kernel, then the combine kernel
(overlapping the split kernel's tail where ``overlap_combine``: programmatic dependent launch).

``DecodeCall`` holds what every launch of one call needs (tensors, sizes, the output buffer);
``run(call, tile, splits)`` launches it with one tile and split count.  The tuner (``tuning.py``)
times ``run`` itself, so a candidate's time includes the combine and its partial buffers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .kernels import combine_kernel, split_kernel
from .options import Tile

LOG2E = 1.4426950408889634
_COMBINE_WARPS = 4
_COMBINE_TILE = 4096  # splits x columns one combine program loads at once (32 fp32 registers a thread)


class DecodeCall(NamedTuple):
    q: torch.Tensor  # (B, Nq, H, D)
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cache_seqlens: torch.Tensor  # (B,) int32, contiguous
    block_table: torch.Tensor | None  # (B, max_blocks) int32, contiguous; None: contiguous cache
    out: torch.Tensor  # (B, Nq, H, D), q's dtype
    qk_scale: float  # sm_scale * log2(e)
    page_size: int  # 0: contiguous cache
    capacity: int  # keys a sequence can hold: N_max, or max_blocks * page_size
    num_blocks: int  # pages in the pool (paged), else 0
    group: int  # query heads per kv head
    block_m: int  # tile rows: group * Nq padded to a power of two >= 16, at most 128 (64 at D 256)
    m_blocks: int  # row blocks per (sequence, kv head)
    block_d: int  # head dim padded to a power of two
    programs: int  # programs of the split kernel before splitting: B * H_kv * m_blocks
    overlap_combine: bool  # launch the combine with programmatic dependent launch (Hopper and later)


def new_buffer(shape, dtype, device) -> torch.Tensor:
    """Every output and partial buffer is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (``triton.cdiv`` is a JIT function: slow to call from the host)."""
    return -(-a // b)


def split_constexprs(call: DecodeCall, block_n: int, splits: int) -> dict:
    """The split kernel's constexprs for ``call`` (the compile checks in the tests build these too)."""
    return dict(GROUP=call.group, HEAD_DIM=call.q.shape[-1], BLOCK_D=call.block_d, BLOCK_M=call.block_m,
                BLOCK_N=block_n, PAGED=call.page_size > 0, PAGE_SIZE=max(call.page_size, 1), WRITE_LSE=splits > 1,
                DOT_PRECISION="ieee" if call.q.dtype == torch.float32 else "tf32",
                OVERLAP=call.overlap_combine and splits > 1)


def run(call: DecodeCall, tile: Tile, splits: int) -> None:
    """Write ``call.out`` with ``splits`` splits of the keys, the split kernel running ``tile``."""
    q, k, v, out = call.q, call.k_cache, call.v_cache, call.out
    B, Nq, H, D = q.shape
    if splits == 1:
        o_part, lse_part, o_split_stride, lse_strides = out, out, 0, (0, 0, 0, 0)
    else:
        o_part = new_buffer((splits, B, Nq, H, D), torch.float32, q.device)
        lse_part = new_buffer((splits, B, Nq, H), torch.float32, q.device)
        o_split_stride, lse_strides = o_part.stride(0), lse_part.stride()
    table = call.block_table if call.block_table is not None else call.cache_seqlens  # a placeholder never read
    split_kernel[(call.programs, splits)](
        q, k, v, o_part, lse_part, call.cache_seqlens, table, call.qk_scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o_split_stride, o_part.stride(-4), o_part.stride(-3), o_part.stride(-2),
        *lse_strides,
        table.stride(0),
        k.shape[2], call.m_blocks, splits, Nq, call.capacity, max(call.num_blocks, 1),
        **split_constexprs(call, tile.block_n, splits), num_warps=tile.num_warps, num_stages=tile.num_stages)
    if splits > 1:
        rows = B * Nq * H
        block_s = max(2, next_pow2(splits))
        block_dc = min(call.block_d, max(16, _COMBINE_TILE // block_s))
        combine_kernel[(rows, cdiv(D, block_dc))](
            o_part, lse_part, out, rows, splits, HEAD_DIM=D, BLOCK_S=block_s, BLOCK_DC=block_dc,
            OVERLAP=call.overlap_combine, num_warps=_COMBINE_WARPS, launch_pdl=call.overlap_combine)
