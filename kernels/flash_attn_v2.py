"""FlashAttention-2 in Triton: forward and backward, autotuned, with GQA/MQA and bottom-right causal.

What is implemented
-------------------
``flash_attn_v2(q, k, v, causal=False, sm_scale=None, return_lse=False)`` computes
``softmax(sm_scale * Q K^T [+ causal mask]) V`` for SDPA-layout inputs q (B, H, Nq, D),
k and v (B, H_kv, Nkv, D) and is differentiable through a ``torch.autograd.Function`` whose
backward runs the Triton kernels below (no PyTorch attention math anywhere).

Forward, FA2 paper (Dao 2023) Algorithm 1
  * one program per (block of BLOCK_M query rows, batch*head): the outer loop of Algorithm 1
    is the launch grid, so Q_i stays in registers and O_i is written once;
  * inner loop over K_j/V_j blocks of BLOCK_N keys with the online softmax (running row max m_i,
    running row sum l_i, un-normalised accumulator); log2(e) is folded into the scale so the
    kernel uses ``exp2``; the division by l_i is deferred to the end (Algorithm 1 line 12);
  * the base-2 log-sum-exp L_i = m_i + log2(l_i) (line 13) is stored for the backward pass
    (``return_lse=True`` returns it converted to the natural log);
  * causal: key blocks fully visible to every row of the query block run with no mask
    arithmetic; only the blocks crossing the diagonal apply the mask; blocks above the diagonal
    are never visited.  Causal query blocks are launched heaviest first across groups of heads
    spanning >= ``CAUSAL_GROUP_PROGRAMS`` programs, so that a sweep ends on light blocks (the
    dQ and dK/dV kernels likewise; TUNING.md v7).

Backward, FA2 paper Algorithm 2, split into three kernels:
  * ``_bwd_preprocess``: Delta_i = rowsum(dO_i * O_i) (Algorithm 2 line 4, D_i in the paper);
  * ``_bwd_dkdv_kernel``: one program per (K/V block, batch*kv_head) loops over query blocks
    (and over the query heads sharing the kv head, so GQA/MQA gradients are summed in registers
    with no atomics and no extra memory), recomputing P from Q, K and the stored L;
    dV += P^T dO, dK += dS^T Q (lines 14-21);
  * ``_bwd_dq_kernel``: one program per (Q block, batch*head) loops over K/V blocks and
    accumulates dQ += dS K in registers.  The paper's dQ update by atomic adds (line 21) is
    replaced by this second pass: it recomputes S and dP (7 instead of 5 matmuls in all) but is
    deterministic, needs no fp32 dQ buffer, no zero-fill and no conversion kernel.  The atomic
    variant was not measured (see TUNING.md).

Conventions
  * causal is aligned to the bottom-right corner, like ``flashbench.reference``: query i sees
    key j iff j <= i + (Nkv - Nq).  Query rows that see no key (Nq > Nkv) output 0, their LSE is
    -inf, and they contribute zero gradients (no NaN).
  * GQA/MQA: query head h reads kv head h // (H // H_kv) through index arithmetic; K/V are never
    copied or expanded.
  * any Nq, Nkv (tails handled by masked loads / TMA bounds), Nq != Nkv; head dims 32, 64, 96,
    128, 256 (96 runs in a 128-wide tile with the extra columns masked / zero-filled);
    fp16 and bf16 (P and dS are cast to the input dtype before the matmuls), and fp32 with exact
    ``input_precision="ieee"`` dots as a reference path.
  * inputs may be non-contiguous: strides are passed; the last dim must be contiguous.
  * sm_scale defaults to 1/sqrt(D) and must be a positive finite number.

Hardware paths
  * pointer path (any CUDA GPU Triton supports): masked ``tl.load``/``tl.store`` of tiles,
    software-pipelined by ``num_stages``;
  * TMA path (capability >= 9, i.e. Hopper, with 16-byte aligned base addresses and strides):
    tiles move through device-side tensor descriptors (``tl.make_tensor_descriptor``, one per
    (batch, head) matrix, so out-of-bounds rows/columns are zero-filled on load and clipped on
    store).  On Hopper the autotuner chooses the path together with the tile sizes, warps and
    stages (``USE_TMA`` is one of the tuned constexprs), once per (Nq bucket, Nkv bucket, allowed
    paths, head dim, causal, dtype), timing the candidates in interleaved rounds (``_tuner.py``);
    measurements are in TUNING.md.
  * warp-specialised forward (Hopper, TMA path, non-causal, fp16/bf16; one of the tuned
    configurations for head dims 96 and 128): ``tl.range(..., warp_specialize=True)`` on the key
    loop, with 4 warps, which Triton 3.6 turns into one producer warp group issuing the TMA loads
    and two consumer warp groups of BLOCK_M / 2 query rows each running the dots and the softmax
    (12 warps; the FlashAttention-3 arrangement, without its explicit ping-pong or intra-warp-group
    overlap).  The pass accepts one loop per kernel, so this forward walks every key block in one
    loop, masking the key tail in each block unless 128 divides Nkv (``EVEN_KV``), and stores O by
    pointer; causal forwards are never warp-specialised (measured slower with every block masked).
    With 3 pipeline stages the specialised kernel wrote NaN rows on the H100 and is not offered.
  * Gluon Hopper forward (``flash_attn_v2_sm90``; capability 9.x, fp16/bf16, D = 128, Nq and Nkv
    multiples of 128, contiguous inputs, Nq >= ``GLUON_MIN_NQ``): the same Algorithm 1 with
    FlashAttention-3's explicit producer/consumer warp specialisation and the softmax overlapping
    the P V wgmma, causal included.  It is one more candidate of the forward's tuner (the
    ``GLUON`` entry of the D128 space), so it runs only where the tuner measures it faster; it
    also runs D = 64, slower, so the D64 space does not offer it.  Its own docstring says what it
    does not support; the backward stays the Triton one.
  * under ``TRITON_INTERPRET=1`` one fixed small configuration is used and nothing is tuned.

Not supported: dropout, attention bias / arbitrary or sliding-window masks, top-left causal
alignment, variable-length (packed) batches, KV cache / paged attention, fp8, head dims other
than 32/64/96/128/256, non-positive softmax scales, gradients with respect to the returned LSE.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import flash_attn_v2_sm90 as _sm90
from ._autograd import attention_function
from ._schedule import block_and_head
from ._tuner import InterleavedTuner
from ._validate import check_inputs, default_scale, interpreting

__all__ = ["flash_attn_v2", "last_configs"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _make_src(base, stride_row, n_rows, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
              HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr):
    """A tile source for one (batch, head) matrix of n_rows x HEAD_DIM: a TMA descriptor or the pointer."""
    if USE_TMA:
        return tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[stride_row, 1],
                                         block_shape=[BLOCK_R, BLOCK_D])
    else:
        return base


@triton.jit
def _load_tile(src, stride_row, row0, n_rows, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr, MASK_ROWS: tl.constexpr):
    """Rows [row0, row0 + BLOCK_R) x columns [0, BLOCK_D); out-of-range rows/columns read as 0."""
    if USE_TMA:
        return src.load([row0, 0])
    else:
        offs_r = row0 + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = src + offs_r[:, None] * stride_row + offs_d[None, :]
        if MASK_ROWS:
            if BLOCK_D == HEAD_DIM:
                return tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
            else:
                return tl.load(ptrs, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            if BLOCK_D == HEAD_DIM:
                return tl.load(ptrs)
            else:
                return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _store_tile(dst, stride_row, row0, n_rows, val, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr):
    if USE_TMA:
        dst.store([row0, 0], val)
    else:
        offs_r = row0 + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = dst + offs_r[:, None] * stride_row + offs_d[None, :]
        if BLOCK_D == HEAD_DIM:
            tl.store(ptrs, val, mask=offs_r[:, None] < n_rows)
        else:
            tl.store(ptrs, val, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, lo, hi, offs_m, diag, N_KV, qk_scale,
               MASK: tl.constexpr,  # 0: none, 1: causal diagonal, 2: key tail
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               USE_TMA: tl.constexpr, IEEE: tl.constexpr, WARP_SPEC: tl.constexpr = False):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        k = _load_tile(k_src, stride_kn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        qk = _dot(q, tl.trans(k), None, IEEE)
        if MASK == 0:
            # every score is finite: one FMA per element, no masking
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        else:
            offs_n = start_n + offs_n0
            if MASK == 1:
                visible = offs_n[None, :] <= offs_m[:, None] + diag
            else:
                visible = offs_n[None, :] < N_KV
            s = tl.where(visible, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # rows with nothing visible so far keep m = -inf; subtract 0 instead to avoid inf - inf
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_tile(v_src, stride_vn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        acc = _dot(p.to(v.dtype), v, acc, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["N_Q", "N_KV", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK", "SM90_OK"])
def _fwd_kernel(Q, K, V, O, LSE, sm_scale,
                stride_qb, stride_qh, stride_qm,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, stride_om,
                H, GROUP, N_Q, N_KV, NQ_BUCKET, NKV_BUCKET, TMA_OK, SM90_OK,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GROUP_PROGRAMS: tl.constexpr, WARP_SPEC: tl.constexpr = False):
    pid_m, pid_bh = block_and_head(tl.num_programs(1), CAUSAL, GROUP_PROGRAMS)  # heaviest first if causal
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    m0 = pid_m * BLOCK_M
    diag = N_KV - N_Q  # query i sees key j iff j <= i + diag (causal)
    qk_scale = sm_scale * 1.4426950408889634

    q_src = _make_src(Q + b * stride_qb + h * stride_qh, stride_qm, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
    k_src = _make_src(K + b * stride_kb + hk * stride_kh, stride_kn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh, stride_vn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    o_dst = _make_src(O + b * stride_ob + h * stride_oh, stride_om, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    if WARP_SPEC:
        # Triton 3.6's warp-specialisation pass splits the Q block between two consumer warp
        # groups by rewriting the Q load's row offset to (offset + BLOCK_M/2) in the second one,
        # and rewrites every other use of that same value too: offs_m would be shifted twice and
        # any bound built on it (wrong rows; measured: NaN rows on the H100).  The
        # load therefore gets its own value, equal to m0 (the grid has one program along z).
        q_row0 = m0 + tl.program_id(2)
    else:
        q_row0 = m0
    q = _load_tile(q_src, stride_qm, q_row0, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, True)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        # keys < hi are visible to some row of this block; keys < full_end to all of them
        tl.static_assert(not WARP_SPEC, "the warp-specialised forward is non-causal only")
        hi = tl.minimum(N_KV, m0 + BLOCK_M + diag)
        full_end = tl.minimum((tl.maximum(m0 + diag + 1, 0) // BLOCK_N) * BLOCK_N, tl.maximum(hi, 0))
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, 0, full_end,
                                   offs_m, diag, N_KV, qk_scale, 0, BLOCK_N, BLOCK_D, HEAD_DIM,
                                   USE_TMA, IEEE)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, full_end, hi,
                                   offs_m, diag, N_KV, qk_scale, 1, BLOCK_N, BLOCK_D, HEAD_DIM,
                                   USE_TMA, IEEE)
    elif WARP_SPEC:
        # Triton 3.6 warp-specialises a loop only when the kernel has no other loop: one loop over
        # every key block, the key tail masked in each unless BLOCK_N divides N_KV
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, 0, N_KV,
                                   offs_m, diag, N_KV, qk_scale, 0 if EVEN_KV else 2, BLOCK_N, BLOCK_D,
                                   HEAD_DIM, USE_TMA, IEEE, True)
    else:
        full_end = (N_KV // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, 0, full_end,
                                   offs_m, diag, N_KV, qk_scale, 0, BLOCK_N, BLOCK_D, HEAD_DIM,
                                   USE_TMA, IEEE)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, full_end, N_KV,
                                   offs_m, diag, N_KV, qk_scale, 2, BLOCK_N, BLOCK_D, HEAD_DIM,
                                   USE_TMA, IEEE)

    # deferred normalisation; rows that saw no key have l_i == 0 and output 0
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = m_i + tl.math.log2(l_i)  # -inf for rows with no visible key
    tl.store(LSE + pid_bh.to(tl.int64) * N_Q + offs_m, lse2, mask=offs_m < N_Q)
    # with warp specialisation the consumer warpgroups each hold part of the block: store by pointer
    _store_tile(O + b * stride_ob + h * stride_oh if WARP_SPEC else o_dst, stride_om, m0, N_Q,
                o.to(O.dtype.element_ty), BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA and not WARP_SPEC)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N_Q"])
def _bwd_preprocess(O, DO, DELTA,
                    stride_ob, stride_oh, stride_om,
                    stride_db, stride_dh, stride_dm,
                    H, N_Q,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, axis=1), mask=offs_m < N_Q)


@triton.jit
def _load_row_stats(LSE_row, DELTA_row, offs_m, N_Q, MASK_ROWS: tl.constexpr):
    """Base-2 LSE (with +inf for rows that saw no key or lie past N_Q, so that P = 0 there) and Delta."""
    if MASK_ROWS:
        lse = tl.load(LSE_row + offs_m, mask=offs_m < N_Q, other=float("inf"))
        delta = tl.load(DELTA_row + offs_m, mask=offs_m < N_Q, other=0.0)
    else:
        lse = tl.load(LSE_row + offs_m)
        delta = tl.load(DELTA_row + offs_m)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    return lse, delta


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom, lo, hi,
                offs_n, diag, N_Q, qk_scale,
                MASK: tl.constexpr,  # 0: none, 1: causal diagonal, 2: query tail
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                USE_TMA: tl.constexpr, IEEE: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_tile(q_src, stride_qm, start_m, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        lse, delta = _load_row_stats(LSE_row, DELTA_row, offs_m, N_Q, MASK != 0)
        qkT = _dot(k, tl.trans(q), None, IEEE)  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK == 1:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, pT, 0.0)
        do = _load_tile(do_src, stride_dom, start_m, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        dv = _dot(pT.to(do.dtype), do, dv, IEEE)
        dpT = _dot(v, tl.trans(do), None, IEEE)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(q.dtype), q, dk, IEEE)
    return dk, dv


@triton.jit(do_not_specialize=["N_Q", "N_KV", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK"])
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, sm_scale,
                     stride_qb, stride_qh, stride_qm,
                     stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     stride_dob, stride_doh, stride_dom,
                     stride_dkb, stride_dkh, stride_dkn,
                     stride_dvb, stride_dvh, stride_dvn,
                     H, H_KV, GROUP, N_Q, N_KV, NQ_BUCKET, NKV_BUCKET, TMA_OK,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                     GROUP_PROGRAMS: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    pid_n, pid_bhk = block_and_head(tl.num_programs(1), False, GROUP_PROGRAMS)  # key block 0 is heaviest
    b = (pid_bhk // H_KV).to(tl.int64)
    hk = (pid_bhk % H_KV).to(tl.int64)
    n0 = pid_n * BLOCK_N
    diag = N_KV - N_Q
    qk_scale = sm_scale * 1.4426950408889634
    offs_n = n0 + tl.arange(0, BLOCK_N)

    k_src = _make_src(K + b * stride_kb + hk * stride_kh, stride_kn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh, stride_vn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    k = _load_tile(k_src, stride_kn, n0, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, True)
    v = _load_tile(v_src, stride_vn, n0, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    q_full_end = (N_Q // BLOCK_M) * BLOCK_M
    if CAUSAL:
        # rows >= n0 - diag see some key of this block; rows >= n0 + BLOCK_N - 1 - diag see all of them
        lo = (tl.maximum(n0 - diag, 0) // BLOCK_M) * BLOCK_M
        lo = tl.minimum(lo, N_Q)
        full_start = tl.maximum(lo, tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M)
        full_start = tl.minimum(full_start, N_Q)
    else:
        lo = 0
        full_start = 0
    unmasked_end = tl.maximum(q_full_end, full_start)

    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        q_src = _make_src(Q + b * stride_qb + h * stride_qh, stride_qm, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
        do_src = _make_src(DO + b * stride_dob + h * stride_doh, stride_dom, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM,
                           USE_TMA)
        LSE_row = LSE + bh * N_Q
        DELTA_row = DELTA + bh * N_Q
        if CAUSAL:
            dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                                 lo, full_start, offs_n, diag, N_Q, qk_scale, 1,
                                 BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                             full_start, q_full_end, offs_n, diag, N_Q, qk_scale, 0,
                             BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                             unmasked_end, N_Q, offs_n, diag, N_Q, qk_scale, 2,
                             BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)

    dk = dk * sm_scale
    dk_dst = _make_src(DK + b * stride_dkb + hk * stride_dkh, stride_dkn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    dv_dst = _make_src(DV + b * stride_dvb + hk * stride_dvh, stride_dvn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    _store_tile(dk_dst, stride_dkn, n0, N_KV, dk.to(DK.dtype.element_ty), BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    _store_tile(dv_dst, stride_dvn, n0, N_KV, dv.to(DV.dtype.element_ty), BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, lo, hi, offs_m, diag, N_KV, qk_scale,
              MASK: tl.constexpr,  # 0: none, 1: causal diagonal, 2: key tail
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
              USE_TMA: tl.constexpr, IEEE: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        k = _load_tile(k_src, stride_kn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        v = _load_tile(v_src, stride_vn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK != 0)
        qk = _dot(q, tl.trans(k), None, IEEE)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK != 0:
            offs_n = start_n + offs_n0
            if MASK == 1:
                p = tl.where(offs_n[None, :] <= offs_m[:, None] + diag, p, 0.0)
            else:
                p = tl.where(offs_n[None, :] < N_KV, p, 0.0)
        dp = _dot(do, tl.trans(v), None, IEEE)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, IEEE)
    return dq


@triton.jit(do_not_specialize=["N_Q", "N_KV", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK"])
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, sm_scale,
                   stride_qb, stride_qh, stride_qm,
                   stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn,
                   stride_dob, stride_doh, stride_dom,
                   stride_dqb, stride_dqh, stride_dqm,
                   H, GROUP, N_Q, N_KV, NQ_BUCKET, NKV_BUCKET, TMA_OK,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                   GROUP_PROGRAMS: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    pid_m, pid_bh = block_and_head(tl.num_programs(1), CAUSAL, GROUP_PROGRAMS)  # heaviest first if causal
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    m0 = pid_m * BLOCK_M
    diag = N_KV - N_Q
    qk_scale = sm_scale * 1.4426950408889634
    offs_m = m0 + tl.arange(0, BLOCK_M)

    q_src = _make_src(Q + b * stride_qb + h * stride_qh, stride_qm, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
    do_src = _make_src(DO + b * stride_dob + h * stride_doh, stride_dom, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
    k_src = _make_src(K + b * stride_kb + hk * stride_kh, stride_kn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh, stride_vn, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA)
    q = _load_tile(q_src, stride_qm, m0, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, True)
    do = _load_tile(do_src, stride_dom, m0, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, True)
    lse, delta = _load_row_stats(LSE + pid_bh.to(tl.int64) * N_Q, DELTA + pid_bh.to(tl.int64) * N_Q,
                                 offs_m, N_Q, True)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        hi = tl.minimum(N_KV, m0 + BLOCK_M + diag)
        full_end = tl.minimum((tl.maximum(m0 + diag + 1, 0) // BLOCK_N) * BLOCK_N, tl.maximum(hi, 0))
        dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, 0, full_end, offs_m, diag,
                       N_KV, qk_scale, 0, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, full_end, hi, offs_m, diag,
                       N_KV, qk_scale, 1, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
    else:
        full_end = (N_KV // BLOCK_N) * BLOCK_N
        dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, 0, full_end, offs_m, diag,
                       N_KV, qk_scale, 0, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, full_end, N_KV, offs_m, diag,
                       N_KV, qk_scale, 2, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)

    dq = dq * sm_scale
    dq_dst = _make_src(DQ + b * stride_dqb + h * stride_dqh, stride_dqm, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
    _store_tile(dq_dst, stride_dqm, m0, N_Q, dq.to(DQ.dtype.element_ty), BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)


# ----------------------------------------------------------------------------------------------
# Configuration spaces and autotuning
# ----------------------------------------------------------------------------------------------
def _dclass(head_dim: int) -> str:
    return "small" if head_dim <= 64 else ("mid" if head_dim <= 128 else "large")


# (BLOCK_M, BLOCK_N, num_warps, num_stages[, WS | GLUON]) per head-dim class.  Each entry is tried
# with both tile paths (pointer loads and TMA descriptors) where the inputs allow TMA; entries
# marked WS are warp-specialised forwards, TMA path only (see _ws_allowed); GLUON is the Gluon
# Hopper forward (flash_attn_v2_sm90: 128x128 blocks, 4 warps per consumer, ``num_stages`` K/V ring
# slots), offered where it supports the inputs (SM90_OK) from Nq = GLUON_MIN_NQ up.  At D64 it was
# 1.5-12% slower than the Triton forward below N = 8k and within 2% of it at 8k-16k (interleaved A/B
# on the H200, TUNING.md v8), so only D128 offers it. The first entry of each list is the
# configuration used when autotuning is off.  For the dK/dV kernel BLOCK_N is the number of key rows
# a program owns and BLOCK_M the query rows per step; for dQ the reverse.
WS = "ws"
GLUON = "gluon_sm90"
FWD_SPACE = {
    "small": [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)],
    "mid": [(128, 128, 8, 3), (64, 64, 4, 3), (128, 128, 4, 2, WS), (128, 128, 4, 2, GLUON)],
    "large": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)],
}
DKDV_SPACE = {
    "small": [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3)],
    "mid": [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3)],
    "large": [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 1)],
}
DQ_SPACE = {
    "small": [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)],
    "mid": [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 8, 2)],
    "large": [(64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 1)],
}
# Forward entries not offered to the tuner from an Nq bucket up, per (class, causal): they lost to
# the class's first entry in (nearly) every pinned 100 ms measurement there, yet the tuner, which
# times each candidate for 60 ms, chose them in sweeps (TUNING.md v7):
#  - D128 causal, N >= 4k: 64x64 4-15% slower than 128x128/8 warps in 11 of 12 measurements over
#    six device calls (the twelfth on the TMA path); Triton's tuner chose it in every such cell
#    of a sweep.
#  - D64 non-causal, N >= 4k: 64x64 0.5-10% slower than 128x64/8 warps in 8 of 8 measurements
#    over five device calls; chosen in 9 of 12 such cells of four sweeps.
FWD_SKIP = {("mid", True, 4096): [(64, 64, 4, 3)], ("small", False, 4096): [(64, 64, 4, 3)]}
# The Gluon forward is offered from this Nq bucket up.  Its host path (four TMA descriptors built and
# encoded per call, then Triton's launcher) costs 130-250 us a call against 120-180 us for the
# Triton forward (H200 host, TUNING.md v8).  At Nq = 512 (B32 H16, D128) its kernel takes about as
# long as that host path, so calls wait on the host: flashbench's samples split between 0.14 and
# 0.29-0.34 ms where a pinned Triton forward's (128x128, 8 warps) stay at 0.234 ms, with the garbage
# collector on or off, and the default sweep on the H100 measured it 16-17% slower non-causal (bf16
# and fp16) and 2.9x slower causal in bf16 (level in fp16).  From Nq = 1024 (B16 H16) it was 14-19%
# faster with tight samples in all four D128 cells of that sweep, and 17-22% faster than the Triton
# forward in the interleaved A/B on the H200.  The tuner ranks by the fast tail, which cannot see a
# host-bound candidate, hence a fixed bound.
GLUON_MIN_NQ = 1024
# Where both tile paths are allowed, the tuner tries only the path that won for that kernel in
# runs 2 and 3 (TUNING.md): TMA for dK/dV (~10% faster), pointers for the forward and dQ.
# Trying both paths, and five entries a class, made autotuning cost ~10 s a shape in a sweep,
# most of it compiling 30 variants per (head dim, causal, dtype); three entries on one path
# compile 9.
PREFERRED_PATH = {"fwd": False, "bwd_dkdv": True, "bwd_dq": False}
# One fixed small configuration for the CPU interpreter (BLOCK_M != BLOCK_N on purpose, to
# exercise the diagonal logic with blocks of both shapes).
INTERPRET_CONFIG = {"fwd": (32, 16, 1, 1), "bwd_dkdv": (16, 32, 1, 1), "bwd_dq": (32, 16, 1, 1)}

# Tests may turn autotuning off (first configuration of each space, TMA where allowed) to keep
# compile counts low, force a path ("tma" or "ptr"), or pin one kernel's configuration
# (FORCE_CONFIG["fwd"] = (128, 128, 4, 3, WS)); None / empty lets capability, alignment and
# the autotuner decide.
AUTOTUNE = True
FORCE_PATH: str | None = None
FORCE_CONFIG: dict[str, tuple] = {}
# Launch order of causal programs (block_and_head): heads in groups of >= this many programs,
# heaviest blocks of the group first; 0 launches each head's blocks heaviest first (v6's order).
# Kept settable to time orders against each other in one process (scripts/fa2_causal_schedule.py).
CAUSAL_GROUP_PROGRAMS = 256
# The Gluon Hopper forward (flash_attn_v2_sm90, the GLUON entries of FWD_SPACE) is offered to the
# tuner wherever it supports the inputs; False never offers it (to time the Triton forward alone).
SM90_FORWARD = True

_LAST_CONFIGS: dict[str, str] = {}

# TMA_OK, an autotuning key: which tile paths the current inputs allow
_PTR_ONLY, _BOTH, _TMA_ONLY = 0, 1, 2


def _is_ws(t) -> bool:
    return len(t) > 4 and t[4] == WS


def _is_gluon(t) -> bool:
    return len(t) > 4 and t[4] == GLUON


def _sig(cfg) -> tuple:
    base = (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
    return base + ((WS,) if cfg.kwargs.get("WARP_SPEC") else (GLUON,) if cfg.kwargs.get("GLUON") else ())


def _to_config(t, use_tma: bool) -> triton.Config:
    tma_only = _is_ws(t) or _is_gluon(t)
    kwargs = {"BLOCK_M": t[0], "BLOCK_N": t[1], "USE_TMA": bool(use_tma) or tma_only}
    if _is_ws(t):
        kwargs["WARP_SPEC"] = True
    if _is_gluon(t):
        kwargs["GLUON"] = True
    return triton.Config(kwargs, num_warps=t[2], num_stages=t[3])


def _all_configs(space: dict) -> list:
    seen, out = set(), []
    for lst in space.values():
        for t in lst:
            if tuple(t) not in seen:
                seen.add(tuple(t))
                one_path = _is_ws(t) or _is_gluon(t)
                out += [_to_config(t, True)] if one_path else [_to_config(t, False), _to_config(t, True)]
    return out


def _ws_allowed(tma_ok: int, ieee: bool, causal: bool) -> bool:
    """Warp specialisation: non-causal forward, TMA path (Hopper, aligned inputs), 16-bit dots.

    Triton 3.6 specialises a loop on sm_90 only with 4 warps (one producer warp group and two
    consumer warp groups of BLOCK_M / 2 rows each, 12 warps in all), and only when the kernel
    has no second loop.  A causal forward would have to mask every block in that one loop (a
    branch to an unmasked body inside it does not compile); measured that way it lost to the
    two-loop kernel (TUNING.md, v6), so causal forwards are never warp-specialised.
    """
    return tma_ok != _PTR_ONLY and not ieee and not causal and not interpreting()


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _make_pruner(space: dict, prefer_tma: bool, skip: dict | None = None):
    """The head-dim class's configurations on the allowed paths, blocks no larger than the sequences,
    less the ``skip`` entries for (class, causal) at Nq buckets from the given one up."""

    def prune(configs, named_args, **kwargs):
        cls = _dclass(kwargs["HEAD_DIM"])
        allowed = {tuple(t) for t in space[cls]}
        for (s_cls, s_causal, s_nq), entries in (skip or {}).items():
            if (s_cls, s_causal) == (cls, kwargs["CAUSAL"]) and named_args["NQ_BUCKET"] >= s_nq:
                allowed -= set(entries)
        paths = {_PTR_ONLY: (False,), _BOTH: (prefer_tma,), _TMA_ONLY: (True,)}[named_args["TMA_OK"]]
        ws_ok = _ws_allowed(named_args["TMA_OK"], kwargs["IEEE"], kwargs["CAUSAL"])
        # only the forward has SM90_OK; GLUON_MIN_NQ: see there
        gluon_ok = bool(named_args.get("SM90_OK", 0)) and named_args["NQ_BUCKET"] >= GLUON_MIN_NQ
        cand = [c for c in configs if _sig(c) in allowed
                and (gluon_ok if c.kwargs.get("GLUON") else
                     ws_ok if c.kwargs.get("WARP_SPEC") else c.kwargs["USE_TMA"] in paths)]
        nq, nkv = named_args["NQ_BUCKET"], named_args["NKV_BUCKET"]
        fit = [c for c in cand if c.kwargs["BLOCK_M"] <= max(16, nq) and c.kwargs["BLOCK_N"] <= max(16, nkv)]
        if fit:
            return fit
        smallest = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in cand)
        return [c for c in cand if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == smallest][:len(paths)]

    return prune


_TUNE_KEY = ["NQ_BUCKET", "NKV_BUCKET", "TMA_OK", "HEAD_DIM", "CAUSAL", "IEEE"]


def _tuner(kernel, space, prefer_tma: bool, extra_key=(), skip=None, launch=None) -> InterleavedTuner:
    return InterleavedTuner(kernel, _all_configs(space), _make_pruner(space, prefer_tma, skip),
                            _TUNE_KEY + list(extra_key), launch)


def _fwd_launch(cfg: triton.Config, grid_fn, args: tuple, meta: dict) -> None:
    """Launch one forward configuration: the Gluon Hopper kernel for GLUON entries, else _fwd_kernel."""
    if cfg.kwargs.get("GLUON"):
        a = dict(zip(_fwd_kernel.arg_names, args))
        _sm90.forward(a["Q"], a["K"], a["V"], a["O"], a["LSE"], meta["CAUSAL"], a["sm_scale"],
                      meta["GROUP_PROGRAMS"], cfg.num_stages)
    else:
        _fwd_kernel[grid_fn(cfg.kwargs)](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                                         num_stages=cfg.num_stages)


_fwd_tuner = _tuner(_fwd_kernel, FWD_SPACE, PREFERRED_PATH["fwd"], extra_key=["EVEN_KV", "SM90_OK"],
                    skip=FWD_SKIP, launch=_fwd_launch)
_dkdv_tuner = _tuner(_bwd_dkdv_kernel, DKDV_SPACE, PREFERRED_PATH["bwd_dkdv"])
_dq_tuner = _tuner(_bwd_dq_kernel, DQ_SPACE, PREFERRED_PATH["bwd_dq"])


def _fmt(cfg) -> str:
    if cfg.kwargs.get("GLUON"):
        return _sm90.config(cfg.num_stages)
    ws = ",warp_specialize=True" if cfg.kwargs.get("WARP_SPEC") else ""
    return (f"BLOCK_M={cfg.kwargs['BLOCK_M']},BLOCK_N={cfg.kwargs['BLOCK_N']},num_warps={cfg.num_warps},"
            f"num_stages={cfg.num_stages},tma={bool(cfg.kwargs['USE_TMA'])}{ws}")


def _launch(name: str, tuner: InterleavedTuner, space: dict, grid_fn, args: tuple, meta: dict, tma_ok: int) -> None:
    """Run a kernel: autotuned, or with a fixed configuration (interpreter / AUTOTUNE off / forced)."""
    forced = FORCE_CONFIG.get(name)
    if forced is not None and (_is_ws(forced) or _is_gluon(forced)) and name != "fwd":
        raise ValueError(f"flash_attn_v2: FORCE_CONFIG[{name!r}] = {forced}: only the forward has "
                         "warp-specialised and Gluon variants")
    if forced is not None and _is_ws(forced) and not _ws_allowed(tma_ok, meta["IEEE"], meta["CAUSAL"]):
        raise ValueError(f"flash_attn_v2: FORCE_CONFIG[{name!r}] = {forced} needs warp specialisation, which "
                         "these inputs do not allow (non-causal, TMA path on capability >= 9, 16-bit dtype, "
                         "no interpreter)")
    if forced is not None and _is_gluon(forced):
        a = dict(zip(tuner.kernel.arg_names, args))
        if not a["SM90_OK"]:
            why = ("SM90_FORWARD is off" if not SM90_FORWARD else "the TMA path is not allowed" if tma_ok == _PTR_ONLY
                   else _sm90.unsupported_reason(a["Q"], a["K"], a["V"], meta["CAUSAL"]))
            raise ValueError(f"flash_attn_v2: FORCE_CONFIG[{name!r}] = {forced} is the Gluon Hopper forward, which "
                             f"cannot run these inputs: {why}")
    if interpreting() or not AUTOTUNE or forced is not None:
        t = forced or (INTERPRET_CONFIG[name] if interpreting() else space[_dclass(meta["HEAD_DIM"])][0])
        cfg = _to_config(t, tma_ok != _PTR_ONLY)
        tuner.launch(cfg, grid_fn, args, meta)
    else:
        cfg = tuner.run(grid_fn, args, meta)
    _LAST_CONFIGS[name] = _fmt(cfg)


def last_configs() -> dict[str, str]:
    """Configurations chosen for the most recent call of each kernel ("fwd", "bwd_dkdv", "bwd_dq")."""
    return dict(_LAST_CONFIGS)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------
def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _tma_allocator(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _aligned16(t: torch.Tensor) -> bool:
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1])


def _tma_ok(*tensors: torch.Tensor) -> int:
    """Which tile paths these tensors allow: TMA needs capability >= 9 and 16-byte aligned views."""
    if FORCE_PATH is not None:
        return _TMA_ONLY if FORCE_PATH == "tma" else _PTR_ONLY
    if interpreting() or not tensors[0].is_cuda:
        return _PTR_ONLY
    if torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return _PTR_ONLY
    return _BOTH if all(_aligned16(t) for t in tensors) else _PTR_ONLY


def _common_meta(D: int, causal: bool, dtype: torch.dtype, tma_ok: int) -> dict:
    if tma_ok != _PTR_ONLY and not interpreting():
        triton.set_allocator(_tma_allocator)  # device-side descriptors need a global scratch allocator
    if not (isinstance(CAUSAL_GROUP_PROGRAMS, int) and CAUSAL_GROUP_PROGRAMS >= 0):
        raise ValueError(f"flash_attn_v2: CAUSAL_GROUP_PROGRAMS = {CAUSAL_GROUP_PROGRAMS!r}; expected an int >= 0")
    return dict(HEAD_DIM=D, BLOCK_D=max(16, _next_pow2(D)), CAUSAL=bool(causal), IEEE=dtype == torch.float32,
                GROUP_PROGRAMS=CAUSAL_GROUP_PROGRAMS if causal else 0)


def _sm90_ok(q, k, v, causal: bool, tma_ok: int) -> int:
    """SM90_OK, a forward tuning key: 1 when the Gluon Hopper forward may be offered for these inputs."""
    return int(SM90_FORWARD and tma_ok != _PTR_ONLY and _sm90.unsupported_reason(q, k, v, causal) is None)


def _forward(q, k, v, causal: bool, sm_scale: float):
    B, H, Hkv, Nq, Nkv, D = check_inputs(q, k, v, "flash_attn_v2")
    o = _empty((B, H, Nq, D), q.dtype, q.device)
    lse = _empty((B, H, Nq), torch.float32, q.device)
    tma_ok = _tma_ok(q, k, v, o)
    meta = _common_meta(D, causal, q.dtype, tma_ok)
    meta["EVEN_KV"] = Nkv % 128 == 0  # every BLOCK_N (<= 128, a power of two) divides Nkv
    args = (q, k, v, o, lse, sm_scale,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            H, H // Hkv, Nq, Nkv, _next_pow2(Nq), _next_pow2(Nkv), tma_ok, _sm90_ok(q, k, v, causal, tma_ok))
    grid = lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * H)  # noqa: E731
    _launch("fwd", _fwd_tuner, FWD_SPACE, grid, args, meta, tma_ok)
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, sm_scale: float):
    B, H, Nq, D = q.shape
    Hkv, Nkv = k.shape[1], k.shape[2]
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    delta = _empty((B, H, Nq), torch.float32, q.device)
    block_d = max(16, _next_pow2(D))

    pre_m = 32 if interpreting() else 64
    _bwd_preprocess[(triton.cdiv(Nq, pre_m), B * H)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        H, Nq, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=pre_m)
    _LAST_CONFIGS["bwd_preprocess"] = f"BLOCK_M={pre_m},num_warps=4"

    tma_ok = _tma_ok(q, k, v, do, dq, dk, dv)
    meta = _common_meta(D, causal, q.dtype, tma_ok)
    nb = (_next_pow2(Nq), _next_pow2(Nkv), tma_ok)
    dkdv_args = (q, k, v, do, dk, dv, lse, delta, sm_scale,
                 q.stride(0), q.stride(1), q.stride(2),
                 k.stride(0), k.stride(1), k.stride(2),
                 v.stride(0), v.stride(1), v.stride(2),
                 do.stride(0), do.stride(1), do.stride(2),
                 dk.stride(0), dk.stride(1), dk.stride(2),
                 dv.stride(0), dv.stride(1), dv.stride(2),
                 H, Hkv, H // Hkv, Nq, Nkv) + nb
    _launch("bwd_dkdv", _dkdv_tuner, DKDV_SPACE,
            lambda m: (triton.cdiv(Nkv, m["BLOCK_N"]), B * Hkv), dkdv_args, meta, tma_ok)
    dq_args = (q, k, v, do, dq, lse, delta, sm_scale,
               q.stride(0), q.stride(1), q.stride(2),
               k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2),
               do.stride(0), do.stride(1), do.stride(2),
               dq.stride(0), dq.stride(1), dq.stride(2),
               H, H // Hkv, Nq, Nkv) + nb
    _launch("bwd_dq", _dq_tuner, DQ_SPACE,
            lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * H), dq_args, meta, tma_ok)
    return dq, dk, dv


_FlashAttnV2Fn = attention_function("_FlashAttnV2Fn", _forward, _backward)


def flash_attn_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, return_lse: bool = False):
    """FlashAttention-2 (Triton): softmax(sm_scale * q k^T) v, SDPA layout, GQA/MQA, bottom-right causal.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nkv, D); returns (B, H, Nq, D) in q's dtype, or
    (out, lse) with ``return_lse=True``, lse being (B, H, Nq) float32 natural-log log-sum-exp of
    the scaled scores (-inf for rows with no visible key).  Differentiable in q, k and v.
    """
    check_inputs(q, k, v, "flash_attn_v2")
    D = q.shape[-1]
    scale = default_scale(D, sm_scale)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"flash_attn_v2: sm_scale must be a positive finite number, got {sm_scale}")
    o, lse2 = _FlashAttnV2Fn.apply(q, k, v, bool(causal), scale)
    if return_lse:
        return o, lse2 * LN2
    return o
