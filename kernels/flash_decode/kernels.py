"""Flash-Decoding's two Triton kernels: attention over one split of the keys, then the combine of the splits.

``split_kernel``: one program per (batch, kv head, row block, split) runs FA2's online softmax over
its split's keys in chunks of BLOCK_N, for a tile whose rows are every query head of its kv head
times every new token (GQA packing), and writes either the output (one split) or a normalised
partial output with its base-2 log-sum-exp (several splits).  ``combine_kernel``: for each output
row and block of head-dim columns, O = sum_s 2^(L_s - L) O_s with L = log2 sum_s 2^L_s.  On Hopper the
combine is launched with programmatic dependent launch (``OVERLAP``): the split programs signal once
their key loops are done, the combine's programs launch then and wait (``griddepcontrol.wait``) for the
split kernel to complete and its writes to be visible, so the second launch's latency overlaps the
split kernel's tail instead of following it.

Values the host did not check (``check_values=False``) can never make a program read outside the
caches: a length is clamped into [0, CAPACITY], a page index into [0, NUM_BLOCKS), and a program
that clamped anything writes NaN (output and LSE), which the combine carries into every row of
the sequence.  The launcher is ``run.py``; the algorithm is described in the package docstring.

Forward only; no sliding windows, biases, soft-capping or dropout, and every new token sits at the end of
its sequence's cache (the package docstring lists what is not supported).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _load_rows(ptrs, pos, seqlen, MASK_KEYS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [BLOCK_N, BLOCK_D] K or V chunk; keys past seqlen and columns past HEAD_DIM read as 0."""
    offs_d = tl.arange(0, BLOCK_D)
    if MASK_KEYS:
        return tl.load(ptrs, mask=(pos[:, None] < seqlen) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif BLOCK_D != HEAD_DIM:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _clamp_page(page, NUM_BLOCKS):
    """Page indices from the block table clamped into [0, NUM_BLOCKS), and whether each was outside (int32)."""
    safe = tl.minimum(tl.maximum(page, 0), NUM_BLOCKS - 1)
    return safe, (safe != page).to(tl.int32)


@triton.jit
def _attend_chunks(acc, l_i, m_i, bad, q, k_head, v_head, table_row, lo, hi, seqlen, last, qk_scale,
                   stride_kp, stride_kn, stride_vp, stride_vn, NUM_BLOCKS,
                   MASKED: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """FA2's online softmax over the keys [lo, hi) in chunks of BLOCK_N; MASKED applies the causal/tail mask.

    ``bad`` ([BLOCK_N] int32) collects, row by row, whether a page index had to be clamped.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(lo, hi, BLOCK_N):
        pos = start_n + offs_n
        if PAGED and PAGE_SIZE < BLOCK_N:
            # the chunk spans BLOCK_N / PAGE_SIZE pages: each key row looks up its page (rows past the
            # length would read table entries that may be unused padding, so they are not looked up);
            # one lookup serves K and V
            page, clamped = _clamp_page(tl.load(table_row + pos // PAGE_SIZE, mask=pos < seqlen, other=0),
                                        NUM_BLOCKS)
            bad = bad | clamped
            in_page = pos % PAGE_SIZE
            k_ptrs = k_head + (page.to(tl.int64) * stride_kp + in_page * stride_kn)[:, None] + offs_d[None, :]
            v_ptrs = v_head + (page.to(tl.int64) * stride_vp + in_page * stride_vn)[:, None] + offs_d[None, :]
        else:
            # the chunk's rows are contiguous (one sequence, or one page: BLOCK_N divides the page
            # size and chunks start at multiples of BLOCK_N): a scalar int64 start plus a fixed
            # int32 tile of row/column offsets
            if PAGED:
                page, clamped = _clamp_page(tl.load(table_row + start_n // PAGE_SIZE), NUM_BLOCKS)
                bad = bad | clamped
                k_start = page.to(tl.int64) * stride_kp + (start_n % PAGE_SIZE) * stride_kn
                v_start = page.to(tl.int64) * stride_vp + (start_n % PAGE_SIZE) * stride_vn
            else:
                k_start = tl.cast(start_n, tl.int64) * stride_kn
                v_start = tl.cast(start_n, tl.int64) * stride_vn
            k_ptrs = k_head + k_start + (offs_n[:, None] * stride_kn + offs_d[None, :])
            v_ptrs = v_head + v_start + (offs_n[:, None] * stride_vn + offs_d[None, :])
        k = _load_rows(k_ptrs, pos, seqlen, MASKED, HEAD_DIM, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            s = tl.where(pos[None, :] <= last[:, None], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row with nothing visible yet keeps m = -inf: subtract 0 instead, avoiding inf - inf
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        else:
            # every key of the chunk is visible to every new token: no mask arithmetic
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_ptrs, pos, seqlen, MASKED, HEAD_DIM, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i, bad


# Sizes that change from call to call are not specialised (Triton would compile a variant for a
# value of 1 or a multiple of 16): the new-token count, split count, capacity, page pool, table
# width and the LSE buffer's strides (which hold the split and batch sizes).
@triton.jit(do_not_specialize=["N_Q", "NUM_SPLITS", "CAPACITY", "NUM_BLOCKS", "stride_tb",
                               "stride_ls", "stride_lb", "stride_lt"])
def split_kernel(Q, K, V, O, LSE, SEQLENS, TABLE, qk_scale,
                 stride_qb, stride_qt, stride_qh,
                 stride_kb, stride_kn, stride_kh,  # paged: stride_kb is the page stride
                 stride_vb, stride_vn, stride_vh,
                 stride_os, stride_ob, stride_ot, stride_oh,
                 stride_ls, stride_lb, stride_lt, stride_lh,
                 stride_tb,
                 H_KV, M_BLOCKS, NUM_SPLITS, N_Q, CAPACITY, NUM_BLOCKS,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                 WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr, OVERLAP: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    m_block = pid % M_BLOCKS
    hk = (pid // M_BLOCKS) % H_KV
    b = (pid // M_BLOCKS) // H_KV
    b64 = b.to(tl.int64)
    # a length outside [1, CAPACITY] (possible only when the host did not check) reads at most the
    # capacity and poisons the sequence's output
    length = tl.load(SEQLENS + b)
    poison = (length < 1) | (length > CAPACITY)
    seqlen = tl.minimum(tl.maximum(length, 0), CAPACITY)

    # tile rows: (new token t, query head g of this kv head's group), token-major
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N_Q * GROUP
    tok = rows // GROUP
    head = hk * GROUP + rows % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b64 * stride_qb + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=io_mask, other=0.0)
    # new token t sits at position seqlen - N_Q + t and sees the keys up to it
    last = seqlen - N_Q + tok

    # this split's share of the sequence's chunks
    per_split = tl.cdiv(tl.cdiv(seqlen, BLOCK_N), NUM_SPLITS)
    lo = split * per_split * BLOCK_N
    hi = tl.minimum(lo + per_split * BLOCK_N, seqlen)
    # keys below full_end are visible to every new token: chunks there need no mask
    full_end = (tl.maximum(seqlen - N_Q + 1, 0) // BLOCK_N) * BLOCK_N
    mid = tl.maximum(tl.minimum(hi, full_end), lo)

    if PAGED:
        k_head = K + hk * stride_kh
        v_head = V + hk * stride_vh
    else:
        k_head = K + b64 * stride_kb + hk * stride_kh
        v_head = V + b64 * stride_vb + hk * stride_vh
    table_row = TABLE + b64 * stride_tb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bad = tl.zeros([BLOCK_N], tl.int32)
    acc, l_i, m_i, bad = _attend_chunks(acc, l_i, m_i, bad, q, k_head, v_head, table_row, lo, mid, seqlen, last,
                                        qk_scale, stride_kb, stride_kn, stride_vb, stride_vn, NUM_BLOCKS,
                                        False, PAGED, PAGE_SIZE, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i, bad = _attend_chunks(acc, l_i, m_i, bad, q, k_head, v_head, table_row, mid, hi, seqlen, last,
                                        qk_scale, stride_kb, stride_kn, stride_vb, stride_vn, NUM_BLOCKS,
                                        True, PAGED, PAGE_SIZE, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    if PAGED:
        poison = poison | (tl.max(bad, 0) > 0)
    if OVERLAP:
        # the combine may launch once every program got here (it waits for this kernel's writes itself)
        gdc_launch_dependents()

    # rows with no visible key in this range (l = 0) write O = 0 and L = -inf
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = tl.where(poison, float("nan"), acc / l_safe[:, None])
    o_ptrs = (O + split.to(tl.int64) * stride_os + b64 * stride_ob + tok[:, None] * stride_ot
              + head[:, None] * stride_oh + offs_d[None, :])
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=io_mask)
    if WRITE_LSE:
        lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))
        lse = tl.where(poison, float("nan"), lse)
        lse_ptrs = LSE + split.to(tl.int64) * stride_ls + b64 * stride_lb + tok * stride_lt + head * stride_lh
        tl.store(lse_ptrs, lse, mask=row_ok)


@triton.jit(do_not_specialize=["ROWS", "NUM_SPLITS"])
def combine_kernel(O_PART, LSE_PART, OUT, ROWS, NUM_SPLITS,
                   HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DC: tl.constexpr, OVERLAP: tl.constexpr):
    """Columns [BLOCK_DC * pid(1), +BLOCK_DC) of output row pid(0) from the partials (splits, ROWS, HEAD_DIM).

    Every split's L_s and O_s are loaded at once (BLOCK_S >= NUM_SPLITS; the launcher bounds
    BLOCK_S x BLOCK_DC), so a program waits on memory once.  A NaN L_s or O_s (a poisoned split)
    makes the row NaN; a row no split saw a key of is 0.  OVERLAP: launched before the split kernel
    completed (programmatic dependent launch); nothing is read before it has.
    """
    if OVERLAP:
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_DC + tl.arange(0, BLOCK_DC)
    d_ok = offs_d < HEAD_DIM
    s = tl.arange(0, BLOCK_S)
    s_ok = s < NUM_SPLITS
    lse = tl.load(LSE_PART + s * ROWS + row, mask=s_ok, other=float("-inf"))
    o = tl.load(O_PART + (s[:, None] * ROWS + row) * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no split saw a key: every weight is 0
    w = tl.math.exp2(lse - m)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(OUT + row * HEAD_DIM + offs_d, out.to(OUT.dtype.element_ty), mask=d_ok)
