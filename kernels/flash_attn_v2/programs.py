"""What one program of the FA2 Triton kernels works on: its rows, the blocks it visits, its mask.

``locate``: the program's block, batch (or sequence), head and sequence extents, for the dense layout
(grid over blocks x batch*heads, ``_schedule.block_and_head``) and for packed variable-length batches
(grid over the rows of a device-built (sequence, block) table x heads, ``_schedule.SequenceBlocks``).

``span``: the loop bounds over the other axis.  A query i sees key j iff
i + diag - LEFT <= j <= i + diag + RIGHT (diag = Nkv - Nq, FlashAttention's sliding window, bottom-right
aligned; causal is RIGHT = 0; the launcher passes an unbounded side as Nq + Nkv, which no index
reaches, so one formula serves dense, causal and windowed calls).  For the rows [first, last] of a
block, [lo, hi) holds every block of the other axis that some row sees, and [full_lo, full_hi) the
blocks that every row sees entirely: those run with no mask arithmetic, the edge blocks
[lo, full_lo) and [full_hi, hi) apply ``visible``, and blocks outside [lo, hi) are never visited, so
the work of a windowed call scales with the window.  A key-major program (dK/dV) calls it with
diag -> -diag and the reaches swapped.

``visible``: the mask of an edge block, (query i, key j) broadcast by the caller.

Only these masks: bottom-right causal, FlashAttention's sliding window and the sequence tails; no
top-left alignment, no arbitrary or block-sparse masks.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._schedule import block_and_head


@triton.jit
def locate(TABLE, CU_Q, CU_K, H, N_Q, N_KV,
           HEAVY_LAST_BLOCK: tl.constexpr, GROUP_PROGRAMS: tl.constexpr, VARLEN: tl.constexpr):
    """(block, batch or sequence [int64], head along grid axis 1, first query row [int64], Nq,
    first key row [int64], Nkv) of this program.

    Dense: grid (blocks, batch * H); the sequences are N_Q and N_KV long and start at row 0 of their
    batch entry.  Varlen: grid (table rows, H); row e of TABLE is (sequence b, block), heaviest first
    (launched in block_and_head's grouped order), and sequence b holds the packed rows
    [CU_Q[b], CU_Q[b + 1]) of q and [CU_K[b], CU_K[b + 1]) of k and v; N_Q and N_KV are then total_q
    and total_k, into which the offsets are clamped (start in [0, total], end in [start, total]: a
    no-op for valid offsets; unchecked invalid ones then cannot move a program outside the packed
    tensors).  A padding row (sequence -1, ``_schedule.SequenceBlocks``) is an empty program: sequence
    0 for the pointer arithmetic, block 0, q0 = k0 = 0 and Nq = Nkv = 0, so its loops run zero times
    and its masked loads and stores touch nothing.
    """
    if VARLEN:
        entry, head = block_and_head(tl.num_programs(1), False, GROUP_PROGRAMS)
        seq = tl.load(TABLE + 2 * entry)
        real = seq >= 0
        b = tl.maximum(seq, 0)
        blk = tl.where(real, tl.load(TABLE + 2 * entry + 1), 0)
        q0 = tl.minimum(tl.maximum(tl.load(CU_Q + b), 0), N_Q)
        n_q = tl.minimum(tl.maximum(tl.load(CU_Q + b + 1), q0), N_Q) - q0
        k0 = tl.minimum(tl.maximum(tl.load(CU_K + b), 0), N_KV)
        n_kv = tl.minimum(tl.maximum(tl.load(CU_K + b + 1), k0), N_KV) - k0
        q0 = tl.where(real, q0, 0)
        n_q = tl.where(real, n_q, 0)
        k0 = tl.where(real, k0, 0)
        n_kv = tl.where(real, n_kv, 0)
        return blk, b.to(tl.int64), head, q0.to(tl.int64), n_q, k0.to(tl.int64), n_kv
    else:
        blk, bh = block_and_head(tl.num_programs(1), HEAVY_LAST_BLOCK, GROUP_PROGRAMS)
        return blk, (bh // H).to(tl.int64), bh % H, 0, N_Q, 0, N_KV


@triton.jit
def span(first, last, n_other, shift, reach_before, reach_after, BLOCK: tl.constexpr,
         BOUNDED_BEFORE: tl.constexpr = True, BOUNDED_AFTER: tl.constexpr = True):
    """(lo, full_lo, full_hi, hi) along the other axis for own rows [first, last]: other index x is seen
    by own index y iff y + shift - reach_before <= x <= y + shift + reach_after and 0 <= x < n_other.

    lo, full_lo and full_hi are multiples of BLOCK (or equal to hi) with lo <= full_lo <= full_hi <= hi:
    blocks in [lo, full_lo) and [full_hi, hi) are partly seen (masked), blocks in [full_lo, full_hi)
    seen whole by every own row, nothing outside [lo, hi) is seen.  ``_schedule.visible_span`` is the
    same span before rounding to blocks (the host orders varlen programs by it).  A reach the caller
    knows at compile time to be unbounded (BOUNDED_* False) gives constant bounds on that side, so
    a dense call's loops are those of a kernel without windows.
    """
    if BOUNDED_BEFORE:
        # the clamp never binds for valid rows (their first seen index is < n_other); it tells the
        # compiler lo <= n_other, without which the sm_90 causal dK/dV builds grew by 10-20%
        lo = tl.minimum((tl.maximum(first + shift - reach_before, 0) // BLOCK) * BLOCK, n_other)
    else:
        lo = 0
    if BOUNDED_AFTER:
        hi = tl.maximum(tl.minimum(n_other, last + shift + reach_after + 1), lo)
        full_hi = (tl.maximum(tl.minimum(n_other, first + shift + reach_after + 1), 0) // BLOCK) * BLOCK
    else:
        hi = n_other
        full_hi = (n_other // BLOCK) * BLOCK
    if BOUNDED_BEFORE:
        full_lo = tl.minimum(tl.cdiv(tl.maximum(last + shift - reach_before, 0), BLOCK) * BLOCK, hi)
        full_hi = tl.maximum(full_hi, full_lo)
    else:
        full_lo = 0
    return lo, full_lo, full_hi, hi


@triton.jit
def visible(i, j, diag, N_KV, WIN_LEFT, WIN_RIGHT, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """True where query i sees key j, for the masked blocks of ``span``.  A window tests both reaches
    and the key tail (a right reach can pass Nkv); causal alone tests the diagonal (a row below Nq
    never reaches past Nkv); otherwise the only edge is the key tail."""
    if WINDOW:
        return (j < N_KV) & (j >= i + diag - WIN_LEFT) & (j <= i + diag + WIN_RIGHT)
    elif CAUSAL:
        return j <= i + diag
    else:
        return j < N_KV
