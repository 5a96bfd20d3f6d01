"""The Triton kernels of FlashAttention-2 (Dao 2023): the forward (Algorithm 1) and a split backward (Algorithm 2).

Every kernel takes SDPA-layout tensors by strides (last dimension contiguous), any Nq and Nkv, GQA/MQA
by index arithmetic (query head h reads kv head h // GROUP; K/V are never copied), bottom-right causal
alignment (query i sees key j iff j <= i + Nkv - Nq), FlashAttention's sliding windows (``WINDOW``:
query i sees key j iff i + Nkv - Nq - WIN_LEFT <= j <= i + Nkv - Nq + WIN_RIGHT), packed
variable-length batches (``VARLEN``: q (total_q, H, D), k and v (total_k, H_kv, D), each program's
sequence, offsets and lengths read from a (sequence, block) table and ``cu_seqlens``; the same code
with a batch stride of 0 and a per-sequence row offset), head dims 32 to 256 (a head dim below its
power-of-two tile, such as 96 in a 128-wide tile, is masked / zero-filled), and 16-bit inputs (P and
dS cast to the input dtype before their dots) or fp32 with exact ``input_precision="ieee"`` dots
(``IEEE``).  Tiles move either by masked pointer loads/stores or through device-side TMA tensor
descriptors (``USE_TMA``; Hopper, 16-byte aligned views: out-of-range rows/columns are zero-filled on
load and clipped on store).

``fwd_kernel``: one program per (block of BLOCK_M query rows, batch*head): the outer loop of
  Algorithm 1 is the launch grid, so Q_i stays in registers and O_i is written once.  The inner loop
  over K_j/V_j blocks keeps the online softmax (running row max m_i, running row sum l_i,
  un-normalised accumulator) in base 2 with log2(e) folded into the scale, defers the division by
  l_i to the end (line 12) and stores the base-2 log-sum-exp L_i = m_i + log2(l_i) (line 13) for the
  backward.  Causal and windows (``programs.span``): key blocks visible whole to every row of the block
  run with no mask arithmetic, only the blocks crossing the diagonal or a window edge apply the mask,
  blocks outside the window (above the diagonal) are never visited.  With ``WARP_SPEC`` (dense,
  non-causal, no window, TMA, 4 warps) the key loop is a single ``tl.range(...,
  warp_specialize=True)`` loop, which Triton 3.6 splits into one producer warp group issuing the loads
  and two consumer warp groups of BLOCK_M / 2 rows (FlashAttention-3's arrangement without its
  ping-pong or intra-warp-group overlap); the key tail is then masked in every block unless 128
  divides Nkv (``EVEN_KV``), and O is stored by pointer.
``bwd_preprocess_kernel``: Delta_i = rowsum(dO_i * O_i) (Algorithm 2 line 4, D_i in the paper); with ``ZERO_DQ``
it also zeroes the Gluon backward's fp32 dQ accumulator where that is whole (a chunked one is zeroed by the
launcher and by each chunk's conversion: ``sm90_bwd``).
``bwd_dkdv_kernel``: one program per (K/V block, batch*kv_head) loops over the query blocks, and over
  the query heads sharing its kv head (GQA/MQA gradients summed in registers: no atomics, no extra
  memory), recomputing P from Q, K and the stored L: dV += P^T dO, dK += dS^T Q (lines 14-21).  It
  visits only the query blocks that see some key of its block (``programs.span`` from the key side).
``bwd_dq_kernel``: one program per (Q block, batch*head) loops over the K/V blocks and accumulates
  dQ += dS K in registers.  This second pass replaces the paper's dQ update by atomic adds (line 21):
  it recomputes S and dP (7 matmuls in all instead of 5) but is deterministic and needs no fp32 dQ
  buffer, zero-fill or conversion kernel.

Causal programs are launched heaviest first across groups of heads (``GROUP_PROGRAMS``; see
``_schedule.block_and_head``), packed programs in their table's order (longest span first, then
the padding rows, which are empty programs) across groups of heads likewise.  Rows that see no key
(causal or a window with Nq > Nkv, a packed sequence without keys) output 0 with L = -inf and get
zero gradients.  Not here: dropout, attention bias or masks other than causal and sliding windows,
top-left causal alignment, paged KV, fp8; the launcher
(``launch.py``) checks inputs, builds the program tables and chooses the configuration.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .programs import locate, span, visible


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
    """A tile source for one (batch, head) matrix of n_rows x HEAD_DIM: a TMA descriptor or the pointer.

    A packed sequence may have no keys (or no queries): its descriptor then spans one row, never read."""
    if USE_TMA:
        return tl.make_tensor_descriptor(base, shape=[tl.maximum(n_rows, 1), HEAD_DIM], strides=[stride_row, 1],
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
                HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr, VARLEN: tl.constexpr = False):
    """Rows [row0, row0 + BLOCK_R) below n_rows.  A packed program may have n_rows = 0 (a padding row of
    its table): its descriptor still spans one row (``_make_src``), so its TMA store is skipped."""
    if USE_TMA:
        if VARLEN:
            if n_rows > 0:
                dst.store([row0, 0], val)
        else:
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
               WIN_LEFT, WIN_RIGHT, MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               USE_TMA: tl.constexpr, IEEE: tl.constexpr, WARP_SPEC: tl.constexpr = False):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        k = _load_tile(k_src, stride_kn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        qk = _dot(q, tl.trans(k), None, IEEE)
        if not MASK:
            # every score is finite: one FMA per element, no masking
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        else:
            seen = visible(offs_m[:, None], (start_n + offs_n0)[None, :], diag, N_KV, WIN_LEFT, WIN_RIGHT,
                           CAUSAL, WINDOW)
            s = tl.where(seen, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # rows with nothing visible so far keep m = -inf; subtract 0 instead to avoid inf - inf
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_tile(v_src, stride_vn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        acc = _dot(p.to(v.dtype), v, acc, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["N_Q", "N_KV", "WIN_LEFT", "WIN_RIGHT", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK",
                               "SM90_OK"])
def fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, TABLE, sm_scale,
               stride_qb, stride_qh, stride_qm,
               stride_kb, stride_kh, stride_kn,
               stride_vb, stride_vh, stride_vn,
               stride_ob, stride_oh, stride_om,
               stride_lb, stride_lh,
               H, GROUP, N_Q, N_KV, WIN_LEFT, WIN_RIGHT, NQ_BUCKET, NKV_BUCKET, TMA_OK, SM90_OK,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
               EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               GROUP_PROGRAMS: tl.constexpr, WARP_SPEC: tl.constexpr = False, WINDOW: tl.constexpr = False,
               VARLEN: tl.constexpr = False):
    # heaviest first if causal (dense), or as the varlen table orders its rows
    pid_m, b, h, q0, N_Q, k0, N_KV = locate(TABLE, CU_Q, CU_K, H, N_Q, N_KV, CAUSAL, GROUP_PROGRAMS, VARLEN)
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    m0 = pid_m * BLOCK_M
    diag = N_KV - N_Q  # query i sees key j iff i + diag - WIN_LEFT <= j <= i + diag + WIN_RIGHT
    qk_scale = sm_scale * 1.4426950408889634

    q_base = Q + b * stride_qb + h * stride_qh + q0 * stride_qm
    o_base = O + b * stride_ob + h * stride_oh + q0 * stride_om
    q_src = _make_src(q_base, stride_qm, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)
    k_src = _make_src(K + b * stride_kb + hk * stride_kh + k0 * stride_kn, stride_kn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh + k0 * stride_vn, stride_vn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    o_dst = _make_src(o_base, stride_om, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA)

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

    if WARP_SPEC:
        # Triton 3.6 warp-specialises a loop only when the kernel has no other loop: one loop over
        # every key block, the key tail masked in each unless BLOCK_N divides N_KV
        tl.static_assert(not (CAUSAL or WINDOW or VARLEN), "the warp-specialised forward is dense non-causal only")
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, 0, N_KV, offs_m, diag,
                                   N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, not EVEN_KV, CAUSAL, WINDOW, BLOCK_N,
                                   BLOCK_D, HEAD_DIM, USE_TMA, IEEE, True)
    else:
        # key blocks some row sees: [lo, hi); every row sees all of them: [full_lo, full_hi)
        lo, full_lo, full_hi, hi = span(m0, tl.minimum(m0 + BLOCK_M, N_Q) - 1, N_KV, diag, WIN_LEFT, WIN_RIGHT,
                                        BLOCK_N, WINDOW, CAUSAL or WINDOW)
        if WINDOW:  # only a left reach leaves blocks partly seen below full_lo
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, lo, full_lo, offs_m,
                                       diag, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL, WINDOW, BLOCK_N,
                                       BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, full_lo, full_hi, offs_m,
                                   diag, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, False, CAUSAL, WINDOW, BLOCK_N,
                                   BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, full_hi, hi, offs_m,
                                   diag, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL, WINDOW, BLOCK_N,
                                   BLOCK_D, HEAD_DIM, USE_TMA, IEEE)

    # deferred normalisation; rows that saw no key have l_i == 0 and output 0
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = m_i + tl.math.log2(l_i)  # -inf for rows with no visible key
    tl.store(LSE + b * stride_lb + h * stride_lh + q0 + offs_m, lse2, mask=offs_m < N_Q)
    # with warp specialisation the consumer warpgroups each hold part of the block: store by pointer
    _store_tile(o_base if WARP_SPEC else o_dst, stride_om, m0, N_Q, o.to(O.dtype.element_ty), BLOCK_M, BLOCK_D,
                HEAD_DIM, USE_TMA and not WARP_SPEC, VARLEN)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N_Q"])
def bwd_preprocess_kernel(O, DO, DELTA, DQ_ACC,
                          stride_ob, stride_oh, stride_om,
                          stride_db, stride_dh, stride_dm,
                          stride_ab, stride_ah, stride_am,
                          H, N_Q,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                          ZERO_DQ: tl.constexpr):
    """Delta (B * H, N_Q) for (B, H, N_Q, D) inputs; a packed (total, H, D) batch is one batch entry of
    N_Q = total rows (batch stride 0), its Delta (H, total).  ZERO_DQ: also zero the same rows of DQ_ACC, the
    fp32 dQ accumulator of the Gluon backward (``sm90_bwd``), laid out like O (FlashAttention-3's preprocess
    clears it the same way: one launch instead of a separate memset)."""
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
    if ZERO_DQ:
        tl.store(DQ_ACC + b * stride_ab + h * stride_ah + offs_m[:, None] * stride_am + offs_d[None, :],
                 tl.zeros([BLOCK_M, BLOCK_D], tl.float32), mask=mask)


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
                offs_n, diag, N_Q, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT,
                MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                USE_TMA: tl.constexpr, IEEE: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_tile(q_src, stride_qm, start_m, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        lse, delta = _load_row_stats(LSE_row, DELTA_row, offs_m, N_Q, MASK)
        qkT = _dot(k, tl.trans(q), None, IEEE)  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK and (CAUSAL or WINDOW):  # rows past N_Q have P = 0 already (their LSE reads +inf)
            pT = tl.where(visible(offs_m[None, :], offs_n[:, None], diag, N_KV, WIN_LEFT, WIN_RIGHT, CAUSAL,
                                  WINDOW), pT, 0.0)
        do = _load_tile(do_src, stride_dom, start_m, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        dv = _dot(pT.to(do.dtype), do, dv, IEEE)
        dpT = _dot(v, tl.trans(do), None, IEEE)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(q.dtype), q, dk, IEEE)
    return dk, dv


@triton.jit(do_not_specialize=["N_Q", "N_KV", "WIN_LEFT", "WIN_RIGHT", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK"])
def bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_Q, CU_K, TABLE, sm_scale,
                    stride_qb, stride_qh, stride_qm,
                    stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn,
                    stride_dob, stride_doh, stride_dom,
                    stride_dkb, stride_dkh, stride_dkn,
                    stride_dvb, stride_dvh, stride_dvn,
                    stride_lb, stride_lh,
                    H, H_KV, GROUP, N_Q, N_KV, WIN_LEFT, WIN_RIGHT, NQ_BUCKET, NKV_BUCKET, TMA_OK,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                    GROUP_PROGRAMS: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, WINDOW: tl.constexpr = False, VARLEN: tl.constexpr = False):
    # key block 0 is heaviest (dense causal), or as the varlen table orders its rows
    pid_n, b, hk, q0, N_Q, k0, N_KV = locate(TABLE, CU_Q, CU_K, H_KV, N_Q, N_KV, False, GROUP_PROGRAMS, VARLEN)
    hk = hk.to(tl.int64)
    n0 = pid_n * BLOCK_N
    diag = N_KV - N_Q
    qk_scale = sm_scale * 1.4426950408889634
    offs_n = n0 + tl.arange(0, BLOCK_N)

    k_src = _make_src(K + b * stride_kb + hk * stride_kh + k0 * stride_kn, stride_kn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh + k0 * stride_vn, stride_vn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    k = _load_tile(k_src, stride_kn, n0, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, True)
    v = _load_tile(v_src, stride_vn, n0, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # query blocks that see some key of this block: [lo, hi); that see all of them: [full_lo, full_hi)
    lo, full_lo, full_hi, hi = span(n0, tl.minimum(n0 + BLOCK_N, N_KV) - 1, N_Q, -diag, WIN_RIGHT, WIN_LEFT,
                                    BLOCK_M, CAUSAL or WINDOW, WINDOW)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_src = _make_src(Q + b * stride_qb + h * stride_qh + q0 * stride_qm, stride_qm, N_Q, BLOCK_M, BLOCK_D,
                          HEAD_DIM, USE_TMA)
        do_src = _make_src(DO + b * stride_dob + h * stride_doh + q0 * stride_dom, stride_dom, N_Q, BLOCK_M,
                           BLOCK_D, HEAD_DIM, USE_TMA)
        LSE_row = LSE + b * stride_lb + h * stride_lh + q0
        DELTA_row = DELTA + b * stride_lb + h * stride_lh + q0
        if CAUSAL or WINDOW:  # only a right reach (causal: 0) leaves query blocks partly seeing below full_lo
            dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                                 lo, full_lo, offs_n, diag, N_Q, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL,
                                 WINDOW, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                             full_lo, full_hi, offs_n, diag, N_Q, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, False, CAUSAL,
                             WINDOW, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, LSE_row, DELTA_row, stride_qm, stride_dom,
                             full_hi, hi, offs_n, diag, N_Q, N_KV, qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL,
                             WINDOW, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)

    dk = dk * sm_scale
    dk_dst = _make_src(DK + b * stride_dkb + hk * stride_dkh + k0 * stride_dkn, stride_dkn, N_KV, BLOCK_N, BLOCK_D,
                       HEAD_DIM, USE_TMA)
    dv_dst = _make_src(DV + b * stride_dvb + hk * stride_dvh + k0 * stride_dvn, stride_dvn, N_KV, BLOCK_N, BLOCK_D,
                       HEAD_DIM, USE_TMA)
    _store_tile(dk_dst, stride_dkn, n0, N_KV, dk.to(DK.dtype.element_ty), BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA,
                VARLEN)
    _store_tile(dv_dst, stride_dvn, n0, N_KV, dv.to(DV.dtype.element_ty), BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA,
                VARLEN)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, lo, hi, offs_m, diag, N_KV, qk_scale,
              WIN_LEFT, WIN_RIGHT, MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
              USE_TMA: tl.constexpr, IEEE: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        k = _load_tile(k_src, stride_kn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        v = _load_tile(v_src, stride_vn, start_n, N_KV, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, MASK)
        qk = _dot(q, tl.trans(k), None, IEEE)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(visible(offs_m[:, None], (start_n + offs_n0)[None, :], diag, N_KV, WIN_LEFT, WIN_RIGHT,
                                 CAUSAL, WINDOW), p, 0.0)
        dp = _dot(do, tl.trans(v), None, IEEE)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, IEEE)
    return dq


@triton.jit(do_not_specialize=["N_Q", "N_KV", "WIN_LEFT", "WIN_RIGHT", "NQ_BUCKET", "NKV_BUCKET", "TMA_OK"])
def bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K, TABLE, sm_scale,
                  stride_qb, stride_qh, stride_qm,
                  stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn,
                  stride_dob, stride_doh, stride_dom,
                  stride_dqb, stride_dqh, stride_dqm,
                  stride_lb, stride_lh,
                  H, GROUP, N_Q, N_KV, WIN_LEFT, WIN_RIGHT, NQ_BUCKET, NKV_BUCKET, TMA_OK,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                  GROUP_PROGRAMS: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, WINDOW: tl.constexpr = False, VARLEN: tl.constexpr = False):
    # heaviest first if causal (dense), or as the varlen table orders its rows
    pid_m, b, h, q0, N_Q, k0, N_KV = locate(TABLE, CU_Q, CU_K, H, N_Q, N_KV, CAUSAL, GROUP_PROGRAMS, VARLEN)
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    m0 = pid_m * BLOCK_M
    diag = N_KV - N_Q
    qk_scale = sm_scale * 1.4426950408889634
    offs_m = m0 + tl.arange(0, BLOCK_M)

    q_src = _make_src(Q + b * stride_qb + h * stride_qh + q0 * stride_qm, stride_qm, N_Q, BLOCK_M, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    do_src = _make_src(DO + b * stride_dob + h * stride_doh + q0 * stride_dom, stride_dom, N_Q, BLOCK_M, BLOCK_D,
                       HEAD_DIM, USE_TMA)
    k_src = _make_src(K + b * stride_kb + hk * stride_kh + k0 * stride_kn, stride_kn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    v_src = _make_src(V + b * stride_vb + hk * stride_vh + k0 * stride_vn, stride_vn, N_KV, BLOCK_N, BLOCK_D,
                      HEAD_DIM, USE_TMA)
    q = _load_tile(q_src, stride_qm, m0, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, True)
    do = _load_tile(do_src, stride_dom, m0, N_Q, BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA, True)
    stats = b * stride_lb + h * stride_lh + q0
    lse, delta = _load_row_stats(LSE + stats, DELTA + stats, offs_m, N_Q, True)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # key blocks some row sees: [lo, hi); every row sees all of them: [full_lo, full_hi)
    lo, full_lo, full_hi, hi = span(m0, tl.minimum(m0 + BLOCK_M, N_Q) - 1, N_KV, diag, WIN_LEFT, WIN_RIGHT, BLOCK_N,
                                    WINDOW, CAUSAL or WINDOW)
    if WINDOW:  # only a left reach leaves blocks partly seen below full_lo
        dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, lo, full_lo, offs_m, diag, N_KV,
                       qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL, WINDOW, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, full_lo, full_hi, offs_m, diag, N_KV,
                   qk_scale, WIN_LEFT, WIN_RIGHT, False, CAUSAL, WINDOW, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, full_hi, hi, offs_m, diag, N_KV,
                   qk_scale, WIN_LEFT, WIN_RIGHT, True, CAUSAL, WINDOW, BLOCK_N, BLOCK_D, HEAD_DIM, USE_TMA, IEEE)

    dq = dq * sm_scale
    dq_dst = _make_src(DQ + b * stride_dqb + h * stride_dqh + q0 * stride_dqm, stride_dqm, N_Q, BLOCK_M, BLOCK_D,
                       HEAD_DIM, USE_TMA)
    _store_tile(dq_dst, stride_dqm, m0, N_Q, dq.to(DQ.dtype.element_ty), BLOCK_M, BLOCK_D, HEAD_DIM, USE_TMA,
                VARLEN)
