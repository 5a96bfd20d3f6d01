"""FlashAttention-1 (Dao et al., NeurIPS 2022) in Triton: forward (Algorithm 1) and backward (Algorithm 4).

Public API
----------
``flash_attn_v1(q, k, v, causal=False, sm_scale=None, return_lse=False, *, launch_log=None)``
    q (B, H, Nq, D), k/v (B, H_kv, Nkv, D) in the SDPA layout; returns O (B, H, Nq, D) in q's dtype,
    and with ``return_lse=True`` also the natural-log log-sum-exp (B, H, Nq) float32 (``-inf`` for rows
    that see no key).  Differentiable through a ``torch.autograd.Function`` whose backward runs the
    kernels below (the LSE output is not differentiable).  ``launch_log``, a dict, receives the block
    sizes / warps / stages each kernel ran with, as readable strings: "fwd", and "bwd_preprocess" and
    "bwd" when autograd runs the backward.

Semantics: GQA/MQA (query head h reads kv head h // (H / H_kv), by index, K/V never copied); any
sequence length with tail masking; Nq != Nkv; causal aligned bottom-right (query i sees key j iff
j <= i + Nkv - Nq), rows that see no key give O = 0, LSE = -inf and zero gradients; head dims 32, 64,
96 (padded to 128 in registers, masked in memory), 128, 256; fp16, bf16, fp32 (fp32 dots with
``input_precision="ieee"``).  P and dS are cast to the *input* dtype before their dots (bf16 stays bf16).

Forward: the 2022 algorithm, loop order kept
--------------------------------------------
One program per (batch, query head): parallelism over B x H only.  Inside a program:

    for j in K/V blocks (OUTER):            K_j, V_j loaded once to on-chip memory
        for i in Q blocks (INNER):          Q_i, O_i, l_i, m_i read from HBM
            S = scale Q_i K_j^T;  m~ = rowmax(S);  P~ = exp(S - m~);  l~ = rowsum(P~)
            m_new = max(m_i, m~);  l_new = e^(m_i - m_new) l_i + e^(m~ - m_new) l~
            O_i <- diag(l_new)^-1 (diag(l_i) e^(m_i - m_new) O_i + e^(m~ - m_new) P~ V_j)
            O_i, l_i, m_i written back to HBM

The running output is therefore normalised at every step (no deferred normalisation), and O, l, m go
through HBM once per K/V block: with Tc = ceil(Nkv / BLOCK_N), O is read and written Tc times
(as fp32, like FA1's ``o_tmp``), l and m likewise, and Q is read Tc times.  Two equivalences save
traffic without changing the algorithm: at j = 0 the initial values (O = 0, l = 0, m = -inf) are used
instead of reading a buffer that would have been filled with them, and at the last K/V block a Q block
sees, the normalised O_i is written straight into the output tensor (input dtype) together with
LSE = m + log l, instead of into the fp32 buffer.  Exponentials are taken in base 2 with log2(e)
folded into the scale (m, l live in that domain; the returned LSE is natural-log).

Store -> load ordering: iteration (j, i) stores O_i/l_i/m_i and iteration (j+1, i) of the *same
program* loads them.  A CTA sees its own global writes, but the thread that stores an element need
not be the one that later loads it, so a ``tl.debug_barrier()`` (bar.sync, which orders global memory
among the CTA's threads) ends every outer iteration.  No other program touches these addresses.

Causal: for K/V block j the inner loop starts at the first Q block with a visible key in block j
(blocks fully above the diagonal are skipped), runs the blocks that straddle the diagonal with the
causal mask, then the fully visible ones without it.

Backward: Algorithm 4, loop order kept
--------------------------------------
D_i = rowsum(dO_i o O_i) is *precomputed* by a small kernel (one read of O and dO) instead of inside
the inner loop as in the paper; the math is the same and the inner loop then does not re-read O_i.
P is recomputed from the saved LSE (P = exp(S - LSE) = diag(l)^-1 exp(S - m)).  One program per
(batch, query head):

    for j in K/V blocks (OUTER):   K_j, V_j loaded; dK_j = dV_j = 0 on chip
        for i in Q blocks (INNER): Q_i, dO_i, LSE_i, D_i read; dQ_i read (fp32 HBM buffer)
            P = exp(scale Q_i K_j^T - LSE_i);  dV_j += P^T dO_i;  dP = dO_i V_j^T
            dS = P o (dP - D_i);  dQ_i += scale dS K_j (written back);  dK_j += scale dS^T Q_i
        dK_j, dV_j written to HBM

dQ needs no atomics: one program owns a query head.  GQA/MQA: each program computes dK/dV of its
query head; when H_kv < H they are stored per query head into fp32 buffers (B, H, Nkv, D) and summed
over the H / H_kv query heads of each kv head afterwards (one torch reduction), so the sum is exact
in fp32 and deterministic.  With H_kv == H they go straight into dK/dV.  As in the forward, dQ_i is
not read at j = 0, and at the last K/V block a Q block sees it is written straight into dQ in the
input dtype; the same barrier ends each outer iteration.

Configs: a table per head dim and dtype on the GPU (``_FWD_TABLE`` / ``_BWD_TABLE``); under
TRITON_INTERPRET=1 one fixed small config.  Nothing is tuned and there are no options.

Not supported: dropout, attention bias or masks other than causal, top-left causal alignment,
variable-length batches, paged KV, fp8, other head dims, gradients with respect to the LSE.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autograd import attention_function
from ._validate import check_flag, check_inputs, check_launch_log, check_scale, interpreting

__all__ = ["flash_attn_v1"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453

# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(ptrs, row_ok, d_ok, EVEN_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """A block of rows, zeros past the last row (``row_ok``) and past the head dim (``d_ok``).  The masks are
    left out where the shape makes them all true (``EVEN_ROWS``: the rows fill the block; ``EVEN_D``: the head
    dim fills BLOCK_D), so that the full blocks load without a predicate."""
    if EVEN_ROWS:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    else:
        x = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    return x


@triton.jit
def _fwd_inner(
    q_ptrs, oacc_ptrs, out_ptrs, m_ptrs, l_ptrs, lse_ptrs,
    k, v, offs_m_base, offs_n, offs_d,
    i_start, i_end, j, n_q, n_kv, causal_off, qk_scale,
    stride_qm, stride_om, stride_accm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    MASK_CAUSAL: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    CAUSAL: tl.constexpr, N_BLOCKS_KV, DOT_PREC: tl.constexpr,
):
    """Inner loop of Algorithm 1 over Q blocks [i_start, i_end) for K/V block j (K_j, V_j on chip)."""
    d_ok = offs_d < HEAD_D
    for i in range(i_start, i_end):
        offs_m = i * BLOCK_M + offs_m_base
        row_ok = offs_m < n_q
        q = _load_rows(q_ptrs + i * BLOCK_M * stride_qm, row_ok, d_ok, EVEN_M, BLOCK_D == HEAD_D)
        # O_i, l_i, m_i from HBM (not read at j = 0: they hold the initial values 0, 0, -inf)
        rd = row_ok & (j > 0)
        o = tl.load(oacc_ptrs + i * BLOCK_M * stride_accm, mask=rd[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.load(m_ptrs + i * BLOCK_M, mask=rd, other=float("-inf"))
        l_i = tl.load(l_ptrs + i * BLOCK_M, mask=rd, other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # base-2 domain
        if MASK_CAUSAL:
            visible = offs_n[None, :] <= (offs_m[:, None] + causal_off)
            if not EVEN_N:
                visible = visible & (offs_n[None, :] < n_kv)
            s = tl.where(visible, s, float("-inf"))
        elif not EVEN_N:
            s = tl.where(offs_n[None, :] < n_kv, s, float("-inf"))

        m_tilde = tl.max(s, 1)
        m_tilde_safe = tl.where(m_tilde == float("-inf"), 0.0, m_tilde)
        p = tl.exp2(s - m_tilde_safe[:, None])
        l_tilde = tl.sum(p, 1)
        m_new = tl.maximum(m_i, m_tilde)
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_new_safe)       # e^(m_i - m_new)
        beta = tl.exp2(m_tilde - m_new_safe)    # e^(m~ - m_new)
        l_new = alpha * l_i + beta * l_tilde
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        inv_l = 1.0 / tl.where(l_new == 0.0, 1.0, l_new)
        o = ((l_i * alpha) * inv_l)[:, None] * o + (beta * inv_l)[:, None] * pv

        # last K/V block this Q block sees: write the result; otherwise the running state
        if CAUSAL:
            j_last = tl.minimum((i * BLOCK_M + BLOCK_M - 1 + causal_off) // BLOCK_N, N_BLOCKS_KV - 1)
            j_last = tl.maximum(j_last, 0)
        else:
            j_last = N_BLOCKS_KV - 1
        fin = row_ok & (j == j_last)
        keep = row_ok & (j != j_last)
        tl.store(out_ptrs + i * BLOCK_M * stride_om, o.to(out_ptrs.dtype.element_ty),
                 mask=fin[:, None] & d_ok[None, :])
        lse = tl.where(m_new == float("-inf"), float("-inf"), (m_new + tl.log2(tl.where(l_new == 0.0, 1.0, l_new))) * 0.6931471805599453)
        tl.store(lse_ptrs + i * BLOCK_M, lse, mask=fin)
        tl.store(oacc_ptrs + i * BLOCK_M * stride_accm, o, mask=keep[:, None] & d_ok[None, :])
        tl.store(m_ptrs + i * BLOCK_M, m_new, mask=keep)
        tl.store(l_ptrs + i * BLOCK_M, l_new, mask=keep)


@triton.jit
def _fa1_fwd_kernel(
    Q, K, V, Out, OAcc, M, L, LSE,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, GROUP, n_q, n_kv, causal_off, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    hk = h // GROUP
    b64 = b.to(tl.int64)
    q_base = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    o_base = Out + b64 * stride_ob + h.to(tl.int64) * stride_oh
    row0 = pid.to(tl.int64) * n_q  # fp32 work buffers are contiguous (B*H, Nq[, D])
    acc_base = OAcc + row0 * HEAD_D
    m_base = M + row0
    l_base = L + row0
    lse_base = LSE + row0

    offs_m_base = tl.arange(0, BLOCK_M)
    offs_n_base = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    q_ptrs = q_base + offs_m_base[:, None] * stride_qm + offs_d[None, :]
    out_ptrs = o_base + offs_m_base[:, None] * stride_om + offs_d[None, :]
    oacc_ptrs = acc_base + offs_m_base[:, None] * HEAD_D + offs_d[None, :]
    m_ptrs = m_base + offs_m_base
    l_ptrs = l_base + offs_m_base
    lse_ptrs = lse_base + offs_m_base

    n_blocks_q = tl.cdiv(n_q, BLOCK_M)
    n_blocks_kv = tl.cdiv(n_kv, BLOCK_N)
    for j in range(0, n_blocks_kv):
        offs_n = j * BLOCK_N + offs_n_base
        n_ok = offs_n < n_kv
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        k = _load_rows(k_ptrs, n_ok, d_ok, EVEN_N, BLOCK_D == HEAD_D)
        v = _load_rows(v_ptrs, n_ok, d_ok, EVEN_N, BLOCK_D == HEAD_D)
        if CAUSAL:
            # first Q block with a key of block j visible; first Q block seeing all of block j
            i_lo = tl.maximum(j * BLOCK_N - causal_off, 0) // BLOCK_M
            i_full = (tl.maximum(j * BLOCK_N + BLOCK_N - 1 - causal_off, 0) + BLOCK_M - 1) // BLOCK_M
            i_full = tl.minimum(tl.maximum(i_full, i_lo), n_blocks_q)
            _fwd_inner(q_ptrs, oacc_ptrs, out_ptrs, m_ptrs, l_ptrs, lse_ptrs, k, v, offs_m_base, offs_n, offs_d,
                       i_lo, i_full, j, n_q, n_kv, causal_off, qk_scale, stride_qm, stride_om, HEAD_D,
                       BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, True, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
            _fwd_inner(q_ptrs, oacc_ptrs, out_ptrs, m_ptrs, l_ptrs, lse_ptrs, k, v, offs_m_base, offs_n, offs_d,
                       i_full, n_blocks_q, j, n_q, n_kv, causal_off, qk_scale, stride_qm, stride_om, HEAD_D,
                       BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, False, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
        else:
            _fwd_inner(q_ptrs, oacc_ptrs, out_ptrs, m_ptrs, l_ptrs, lse_ptrs, k, v, offs_m_base, offs_n, offs_d,
                       0, n_blocks_q, j, n_q, n_kv, causal_off, qk_scale, stride_qm, stride_om, HEAD_D,
                       BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D, False, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
        # make this outer iteration's O/l/m stores visible to every thread of the CTA before the
        # next outer iteration reloads them (see module docstring)
        tl.debug_barrier()


@triton.jit
def _fa1_bwd_preprocess(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    H, n_q,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Delta_i = rowsum(dO_i o O_i) in fp32 (the D_i of Algorithm 4, precomputed)."""
    pid_m = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < n_q)[:, None] & (offs_d < HEAD_D)[None, :]
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + pid.to(tl.int64) * n_q + offs_m, delta, mask=offs_m < n_q)


@triton.jit
def _bwd_inner(
    dk, dv, k, v,
    q_ptrs, do_ptrs, dqacc_ptrs, dq_ptrs, lse_ptrs, delta_ptrs,
    offs_m_base, offs_n, offs_d,
    i_start, i_end, j, n_q, n_kv, causal_off, qk_scale, sm_scale,
    stride_qm, stride_dom, stride_dqm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    MASK_CAUSAL: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    CAUSAL: tl.constexpr, N_BLOCKS_KV, DOT_PREC: tl.constexpr,
):
    """Inner loop of Algorithm 4 over Q blocks [i_start, i_end) for K/V block j; returns dK_j, dV_j."""
    d_ok = offs_d < HEAD_D
    for i in range(i_start, i_end):
        offs_m = i * BLOCK_M + offs_m_base
        row_ok = offs_m < n_q
        q = _load_rows(q_ptrs + i * BLOCK_M * stride_qm, row_ok, d_ok, EVEN_M, BLOCK_D == HEAD_D)
        do = _load_rows(do_ptrs + i * BLOCK_M * stride_dom, row_ok, d_ok, EVEN_M, BLOCK_D == HEAD_D)
        lse = tl.load(lse_ptrs + i * BLOCK_M, mask=row_ok, other=0.0) * 1.4426950408889634
        lse = tl.where(lse == float("-inf"), 0.0, lse)  # rows seeing no key: all of S is -inf -> P = 0
        delta = tl.load(delta_ptrs + i * BLOCK_M, mask=row_ok, other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASK_CAUSAL:
            visible = offs_n[None, :] <= (offs_m[:, None] + causal_off)
            if not EVEN_N:
                visible = visible & (offs_n[None, :] < n_kv)
            s = tl.where(visible, s, float("-inf"))
        elif not EVEN_N:
            s = tl.where(offs_n[None, :] < n_kv, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        # dV_j += P^T dO_i
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PREC)
        # dP = dO_i V_j^T ; dS = P o (dP - D_i)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = (p * (dp - delta[:, None])).to(q.dtype)
        # dK_j += dS^T Q_i   (scale applied once after the loop)
        dk += tl.dot(tl.trans(ds), q, input_precision=DOT_PREC)
        # dQ_i += scale dS K_j : read-modify-write of the fp32 buffer (not read at j = 0)
        rd = row_ok & (j > 0)
        dq = tl.load(dqacc_ptrs + i * BLOCK_M * HEAD_D, mask=rd[:, None] & d_ok[None, :], other=0.0)
        dq += tl.dot(ds, k, input_precision=DOT_PREC) * sm_scale
        if CAUSAL:
            j_last = tl.minimum((i * BLOCK_M + BLOCK_M - 1 + causal_off) // BLOCK_N, N_BLOCKS_KV - 1)
            j_last = tl.maximum(j_last, 0)
        else:
            j_last = N_BLOCKS_KV - 1
        fin = row_ok & (j == j_last)
        keep = row_ok & (j != j_last)
        tl.store(dq_ptrs + i * BLOCK_M * stride_dqm, dq.to(dq_ptrs.dtype.element_ty), mask=fin[:, None] & d_ok[None, :])
        tl.store(dqacc_ptrs + i * BLOCK_M * HEAD_D, dq, mask=keep[:, None] & d_ok[None, :])
    return dk, dv


@triton.jit
def _fa1_bwd_kernel(
    Q, K, V, DO, LSE, Delta, DQAcc, DQ, DK, DV,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    stride_dkb, stride_dkh, stride_dkn,
    H, GROUP, n_q, n_kv, causal_off, qk_scale, sm_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    hk = h // GROUP
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_base = Q + b64 * stride_qb + h64 * stride_qh
    k_base = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    do_base = DO + b64 * stride_dob + h64 * stride_doh
    dq_base = DQ + b64 * stride_dqb + h64 * stride_dqh
    # dK/dV of *this query head* (DK/DV are per-query-head fp32 buffers under GQA, the outputs otherwise)
    dk_base = DK + b64 * stride_dkb + h64 * stride_dkh
    dv_base = DV + b64 * stride_dkb + h64 * stride_dkh
    row0 = pid.to(tl.int64) * n_q
    dqacc_base = DQAcc + row0 * HEAD_D
    lse_base = LSE + row0
    delta_base = Delta + row0

    offs_m_base = tl.arange(0, BLOCK_M)
    offs_n_base = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    q_ptrs = q_base + offs_m_base[:, None] * stride_qm + offs_d[None, :]
    do_ptrs = do_base + offs_m_base[:, None] * stride_dom + offs_d[None, :]
    dq_ptrs = dq_base + offs_m_base[:, None] * stride_dqm + offs_d[None, :]
    dqacc_ptrs = dqacc_base + offs_m_base[:, None] * HEAD_D + offs_d[None, :]
    lse_ptrs = lse_base + offs_m_base
    delta_ptrs = delta_base + offs_m_base

    n_blocks_q = tl.cdiv(n_q, BLOCK_M)
    n_blocks_kv = tl.cdiv(n_kv, BLOCK_N)
    for j in range(0, n_blocks_kv):
        offs_n = j * BLOCK_N + offs_n_base
        n_ok = offs_n < n_kv
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if CAUSAL:
            i_lo = tl.maximum(j * BLOCK_N - causal_off, 0) // BLOCK_M
            i_full = (tl.maximum(j * BLOCK_N + BLOCK_N - 1 - causal_off, 0) + BLOCK_M - 1) // BLOCK_M
            i_full = tl.minimum(tl.maximum(i_full, i_lo), n_blocks_q)
            dk, dv = _bwd_inner(dk, dv, k, v, q_ptrs, do_ptrs, dqacc_ptrs, dq_ptrs, lse_ptrs, delta_ptrs,
                                offs_m_base, offs_n, offs_d, i_lo, i_full, j, n_q, n_kv, causal_off, qk_scale,
                                sm_scale, stride_qm, stride_dom, stride_dqm, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D,
                                True, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
            dk, dv = _bwd_inner(dk, dv, k, v, q_ptrs, do_ptrs, dqacc_ptrs, dq_ptrs, lse_ptrs, delta_ptrs,
                                offs_m_base, offs_n, offs_d, i_full, n_blocks_q, j, n_q, n_kv, causal_off, qk_scale,
                                sm_scale, stride_qm, stride_dom, stride_dqm, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D,
                                False, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
        else:
            dk, dv = _bwd_inner(dk, dv, k, v, q_ptrs, do_ptrs, dqacc_ptrs, dq_ptrs, lse_ptrs, delta_ptrs,
                                offs_m_base, offs_n, offs_d, 0, n_blocks_q, j, n_q, n_kv, causal_off, qk_scale,
                                sm_scale, stride_qm, stride_dom, stride_dqm, BLOCK_M, BLOCK_N, HEAD_D, BLOCK_D,
                                False, EVEN_M, EVEN_N, CAUSAL, n_blocks_kv, DOT_PREC)
        dk = dk * sm_scale
        dkv_off = offs_n[:, None] * stride_dkn + offs_d[None, :]
        tl.store(dk_base + dkv_off, dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(dv_base + dkv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)
        # dQ_i stores of this outer iteration must be visible to the next one's loads (other threads)
        tl.debug_barrier()


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

# head_dim -> (BLOCK_M, BLOCK_N, num_warps, num_stages), 16-bit inputs on the GPU.
# Large BLOCK_N = fewer outer iterations = fewer passes of O/l/m (forward) and dQ (backward) through HBM.
# D 64 / 128 entries: best of a sweep on an H100 (bf16, N=4096, non-causal; kernels/DESIGN.md, "FA1"):
# fwd D64 64x256/8w 107 TFLOP/s vs 69 for 64x128/4w, D128 128x128/8w 62 vs 46; fwd+bwd with bwd
# D64 128x128/8w 124 vs 108, D128 64x128/8w 65 vs 53.  D 32 / 96 follow D 64 / 128 (not measured);
# D 256 is a register-pressure guess (not timed).
_FWD_TABLE = {32: (64, 256, 8, 2), 64: (64, 256, 8, 2), 96: (128, 128, 8, 2), 128: (128, 128, 8, 2), 256: (32, 64, 8, 1)}
_BWD_TABLE = {32: (128, 128, 8, 1), 64: (128, 128, 8, 1), 96: (64, 128, 8, 1), 128: (64, 128, 8, 1), 256: (32, 32, 8, 1)}
# fp32 inputs: operands twice as large
_FWD_TABLE_F32 = {32: (64, 64, 4, 1), 64: (64, 64, 4, 1), 96: (32, 64, 4, 1), 128: (32, 64, 4, 1), 256: (16, 32, 4, 1)}
_BWD_TABLE_F32 = {32: (64, 64, 4, 1), 64: (64, 64, 4, 1), 96: (32, 32, 4, 1), 128: (32, 32, 4, 1), 256: (16, 32, 4, 1)}
# TRITON_INTERPRET=1: one fixed small config (BLOCK_M != BLOCK_N on purpose, to exercise the block maths)
_INTERP_FWD = (16, 32, 4, 1)
_INTERP_BWD = (32, 16, 4, 1)
_PRE_BLOCK_M = 64


def _fmt(bm, bn, nw, ns) -> str:
    return f"BLOCK_M={bm},BLOCK_N={bn},num_warps={nw},num_stages={ns}"


def _pick(table, table_f32, interp, d, dtype):
    if interpreting():
        return interp
    return (table_f32 if dtype == torch.float32 else table)[d]


def _block_d(d: int) -> int:
    return triton.next_power_of_2(d)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _log(launch_log, kernel: str, config: str) -> None:
    if launch_log is not None:
        launch_log[kernel] = config


def _fa1_forward(q, k, v, causal: bool, sm_scale: float, launch_log):
    B, H, Hkv, Nq, Nkv, D = check_inputs(q, k, v, "flash_attn_v1")
    out = torch.empty((B, H, Nq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Nq), device=q.device, dtype=torch.float32)
    bm, bn, nw, ns = _pick(_FWD_TABLE, _FWD_TABLE_F32, _INTERP_FWD, D, q.dtype)
    n_kv_blocks = triton.cdiv(Nkv, bn)
    if n_kv_blocks > 1:  # running O/l/m live in HBM between outer iterations
        oacc = torch.empty((B * H, Nq, D), device=q.device, dtype=torch.float32)
        m_buf = torch.empty((B * H, Nq), device=q.device, dtype=torch.float32)
        l_buf = torch.empty((B * H, Nq), device=q.device, dtype=torch.float32)
    else:  # never read nor written
        oacc = m_buf = l_buf = lse
    causal_off = Nkv - Nq
    if causal and Nq > Nkv:
        # rows i < Nq - Nkv see no key; Q blocks made only of such rows are never visited
        out[:, :, : Nq - Nkv].zero_()
        lse[:, :, : Nq - Nkv] = float("-inf")
    _fa1_fwd_kernel[(B * H,)](
        q, k, v, out, oacc, m_buf, l_buf, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, H // Hkv, Nq, Nkv, causal_off, sm_scale * _LOG2E,
        HEAD_D=D, BLOCK_D=_block_d(D), BLOCK_M=bm, BLOCK_N=bn,
        CAUSAL=causal, EVEN_M=(Nq % bm == 0), EVEN_N=(Nkv % bn == 0),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=nw, num_stages=ns,
    )
    _log(launch_log, "fwd", _fmt(bm, bn, nw, ns))
    return out, lse


def _fa1_backward(q, k, v, out, lse, do, causal: bool, sm_scale: float, launch_log):
    B, H, Nq, D = q.shape
    Hkv, Nkv = k.shape[1], k.shape[2]
    group = H // Hkv
    if do.is_neg():  # a lazily negated view (autograd hands on the caller's): the kernels read memory
        do = do.resolve_neg()
    if do.stride(-1) != 1:
        do = do.contiguous()
    bd = _block_d(D)
    delta = torch.empty((B * H, Nq), device=q.device, dtype=torch.float32)
    pre_bm = 16 if interpreting() else _PRE_BLOCK_M
    _fa1_bwd_preprocess[(triton.cdiv(Nq, pre_bm), B * H)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, Nq, HEAD_D=D, BLOCK_D=bd, BLOCK_M=pre_bm, num_warps=4,
    )
    _log(launch_log, "bwd_preprocess", f"BLOCK_M={pre_bm},num_warps=4")

    bm, bn, nw, ns = _pick(_BWD_TABLE, _BWD_TABLE_F32, _INTERP_BWD, D, q.dtype)
    n_kv_blocks = triton.cdiv(Nkv, bn)
    causal_off = Nkv - Nq
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    if causal and Nq > Nkv:
        dq[:, :, : Nq - Nkv].zero_()  # rows that see no key (blocks of them are never visited)
    dqacc = torch.empty((B * H, Nq, D), device=q.device, dtype=torch.float32) if n_kv_blocks > 1 else delta
    if group == 1:
        dk = torch.empty((B, H, Nkv, D), device=q.device, dtype=q.dtype)
        dv = torch.empty((B, H, Nkv, D), device=q.device, dtype=q.dtype)
    else:  # per-query-head partial dK/dV, summed over each kv head's group below
        dk = torch.empty((B, H, Nkv, D), device=q.device, dtype=torch.float32)
        dv = torch.empty((B, H, Nkv, D), device=q.device, dtype=torch.float32)
    _fa1_bwd_kernel[(B * H,)](
        q, k, v, do, lse, delta, dqacc, dq, dk, dv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        H, group, Nq, Nkv, causal_off, sm_scale * _LOG2E, sm_scale,
        HEAD_D=D, BLOCK_D=bd, BLOCK_M=bm, BLOCK_N=bn,
        CAUSAL=causal, EVEN_M=(Nq % bm == 0), EVEN_N=(Nkv % bn == 0),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=nw, num_stages=ns,
    )
    _log(launch_log, "bwd", _fmt(bm, bn, nw, ns))
    if group > 1:
        dk = dk.view(B, Hkv, group, Nkv, D).sum(dim=2).to(q.dtype)
        dv = dv.view(B, Hkv, group, Nkv, D).sum(dim=2).to(q.dtype)
    return dq, dk, dv


_FlashAttnV1 = attention_function("_FlashAttnV1", _fa1_forward, _fa1_backward)


def flash_attn_v1(q, k, v, causal: bool = False, sm_scale: float | None = None, return_lse: bool = False, *,
                  launch_log: dict[str, str] | None = None):
    """FlashAttention-1 attention (forward Algorithm 1, backward Algorithm 4 of Dao et al. 2022).

    q: (B, H, Nq, D); k, v: (B, H_kv, Nkv, D), H a multiple of H_kv; D in {32, 64, 96, 128, 256};
    fp16 / bf16 / fp32.  Returns O (B, H, Nq, D) in q's dtype, and (O, LSE) with ``return_lse=True``
    (LSE (B, H, Nq) float32, natural log, -inf for rows that see no key).  ``sm_scale`` defaults to
    1/sqrt(D) and must be a positive finite number.  ``launch_log``, a dict,
    receives each kernel's configuration ("fwd"; "bwd_preprocess" and "bwd" when autograd runs the
    backward).  Raises ValueError on invalid inputs.
    """
    B, H, Hkv, Nq, Nkv, D = check_inputs(q, k, v, "flash_attn_v1")
    check_launch_log(launch_log, "flash_attn_v1")
    causal = check_flag(causal, "causal", "flash_attn_v1")
    return_lse = check_flag(return_lse, "return_lse", "flash_attn_v1")
    # positive and within float32's normal range, as flash_attn_v2's and flash_decode's (its kernels compute scales
    # <= 0 correctly, but the package states one contract)
    scale = check_scale(D, sm_scale, "flash_attn_v1")
    out, lse = _FlashAttnV1.apply(q, k, v, causal, scale, launch_log)
    return (out, lse) if return_lse else out
