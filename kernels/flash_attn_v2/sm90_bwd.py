"""FlashAttention backward for Hopper (sm_90) in Gluon: FA2's Algorithm 2 with FlashAttention-3's backward layout.

``flash_attn_v2`` runs it by default wherever it takes the inputs (it measured faster than the Triton backward at
every shape timed; ``FA2Options.backward``; kernels/DESIGN.md has the figures).  Compiles for sm_90 at D 64 and 128,
causal or not, with causal sliding windows, dense or packed (168 registers, 12 warps; bytes of stack a thread spilled:
the causal builds 112 (D128; 88 walked downward) and 136 (D64), with a window 160 and 168, the packed builds 96-320,
the dense non-causal ones 8 (D128) and none (D64)).  At D256 this module launches ``sm90_bwd_d256``'s kernel instead
(dense or packed, causal windows included; the head dim split between the consumers, as FlashAttention-3 lays out its
hdim-256 backward): the launch path, the accumulator, its chunks and the dQ conversion below are the same.

What is implemented
-------------------
The backward of FA2 paper (Dao 2023) Algorithm 2 in one pass over the key blocks, as FlashAttention-3
(Shah et al. 2024, section 3 and its Hopper backward) arranges it, written in Gluon like ``sm90.py``:

  * one program per (key block of ``BLOCK_N`` = 128 keys, batch * kv head).  K_j and V_j are loaded once
    (TMA) and stay in shared memory; dK_j and dV_j are fp32 register accumulators.  The program walks
    the query blocks of ``BLOCK_M`` rows (64 at D128, 128 at D64) that see some key of its block, and
    under GQA/MQA the query heads sharing its kv head, one after the other, so dK and dV of a kv head are
    summed over its query heads in registers (Algorithm 2's outer loop over j, inner loop over i);
  * warp specialisation (FA3 3.1): a 1-warp producer partition issues the TMA loads of Q_i and dO_i into
    ``STAGES``-deep rings (``ring_stages``: 3 at D128, 2 at D64 and with windows; a ready and an empty mbarrier a
    slot, as ``sm90.py``), and for dense inputs L_i and Delta_i beside them on the same barriers (1-D descriptors
    over the flat statistics, ``stat_descriptor``; as FA3's producer loads LSE and dPsum).  Read from global memory
    by the consumers, each step waited for them: under ncu about a tenth of the stall samples, the backward 3-7%
    slower.  A packed sequence's rows start at any row, and TMA reads from 16-byte aligned starts only, so for
    packed batches the consumers still read them (masked past the sequence); two 4-warp consumer
    partitions (one warp group each) own 64 of the block's 128 keys each (their halves of K_j, V_j, dK_j,
    dV_j) and share every Q_i / dO_i tile.  setmaxnreg gives the producer 24 registers and the consumers 240;
  * per step, in each consumer, with the products transposed as FA3 does (its ``SdP_swapAB``) so that P
    and dS come out with keys as rows, ready to be the register A operand of the dV / dK products:
        S^T  = K_w Q_i^T                         (wgmma, A = K_w smem, B = Q_i smem transposed view)
        dP^T = V_w dO_i^T                        (wgmma, issued before S^T is waited for)
        P^T  = exp2(S^T * scale * log2(e) - L_i) (L_i: the forward's base-2 log-sum-exp, line 13)
        dV_w += P^T dO_i                         (wgmma, A = P^T from registers, line 16; D128 split layout:
                                                  issued before dP^T is waited for, so the exponentials run
                                                  under dP^T)
        dS^T = P^T o (dP^T - Delta_i)            (Delta_i = rowsum(dO_i o O_i), line 4, precomputed; the dense
                                                  split builds subtract it here from dP^T started from zero,
                                                  the others start dP^T from -Delta_i)
        dK_w += dS^T Q_i                         (wgmma, A = dS^T from registers, line 21)
        dQ_i  = dS K                             (wgmma, A = a transposed view of dS^T in shared memory; below;
                                                  D64 causal builds issue it before dK's product, so the tile's
                                                  store and reduce run under dK's: ``DQ_FIRST``)
    then dQ_i goes to an fp32 accumulator in global memory by TMA reduce-adds (``cp.reduce.async.bulk.tensor
    .add.f32``, FA3's bulk reduce of dQaccum; Algorithm 2 line 21 does it with atomic adds), from shared memory,
    while the next step computes (the buffer is reused after ``tma.store_wait``).  The tile is written to shared
    memory without bank conflicts (``sm90_bwd_common._store_dq``: the lanes of odd rows exchange two column groups
    and store through a view that undoes it; stored as it is, every store took twice its wavefronts: the backward
    alone 0.94-0.98 of the time).  How the dQ product is split:
      - D128 (``"split_cols"``, ``dq_layout``), as FA3: each consumer writes its rows of dS^T into one
        (128 keys, 64) tile of the block and arrives on that step's mbarrier; consumer w computes
        dQ_i[:, 64w : 64w + 64] = dS K_j[:, 64w : 64w + 64] over all 128 keys and reduces that (64, 64) half.
        It issues that product as two over the keys: its own 64 first, then, after waiting for the other's
        arrival, the other's 64 into the same accumulator, so the wait overlaps a product (the backward alone
        0.96 of the time causal, level non-causal).  One reduce of the tile a step; dS^T is double-buffered
        (a consumer writes step t + 1's while the other may still read step t's; it waits on step t + 1's
        barrier before step t + 2 writes the buffer again, and the other has retired step t's products by
        then), and K_j is overwritten with dK only after both consumers' last products (one more barrier).
        Measured against the per-consumer layout: the backward alone 0.94-0.97 of the time non-causal,
        0.80-0.84 causal (kernels/DESIGN.md);
      - D64 (``"split_rows"``): a 32-column half of K_j would be narrower than the 128-byte swizzle its tile is
        stored with, so it cannot be an operand; instead the steps take 128 query rows (``block_m``: S^T and
        dP^T of 64 keys x 128 queries fit beside dK and dV of 64 x 64) and consumer w computes the rows
        dQ_i[64w : 64w + 64, :] = dS[64w : 64w + 64, all 128 keys] K_j, with the same barriers and two
        products.  Measured against the per-consumer layout: the backward alone 0.78-0.88 of the time;
      - ``"per_consumer"`` (either head dim, kept to measure the others against): each consumer computes
        dQ_i = dS_w K_w over its own 64 keys and reduces that partial: two reduces of the tile a step, no
        synchronisation between the consumers;
  * causal: query blocks entirely above the diagonal are never visited; the first BLOCK_N / BLOCK_M
    visited query blocks of a key block on or past the diagonal (Nq, Nkv multiples of 128: the diagonal
    starts exactly at a visited block) are masked steps, the others run without mask arithmetic.
    Programs are launched heaviest first across groups of heads (``_schedule.block_and_head``; key block
    0 is the heaviest, as in the Triton dK/dV kernel).  Dense D128 causal calls of 2048 queries or more walk each
    head's query blocks from the last down (``descending_walk``, ``DESCENDING``): the programs running side by
    side then read the same Q_i and dO_i at about the same time (backward alone 0.98-0.99 of the time at 2k,
    0.88-0.97 at 4k-16k, 1.06 at 1k, on an H100); the others walk upward;
  * causal sliding windows (left, 0): a key block is visited only by the query blocks whose rows reach it
    (the work scales with the window); those its left edge crosses are masked steps as well (``WINDOW``);
  * packed batches (``backward_varlen``, ``VARLEN``): one program per (sequence, 128-key block) row of the
    device-built table (``_schedule.SequenceBlocks`` over the keys, heaviest first) and kv head; descriptors
    over the (total, heads * D) views, a head being a column offset; query blocks start at the sequence's first
    row.  Steps whose rows or keys run past the sequence, cross its diagonal or the window's edge are masked (a
    key block past the sequence's end masks every step); the neighbours' rows a tile covers add exact zeros to
    dQ; the last key block's dK, dV are stored by pointer, row by row, so the next sequence's are not touched;
  * afterwards a small Triton kernel writes dQ = sm_scale * dQaccum in dQ's dtype (FA3's postprocess);
    dK is scaled by sm_scale before its store; dK and dV are stored by TMA through the consumers' halves
    of the K / V tiles (free by then).

Delta is the caller's (the Triton preprocess kernel's, ``kernels.bwd_preprocess_kernel``).  Memory beyond the
gradients: the fp32 dQ accumulator (``dq_acc``).  Whole, it is shaped like q (twice dQ's size), zeroed with Delta by
the preprocess kernel (FA3's preprocess clears it the same way) or here.  Dense calls may instead run their
(batch, kv head) pairs in chunks (``prepare_backward``'s ``chunk_pairs``, sized by ``dq_chunk_pairs``; the
launcher's ``FA2Options.dq_chunk_waves``, 8 waves of programs by default): each chunk is one launch of this kernel
on views of the chunk's pairs (a contiguous (B, H, ...) tensor is (pairs, GROUP, ...)), into one chunk-sized
accumulator that the chunk's conversion zeroes again for the next, so the accumulator is bounded by the GPU
(about 66 MiB at D128 on 132 SMs), not by the batch.  fwd_bwd peak above the inputs at 16k tokens, hidden 2048,
on an H100: 323 MiB at D128 and 294 at D64 chunked, 387 and 390 whole, 260 with the Triton backward, cuDNN's
386-388.  ``backward="triton"`` keeps to the gradients plus O(N).

Determinism: NOT deterministic.  The reduce-adds into dQ arrive in whatever order the programs run, so
fp32 rounding differs from run to run (dK and dV are deterministic).  The Triton backward (``kernels.py``:
a separate dQ kernel, no atomics) is bit-reproducible: ``FA2Options(backward="triton")`` is the
deterministic path, as flash-attn's ``deterministic=True``.

What it does not support (``unsupported_reason`` says which; the launcher then runs the Triton backward):
GPUs other than capability 9.x; the interpreter; fp32 and anything but fp16/bf16; head dims other than
64, 128 and 256; dense sequence lengths that are not multiples of 128
(no tail masking: the descriptors span all heads; packed batches take any lengths); dense causal with Nq > Nkv;
windows with a right reach (non-causal); q, k, v that are not contiguous; 2**31 rows or more.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._descriptors import tma_descriptor
from .._prepared import PreparedLaunch
from .._schedule import block_and_head
from . import sm90, sm90_bwd_d256
from .sm90 import descriptor, packed_descriptor, ring_barriers
from .sm90_bwd_common import (CONSUMER_REGS, LOG2E, MAXNREG, PRODUCER_REGS, head_rows, packed_key_block, q_do_rings,
                              reduce_dq, stat_descriptor, store_dk_dv)

BLOCK_N = sm90.BLOCK  # keys per program, 64 per consumer warp group (input_reason: the forward's block)
STAGE_CHOICES = (2, 3)  # Q and dO ring depths that fit (3: 226 KiB of shared memory with a split dQ)
DESCENDING_MIN_N = 2048  # D128 causal: query rows from which a launch walks its query blocks downward
CHUNK_REF_N = 4096  # dq_chunk_pairs: the queries of a program its chunks' waves are counted in
# How the consumers share a step's dQ product (``dq_layout``): "split_cols" (D128): each computes half of the head-dim
# columns over all the block's keys; "split_rows" (D64, 128-row query blocks): each computes half of the query rows
# over all the keys; "per_consumer": each computes all of dQ_i over its own 64 keys and reduces that partial
# "split_head_dim" (D256, ``sm90_bwd_d256``): each consumer owns half the head dim of dK^T, dV^T and dQ over all the
# block's 64 keys
DQ_LAYOUTS = ("split_cols", "split_rows", "per_consumer", "split_head_dim")
_LAYOUT_HEAD_DIMS = {"split_cols": (128,), "split_rows": (64,), "per_consumer": (64, 128), "split_head_dim": (256,)}
# the head dims some dQ layout runs: what this backward takes (``_layout_reason``)
HEAD_DIMS = tuple(sorted({d for dims in _LAYOUT_HEAD_DIMS.values() for d in dims}))


def dq_layout(head_dim: int) -> str:
    """The dQ layout a head dim runs by default (the one measured fastest; kernels/DESIGN.md)."""
    return {128: "split_cols", 256: "split_head_dim"}.get(head_dim, "split_rows")


def ring_stages(head_dim: int, window: bool = False, layout: str | None = None) -> int:
    """The Q / dO ring depth a launch uses: 3 with D128's split dQ without a window (backward alone 0.95-0.97 of
    the time of 2 stages non-causal, level causal; results/evidence/h200/gluon_bwd_stages/), else 2 (3 measured
    1-3% slower at D64; windows were measured with 2; the per-consumer layout has no room for a third); at D256 the
    Q ring's 2 (``sm90_bwd_d256``: beside a 1-slot dO ring, for lack of room)."""
    layout = layout or dq_layout(head_dim)
    if layout == "split_head_dim":
        return sm90_bwd_d256.STAGES
    return 3 if layout == "split_cols" and not window else 2


def block_m(head_dim: int, layout: str | None = None) -> int:
    """Query rows a step: 64, or 128 with "split_rows" (at D64: S^T and dP^T of 64 keys x 128 queries, 64 fp32
    registers each, beside dK and dV of 32).  At D128 a 128-row step does not fit the registers (dK and dV take 64
    each); 64 at D256."""
    return 128 if (layout or dq_layout(head_dim)) == "split_rows" else 64


def block_n(head_dim: int) -> int:
    """Keys a program: 128, 64 at D256 (``sm90_bwd_d256``)."""
    return sm90_bwd_d256.BLOCK_N if head_dim == sm90_bwd_d256.HEAD_DIM else BLOCK_N


def dq_tile(head_dim: int, layout: str) -> list[int]:
    """The (rows, columns) of dQ one consumer reduces a step."""
    bm = block_m(head_dim, layout)
    tiles = {"split_cols": [bm, head_dim // 2], "split_rows": [bm // 2, head_dim], "per_consumer": [bm, head_dim],
             "split_head_dim": sm90_bwd_d256.dq_tile()}
    return tiles[layout]


def layout_head_dims(layout: str) -> tuple[int, ...]:
    """The head dims a dQ layout runs."""
    return _LAYOUT_HEAD_DIMS[layout]


def check_dq_layout(head_dim: int, layout: str) -> None:
    """ValueError unless ``layout`` is a dQ layout that runs ``head_dim``."""
    if layout not in DQ_LAYOUTS:
        raise ValueError(f"sm90_bwd: dq_layout must be one of {', '.join(DQ_LAYOUTS)}, got {layout!r}")
    if head_dim not in _LAYOUT_HEAD_DIMS[layout]:
        # split_cols at D64: a 32-column half of K_j is narrower than its tile's 128-byte swizzle, so it cannot be
        # an operand; split_rows at D128: dK, dV, S^T and dP^T of a 128-row step need 256 registers; D256 runs its
        # own kernel
        raise ValueError(f"sm90_bwd: dq_layout {layout!r} runs head dim "
                         f"{' or '.join(map(str, _LAYOUT_HEAD_DIMS[layout]))}, got {head_dim}")


def config_label(head_dim: int, stages: int | None = None, layout: str | None = None, window: bool = False,
                 chunk_pairs: int | None = None, descending: bool = False) -> str:
    """What a launch log records for this backward (both "bwd_dkdv" and "bwd_dq": one kernel computes both);
    ``chunk_pairs``: the (batch, kv head) pairs a launch of a chunked call runs (``dq_chunk_pairs``), None for
    one launch over all; ``descending``: ``descending_walk``'s answer (",walk=descending")."""
    layout = layout or dq_layout(head_dim)
    stages = stages or ring_stages(head_dim, window, layout)
    chunks = "" if chunk_pairs is None else f",dq_chunk_pairs={chunk_pairs}"
    walk = ",walk=descending" if descending else ""
    name = "gluon_sm90_bwd_d256" if layout == "split_head_dim" else "gluon_sm90_bwd"
    return (f"{name},BLOCK_M={block_m(head_dim, layout)},BLOCK_N={block_n(head_dim)},num_warps=4+4+1,"
            f"num_stages={stages},tma=True,warp_specialize=True,dq=tma_reduce_add,dq_layout={layout}{chunks}{walk}")


def descending_walk(head_dim: int, n_q: int, causal: bool, window: bool) -> bool:
    """Whether a dense launch (``n_q`` queries a head) walks each head's query blocks from the last down rather
    than from the first up.

    Causal, every program of a head ends at the head's last query block, so walked downward the programs running
    side by side read the same Q_i and dO_i, and add into the same dQ_i, at about the same time.  Measured against
    the upward walk (results/evidence/h100/gluon_bwd_descending/, backward alone): D256 causal 0.87-0.96 of the
    time, non-causal level; D128 causal 0.98-0.99 at N 2k, 0.88-0.97 at 4k-16k, but 1.06 at 1k; D64 causal
    0.98-1.04 (so upward).
    The D256 kernel walks downward always, causal windows included; at D64 and D128 windows and packed batches walk
    upward (not measured downward)."""
    if head_dim == sm90_bwd_d256.HEAD_DIM:
        return True
    return head_dim == 128 and causal and not window and n_q >= DESCENDING_MIN_N


def dq_descriptor(dq_acc: torch.Tensor, layout: str):
    """The TMA descriptor of the fp32 dQ accumulator, a tile being what one consumer reduces (``dq_tile``), over
    its 2-D view: (B*H*Nq, D) dense, (total_q, H*D) packed ((total_q, H, D): a head is a column offset).  Its
    base is the accumulator itself (``sm90.descriptor``: no view made a call)."""
    D = dq_acc.shape[-1]
    rows, cols = dq_tile(D, layout)
    width = dq_acc.shape[1] * D if dq_acc.dim() == 3 else D
    return tma_descriptor(dq_acc, [dq_acc.numel() // width, width], [width, 1], [rows, cols],
                            sm90._smem_layout(rows, cols, torch.float32))


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: bool = False,
                       varlen: bool = False) -> str | None:
    """Why this backward cannot run these (validated) inputs here, or None when it can.  ``window``: a sliding
    window beyond the causal mask (with ``causal``, a left reach: taken; without, a right reach: not).
    ``varlen``: a packed batch, (total, heads, D) (``backward_varlen``)."""
    return _layout_reason(q, window, varlen) or sm90.device_reason(q) or input_reason(q, k, v, causal, window, varlen)


def input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: bool = False,
                 varlen: bool = False) -> str | None:
    """The part of ``unsupported_reason`` that depends on the inputs only, not on the GPU: head dims 64, 128 and
    256, then the conditions it shares with the Gluon forward (``sm90.shared_input_reason``: its 128-row blocks are
    whole key blocks of this kernel; causal windows only).  Packed batches at D256, which the forward does not
    take, run the D256 kernel here."""
    return _layout_reason(q, window, varlen) or sm90.shared_input_reason(q, k, v, causal, window, varlen)


def _layout_reason(q: torch.Tensor, window: bool, varlen: bool) -> str | None:
    if q.dim() != (3 if varlen else 4):
        return "packed (total, H, D) inputs for a packed batch" if varlen else "dense (B, H, N, D) inputs only"
    if q.shape[-1] not in HEAD_DIMS:  # checked here, before the forward's conditions
        return f"head_dim {q.shape[-1]}: {', '.join(map(str, HEAD_DIMS))} only (the Triton backward runs the others)"
    return None


@gluon.jit
def _producer(q_desc, do_desc, k_desc, v_desc, lse, delta, q_bufs, do_bufs, lse_bufs, delta_bufs, k_smem,
              v_smem, kv_bar, q_ready, q_empty, do_ready, do_empty, kv_row, kv_col, bh0, q_col0, m_lo, n_mb, N_Q, GROUP,
              BLOCK_M: gl.constexpr, STAGES: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr,
              DESCENDING: gl.constexpr):
    """Dense: head g's query rows start at row (bh0 + g) * N_Q of the (B*H*Nq, D) views, and its L and Delta (lse,
    delta: descriptors) at the same index of the flat (B*H*Nq) buffers: L_i rides with Q_i (one barrier), Delta_i
    with dO_i.  Packed (VARLEN): at row bh0 (the sequence's first) and column q_col0 + g * D of the
    (total_q, H * D) views; L and Delta are the consumers' to read.  A head's query blocks from m_lo up, or with
    DESCENDING from the last down (the consumers' order)."""
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [kv_row, kv_col], kv_bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [kv_row, kv_col], kv_bar, v_smem)
    if not (WINDOW or VARLEN):
        n_mb = N_Q // BLOCK_M - m_lo
    for t in range(GROUP * n_mb):  # n_mb query blocks a head, from block m_lo
        g = t // n_mb
        if DESCENDING:
            m = m_lo + n_mb - 1 - (t - g * n_mb)
        else:
            m = m_lo + t - g * n_mb
        row0, col, _ = head_rows(g, bh0, q_col0, N_Q, HEAD_DIM, VARLEN)
        row = row0 + m * BLOCK_M
        slot = t % STAGES
        # a slot's barriers start in phase 1 complete, so the first pass through the ring does not wait
        phase = ((t // STAGES) & 1) ^ 1
        mbarrier.wait(q_empty.index(slot), phase)
        # dense: L_i and Delta_i on Q_i's and dO_i's barriers; packed: the consumers read them (``_step``)
        mbarrier.expect(q_ready.index(slot), q_desc.block_type.nbytes + (0 if VARLEN else lse.block_type.nbytes))
        tma.async_copy_global_to_shared(q_desc, [row, col], q_ready.index(slot), q_bufs.index(slot))
        if not VARLEN:
            tma.async_copy_global_to_shared(lse, [row], q_ready.index(slot), lse_bufs.index(slot))
        mbarrier.wait(do_empty.index(slot), phase)
        mbarrier.expect(do_ready.index(slot), do_desc.block_type.nbytes + (0 if VARLEN else delta.block_type.nbytes))
        tma.async_copy_global_to_shared(do_desc, [row, col], do_ready.index(slot), do_bufs.index(slot))
        if not VARLEN:
            tma.async_copy_global_to_shared(delta, [row], do_ready.index(slot), delta_bufs.index(slot))


@gluon.jit
def _step(dk, dv, t, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, stat_row, k_w, k_cols, v_w, ds_bufs, dq_smem,
          q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, q_row, q_col, n_rows, n_keys, m0, n0, diag, win_left,
          qk_scale, zero_s, zero_dq, MASK: gl.constexpr, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
          VARLEN: gl.constexpr, KEYS: gl.constexpr, ROW0: gl.constexpr, QROW0: gl.constexpr, DQ_ROWS: gl.constexpr,
          COL0: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, DQ_SPLIT: gl.constexpr,
          s_layout: gl.constexpr, a_layout: gl.constexpr):
    """One query block against this consumer's keys: dQ rows q_row.. at column q_col of the accumulator's 2-D view, L
    and Delta in the ring slot beside Q and dO (dense) or at lse, delta + stat_row (packed: pointers to the
    flat (H, total_q) buffers).  Packed (VARLEN): n_rows of the block's rows and n_keys of the consumer's keys
    lie inside the sequence (the others belong to its neighbours: masked)."""
    slot = t % STAGES
    phase = (t // STAGES) & 1
    # Split dQ layouts (the defaults), dense: dP^T starts from zero and Delta_i is subtracted after the product
    # (below).  D128 split: dV's product is issued before the wait for dP^T.  D64 keeps the order P^T -> dS^T -> dV:
    # with the early issue its dense builds spilled more (0 -> 40 bytes a thread non-causal) and its backward took
    # 1.06-1.08 of the time on an H100 (kernels/DESIGN.md, Known limits).  The per-consumer layout (kept to measure
    # against) keeps the order and dP^T started from -Delta_i: with dP^T from zero its causal D128 dQ was wrong on an
    # H200 (0.57 off, |dQ| <= 0.62; cause not found)
    DP_FROM_ZERO: gl.constexpr = DQ_SPLIT and not VARLEN
    EARLY_DV: gl.constexpr = DQ_SPLIT and dv.shape[1] == 128
    # D64 causal builds, dense or packed (windows too): dQ's products issued before dK's (below). On an H100 the dense
    # backward took 0.957-0.985 of the time with it, packed fwd_bwd 0.973-0.984 (0.995 with a window); D128 moved by
    # -2.6..+1.7%, D64 non-causal +0.2..+3.0% (kernels/DESIGN.md)
    DQ_FIRST: gl.constexpr = DQ_SPLIT and CAUSAL and dv.shape[1] == 64
    if DQ_SPLIT:
        # dS^T of the whole key block, this consumer writing rows ROW0.. of it; two buffers, so that a consumer
        # writes step t + 1's while the other may still read step t's (it waits on step t + 1's barrier before
        # step t + 2 writes this one again, and by then the other has retired step t's products)
        ds_all = ds_bufs.index(t % 2)
        ds_smem = ds_all.slice(ROW0, KEYS)
    else:
        ds_smem = ds_bufs
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=col_layout)

    q_smem = q_bufs.index(slot)
    do_smem = do_bufs.index(slot)
    # L_i goes into the accumulator S^T starts from (S^T - L_i / scale), so its 16-register row vector is not live
    # during the softmax: with dK, dV, S^T and dP^T (192 registers) that phase has no room for it (ptxas spilled).
    # Delta_i: into dP^T's accumulator likewise, but in the dense split builds (DP_FROM_ZERO): there read from its
    # ring slot after dP^T is done (below).
    # scale > 0 (the launcher checks sm_scale); fp32 throughout.
    if VARLEN:
        # a sequence's rows start anywhere, and TMA reads from 16-byte aligned starts only: read from global memory
        # here (rows past the sequence, which may lie past the buffers, not at all)
        lse_i = gl.load(lse + stat_row + offs_m, mask=offs_m < n_rows, other=0.0)
        delta_i = gl.load(delta + stat_row + offs_m, mask=offs_m < n_rows, other=0.0)
        s_acc = zero_s - gl.expand_dims(lse_i / qk_scale, 0)
        mbarrier.wait(q_ready.index(slot), phase)
        s_tok = warpgroup_mma(k_w, q_smem.permute((1, 0)), s_acc, is_async=True)
        dp_acc = zero_s - gl.expand_dims(delta_i, 0)
        mbarrier.wait(do_ready.index(slot), phase)
    else:
        # dense: from shared memory, loaded by the producer with Q_i and dO_i.  Read from global memory at the step's
        # start instead (as packed batches are), each step waited for the load: under ncu a tenth of the stall
        # samples at D128, and the backward was 3-7% slower
        mbarrier.wait(q_ready.index(slot), phase)
        s_acc = zero_s - gl.expand_dims(lse_bufs.index(slot).load(col_layout) / qk_scale, 0)
        s_tok = warpgroup_mma(k_w, q_smem.permute((1, 0)), s_acc, is_async=True)
        mbarrier.wait(do_ready.index(slot), phase)
        if not DP_FROM_ZERO:
            dp_acc = zero_s - gl.expand_dims(delta_bufs.index(slot).load(col_layout), 0)
    if not DP_FROM_ZERO:
        dp_tok = warpgroup_mma(v_w, do_smem.permute((1, 0)), dp_acc, is_async=True)
    else:
        # dense split: dP^T starts from zero and Delta_i is subtracted after the product.  Started from -Delta_i
        # (loaded and negated after S^T's issue), ptxas moved the softmax's first reads of S^T ahead of dP^T's issue
        # and injected a wait for S^T there (its note C7517): dP^T then ran after S^T instead of beside it
        dp_tok = warpgroup_mma(v_w, do_smem.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    sT = warpgroup_mma_wait(1, deps=[s_tok])  # S^T - L_i / scale is done, dP^T may still run
    pT = gl.exp2(sT * qk_scale)
    if MASK:
        key_rows = gl.arange(0, KEYS, layout=gl.SliceLayout(1, s_layout))
        if CAUSAL:
            # query m0 + c sees key n0 + r iff r - (m0 + diag - n0) <= c (r, c: the positions in the tile).  The
            # per-step shift goes to the rows (2 a thread), compared with the columns as they are: written as
            # r - c <= shift, LLVM hoists the 31 distinct r - c of a thread out of the loop
            rows = key_rows - (m0 + diag - n0)
            visible = gl.expand_dims(rows, 1) <= gl.expand_dims(offs_m, 0)
            if WINDOW:
                # and the window's left edge: key n0 + r >= query m0 + c + diag - win_left
                visible = visible & (gl.expand_dims(rows + win_left, 1) >= gl.expand_dims(offs_m, 0))
            if VARLEN:
                visible = visible & gl.expand_dims(key_rows < n_keys, 1) & gl.expand_dims(offs_m < n_rows, 0)
        else:  # packed, not causal: the sequence's bounds only
            visible = gl.expand_dims(key_rows < n_keys, 1) & gl.expand_dims(offs_m < n_rows, 0)
        pT = gl.where(visible, pT, 0.0)
    if EARLY_DV:
        # dV += P^T dO_i needs P^T only: issued before the wait for dP^T, it makes the exponentials' results the
        # operand of a product issued ahead of that wait, so ptxas keeps them there (under dP^T) instead of sinking
        # most of them below it; and the tensor cores have dV's product while dS^T is computed
        p16 = gl.convert_layout(pT.to(q_smem.dtype), a_layout)
        dv_tok = warpgroup_mma(p16, do_smem, dv, is_async=True)
        dpT = warpgroup_mma_wait(1, deps=[dp_tok])  # groups retire in order: dP^T is done, dV's may still run
    else:
        dpT = warpgroup_mma_wait(0, deps=[dp_tok])
    if not DP_FROM_ZERO:
        dsT = pT * dpT  # P^T o (dP^T - Delta_i): the product started from -Delta_i
    else:
        dsT = pT * (dpT - gl.expand_dims(delta_bufs.index(slot).load(col_layout), 0))
    # dS^T in bf16: to shared memory for the dQ product (the other consumer's too), and kept in registers as the
    # operand of dK's product
    ds16 = dsT.to(ds_smem.dtype)
    ds_smem.store(ds16)
    if DQ_SPLIT:
        # dQ_i[QROW0 : QROW0 + DQ_ROWS, COL0 : COL0 + DQ_COLS] = dS[QROW0 : QROW0 + DQ_ROWS, all 128 keys]
        # K_j[:, COL0 : COL0 + DQ_COLS] (k_cols: those columns of K_j), as two products over the keys: this
        # consumer's own, whose dS^T rows it has just written, then, once the other's half is in, the other's.  The
        # wait for the other consumer overlaps the first product instead of idling the tensor cores
        if DQ_ROWS == BLOCK_M:
            ds_rows = ds_all
        else:
            ds_rows = ds_all.slice(QROW0, DQ_ROWS, dim=1)
        OTHER0: gl.constexpr = KEYS - ROW0  # the other consumer's first key in the block
    if not EARLY_DV:
        p16 = gl.convert_layout(pT.to(q_smem.dtype), a_layout)
        dv_tok = warpgroup_mma(p16, do_smem, dv, is_async=True)
    # dK's A operand from registers too (dS^T as it was computed), not from the copy in shared memory, which
    # only the dQ product needs: 8 KiB less shared-memory read a step and consumer
    ds16 = gl.convert_layout(ds16, a_layout)
    # Either order ends with the dQ tile's TMA reduce-add.  Packed: rows past the sequence add dS = 0 (masked) to
    # its neighbour's rows, which leaves them as they are
    if DQ_FIRST:
        # dQ's two products issued before dK's: groups retire in order, so dQ's retire first, and its tile's stores
        # to shared memory and its TMA reduce run while dK's product is on the tensor cores
        fence_async_shared()
        mbarrier.arrive(ds_ready.index(t % 2), count=1)  # this consumer's half of dS^T is in shared memory
        dq_tok = warpgroup_mma(ds_rows.slice(ROW0, KEYS).permute((1, 0)), k_cols.slice(ROW0, KEYS), zero_dq,
                               use_acc=False, is_async=True)
        dv, p16 = warpgroup_mma_wait(1, deps=[dv_tok, p16])  # P^T dO retired: dO's slot is free
        mbarrier.arrive(do_empty.index(slot), count=1)
        mbarrier.wait(ds_ready.index(t % 2), (t // 2) & 1)
        dq_tok = warpgroup_mma(ds_rows.slice(OTHER0, KEYS).permute((1, 0)), k_cols.slice(OTHER0, KEYS), dq_tok,
                               is_async=True)
        dk_tok = warpgroup_mma(ds16, q_smem, dk, is_async=True)
        dq = warpgroup_mma_wait(1, deps=[dq_tok])  # dK's product still runs
        reduce_dq(dq_desc, q_row + QROW0, q_col + COL0, dq_smem, dq)
        dk, ds16 = warpgroup_mma_wait(0, deps=[dk_tok, ds16])  # Q's last reader retired: its slot is free
        mbarrier.arrive(q_empty.index(slot), count=1)
    else:
        dk_tok = warpgroup_mma(ds16, q_smem, dk, is_async=True)
        fence_async_shared()
        if DQ_SPLIT:
            mbarrier.arrive(ds_ready.index(t % 2), count=1)  # this consumer's half of dS^T is in shared memory
        # P^T dO retires first (groups retire in order): its register operand is dead before dQ's accumulator is live
        dv, p16 = warpgroup_mma_wait(1, deps=[dv_tok, p16])
        if DQ_SPLIT:
            dq_tok = warpgroup_mma(ds_rows.slice(ROW0, KEYS).permute((1, 0)), k_cols.slice(ROW0, KEYS), zero_dq,
                                   use_acc=False, is_async=True)
            mbarrier.wait(ds_ready.index(t % 2), (t // 2) & 1)
            dq_tok = warpgroup_mma(ds_rows.slice(OTHER0, KEYS).permute((1, 0)), k_cols.slice(OTHER0, KEYS), dq_tok,
                                   is_async=True)
            dk, ds16 = warpgroup_mma_wait(2, deps=[dk_tok, ds16])
        else:
            dq_tok = warpgroup_mma(ds_smem.permute((1, 0)), k_w, zero_dq, use_acc=False, is_async=True)
            dk, ds16 = warpgroup_mma_wait(1, deps=[dk_tok, ds16])
        mbarrier.arrive(q_empty.index(slot), count=1)
        mbarrier.arrive(do_empty.index(slot), count=1)
        dq = warpgroup_mma_wait(0, deps=[dq_tok])
        reduce_dq(dq_desc, q_row + QROW0, q_col + COL0, dq_smem, dq)
    return dk, dv


@gluon.jit
def _steps(dk, dv, t, i_lo, i_hi, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta,
           stat0, k_w, k_cols, v_w, ds_bufs, dq_smem, q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0,
           diag, win_left, qk_scale, zero_s, zero_dq, MASK: gl.constexpr, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
           VARLEN: gl.constexpr, KEYS: gl.constexpr, ROW0: gl.constexpr, QROW0: gl.constexpr, DQ_ROWS: gl.constexpr,
           COL0: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, DQ_SPLIT: gl.constexpr,
           s_layout: gl.constexpr, a_layout: gl.constexpr, DESCENDING: gl.constexpr):
    """Steps i_lo .. i_hi of a head's query blocks (block m_lo + i, its rows from row0 + m0, packed its L and
    Delta from stat0 + m0), all masked or none, in that order or with DESCENDING from i_hi - 1 down; t counts the
    steps taken, for the rings' slots and phases."""
    for k in range(i_lo, i_hi):
        if DESCENDING:
            i = i_lo + i_hi - 1 - k
        else:
            i = k
        m0 = (m_lo + i) * BLOCK_M
        dk, dv = _step(dk, dv, t, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, stat0 + m0, k_w, k_cols, v_w,
                       ds_bufs, dq_smem, q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, row0 + m0, q_col,
                       n_q - m0, n_keys, m0, n0, diag, win_left, qk_scale, zero_s, zero_dq, MASK, CAUSAL, WINDOW,
                       VARLEN, KEYS, ROW0, QROW0, DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout)
        t += 1
    return dk, dv, t


@gluon.jit
def _consumer(q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, ds_bufs, dq_smem, kv_bar, q_ready,
              q_empty, do_ready, do_empty, ds_ready, kv_done, dq_desc, dk_desc, dv_desc, dk_ptr, dv_ptr, kv_row, kv_col,
              kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, win_left, N_Q, GROUP, qk_scale,
              sm_scale, CAUSAL: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr, ROW0: gl.constexpr,
              BLOCK_M: gl.constexpr, KEYS: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
              DQ_SPLIT: gl.constexpr, NUM_WARPS: gl.constexpr, DESCENDING: gl.constexpr):
    """Keys [ROW0, ROW0 + KEYS) of the program's key block, in one warp group (NUM_WARPS = 4); with DQ_SPLIT, the
    dQ tile [QROW0, QROW0 + DQ_ROWS) x [COL0, COL0 + DQ_COLS) of a step over all the block's keys (dq_desc's
    block: half the columns or half the rows).

    Dense: head g's rows start at (bh0 + g) * N_Q; the packed-only arguments (dk_ptr, dv_ptr, kv_col, kv_stride,
    q_col0, n_q, n_kv) are constexpr 0.  Packed (VARLEN): the sequence's rows start at bh0 in the (total_q, H * D)
    views, head g's at column q_col0 + g * D; the sequence has n_q queries and n_kv keys.  L and Delta: in the
    rings beside Q and dO (dense), or read by ``_step`` from lse, delta, pointers to the (H, total_q) buffers
    (packed)."""
    DQ_ROWS: gl.constexpr = dq_smem.shape[0]
    DQ_COLS: gl.constexpr = dq_smem.shape[1]
    QROW0: gl.constexpr = (ROW0 // KEYS) * DQ_ROWS if DQ_ROWS != BLOCK_M else 0
    COL0: gl.constexpr = (ROW0 // KEYS) * DQ_COLS if DQ_COLS != HEAD_DIM else 0
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    d_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    q_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, DQ_COLS, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=d_layout, k_width=2)

    k_w = k_smem.slice(ROW0, KEYS)
    if DQ_COLS == HEAD_DIM:
        k_cols = k_smem
    else:
        k_cols = k_smem.slice(COL0, DQ_COLS, dim=1)
    v_w = v_smem.slice(ROW0, KEYS)
    dk = gl.zeros([KEYS, HEAD_DIM], gl.float32, layout=d_layout)
    dv = gl.zeros([KEYS, HEAD_DIM], gl.float32, layout=d_layout)
    zero_s = gl.zeros([KEYS, BLOCK_M], gl.float32, layout=s_layout)
    zero_dq = gl.zeros([DQ_ROWS, DQ_COLS], gl.float32, layout=q_layout)
    n_keys = n_kv - (n0 + ROW0)  # packed: this consumer's keys inside the sequence (dense: unused)

    mbarrier.wait(kv_bar, 0)
    if not (WINDOW or VARLEN):  # (computed here, not passed: these builds keep the code they were timed with)
        n_mb = N_Q // BLOCK_M - m_lo
        n_tail = n_mb
    if CAUSAL or VARLEN:
        # a head's n_mb query blocks from m_lo: the first n_masked cross the diagonal (none when the key block
        # lies left of it), then blocks seen whole without mask arithmetic, and with a window or packed the blocks
        # from n_tail on, which some row sees only in part (the window's left edge) or which run past the
        # sequence's last row, masked again; packed, a key block past the sequence's last key masks every step
        t = 0
        for g in range(GROUP):
            row0, q_col, stat_g = head_rows(g, bh0, q_col0, N_Q, HEAD_DIM, VARLEN)
            if DESCENDING:
                # dense causal without a window: every program of a head ends at its last query block, so walked
                # from there down, the programs running side by side read the same Q_i and dO_i at about the same
                # time (kernels/DESIGN.md); the blocks seen whole, then those crossing the diagonal
                dk, dv, t = _steps(dk, dv, t, n_masked, n_tail, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs,
                                   lse_bufs, delta_bufs, lse, delta, stat_g, k_w, k_cols, v_w, ds_bufs, dq_smem,
                                   q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0 + ROW0, diag, win_left,
                                   qk_scale, zero_s, zero_dq, False, CAUSAL, WINDOW, VARLEN, KEYS, ROW0, QROW0,
                                   DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout, True)
                dk, dv, t = _steps(dk, dv, t, 0, n_masked, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs,
                                   lse_bufs, delta_bufs, lse, delta, stat_g, k_w, k_cols, v_w, ds_bufs, dq_smem,
                                   q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0 + ROW0, diag, win_left,
                                   qk_scale, zero_s, zero_dq, True, CAUSAL, WINDOW, VARLEN, KEYS, ROW0, QROW0,
                                   DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout, True)
            else:
                dk, dv, t = _steps(dk, dv, t, 0, n_masked, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs,
                                   lse_bufs, delta_bufs, lse, delta, stat_g, k_w, k_cols, v_w, ds_bufs, dq_smem,
                                   q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0 + ROW0, diag, win_left,
                                   qk_scale, zero_s, zero_dq, True, CAUSAL, WINDOW, VARLEN, KEYS, ROW0, QROW0,
                                   DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout, False)
                dk, dv, t = _steps(dk, dv, t, n_masked, n_tail, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs,
                                   lse_bufs, delta_bufs, lse, delta, stat_g, k_w, k_cols, v_w, ds_bufs, dq_smem,
                                   q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0 + ROW0, diag, win_left,
                                   qk_scale, zero_s, zero_dq, False, CAUSAL, WINDOW, VARLEN, KEYS, ROW0, QROW0,
                                   DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout, False)
                if WINDOW or VARLEN:
                    dk, dv, t = _steps(dk, dv, t, n_tail, n_mb, m_lo, row0, q_col, n_q, n_keys, q_bufs, do_bufs,
                                       lse_bufs, delta_bufs, lse, delta, stat_g, k_w, k_cols, v_w, ds_bufs, dq_smem,
                                       q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, n0 + ROW0, diag,
                                       win_left, qk_scale, zero_s, zero_dq, True, CAUSAL, WINDOW, VARLEN, KEYS, ROW0,
                                       QROW0, DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout, False)
    else:
        for t in range(GROUP * n_mb):
            g = t // n_mb
            m0 = (t - g * n_mb) * BLOCK_M
            q_row = (bh0 + g) * N_Q + m0
            dk, dv = _step(dk, dv, t, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, 0, k_w, k_cols, v_w, ds_bufs,
                           dq_smem, q_ready, q_empty, do_ready, do_empty, ds_ready, dq_desc, q_row, 0, 0, 0, m0,
                           n0 + ROW0, diag, win_left, qk_scale, zero_s, zero_dq, False, CAUSAL, False, VARLEN, KEYS,
                           ROW0, QROW0, DQ_ROWS, COL0, BLOCK_M, STAGES, DQ_SPLIT, s_layout, a_layout)

    if DQ_SPLIT:
        # the other consumer's last dQ product reads all of K_j: it must retire before K_w carries dK_w out
        mbarrier.arrive(kv_done, count=1)
        mbarrier.wait(kv_done, 0)
    # every wgmma reading K_w / V_w has retired: their tiles carry dK_w, dV_w out
    k_w.store((dk * sm_scale).to(k_w.dtype))
    v_w.store(dv.to(v_w.dtype))
    store_dk_dv(dk_desc, dv_desc, dk_ptr, dv_ptr, k_w, v_w, kv_row + ROW0, kv_col, kv_stride, n_keys, VARLEN,
                NUM_WARPS)


@gluon.jit
def bwd_sm90_kernel(q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc, dq_desc, lse, delta,
                    qk_scale, sm_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr, table_ptr,
                    CAUSAL: gl.constexpr, WINDOW: gl.constexpr, GROUP_PROGRAMS: gl.constexpr, STAGES: gl.constexpr,
                    PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr, VARLEN: gl.constexpr,
                    DESCENDING: gl.constexpr):
    """Dense: grid (Nkv / 128, B * H_kv), descriptors over the (B*H*N, D) views, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr
    and table_ptr None.  Packed (VARLEN): grid (rows of the (sequence, key block) table for 128-key blocks, H_kv),
    descriptors over the (total, heads * D) views, N_Q and N_KV the packed lengths total_q, total_k, L and Delta
    (H, total_q).  lse, delta: the forward's base-2 L and Delta, 1-D descriptors over the flat buffers
    (``stat_descriptor``) dense, pointers to them packed.  DESCENDING (dense causal without a window only,
    ``descending_walk``): each head's query blocks are walked from the last down."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    KEYS: gl.constexpr = BLOCK_N // 2
    # the dQ tile a consumer reduces tells the layout (``dq_tile``): a whole (BLOCK_M, D) partial of its keys, or,
    # split between the consumers over all the block's keys, half the columns or half the rows
    DQ_ROWS: gl.constexpr = dq_desc.block_type.shape[0]
    DQ_COLS: gl.constexpr = dq_desc.block_type.shape[1]
    DQ_SPLIT: gl.constexpr = (DQ_ROWS != BLOCK_M) or (DQ_COLS != HEAD_DIM)
    gl.static_assert(dk_desc.block_type.shape[0] == KEYS, "dK / dV are stored a consumer's half at a time")
    gl.static_assert((DQ_ROWS == BLOCK_M and DQ_COLS == HEAD_DIM) or (DQ_ROWS == BLOCK_M and 2 * DQ_COLS == HEAD_DIM)
                     or (2 * DQ_ROWS == BLOCK_M and DQ_COLS == HEAD_DIM),
                     "dQ is reduced a whole query block, or by halves of its columns or rows")
    gl.static_assert(BLOCK_N % BLOCK_M == 0, "the causal diagonal must start at a query block")
    gl.static_assert(CAUSAL or not WINDOW, "windows with a right reach are not supported")
    gl.static_assert(not DESCENDING or (CAUSAL and not (WINDOW or VARLEN)),
                     "the descending walk is built for dense causal calls without a window")

    if VARLEN:
        (n0, diag, m_lo, n_mb, n_masked, n_tail, bh0, q_col0, n_q, n_kv, kv_row, kv_col,
         kv_stride) = packed_key_block(table_ptr, cu_q_ptr, cu_k_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, BLOCK_M, BLOCK_N,
                                       HEAD_DIM, CAUSAL, WINDOW, GROUP_PROGRAMS)
        dk_out = dk_ptr  # the last key block's partial stores
        dv_out = dv_ptr
    else:
        # sm90_bwd_common.dense_key_block, written out: called, it changed ptxas's schedule of the D64 causal build
        # (same instructions, another order), and this is the code that was measured
        # key block 0 is the heaviest when causal (it is seen by every query block)
        pid_n, pid_bhk = block_and_head(gl.num_programs(1), False, GROUP_PROGRAMS)
        n0 = pid_n * BLOCK_N
        H_KV = H // GROUP
        b = pid_bhk // H_KV
        hk = pid_bhk % H_KV
        bh0 = b * H + hk * GROUP  # the first query head of this kv head's group
        kv_row = pid_bhk * N_KV + n0
        diag = N_KV - N_Q  # query m sees key n iff n <= m + diag (causal); a multiple of 128 here
        n_mb = N_Q // BLOCK_M  # query blocks a head visits, from m_lo
        n_tail = n_mb  # the visited blocks from n_tail on are masked for the window's left edge
        if CAUSAL:
            # query blocks that see no key of this block are skipped; the first BLOCK_N / BLOCK_M visited ones
            # cross the diagonal when the block starts at or right of it (n0 >= diag), none otherwise
            first = gl.maximum(n0 - diag, 0)
            m_lo = first // BLOCK_M
            if n0 >= diag:
                n_masked = BLOCK_N // BLOCK_M
            else:
                n_masked = 0
            if WINDOW:
                # query m sees key n iff m + diag - WIN_LEFT <= n <= m + diag: the last row that sees a key of the
                # block is n0 + BLOCK_N - 1 - diag + WIN_LEFT, and a query block's every row sees all its keys past
                # the diagonal iff its last row reaches back to n0: (i + 1) * BLOCK_M - 1 + diag - WIN_LEFT <= n0
                m_hi = gl.minimum(gl.cdiv(gl.maximum(n0 + BLOCK_N - diag + WIN_LEFT, 0), BLOCK_M), n_mb)
                n_mb = gl.maximum(m_hi, m_lo) - m_lo
                full_hi = gl.maximum(n0 - diag + WIN_LEFT + 1, 0) // BLOCK_M
                n_masked = gl.minimum(n_masked, n_mb)
                n_tail = gl.minimum(gl.maximum(full_hi - m_lo, n_masked), n_mb)
            else:
                n_mb = n_mb - m_lo
                n_tail = n_mb
        else:
            m_lo = 0
            n_masked = 0
        # the packed-only arguments: constexpr 0 placeholders (a partition's argument tuple takes no None), so the
        # dense partitions capture what they did before
        q_col0: gl.constexpr = 0
        n_q: gl.constexpr = 0
        n_kv: gl.constexpr = 0
        kv_col: gl.constexpr = 0
        kv_stride: gl.constexpr = 0
        dk_out: gl.constexpr = 0
        dv_out: gl.constexpr = 0

    q_bufs, do_bufs, lse_bufs, delta_bufs = q_do_rings(q_desc, do_desc, lse, delta, STAGES, STAGES, VARLEN)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [BLOCK_N, HEAD_DIM], v_desc.layout)
    if DQ_SPLIT:
        # dS^T of the whole key block, double-buffered, read by both consumers' dQ products
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], q_desc.dtype)
        ds0 = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_N, BLOCK_M], ds_layout)
        ds1 = ds0
    else:
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([KEYS, BLOCK_M], q_desc.dtype)
        ds0 = gl.allocate_shared_memory(q_desc.dtype, [KEYS, BLOCK_M], ds_layout)
        ds1 = gl.allocate_shared_memory(q_desc.dtype, [KEYS, BLOCK_M], ds_layout)
    dq0 = gl.allocate_shared_memory(gl.float32, [DQ_ROWS, DQ_COLS], dq_desc.layout)
    dq1 = gl.allocate_shared_memory(gl.float32, [DQ_ROWS, DQ_COLS], dq_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    q_ready, q_empty, do_ready, do_empty = ring_barriers(STAGES, 2)
    # split dQ: a step's dS^T is complete once both consumers arrived; K_j is free once both finished
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    kv_done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=2)
    mbarrier.init(kv_done, count=2)

    gl.warp_specialize([
        (_consumer, (q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, ds0, dq0, kv_bar, q_ready,
                     q_empty, do_ready, do_empty, ds_ready, kv_done, dq_desc, dk_desc, dv_desc, dk_out, dv_out, kv_row,
                     kv_col, kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, WIN_LEFT, N_Q,
                     GROUP, qk_scale, sm_scale, CAUSAL, WINDOW, VARLEN, 0, BLOCK_M, KEYS, HEAD_DIM, STAGES, DQ_SPLIT,
                     4, DESCENDING)),
        (_consumer, (q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, ds1, dq1, kv_bar, q_ready,
                     q_empty, do_ready, do_empty, ds_ready, kv_done, dq_desc, dk_desc, dv_desc, dk_out, dv_out, kv_row,
                     kv_col, kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, WIN_LEFT, N_Q,
                     GROUP, qk_scale, sm_scale, CAUSAL, WINDOW, VARLEN, KEYS, BLOCK_M, KEYS, HEAD_DIM, STAGES, DQ_SPLIT,
                     4, DESCENDING)),
        (_producer, (q_desc, do_desc, k_desc, v_desc, lse, delta, q_bufs, do_bufs, lse_bufs, delta_bufs,
                     k_smem, v_smem, kv_bar, q_ready, q_empty, do_ready, do_empty, kv_row, kv_col, bh0, q_col0, m_lo,
                     n_mb, N_Q, GROUP, BLOCK_M, STAGES, WINDOW, VARLEN, DESCENDING)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


@triton.jit
def _dq_convert_kernel(ACC, DQ, scale, n, BLOCK: tl.constexpr, ZERO: tl.constexpr):
    """DQ = scale * ACC in DQ's dtype (flat, contiguous); ZERO: then ACC = 0, for the next chunk of pairs
    (``dq_chunk_pairs``: the same accumulator serves each chunk, and this is one launch fewer than a memset)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(ACC + offs, mask=mask, other=0.0)
    tl.store(DQ + offs, (acc * scale).to(DQ.dtype.element_ty), mask=mask)
    if ZERO:
        # every thread's load must be done before any thread zeroes: the compiler may give the load and the store
        # different thread layouts, and without the barrier some values were zeroed before another warp read them
        # (dQ wrong by up to half its largest value on an H100)
        tl.debug_barrier()
        tl.store(ACC + offs, tl.zeros([BLOCK], tl.float32), mask=mask)


def kernel_constexprs(causal: bool, group_programs: int, stages: int, window: bool = False,
                      varlen: bool = False, descending: bool = False) -> dict:
    """The constexprs ``backward`` and ``backward_varlen`` launch ``bwd_sm90_kernel`` with (compile checks use
    these).  Packed programs differ in work whether causal or not: they are grouped either way.  ``descending``:
    ``descending_walk``'s answer for the call."""
    return dict(CAUSAL=bool(causal), WINDOW=bool(window), GROUP_PROGRAMS=group_programs if (causal or varlen) else 0,
                STAGES=stages, PRODUCER_REGS=PRODUCER_REGS, CONSUMER_REGS=CONSUMER_REGS, VARLEN=bool(varlen),
                DESCENDING=bool(descending))


def _settings(name: str, D: int, causal: bool, stages, layout, window_left: int) -> tuple[str, int]:
    """The checked dQ layout and ring depth of a call (a ValueError naming what is wrong otherwise)."""
    layout = layout or dq_layout(D)
    check_dq_layout(D, layout)
    stages = stages or ring_stages(D, window_left >= 0, layout)
    choices = (sm90_bwd_d256.STAGES,) if layout == "split_head_dim" else STAGE_CHOICES
    if stages not in choices:
        raise ValueError(f"sm90_bwd.{name}: stages must be one of {choices} at head dim {D}, got {stages}")
    if window_left >= 0 and not causal:
        raise ValueError(f"sm90_bwd.{name}: a window needs causal (a right reach is not supported)")
    return layout, stages


def _check_grads(name: str, grads) -> None:
    if not all(g.is_contiguous() for g in grads):
        raise ValueError(f"sm90_bwd.{name}: dq, dk, dv must be contiguous")


def backward(q, k, v, do, lse, delta, dq, dk, dv, causal: bool, sm_scale: float, group_programs: int = 256,
             stages: int | None = None, layout: str | None = None, window_left: int = -1,
             dq_acc: torch.Tensor | None = None, chunk_pairs: int | None = None) -> None:
    """Write the gradients of softmax(sm_scale q k^T) v into the preallocated dq, dk, dv.

    ``lse``: the forward's base-2 log-sum-exp of the scaled scores, (B, H, Nq) float32 (as ``flash_attn_v2``'s
    forwards store it); ``delta``: rowsum(do * o), (B, H, Nq) float32.  The caller checks
    ``unsupported_reason`` first.  dq, dk, dv must be contiguous.  Not deterministic (dQ is accumulated by
    reduce-adds in whatever order the programs run).  ``layout``: how the consumers share dQ (``DQ_LAYOUTS``;
    None: ``dq_layout``'s default for the head dim).  ``window_left`` >= 0 (with ``causal``): each query sees
    only the ``window_left`` keys before its diagonal one too (FlashAttention's window (left, 0)); -1: none.
    ``dq_acc``: the fp32 dQ accumulator, shaped ``accumulator_shape`` (like q unless ``chunk_pairs`` runs fewer
    (batch, kv head) pairs a launch than all: ``prepare_backward``), contiguous and zeroed by the caller
    (``flash_attn_v2``'s preprocess zeroes a whole one with Delta); None: allocated zeroed here (a memset launch
    more)."""
    run = prepare_backward(tuple(q.shape), k.shape[1], k.shape[2], causal, sm_scale, group_programs, stages, layout,
                           window_left, chunk_pairs)
    _check_grads("backward", (dq, dk, dv))
    shape = accumulator_shape(tuple(q.shape), k.shape[1], chunk_pairs)
    run(q, k, v, do, lse, delta, dq, dk, dv, _accumulator(dq_acc, shape, q.device, "backward"))


def prepare_backward(q_shape: tuple, kv_heads: int, n_kv: int, causal: bool, sm_scale: float, group_programs: int = 256,
                     stages: int | None = None, layout: str | None = None, window_left: int = -1,
                     chunk_pairs: int | None = None):
    """``backward``'s checks, grid and launch settings for q of ``q_shape`` (B, H, Nq, D) and k, v of ``kv_heads``
    heads and ``n_kv`` keys, once: the result, ``run(q, k, v, do, lse, delta, dq, dk, dv, dq_acc)`` (contiguous
    gradients, a zeroed accumulator shaped ``accumulator_shape(q_shape, kv_heads, chunk_pairs)``), builds the nine
    descriptors and enqueues the kernel and the dQ conversion (``_prepared.PreparedLaunch``); ``flash_attn_v2``
    keeps it for its calls.  ``chunk_pairs`` (``dq_chunk_pairs``; None: all): the (batch, kv head) pairs one launch
    runs, each chunk into the same accumulator, which its conversion zeroes again for the next."""
    B, H, Nq, D = q_shape
    layout, stages = _settings("backward", D, causal, stages, layout, window_left)
    pairs, group = B * kv_heads, H // kv_heads
    chunk = _check_chunk_pairs(chunk_pairs, pairs)
    bm, bn = block_m(D, layout), block_n(D)
    # one launch over every pair sees (B, H) heads; a chunk (n, GROUP): the same programs and bits either way
    heads = H if chunk == pairs else group
    if layout == "split_head_dim":  # D256: its own kernel (dense)
        kernel, half = sm90_bwd_d256.bwd_sm90_d256_kernel, sm90_bwd_d256.half_descriptor
        meta = dict(sm90_bwd_d256.kernel_constexprs(causal, group_programs, window_left >= 0), num_warps=4,
                    maxnreg=MAXNREG)
        scalars = (sm_scale * LOG2E, sm_scale, heads, group, Nq, n_kv, max(window_left, 0), None, None, None, None,
                   None)
    else:
        kernel, half = bwd_sm90_kernel, lambda t: descriptor(t, BLOCK_N // 2)
        meta = dict(kernel_constexprs(causal, group_programs, stages, window_left >= 0,
                                      descending=descending_walk(D, Nq, causal, window_left >= 0)),
                    num_warps=4, maxnreg=MAXNREG)
        scalars = (sm_scale * LOG2E, sm_scale, heads, group, Nq, n_kv, max(window_left, 0), None, None, None, None,
                   None)
    launches, conversions = {}, {}

    def launch(n: int) -> PreparedLaunch:  # n pairs: a chunk is (n, GROUP, Nq, D) with one kv head a pair
        if n not in launches:
            launches[n] = PreparedLaunch(kernel, (n_kv // bn, n), scalars, meta)
        return launches[n]

    def conversion(n: int, zero: bool) -> PreparedLaunch:
        if (n, zero) not in conversions:
            conversions[n, zero] = _dq_conversion(n * group * Nq * D, sm_scale, zero)
        return conversions[n, zero]

    def one(q, k, v, do, lse, delta, dq, dk, dv, dq_acc, n: int, zero: bool):
        launch(n)(descriptor(q, bm), descriptor(do, bm), descriptor(k, bn), descriptor(v, bn), half(dk), half(dv),
                  dq_descriptor(dq_acc, layout), stat_descriptor(lse, bm), stat_descriptor(delta, bm))
        conversion(n, zero)(dq_acc, dq)

    def run(q, k, v, do, lse, delta, dq, dk, dv, dq_acc):
        do = do if do.is_contiguous() else do.contiguous()
        lse, delta = lse.contiguous(), delta.contiguous()
        if chunk == pairs:
            one(q, k, v, do, lse, delta, dq, dk, dv, dq_acc, pairs, False)
            return
        # a contiguous (B, H, ...) tensor is (pairs, GROUP, ...) with the query heads of kv head j at j * GROUP ..
        rows = [t.view(pairs, group, *t.shape[2:]) for t in (q, do, dq, lse, delta)]
        keys = [t.view(pairs, 1, *t.shape[2:]) for t in (k, v, dk, dv)]
        for c0 in range(0, pairs, chunk):
            c1 = min(pairs, c0 + chunk)
            qc, doc, dqc, lsec, deltac = (t[c0:c1] for t in rows)
            kc, vc, dkc, dvc = (t[c0:c1] for t in keys)
            one(qc, kc, vc, doc, lsec, deltac, dqc, dkc, dvc, dq_acc[:c1 - c0], c1 - c0, c1 < pairs)

    return run


def dq_chunk_pairs(q_shape: tuple, kv_heads: int, n_kv: int, chunk_waves: int, sms: int) -> int:
    """The (batch, kv head) pairs a dense launch runs so that the fp32 dQ accumulator holds one chunk's, not all
    of them: chunks of about ``chunk_waves`` waves of programs (``n_kv / block_n`` programs a pair, one resident a
    SM) of ``CHUNK_REF_N`` queries' work, equal to within a pair; every pair when ``chunk_waves`` is 0 or they fit
    one chunk.  A program walks every query block of its heads, so below ``CHUNK_REF_N`` queries a chunk takes
    proportionally more of them: chunks of short programs are short on the GPU, and each costs a backward launch
    and a conversion on the host (at N 1k, B16 H16, two chunks took the host 1.4x the time of one launch, more than
    the GPU's).  The accumulator is then bounded by the GPU, not the batch: about ``chunk_waves * sms * block_n *
    GROUP * D * 4 * max(1, CHUNK_REF_N / Nq)`` bytes where Nq = Nkv (a pair's rows when one pair's programs make
    more waves than that)."""
    pairs = q_shape[0] * kv_heads
    if chunk_waves == 0:
        return pairs
    n_q = max(1, q_shape[2])
    programs = max(1, n_kv // block_n(q_shape[-1])) * n_q  # a pair's programs, times their queries
    want = -(-chunk_waves * sms * max(n_q, CHUNK_REF_N) // programs)  # pairs a chunk of that much work
    if want >= pairs:
        return pairs
    count = -(-pairs // want)
    return -(-pairs // count)  # the same chunk count, chunks balanced


def accumulator_shape(q_shape: tuple, kv_heads: int, chunk_pairs: int | None = None) -> tuple:
    """The fp32 dQ accumulator a dense ``prepare_backward`` run takes: q's shape, or one chunk's
    (``chunk_pairs``, GROUP, Nq, D) when it runs fewer pairs than all (a packed batch's: q's, ``chunk_pairs``
    None)."""
    if chunk_pairs is None or chunk_pairs >= q_shape[0] * kv_heads:
        return tuple(q_shape)
    B, H, Nq, D = q_shape
    return (chunk_pairs, H // kv_heads, Nq, D)


def _check_chunk_pairs(chunk_pairs: int | None, pairs: int) -> int:
    if chunk_pairs is None:
        return pairs
    if not (isinstance(chunk_pairs, int) and not isinstance(chunk_pairs, bool) and chunk_pairs >= 1):
        raise ValueError(f"sm90_bwd: chunk_pairs must be an int >= 1, got {chunk_pairs!r}")
    return min(chunk_pairs, pairs)


def backward_varlen(q, k, v, do, lse, delta, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, table, causal: bool,
                    sm_scale: float, group_programs: int = 256, stages: int | None = None, layout: str | None = None,
                    window_left: int = -1, dq_acc: torch.Tensor | None = None) -> None:
    """``backward`` for a packed batch: q, do, dq (total_q, H, D), k, v, dk, dv (total_k, H_kv, D), lse and delta
    (H, total_q).  ``table``: the int32 (rows, 2) (sequence, block) program table for ``block_n(D)``-key blocks
    (``_schedule.SequenceBlocks.table(block_n(D))`` over the key axis, built on the device, padding rows (-1, 0)
    last); the grid is (rows, H_kv), so nothing here reads the device.  D256 runs ``sm90_bwd_d256``'s kernel."""
    total_q, H, D = q.shape
    total_k, Hkv = k.shape[0], k.shape[1]
    layout, stages = _settings("backward_varlen", D, causal, stages, layout, window_left)
    _check_grads("backward_varlen", (dq, dk, dv))
    do = do if do.is_contiguous() else do.contiguous()
    lse, delta = lse.contiguous(), delta.contiguous()
    bm, bn = block_m(D, layout), block_n(D)
    dq_acc = _accumulator(dq_acc, tuple(q.shape), q.device, "backward_varlen")
    grid = (table.shape[0], Hkv)
    if layout == "split_head_dim":
        kernel, half = sm90_bwd_d256.bwd_sm90_d256_kernel, sm90_bwd_d256.packed_half_descriptor
        meta = sm90_bwd_d256.kernel_constexprs(causal, group_programs, window_left >= 0, varlen=True)
    else:
        kernel, half = bwd_sm90_kernel, lambda t: packed_descriptor(t, BLOCK_N // 2)
        meta = kernel_constexprs(causal, group_programs, stages, window_left >= 0, varlen=True)
    kernel[grid](
        packed_descriptor(q, bm), packed_descriptor(do, bm), packed_descriptor(k, bn), packed_descriptor(v, bn),
        half(dk), half(dv), dq_descriptor(dq_acc, layout), lse, delta, sm_scale * LOG2E, sm_scale, H, H // Hkv,
        total_q, total_k, max(window_left, 0), dk, dv, cu_seqlens_q, cu_seqlens_k, table, **meta, num_warps=4,
        maxnreg=MAXNREG)
    _dq_convert(dq_acc, dq, sm_scale)


def _accumulator(dq_acc: torch.Tensor | None, shape: tuple, device, name: str) -> torch.Tensor:
    """The caller's zeroed fp32 dQ accumulator of ``shape``, checked, or a new zeroed one."""
    if dq_acc is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    if tuple(dq_acc.shape) != shape or dq_acc.dtype != torch.float32 or not dq_acc.is_contiguous():
        raise ValueError(f"sm90_bwd.{name}: dq_acc must be a contiguous float32 tensor shaped {shape}, "
                         f"got {dq_acc.dtype} {tuple(dq_acc.shape)}")
    return dq_acc


def _dq_convert(dq_acc: torch.Tensor, dq: torch.Tensor, sm_scale: float) -> None:
    _dq_conversion(dq.numel(), sm_scale)(dq_acc, dq)


def _dq_conversion(n: int, sm_scale: float, zero: bool = False) -> PreparedLaunch:
    """dq = sm_scale * dq_acc over ``n`` elements (``zero``: then dq_acc = 0), prepared: ``launch(dq_acc, dq)``."""
    return PreparedLaunch(_dq_convert_kernel, (triton.cdiv(n, 4096),), (sm_scale, n),
                          dict(BLOCK=4096, ZERO=zero, num_warps=8))
