"""FlashAttention backward for Hopper (sm_90) in Gluon at head dim 256: FA2's Algorithm 2 in FlashAttention-3's
hdim-256 layout, the head dim split between the consumers.

``sm90_bwd`` launches it for D256 (its ``prepare_backward``); ``sm90_bwd.py`` has the D64/D128 kernel, whose layout
cannot grow to D256: there each consumer owns 64 keys' rows of dK and dV over the whole head dim, 256 fp32
registers a thread for the accumulators alone.

What is implemented
-------------------
The backward of FA2 paper (Dao 2023) Algorithm 2 in one pass over the key blocks (five matmuls a step, none
recomputed), arranged as FlashAttention-3's sm90 launch for head dim 256 (``run_mha_bwd_hdim256``: 64 query rows a
step, two MMA warp groups, dK/dV computed transposed), with 64 keys a program (Gluon shapes are powers of two;
FA3 takes 80):

  * one program per (key block of ``BLOCK_N`` = 64 keys, batch * kv head).  K_j and V_j (64 x 256) are loaded
    once by TMA and stay in shared memory.  The program walks the query blocks of ``BLOCK_M`` = 64 rows that see
    some key of its block, and under GQA/MQA the query heads of its kv head, so dK and dV are summed in registers;
  * a 1-warp producer (``_producer``) loads Q_i with L_i into a 2-slot ring and dO_i with Delta_i into a 1-slot
    ring by TMA: K, V, two Q slots, one dO slot, P^T and dS^T (double-buffered) and one fp32 dQ staging tile a
    consumer take 225 KiB of the 227 a block may use, so there is no room for a second dO slot (32 KiB).  With one
    slot for both, fwd_bwd took 1.18-1.22x the time (kernels/DESIGN.md).  setmaxnreg: producer 24, consumers
    240;
  * per step, the consumers (one warp group each) share the two score products, N = 64 wide:
        consumer 0:  S  = Q_i K_j^T                  (wgmma m64n64, K = 256; starts from -L_i / scale)
                     P  = exp2(S * scale * log2(e))  (L_i is in the accumulator already); P^T to shared memory
        consumer 1:  dP = dO_i V_j^T                 (wgmma m64n64, K = 256)
                     dS = P o (dP - Delta_i)         (P read back from consumer 0's bf16 P^T); dS^T to shared memory
    (P^T and dS^T are (64 keys x 64 rows) tiles, double-buffered by the step's parity; an mbarrier each says it is
    written).  Split by keys instead (each consumer S and dP of its 32 keys, m64n32 products reading all of Q_i and
    dO_i), the backward took 1.21-1.32x the time (kernels/DESIGN.md; the kernel is bound by L2 traffic under
    Nsight Compute).  dS from the bf16 P (not its fp32 value, which consumer 0 holds) is the price; the
    gradients meet the same reference rule in the GPU tests.  Then each
    consumer, with ``c`` its 128 head-dim columns [128w, 128w + 128), computes over all 64 keys:
        dV^T[c] += dO_i[:, c]^T P            (wgmma m128n64, A = a transposed view of dO_i's columns c; consumer 0
                                              issues it as soon as its P^T is written)
        dK^T[c] += Q_i[:, c]^T dS            (wgmma m128n64)
        dQ_i[:, c] = dS K_j[:, c]            (two m64n64 products, 64 columns each; A = a transposed view of dS^T)
    and reduces each 64-column dQ half into the fp32 accumulator by a TMA reduce-add (``sm90_bwd_common``,
    stored conflict-free), the first overlapped with the second's product, the second
    with the next step.  dK^T and dV^T of 128 x 64 keep each consumer at 128 accumulator registers;
  * a ring slot is released once the step's last product that reads it retires (dV^T for dO_i, dK^T for Q_i), so
    the next dO_i loads while the dQ products run;
  * each head's query blocks are walked from the last down, causal or not (``sm90_bwd.descending_walk``):
    causal, every program of a head then reads the same Q_i and dO_i as the others running beside it, at about
    the same time; walked upward, causal took 1.04-1.15x the time (kernels/DESIGN.md);
  * causal: query blocks above the diagonal are never visited, the lowest visited one of a key block on or past
    the diagonal (the last step) is masked; programs launched heaviest first across groups of heads
    (``_schedule.block_and_head``);
  * causal sliding windows (left, 0) (``WINDOW``): a key block is visited only by the query blocks whose rows reach
    it, and those the window's left edge crosses are masked steps too (both edges in every masked step); fwd_bwd
    with a window took 0.66-0.69 of the Triton backward's time (results/evidence/h100/gluon_bwd_d256_window/);
  * packed batches (``sm90_bwd.backward_varlen``, ``VARLEN``): one program per (sequence, 64-key block) row of the
    device-built table (``_schedule.SequenceBlocks`` over the keys, heaviest first) and kv head, as ``sm90_bwd``'s
    packed build; descriptors over the (total, heads * 256) views, a head being a column offset; L and Delta read
    by the consumers (a sequence's rows start anywhere, TMA at 16-byte boundaries only); steps whose rows or keys
    run past the sequence, or that its diagonal (off the 64-row grid) or a window's edge crosses, are masked, and
    the neighbours' rows a tile covers add exact zeros to dQ; the last key block's dK, dV are stored by pointer, row
    by row.  fwd_bwd 1.08-1.38x faster than with the Triton backward (results/evidence/h100/gluon_bwd_d256_varlen/);
    as in the packed forward, a non-finite value in the next sequence's rows can reach a sequence's gradients
    through its masked tails (0 times inf);
  * afterwards ``sm90_bwd``'s conversion writes dQ = sm_scale * dQaccum; dK (scaled) and dV are transposed into the
    consumers' column halves of the K and V tiles and stored by TMA (packed: by pointer where the sequence ends).

Memory beyond the gradients and not deterministic in dQ: as ``sm90_bwd`` (its accumulator, chunks of (batch, kv
head) pairs and reduce order; dK and dV are deterministic).

What it does not support (``sm90_bwd.unsupported_reason`` says which; the launcher then runs the Triton backward):
head dims other than 256; windows with a right reach (non-causal); dense sequence lengths that are not multiples
of 128 (the forward's condition, which ``sm90_bwd`` applies); dense causal with Nq > Nkv (packed sequences take
it); fp32; GPUs other than capability 9.x and the interpreter.
"""
from __future__ import annotations

import torch
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
from . import sm90
from .sm90_bwd_common import (CONSUMER_REGS, PRODUCER_REGS, dense_key_block, head_rows, packed_key_block, q_do_rings,
                              reduce_dq, store_dk_dv)

HEAD_DIM = 256
BLOCK_M = 64  # query rows a step (a wgmma's M for S and dP)
BLOCK_N = 64  # keys a program (S on one consumer, dP on the other, each over all 64)
HALF = HEAD_DIM // 2  # head-dim columns a consumer owns in dK^T, dV^T and dQ
DQ_COLS = 64  # columns of one dQ product and reduce (two a step and consumer)
Q_STAGES = 2  # the Q (and L) ring: the next step's Q_i loads while this one computes
DO_STAGES = 1  # the dO (and Delta) ring: no room for a second slot (module docstring)
STAGES = Q_STAGES  # what ``sm90_bwd.ring_stages`` and the launch log report
# the same numbers for the kernels (a @gluon.jit function reads module globals only as constexprs)
_D, _M, _N, _HALF, _DQ_COLS = (gl.constexpr(x) for x in (HEAD_DIM, BLOCK_M, BLOCK_N, HALF, DQ_COLS))
_Q_STAGES, _DO_STAGES = gl.constexpr(Q_STAGES), gl.constexpr(DO_STAGES)


def dq_tile() -> list[int]:
    """The (rows, columns) of dQ one reduce-add adds."""
    return [BLOCK_M, DQ_COLS]


def half_descriptor(t: torch.Tensor):
    """A TMA descriptor over the (rows, 256) view of a contiguous (..., 256) gradient, a tile being one consumer's
    (64 keys, 128 columns) of dK or dV."""
    D = t.shape[-1]
    return tma_descriptor(t, [t.numel() // D, D], [D, 1], [BLOCK_N, HALF], sm90._smem_layout(BLOCK_N, HALF, t.dtype))


def packed_half_descriptor(t: torch.Tensor):
    """``half_descriptor`` for a packed (total, heads, 256) gradient, over its (total, heads * 256) view (the kernel
    gives the column: the kv head's 256 plus the consumer's half)."""
    total, heads, D = t.shape
    return tma_descriptor(t, [total, heads * D], [heads * D, 1], [BLOCK_N, HALF],
                          sm90._smem_layout(BLOCK_N, HALF, t.dtype))


@gluon.jit
def _ring(STAGES: gl.constexpr):
    """(ready, empty) mbarriers of a STAGES-deep TMA ring: a slot is ready after the producer's one arrival with its
    bytes, free once both consumers arrived on its empty barrier."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    return ready, empty


@gluon.jit
def _producer(q_desc, do_desc, k_desc, v_desc, lse, delta, q_bufs, do_bufs, lse_bufs, delta_bufs, k_smem, v_smem,
              kv_bar, q_ready, q_empty, do_ready, do_empty, kv_row, kv_col, bh0, q_col0, m_lo, n_mb, N_Q, GROUP,
              WINDOW: gl.constexpr, VARLEN: gl.constexpr):
    """K_j and V_j once, then for each step Q_i with L_i into the Q ring and dO_i with Delta_i into the dO ring
    (query blocks from m_lo, n_mb of them with a window or packed, else every one from m_lo on).  Dense: head g's
    rows from (bh0 + g) * N_Q of the views, L and Delta at the same index of the flat statistics.  Packed
    (VARLEN): rows from bh0 (the sequence's first) at column q_col0 + g * 256 of the (total_q, H * 256) views; L and
    Delta are the consumers' to read."""
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [kv_row, kv_col], kv_bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [kv_row, kv_col], kv_bar, v_smem)
    if not (WINDOW or VARLEN):
        n_mb = N_Q // _M - m_lo
    for t in range(GROUP * n_mb):
        g = t // n_mb
        # each head's query blocks from the last down to m_lo (the consumers' order)
        m = m_lo + n_mb - 1 - (t - g * n_mb)
        row0, col, _ = head_rows(g, bh0, q_col0, N_Q, _D, VARLEN)
        row = row0 + m * _M
        # a slot's barriers start in phase 1 complete, so the first pass through a ring does not wait
        q_slot = t % _Q_STAGES
        mbarrier.wait(q_empty.index(q_slot), ((t // _Q_STAGES) & 1) ^ 1)
        mbarrier.expect(q_ready.index(q_slot), q_desc.block_type.nbytes + (0 if VARLEN else lse.block_type.nbytes))
        tma.async_copy_global_to_shared(q_desc, [row, col], q_ready.index(q_slot), q_bufs.index(q_slot))
        if not VARLEN:
            tma.async_copy_global_to_shared(lse, [row], q_ready.index(q_slot), lse_bufs.index(q_slot))
        do_slot = t % _DO_STAGES
        mbarrier.wait(do_empty.index(do_slot), ((t // _DO_STAGES) & 1) ^ 1)
        mbarrier.expect(do_ready.index(do_slot), do_desc.block_type.nbytes + (0 if VARLEN else delta.block_type.nbytes))
        tma.async_copy_global_to_shared(do_desc, [row, col], do_ready.index(do_slot), do_bufs.index(do_slot))
        if not VARLEN:
            tma.async_copy_global_to_shared(delta, [row], do_ready.index(do_slot), delta_bufs.index(do_slot))


@gluon.jit
def _step(dkT, dvT, t, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, stat_row, k_smem, v_smem, pT_bufs,
          dsT_bufs, dq_smem, q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc, q_row, q_col, n_rows, n_keys,
          m0, n0, diag, win_left, qk_scale, zero_s, zero_dq, MASK: gl.constexpr, CAUSAL: gl.constexpr,
          WINDOW: gl.constexpr, VARLEN: gl.constexpr, W: gl.constexpr, s_layout: gl.constexpr):
    """One query block (rows q_row.. of the views, m0.. of the head) against the program's 64 keys (from n0):
    consumer 0 computes S and P, consumer 1 dP and dS.  MASK: the causal mask (with CAUSAL), and with WINDOW the
    window's left edge (a query sees the win_left keys before its diagonal one).  Packed (VARLEN): dQ at column q_col
    of the accumulator's (total_q, H * 256) view, L and Delta read at lse, delta + stat_row (pointers to the flat
    (H, total_q) buffers), and only the block's first n_rows rows and the program's first n_keys keys lie inside
    the sequence (a masked step masks the others)."""
    q_slot = t % _Q_STAGES
    do_slot = t % _DO_STAGES
    q_smem = q_bufs.index(q_slot)
    do_smem = do_bufs.index(do_slot)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    pT_all = pT_bufs.index(t % 2)
    dsT_all = dsT_bufs.index(t % 2)
    p_ready = pds_ready.index(t % 2)
    ds_ready = pds_ready.index(2 + t % 2)
    if W == 0:
        # S = Q_i K_j^T - L_i / scale, P = exp2(S * scale * log2(e)); P^T to shared memory for dV's products and
        # consumer 1's dS
        if VARLEN:
            # a sequence's rows start anywhere, and TMA reads from 16-byte aligned starts only: read from global
            # memory (rows past the sequence, which may lie past the buffer, not at all)
            offs_m = gl.arange(0, _M, layout=row_layout)
            lse_i = gl.load(lse + stat_row + offs_m, mask=offs_m < n_rows, other=0.0)
            mbarrier.wait(q_ready.index(q_slot), (t // _Q_STAGES) & 1)
            s_acc = zero_s - gl.expand_dims(lse_i / qk_scale, 1)
        else:
            mbarrier.wait(q_ready.index(q_slot), (t // _Q_STAGES) & 1)
            s_acc = zero_s - gl.expand_dims(lse_bufs.index(q_slot).load(row_layout) / qk_scale, 1)
        s_tok = warpgroup_mma(q_smem, k_smem.permute((1, 0)), s_acc, is_async=True)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        p = gl.exp2(s * qk_scale)
        if MASK:
            # query m0 + r sees key n0 + c iff n0 + c <= m0 + r + diag (and, with a window, n0 + c >= m0 + r + diag
            # - win_left)
            rows = gl.arange(0, _M, layout=row_layout) + (m0 + diag - n0)
            cols = gl.arange(0, _N, layout=gl.SliceLayout(0, s_layout))
            if VARLEN:
                # and only the sequence's rows and keys (the tiles run into the neighbours' or past the buffers)
                seen = gl.expand_dims(cols < n_keys, 0) & gl.expand_dims(gl.arange(0, _M, layout=row_layout) < n_rows,
                                                                         1)
                if CAUSAL:
                    seen = seen & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1))
                    if WINDOW:
                        seen = seen & (gl.expand_dims(cols, 0) >= gl.expand_dims(rows - win_left, 1))
                p = gl.where(seen, p, 0.0)
            elif WINDOW:
                seen = (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1)) & \
                    (gl.expand_dims(cols, 0) >= gl.expand_dims(rows - win_left, 1))
                p = gl.where(seen, p, 0.0)
            else:
                p = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), p, 0.0)
        pT_all.store(gl.permute(p.to(q_smem.dtype), (1, 0)))
        fence_async_shared()
        mbarrier.arrive(p_ready, count=1)
        mbarrier.wait(do_ready.index(do_slot), (t // _DO_STAGES) & 1)
        dv_tok = warpgroup_mma(do_smem.slice(W * _HALF, _HALF, dim=1).permute((1, 0)), pT_all.permute((1, 0)), dvT,
                               is_async=True)
        mbarrier.wait(ds_ready, (t // 2) & 1)
    else:
        # dP = dO_i V_j^T, then dS = P o (dP - Delta_i) with consumer 0's P (bf16, as dV's product reads it)
        if VARLEN:
            offs_m = gl.arange(0, _M, layout=row_layout)
            delta_i = gl.load(delta + stat_row + offs_m, mask=offs_m < n_rows, other=0.0)
        mbarrier.wait(do_ready.index(do_slot), (t // _DO_STAGES) & 1)
        dp_tok = warpgroup_mma(do_smem, v_smem.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp = warpgroup_mma_wait(0, deps=[dp_tok])
        if VARLEN:
            dp = dp - gl.expand_dims(delta_i, 1)
        else:
            dp = dp - gl.expand_dims(delta_bufs.index(do_slot).load(row_layout), 1)
        mbarrier.wait(p_ready, (t // 2) & 1)
        p = pT_all.permute((1, 0)).load(s_layout).to(gl.float32)
        dsT_all.store(gl.permute((p * dp).to(q_smem.dtype), (1, 0)))
        fence_async_shared()
        mbarrier.arrive(ds_ready, count=1)
        dv_tok = warpgroup_mma(do_smem.slice(W * _HALF, _HALF, dim=1).permute((1, 0)), pT_all.permute((1, 0)), dvT,
                               is_async=True)
        mbarrier.wait(q_ready.index(q_slot), (t // _Q_STAGES) & 1)
    # dV^T[c] += dO_i[:, c]^T P (issued above), dK^T[c] += Q_i[:, c]^T dS over the block's 64 keys
    dk_tok = warpgroup_mma(q_smem.slice(W * _HALF, _HALF, dim=1).permute((1, 0)), dsT_all.permute((1, 0)), dkT,
                           is_async=True)
    # dQ_i[:, c] = dS K_j[:, c], the first 64 columns; issued before the slots' release so the tensor cores have it
    ds_op = dsT_all.permute((1, 0))
    dq_tok = warpgroup_mma(ds_op, k_smem.slice(W * _HALF, _DQ_COLS, dim=1), zero_dq, use_acc=False, is_async=True)
    dvT = warpgroup_mma_wait(2, deps=[dv_tok])
    mbarrier.arrive(do_empty.index(do_slot), count=1)
    dkT = warpgroup_mma_wait(1, deps=[dk_tok])
    mbarrier.arrive(q_empty.index(q_slot), count=1)
    dq = warpgroup_mma_wait(0, deps=[dq_tok])
    # one fp32 staging tile a consumer (no room for a second): reduce_dq waits for the reduce that last read it.
    # Packed: rows past the sequence add dS = 0 (masked) to its neighbour's rows, which leaves them as they are
    reduce_dq(dq_desc, q_row, q_col + W * _HALF, dq_smem, dq)
    # the second half's product is issued after the first half's store: issued before it, the backward took
    # 1.07-1.15x the time (results/evidence/h100/gluon_bwd_d256/)
    dq_tok = warpgroup_mma(ds_op, k_smem.slice(W * _HALF + _DQ_COLS, _DQ_COLS, dim=1), zero_dq, use_acc=False,
                           is_async=True)
    dq = warpgroup_mma_wait(0, deps=[dq_tok])
    reduce_dq(dq_desc, q_row, q_col + W * _HALF + _DQ_COLS, dq_smem, dq)
    return dkT, dvT


@gluon.jit
def _steps(dkT, dvT, t, i_lo, i_hi, m_lo, row0, q_col, n_q, n_keys, stat0, q_bufs, do_bufs, lse_bufs, delta_bufs,
           lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem, q_ready, q_empty, do_ready, do_empty, pds_ready,
           dq_desc, n0, diag, win_left, qk_scale, zero_s, zero_dq, MASK: gl.constexpr, CAUSAL: gl.constexpr,
           WINDOW: gl.constexpr, VARLEN: gl.constexpr, W: gl.constexpr, s_layout: gl.constexpr):
    """Steps over a head's query blocks m_lo + i for i from i_hi - 1 down to i_lo (rows from row0 + m0 of the
    views; packed, its L and Delta from stat0 + m0 and n_q - m0 of its rows in the sequence), all masked or none;
    t counts the steps taken, for the rings' slots and phases."""
    for k in range(0, i_hi - i_lo):
        m0 = (m_lo + i_hi - 1 - k) * _M
        dkT, dvT = _step(dkT, dvT, t, q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, stat0 + m0, k_smem, v_smem,
                         pT_bufs, dsT_bufs, dq_smem, q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc,
                         row0 + m0, q_col, n_q - m0, n_keys, m0, n0, diag, win_left, qk_scale, zero_s, zero_dq, MASK,
                         CAUSAL, WINDOW, VARLEN, W, s_layout)
        t += 1
    return dkT, dvT, t


@gluon.jit
def _consumer(q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem, kv_bar,
              q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc, dk_desc, dv_desc, dk_ptr, dv_ptr, kv_row,
              kv_col, kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, win_left, N_Q, GROUP,
              qk_scale, sm_scale, CAUSAL: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr, W: gl.constexpr,
              NUM_WARPS: gl.constexpr):
    """Consumer W: S and P (W = 0) or dP and dS (W = 1) of the whole key block, head-dim columns [128 W, 128 W + 128)
    for dK^T, dV^T and dQ.  A head's query blocks from m_lo (every one from there on, or with WINDOW or VARLEN n_mb
    of them), walked from the last down; the lowest n_masked cross the diagonal, and with a window or packed those
    from n_tail on are masked too (crossed by its left edge, or running past the sequence).

    Dense: head g's rows start at row (bh0 + g) * N_Q of the (B*H*Nq, D) views; the packed-only arguments (dk_ptr,
    dv_ptr, kv_col, kv_stride, q_col0, n_q, n_kv) are constexpr 0.  Packed (VARLEN): the sequence's rows start at
    bh0 of the (total_q, H * 256) views, head g's at column q_col0 + g * 256; it has n_q queries and n_kv keys, and
    L and Delta are read from lse, delta (pointers to the (H, total_q) buffers)."""
    # the accumulators 64 keys wide (S, dP: rows x keys; dK^T, dV^T: head dims x keys) share one wgmma layout
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, _N, 16])
    q_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, _DQ_COLS, 16])
    dkT = gl.zeros([_HALF, _N], gl.float32, layout=s_layout)
    dvT = gl.zeros([_HALF, _N], gl.float32, layout=s_layout)
    zero_s = gl.zeros([_M, _N], gl.float32, layout=s_layout)
    zero_dq = gl.zeros([_M, _DQ_COLS], gl.float32, layout=q_layout)
    if not (WINDOW or VARLEN):
        n_mb = N_Q // _M - m_lo
    n_keys = n_kv - n0  # packed: the program's keys inside the sequence (dense: unused)

    mbarrier.wait(kv_bar, 0)
    t = 0
    for g in range(GROUP):
        row0, q_col, stat0 = head_rows(g, bh0, q_col0, N_Q, _D, VARLEN)
        # the query blocks from the last down: (a window or packed) those its left edge crosses or that run past the
        # sequence, the unmasked ones, then the n_masked crossing the diagonal
        if WINDOW or VARLEN:
            dkT, dvT, t = _steps(dkT, dvT, t, n_tail, n_mb, m_lo, row0, q_col, n_q, n_keys, stat0, q_bufs, do_bufs,
                                 lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem, q_ready,
                                 q_empty, do_ready, do_empty, pds_ready, dq_desc, n0, diag, win_left, qk_scale, zero_s,
                                 zero_dq, True, CAUSAL, WINDOW, VARLEN, W, s_layout)
            dkT, dvT, t = _steps(dkT, dvT, t, n_masked, n_tail, m_lo, row0, q_col, n_q, n_keys, stat0, q_bufs,
                                 do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem,
                                 q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc, n0, diag, win_left,
                                 qk_scale, zero_s, zero_dq, False, CAUSAL, WINDOW, VARLEN, W, s_layout)
        else:
            dkT, dvT, t = _steps(dkT, dvT, t, n_masked, n_mb, m_lo, row0, q_col, n_q, n_keys, stat0, q_bufs, do_bufs,
                                 lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem, q_ready,
                                 q_empty, do_ready, do_empty, pds_ready, dq_desc, n0, diag, win_left, qk_scale, zero_s,
                                 zero_dq, False, CAUSAL, WINDOW, VARLEN, W, s_layout)
        dkT, dvT, t = _steps(dkT, dvT, t, 0, n_masked, m_lo, row0, q_col, n_q, n_keys, stat0, q_bufs, do_bufs,
                             lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq_smem, q_ready,
                             q_empty, do_ready, do_empty, pds_ready, dq_desc, n0, diag, win_left, qk_scale, zero_s,
                             zero_dq, True, CAUSAL, WINDOW, VARLEN, W, s_layout)
    # the other consumer's last S or dP (which read this consumer's columns of K_j or V_j) retired before it
    # arrived on the last step's barrier, and this consumer's own dQ products (its columns of K_j) have retired:
    # its column halves of the K and V tiles carry dK and dV out
    k_half = k_smem.slice(W * _HALF, _HALF, dim=1)
    v_half = v_smem.slice(W * _HALF, _HALF, dim=1)
    k_half.store(gl.permute((dkT * sm_scale).to(k_smem.dtype), (1, 0)))
    v_half.store(gl.permute(dvT.to(v_smem.dtype), (1, 0)))
    store_dk_dv(dk_desc, dv_desc, dk_ptr, dv_ptr, k_half, v_half, kv_row, kv_col + W * _HALF, kv_stride, n_keys,
                VARLEN, NUM_WARPS)


@gluon.jit
def bwd_sm90_d256_kernel(q_desc, do_desc, k_desc, v_desc, dk_desc, dv_desc, dq_desc, lse, delta, qk_scale, sm_scale,
                         H, GROUP, N_Q, N_KV, WIN_LEFT, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr, table_ptr,
                         CAUSAL: gl.constexpr, WINDOW: gl.constexpr, GROUP_PROGRAMS: gl.constexpr,
                         PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr, VARLEN: gl.constexpr):
    """Dense: grid (Nkv / 64, B * H_kv), descriptors over the (B*H*N, 256) views: q_desc, do_desc (64, 256) tiles,
    k_desc, v_desc (64, 256), dk_desc, dv_desc (64, 128) (``half_descriptor``), dq_desc (64, 64) fp32 over the
    accumulator; lse, delta: the forward's base-2 L and Delta, 1-D descriptors of 64-value tiles over the flat
    (B*H*Nq) buffers; dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr and table_ptr None.  Packed (VARLEN): grid (rows of the
    (sequence, key block) table for 64-key blocks, H_kv), descriptors over the (total, heads * 256) views
    (``packed_half_descriptor`` for dK, dV), N_Q and N_KV the packed lengths total_q, total_k, lse and delta
    pointers to the (H, total_q) buffers.  WINDOW (with CAUSAL): each query sees the WIN_LEFT keys before its
    diagonal one too (unused without)."""
    gl.static_assert(q_desc.block_type.shape[0] == _M, "64 query rows a step")
    gl.static_assert(k_desc.block_type.shape[0] == _N, "64 keys a program")
    gl.static_assert(q_desc.block_type.shape[1] == _D, "head dim 256")
    gl.static_assert(dk_desc.block_type.shape[1] == _HALF, "dK / dV are stored a consumer's column half at a time")
    gl.static_assert(dq_desc.block_type.shape[1] == _DQ_COLS, "dQ is reduced 64 columns at a time")
    gl.static_assert(CAUSAL or not WINDOW, "windows with a right reach are not supported")
    if VARLEN:
        (n0, diag, m_lo, n_mb, n_masked, n_tail, bh0, q_col0, n_q, n_kv, kv_row, kv_col,
         kv_stride) = packed_key_block(table_ptr, cu_q_ptr, cu_k_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, _M, _N, _D, CAUSAL,
                                       WINDOW, GROUP_PROGRAMS)
        win_left = WIN_LEFT
        dk_out = dk_ptr  # the last key block's partial stores
        dv_out = dv_ptr
    else:
        n0, bh0, kv_row, diag = dense_key_block(H, GROUP, N_Q, N_KV, _N, GROUP_PROGRAMS)
        if CAUSAL:
            m_lo = gl.maximum(n0 - diag, 0) // _M
            # _M == _N: a key block on or past the diagonal is crossed by exactly its lowest visited query block
            if n0 >= diag:
                n_masked = 1
            else:
                n_masked = 0
        else:
            m_lo = 0
            n_masked = 0
        if WINDOW:
            # query m sees key n iff m + diag - WIN_LEFT <= n <= m + diag: the last row that sees a key of the block
            # is n0 + 63 - diag + WIN_LEFT, and every row of query block i sees key n0 iff (i + 1) * 64 - 1 + diag -
            # WIN_LEFT <= n0; blocks from there up to the last visited are crossed by the window's left edge
            m_hi = gl.minimum(gl.cdiv(gl.maximum(n0 + _N - diag + WIN_LEFT, 0), _M), N_Q // _M)
            n_mb = gl.maximum(m_hi, m_lo) - m_lo
            n_masked = gl.minimum(n_masked, n_mb)
            n_tail = gl.minimum(gl.maximum(gl.maximum(n0 - diag + WIN_LEFT + 1, 0) // _M - m_lo, n_masked), n_mb)
            win_left = WIN_LEFT
        else:
            # placeholders: the builds without a window capture what they did before
            n_mb: gl.constexpr = 0
            n_tail: gl.constexpr = 0
            win_left: gl.constexpr = 0
        # the packed-only arguments: constexpr 0 placeholders, so the dense partitions capture what they did before
        q_col0: gl.constexpr = 0
        n_q: gl.constexpr = 0
        n_kv: gl.constexpr = 0
        kv_col: gl.constexpr = 0
        kv_stride: gl.constexpr = 0
        dk_out: gl.constexpr = 0
        dv_out: gl.constexpr = 0

    q_bufs, do_bufs, lse_bufs, delta_bufs = q_do_rings(q_desc, do_desc, lse, delta, _Q_STAGES, _DO_STAGES, VARLEN)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [_N, _D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [_N, _D], v_desc.layout)
    pds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([_N, _M], q_desc.dtype)
    pT_bufs = gl.allocate_shared_memory(q_desc.dtype, [2, _N, _M], pds_layout)
    dsT_bufs = gl.allocate_shared_memory(q_desc.dtype, [2, _N, _M], pds_layout)
    dq0 = gl.allocate_shared_memory(gl.float32, [_M, _DQ_COLS], dq_desc.layout)
    dq1 = gl.allocate_shared_memory(gl.float32, [_M, _DQ_COLS], dq_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    q_ready, q_empty = _ring(_Q_STAGES)
    do_ready, do_empty = _ring(_DO_STAGES)
    # P ready (consumer 0 arrives), then dS ready (consumer 1), for each parity of the step
    pds_ready = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(4):
        mbarrier.init(pds_ready.index(i), count=1)

    gl.warp_specialize([
        (_consumer, (q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq0, kv_bar,
                     q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc, dk_desc, dv_desc, dk_out, dv_out, kv_row,
                     kv_col, kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, win_left, N_Q,
                     GROUP, qk_scale, sm_scale, CAUSAL, WINDOW, VARLEN, 0, 4)),
        (_consumer, (q_bufs, do_bufs, lse_bufs, delta_bufs, lse, delta, k_smem, v_smem, pT_bufs, dsT_bufs, dq1, kv_bar,
                     q_ready, q_empty, do_ready, do_empty, pds_ready, dq_desc, dk_desc, dv_desc, dk_out, dv_out, kv_row,
                     kv_col, kv_stride, n0, bh0, q_col0, n_q, n_kv, m_lo, n_mb, n_masked, n_tail, diag, win_left, N_Q,
                     GROUP, qk_scale, sm_scale, CAUSAL, WINDOW, VARLEN, 1, 4)),
        (_producer, (q_desc, do_desc, k_desc, v_desc, lse, delta, q_bufs, do_bufs, lse_bufs, delta_bufs, k_smem,
                     v_smem, kv_bar, q_ready, q_empty, do_ready, do_empty, kv_row, kv_col, bh0, q_col0, m_lo, n_mb,
                     N_Q, GROUP, WINDOW, VARLEN)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def kernel_constexprs(causal: bool, group_programs: int, window: bool = False, varlen: bool = False) -> dict:
    """The constexprs ``sm90_bwd.prepare_backward`` (dense) and ``sm90_bwd.backward_varlen`` (``varlen``) launch
    ``bwd_sm90_d256_kernel`` with (compile checks use these).  Packed programs differ in work whether causal or
    not: they are grouped either way."""
    return dict(CAUSAL=bool(causal), WINDOW=bool(window), GROUP_PROGRAMS=group_programs if (causal or varlen) else 0,
                PRODUCER_REGS=PRODUCER_REGS, CONSUMER_REGS=CONSUMER_REGS, VARLEN=bool(varlen))
