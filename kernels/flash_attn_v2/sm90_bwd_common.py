"""Pieces both Gluon Hopper backwards share (``sm90_bwd`` at D64/D128, ``sm90_bwd_d256`` at D256): their register
split, the 1-D descriptors of the row statistics L and Delta, the fp32 dQ tile's way into the accumulator (a
conflict-free store to shared memory, then a TMA reduce-add), where a program works (dense or packed), the buffers
of its Q and dO rings, where each query head of its group starts, and the way dK and dV leave."""
from __future__ import annotations

import torch
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .._descriptors import tma_descriptor
from .._schedule import block_and_head
from .sm90 import _store_rows, packed_program

PRODUCER_REGS = 24
CONSUMER_REGS = 240
MAXNREG = 168  # 12 warps x 168 fill the register file; reallocation gives 24 / 240 / 240 (as sm90.py)
LOG2E = 1.4426950408889634
_STAT_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)  # L, Delta tiles: plain


def stat_descriptor(stat: torch.Tensor, block_m: int) -> TensorDescriptor:
    """A 1-D TMA descriptor over a contiguous float32 row statistic (L or Delta: (B, H, Nq) dense, (H, total_q)
    packed), a tile being one query block's ``block_m`` values."""
    if stat.data_ptr() % 16:  # TMA reads from 16-byte aligned addresses only (a view into a larger buffer may not be)
        stat = stat.reshape(-1).clone()
    return tma_descriptor(stat, [stat.numel()], [1], [block_m], _STAT_LAYOUT)


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """global[coord] += shared ``src`` through the tensor copy engine (``cp.reduce.async.bulk.tensor``, .add).

    Triton 3.6's Gluon has the op (``ttng.async_tma_reduce``) but no Python wrapper for it on Hopper; this is
    that wrapper.  Completion is tracked like a TMA store's: ``tma.store_wait`` before ``src`` is reused."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


@gluon.constexpr_function
def _dq_swapped_view(rows, cols):
    """The fp32 dQ tile's shared layout (128-byte swizzle, 32-column blocks) as seen through a tensor whose odd rows
    have the 8-column groups g and g XOR 2 of each block exchanged: element offset bits -> (row, column).  As the
    swizzle, but the offset's first row bit also flips column bit 4."""
    bases = [[0, 1 << i] for i in range(5)] + [[1, 4 | 16], [2, 8], [4, 16]]
    bases += [[1 << i, 0] for i in range(3, int(rows).bit_length() - 1)]
    bases += [[0, 32 << i] for i in range(int(cols).bit_length() - 6)]
    return gl.SharedLinearLayout(bases)


@gluon.jit
def _store_dq(dq_smem, dq):
    """dq_smem = dq, conflict-free.  Stored as it is, an 8-byte store of the wgmma accumulator writes, per half-warp,
    32 bytes of each of 4 consecutive rows, and the 128-byte swizzle puts rows 2k and 2k + 1 on the same four of
    the eight 16-byte units: 2 wavefronts where 1 would do (counted and measured in
    results/evidence/h200/gluon_bwd_ncu_dq_store/).  Instead the lanes of odd rows exchange their column groups g
    and g XOR 2 (a select per value, within each thread) and store through a view of the tile whose layout undoes
    the exchange, so each value lands where the TMA reduce reads it, and a half-warp covers all eight units."""
    R: gl.constexpr = dq.shape[0]
    C: gl.constexpr = dq.shape[1]
    gl.static_assert(C % 32 == 0, "the view assumes the tile is whole 32-column (128-byte) swizzle blocks")
    layout: gl.constexpr = dq.type.layout
    a, b = dq.reshape([R, C // 32, 2, 16]).permute((0, 1, 3, 2)).split()
    swapped = gl.join(b, a).permute((0, 1, 3, 2)).reshape([R, C])
    swapped = gl.convert_layout(swapped, layout)
    odd = (gl.arange(0, R, layout=gl.SliceLayout(1, layout)) % 2 == 1)[:, None]
    view = dq_smem._reinterpret(gl.float32, [R, C], _dq_swapped_view(R, C))
    view.store(gl.where(odd, swapped, dq))


@gluon.jit
def reduce_dq(dq_desc, row, col, dq_smem, dq):
    """global dQ[row:, col:] += the fp32 tile dq, through the one staging tile dq_smem: wait for the reduce that last
    read it, store dq there (``_store_dq``), make it visible to the tensor copy engine and start the reduce-add (not
    waited for: the next call's wait, or the kernel's end, covers it)."""
    tma.store_wait(0)
    _store_dq(dq_smem, dq)
    fence_async_shared()
    _tma_reduce_add(dq_desc, [row, col], dq_smem)


@gluon.jit
def dense_key_block(H, GROUP, N_Q, N_KV, BLOCK_N: gl.constexpr, GROUP_PROGRAMS: gl.constexpr):
    """Where a dense backward program works, grid (Nkv / BLOCK_N, B * H_kv): (n0, bh0, kv_row, diag), its key block's
    first key, the first query head of its kv head's group among the B * H, the block's first row of the
    (B*H_kv*Nkv, D) views, and the causal diagonal's offset (query m sees key n iff n <= m + diag).  Key block 0 is
    the heaviest when causal (every query block sees it): ``block_and_head`` launches it first."""
    pid_n, pid_bhk = block_and_head(gl.num_programs(1), False, GROUP_PROGRAMS)
    n0 = pid_n * BLOCK_N
    H_KV = H // GROUP
    b = pid_bhk // H_KV
    hk = pid_bhk % H_KV
    return n0, b * H + hk * GROUP, pid_bhk * N_KV + n0, N_KV - N_Q


@gluon.jit
def packed_key_block(table_ptr, cu_q_ptr, cu_k_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
                     GROUP_PROGRAMS: gl.constexpr):
    """Where a packed backward program works, grid (rows of the (sequence, BLOCK_N-key block) table, H_kv), over the
    (total, heads * HEAD_DIM) views: (n0, diag, m_lo, n_mb, n_masked, n_tail, bh0, q_col0, n_q, n_kv, kv_row, kv_col,
    kv_stride).  n0 is the block's first key within its sequence, diag = n_kv - n_q its bottom-right diagonal;
    the sequence's n_mb query blocks from m_lo see some key of the block, the first n_masked of them cross the
    diagonal (all when the keys run past the sequence), those from n_tail on run past its last row or are crossed
    by the window's left edge, and the ones between are seen whole; bh0 is the sequence's first row, q_col0 the kv
    head's first query head's column, kv_row, kv_col the block's first key, kv_stride the keys' row stride."""
    # the program's (sequence, key block) row of the table, heaviest first, as the packed forward reads its own:
    # offsets clamped into the packed tensors; a padding row (sequence -1) visits nothing
    entry, hk = block_and_head(gl.num_programs(1), False, GROUP_PROGRAMS)
    real, n0, q0, n_q, kv0, n_kv = packed_program(table_ptr, entry, cu_q_ptr, cu_k_ptr, N_Q, N_KV, BLOCK_N)
    diag = n_kv - n_q  # bottom-right within the sequence: query m sees key n iff n <= m + diag (causal)
    # the rows [first, last] see some key of the block; query blocks start at the sequence's first row
    if CAUSAL:
        first = gl.maximum(n0 - diag, 0)
        if WINDOW:
            last = gl.minimum(n0 + BLOCK_N - 1 - diag + WIN_LEFT, n_q - 1)
        else:
            last = n_q - 1
    else:
        first = 0
        last = n_q - 1
    m_lo = first // BLOCK_M
    n_mb = gl.where(real & (n0 < n_kv) & (last >= first), gl.cdiv(last + 1, BLOCK_M) - m_lo, 0)
    # blocks seen whole, without mask arithmetic: all rows inside the sequence, the first row sees the block's last
    # key (causal), the last row its first key (window); none when the keys run past the sequence
    if CAUSAL:
        head_end = gl.cdiv(gl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M)
    else:
        head_end = 0
    tail_start = n_q // BLOCK_M
    if WINDOW:
        tail_start = gl.minimum(tail_start, gl.maximum(n0 - diag + WIN_LEFT + 1, 0) // BLOCK_M)
    head_end = gl.where(n0 + BLOCK_N <= n_kv, head_end, m_lo + n_mb)
    n_masked = gl.minimum(gl.maximum(head_end - m_lo, 0), n_mb)
    n_tail = gl.minimum(gl.maximum(tail_start - m_lo, n_masked), n_mb)
    return (n0, diag, m_lo, n_mb, n_masked, n_tail, q0, hk * GROUP * HEAD_DIM, n_q, n_kv, kv0 + n0, hk * HEAD_DIM,
            (H // GROUP) * HEAD_DIM)


@gluon.jit
def head_rows(g, bh0, q_col0, N_Q, HEAD_DIM: gl.constexpr, VARLEN: gl.constexpr):
    """(row0, q_col, stat0) of query head g of the program's group: its first row and column in the Q and dO views,
    and (packed) where its L and Delta start.  Dense (bh0 the group's first of the B * H heads): row (bh0 + g) * N_Q,
    column 0, stat0 0 (L and Delta come by TMA).  Packed (bh0 the sequence's first row, q_col0 the group's first
    column of the (total_q, H * HEAD_DIM) views, N_Q = total_q): row bh0, column q_col0 + g * HEAD_DIM, and stat0
    the sequence's first value of the head's row of the (H, total_q) L and Delta."""
    if VARLEN:
        row0 = bh0
        q_col = q_col0 + g * HEAD_DIM
        stat0 = (q_col0 // HEAD_DIM + g) * N_Q + bh0
    else:
        row0 = (bh0 + g) * N_Q
        q_col = 0
        stat0 = 0
    return row0, q_col, stat0


@gluon.jit
def store_dk_dv(dk_desc, dv_desc, dk_ptr, dv_ptr, dk_tile, dv_tile, row, col, row_stride, n_keys,
                VARLEN: gl.constexpr, NUM_WARPS: gl.constexpr):
    """A consumer's dK and dV, staged in the shared tiles ``dk_tile``, ``dv_tile`` (rows: keys), to rows
    [row, row + rows) at column ``col`` of the dK, dV views: by TMA, or packed where fewer than the tile's rows
    (``n_keys``) are the sequence's, by pointer (``dk_ptr``, ``dv_ptr``, rows ``row_stride`` elements apart): a TMA
    store of the whole tile would write over the next sequence's gradients."""
    ROWS: gl.constexpr = dk_tile.shape[0]
    COLS: gl.constexpr = dk_tile.shape[1]
    if VARLEN:
        if n_keys >= ROWS:
            fence_async_shared()
            tma.async_copy_shared_to_global(dk_desc, [row, col], dk_tile)
            tma.async_copy_shared_to_global(dv_desc, [row, col], dv_tile)
            tma.store_wait(0)
        else:
            _store_rows(dk_ptr, dk_tile, row, col, row_stride, n_keys, ROWS, COLS, NUM_WARPS)
            _store_rows(dv_ptr, dv_tile, row, col, row_stride, n_keys, ROWS, COLS, NUM_WARPS)
    else:
        fence_async_shared()
        tma.async_copy_shared_to_global(dk_desc, [row, col], dk_tile)
        tma.async_copy_shared_to_global(dv_desc, [row, col], dv_tile)
        tma.store_wait(0)


@gluon.jit
def q_do_rings(q_desc, do_desc, lse, delta, Q_STAGES: gl.constexpr, DO_STAGES: gl.constexpr, VARLEN: gl.constexpr):
    """(q_bufs, do_bufs, lse_bufs, delta_bufs): the shared buffers of the Q and dO rings (``Q_STAGES``, ``DO_STAGES``
    query blocks of the descriptors' tiles) and, dense, of L's and Delta's beside them; packed, the consumers read L
    and Delta from global memory, and the Q and dO buffers stand in for theirs (never used)."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [Q_STAGES, BLOCK_M, HEAD_DIM], q_desc.layout)
    do_bufs = gl.allocate_shared_memory(do_desc.dtype, [DO_STAGES, BLOCK_M, HEAD_DIM], do_desc.layout)
    if VARLEN:
        lse_bufs = q_bufs
        delta_bufs = do_bufs
    else:
        lse_bufs = gl.allocate_shared_memory(gl.float32, [Q_STAGES, BLOCK_M], lse.layout)
        delta_bufs = gl.allocate_shared_memory(gl.float32, [DO_STAGES, BLOCK_M], delta.layout)
    return q_bufs, do_bufs, lse_bufs, delta_bufs
