"""Flash-Decoding in Triton: a few new tokens attending to a KV cache, contiguous or paged, with GQA packing.

What is implemented
-------------------
``flash_decode(q, k_cache, v_cache, cache_seqlens, block_table=None, sm_scale=None, num_splits=0,
launch_log=None)`` computes, for every sequence b of a batch, ``softmax(sm_scale * Q K^T + causal) V``
of its Nq (1..16) new query tokens against the first ``cache_seqlens[b]`` keys of its cache.

  * q: (B, Nq, H, D).  The new tokens' own keys are already in the cache, at its end: new token t
    (0-based) of sequence b sits at position ``cache_seqlens[b] - Nq + t`` and sees keys
    ``j <= cache_seqlens[b] - Nq + t`` (bottom-right causal among the new tokens).  A new token whose
    position is negative (``cache_seqlens[b] < Nq``) sees no key and its output is 0.
  * contiguous cache: k_cache, v_cache (B, N_max, H_kv, D), capacity N_max;
    paged cache: k_cache, v_cache (num_blocks, page_size, H_kv, D) with ``block_table`` (B, max_blocks)
    int32: logical position p of sequence b lives in page ``block_table[b, p // page_size]``, row
    ``p % page_size``; capacity max_blocks * page_size; page sizes 16, 32, 64, 128, 256.
  * cache_seqlens: (B,) int32, ``1 <= cache_seqlens[b] <= capacity``.
  * returns (B, Nq, H, D) in q's dtype.  GQA/MQA: query head h reads kv head h // (H / H_kv).

Algorithm
---------
Flash-Decoding (Dao, Haziza, Massa, Sizov, 2023).  FlashAttention-2 parallelises over batch, heads and
blocks of query rows; with 1..16 new tokens that leaves B * H programs, each walking a whole cache
alone, too few to fill a GPU at small batch.  Flash-Decoding also splits the keys:

  1. ``_split_kernel``: one program per (batch, kv head, row block, split) walks its range of the
     sequence's keys in chunks of BLOCK_N with FA2's online softmax (Algorithm 1: running row max m,
     running row sum l, un-normalised accumulator rescaled by exp2(m_old - m_new); log2(e) folded into
     the scale so the kernel uses ``exp2``; the division by l deferred to the end of the range), and
     writes its normalised partial output O_s (fp32) and base-2 log-sum-exp L_s = m + log2(l)
     (-inf for a split whose range is empty or invisible to the row).
  2. ``_combine_kernel``: per output row, L = log2(sum_s 2^L_s) and O = sum_s 2^(L_s - L) O_s
     (0 when every L_s is -inf).
  With one split the first kernel writes O directly in q's dtype and no combine kernel runs.
  A sequence's ceil(cache_seqlens[b] / BLOCK_N) chunks are shared out evenly between the splits,
  sequence by sequence, so every split of one sequence does the same work whatever the lengths.

GQA packing: one program takes ALL query heads of its kv head and all Nq new tokens as the rows of one
tile (rows = (H / H_kv) * Nq, token-major, padded to a power of two >= 16 with masked rows, the
smallest M ``tl.dot`` takes), so a K/V chunk is read from HBM once per kv head, not once per query head.
Above 128 rows (64 at head dim 256) the rows go to several row blocks (``m_blocks`` programs), each
reading the chunk once: only MQA-like groups times many new tokens get there.

Masks: chunks whose keys all lie below ``cache_seqlens[b] - Nq + 1`` are visible to every new token and
run with no mask arithmetic; only the last chunk or two of a sequence (the key tail and the causal
triangle of the new tokens) are masked.

Paged cache: BLOCK_N and the page size are both powers of two, so either BLOCK_N divides the page size
(one table lookup per chunk, whose rows are contiguous in one page: ``kv_gather = "page"``) or the page
size divides BLOCK_N (each key row looks up its own page, ``kv_gather = "row"``: a gather of BLOCK_N
table entries that hit the same BLOCK_N / page_size addresses, and rows that stay contiguous along D,
so every row is still one coalesced vector load).  The row gather keeps BLOCK_N, and so the loop's work
per iteration and its pipelining, the same for every page size instead of shrinking the chunk to a
16-row page.  Table entries past a sequence's length are never read (nor checked).

Split count (``num_splits=0``): ``choose_num_splits`` below.  With programs = B * H_kv * m_blocks
before splitting and S the GPU's SM count (a fixed 4 under the interpreter): no split when programs
>= 2 S (two waves of one program per SM already); otherwise ceil(3 S / programs) splits, so the
launch holds about three programs per SM, capped so that the longest sequence's split holds at least
4 chunks of BLOCK_N keys (never more splits than chunks) and at 128.  The count is one per launch and
each sequence is divided by it, so a short sequence's splits may be shorter, or empty (a split with no
chunk of its sequence writes L = -inf).  Explicit counts 1..128 are honoured.  With S > 1 splits a
call allocates S * B * Nq * H * (D + 1) fp32 values of partial results.

Block sizes (``_tile_plan``): BLOCK_N = 64 keys at head dims up to 128, 32 at 256 (32 under the
interpreter, so that its tests take both paged paths); BLOCK_D = head dim rounded up to a power of two
(96 runs masked in a 128 tile); 4 warps, 8 once the accumulator is 128 x 128; 3 pipeline stages, 2 at
head dim 256 or fp32.  These are reasoned defaults, not tuned values: nothing here has been timed.

Precision: Q K^T and P V are ``tl.dot`` in the input dtype with fp32 accumulation (P cast to the
input dtype, bf16 stays bf16); fp32 inputs use exact ``input_precision="ieee"`` dots.

Host synchronisation: validation reads ``cache_seqlens`` (range against the capacity, and the longest
length for the split count) and, for a paged cache, checks that every table entry a sequence uses lies
in [0, num_blocks): one device-to-host copy per call.  A wrong page index would read another
sequence's cache or out-of-bounds memory, and in a benchmark library a wrong result is worse than a
sync; it also means a call cannot be captured in a CUDA graph.

Not supported: backward / autograd (forward only: inputs that require grad under grad mode are refused
rather than silently detached), sliding windows, ALiBi or other biases, soft-capping, dropout,
fp8 or quantised caches, head dims other than 32/64/96/128/256, more than 16 new tokens (a prefill:
use flash_attn_v2), new tokens that are not at the end of the cache, returning the LSE, variable numbers
of new tokens per sequence, non-positive softmax scales, CUDA-graph capture (see above).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._validate import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, default_scale, interpreting

__all__ = ["flash_decode", "choose_num_splits", "MAX_NEW_TOKENS", "MAX_SPLITS", "PAGE_SIZES"]

MAX_NEW_TOKENS = 16
MAX_SPLITS = 128
PAGE_SIZES = (16, 32, 64, 128, 256)

# Split heuristic (see the module docstring); constants, not knobs.
_FULL_PROGRAMS_PER_SM = 2  # at or above this many programs per SM the launch is not split
_TARGET_PROGRAMS_PER_SM = 3  # a split launch aims at this many
_MIN_CHUNKS_PER_SPLIT = 4  # a split shorter than this is mostly prologue and combine traffic
_INTERPRETER_SMS = 4

_MAX_ROWS = 128  # rows of one tile (64 at head dim 256): bounds the fp32 accumulator's registers
_COMBINE_WARPS = 4


# ----------------------------------------------------------------------------------------------
# Device code
# ----------------------------------------------------------------------------------------------
@triton.jit
def _chunk_offsets(table_row, start_n, seqlen, stride_p, stride_n,
                   PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Element offsets (int64, [BLOCK_N]) of key rows start_n .. start_n + BLOCK_N - 1 from the head's base."""
    pos = start_n + tl.arange(0, BLOCK_N)
    if not PAGED:
        return pos.to(tl.int64) * stride_n
    elif PAGE_SIZE >= BLOCK_N:
        # chunks start at multiples of BLOCK_N, which divides PAGE_SIZE: the whole chunk is in one page
        page = tl.load(table_row + start_n // PAGE_SIZE).to(tl.int64)
        return page * stride_p + (pos % PAGE_SIZE) * stride_n
    else:
        # the chunk spans BLOCK_N / PAGE_SIZE pages: every row looks up its own (rows past the length
        # would read table entries that may be unused padding, so they are not looked up)
        pages = tl.load(table_row + pos // PAGE_SIZE, mask=pos < seqlen, other=0).to(tl.int64)
        return pages * stride_p + (pos % PAGE_SIZE) * stride_n


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
def _attend_chunks(acc, l_i, m_i, q, k_head, v_head, table_row, lo, hi, seqlen, last, qk_scale,
                   stride_kp, stride_kn, stride_vp, stride_vn,
                   MASKED: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """FA2's online softmax over the keys [lo, hi) in chunks of BLOCK_N; MASKED applies the causal/tail mask."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in tl.range(lo, hi, BLOCK_N):
        pos = start_n + tl.arange(0, BLOCK_N)
        k_off = _chunk_offsets(table_row, start_n, seqlen, stride_kp, stride_kn, PAGED, PAGE_SIZE, BLOCK_N)
        k = _load_rows(k_head + k_off[:, None] + offs_d[None, :], pos, seqlen, MASKED, HEAD_DIM, BLOCK_D)
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
        v_off = _chunk_offsets(table_row, start_n, seqlen, stride_vp, stride_vn, PAGED, PAGE_SIZE, BLOCK_N)
        v = _load_rows(v_head + v_off[:, None] + offs_d[None, :], pos, seqlen, MASKED, HEAD_DIM, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _split_kernel(Q, K, V, O, LSE, SEQLENS, TABLE, qk_scale,
                  stride_qb, stride_qt, stride_qh,
                  stride_kb, stride_kn, stride_kh,  # paged: stride_kb is the page stride
                  stride_vb, stride_vn, stride_vh,
                  stride_os, stride_ob, stride_ot, stride_oh,
                  stride_ls, stride_lb, stride_lt, stride_lh,
                  stride_tb,
                  H_KV, M_BLOCKS, NUM_SPLITS,
                  N_Q: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                  WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    m_block = pid % M_BLOCKS
    hk = (pid // M_BLOCKS) % H_KV
    b = (pid // M_BLOCKS) // H_KV
    b64 = b.to(tl.int64)
    seqlen = tl.load(SEQLENS + b)

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
    acc, l_i, m_i = _attend_chunks(acc, l_i, m_i, q, k_head, v_head, table_row, lo, mid, seqlen, last, qk_scale,
                                   stride_kb, stride_kn, stride_vb, stride_vn, False, PAGED, PAGE_SIZE,
                                   HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _attend_chunks(acc, l_i, m_i, q, k_head, v_head, table_row, mid, hi, seqlen, last, qk_scale,
                                   stride_kb, stride_kn, stride_vb, stride_vn, True, PAGED, PAGE_SIZE,
                                   HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    # rows with no visible key in this range (l = 0) write O = 0 and L = -inf
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    o_ptrs = (O + split.to(tl.int64) * stride_os + b64 * stride_ob + tok[:, None] * stride_ot
              + head[:, None] * stride_oh + offs_d[None, :])
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=io_mask)
    if WRITE_LSE:
        lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))
        lse_ptrs = LSE + split.to(tl.int64) * stride_ls + b64 * stride_lb + tok * stride_lt + head * stride_lh
        tl.store(lse_ptrs, lse, mask=row_ok)


@triton.jit
def _combine_kernel(O_PART, LSE_PART, OUT, ROWS, NUM_SPLITS,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr):
    """One output row: O = sum_s 2^(L_s - L) O_s with L = log2 sum_s 2^L_s; partials are (splits, ROWS, ...).

    All L_s at once (BLOCK_S >= NUM_SPLITS), then the partial outputs CHUNK_S splits at a time, so
    that registers hold CHUNK_S x BLOCK_D values whatever the split count.
    """
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    lse = tl.load(LSE_PART + offs_s * ROWS + row, mask=offs_s < NUM_SPLITS, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no split saw a key: every weight is 0
    total = tl.sum(tl.math.exp2(lse - m), 0)

    offs_c = tl.arange(0, CHUNK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in tl.range(0, NUM_SPLITS, CHUNK_S):
        s = s0 + offs_c
        s_ok = s < NUM_SPLITS
        w = tl.math.exp2(tl.load(LSE_PART + s * ROWS + row, mask=s_ok, other=float("-inf")) - m)
        o = tl.load(O_PART + (s[:, None] * ROWS + row) * HEAD_DIM + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(o * w[:, None], 0)
    out = acc / tl.where(total > 0.0, total, 1.0)
    tl.store(OUT + row * HEAD_DIM + offs_d, out.to(OUT.dtype.element_ty), mask=d_ok)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------
def _fail(reason: str):
    raise ValueError(f"flash_decode: {reason}")


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output and partial buffer is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def choose_num_splits(programs: int, max_chunks: int, num_sms: int) -> int:
    """Splits of the key range for ``num_splits=0``.

    programs: programs of the launch before splitting (B * H_kv * row blocks); max_chunks: BLOCK_N
    chunks of the longest sequence; num_sms: the GPU's streaming multiprocessors.  No split when the
    launch already has two programs per SM; otherwise enough splits for about three per SM, no more
    than leave the longest sequence 4 chunks per split, and at most MAX_SPLITS.
    """
    if programs >= _FULL_PROGRAMS_PER_SM * num_sms:
        return 1
    wanted = -(-_TARGET_PROGRAMS_PER_SM * num_sms // programs)
    return max(1, min(wanted, max_chunks // _MIN_CHUNKS_PER_SPLIT, MAX_SPLITS))


class _TilePlan(NamedTuple):
    block_m: int  # tile rows: (query heads per kv head) x new tokens, padded
    m_blocks: int  # row blocks per (batch, kv head)
    block_n: int  # keys per chunk
    block_d: int  # head dim padded to a power of two
    num_warps: int
    num_stages: int


def _tile_plan(head_dim: int, rows: int, dtype: torch.dtype) -> _TilePlan:
    """Block sizes, warps and stages of the split kernel for ``rows`` = (H / H_kv) * Nq.

    8 warps once the fp32 accumulator reaches 128 x 128 (4 would hold 128 of its values per thread);
    2 stages where a tile row is 256 elements or 4 bytes wide, to keep the pipeline's shared memory
    near 100 KB.
    """
    block_d = max(16, _next_pow2(head_dim))
    block_m = min(max(16, _next_pow2(rows)), _MAX_ROWS if block_d <= 128 else _MAX_ROWS // 2)
    block_n = 32 if interpreting() or block_d > 128 else 64
    num_warps = 8 if block_m * block_d >= 128 * 128 else 4
    num_stages = 2 if block_d > 128 or dtype == torch.float32 else 3
    return _TilePlan(block_m, triton.cdiv(rows, block_m), block_n, block_d, num_warps, num_stages)


def _num_sms(device: torch.device) -> int:
    if interpreting() or device.type != "cuda":
        return _INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check_tensors(q, k_cache, v_cache, cache_seqlens, block_table) -> None:
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens)]
    if block_table is not None:
        named.append(("block_table", block_table))
    for n, t in named:
        if not isinstance(t, torch.Tensor):
            _fail(f"{n} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        _fail(f"q must be 4-D (batch, new_tokens, heads, head_dim), got shape {tuple(q.shape)}")
    layout = "(num_blocks, page_size, kv_heads, head_dim)" if block_table is not None else \
        "(batch, max_seqlen, kv_heads, head_dim)"
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 4:
            _fail(f"{n} must be 4-D {layout}, got shape {tuple(t.shape)}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        _fail(f"q, k_cache, v_cache must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        _fail(f"dtype {q.dtype} is not supported (float16, bfloat16, float32)")
    for n, t in named[1:]:
        if t.device != q.device:
            _fail(f"{n} is on {t.device} but q is on {q.device}; all inputs must be on one device")
    if q.device.type != "cuda" and not interpreting():
        _fail(f"inputs must be CUDA tensors (got {q.device}); CPU runs only under TRITON_INTERPRET=1")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache)):
        _fail("forward only (no autograd): an input requires grad; call it under torch.no_grad() or detach")
    for n, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            _fail(f"{n} must have a contiguous last dimension (stride 1), got strides {t.stride()}")


def _check_shapes(q, k_cache, v_cache, cache_seqlens, block_table) -> tuple[int, int]:
    """Shape checks; returns (capacity of a sequence, page size or 0 for a contiguous cache)."""
    B, Nq, H, D = q.shape
    Hkv = k_cache.shape[2]
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        _fail(f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if min(q.shape) == 0 or min(k_cache.shape) == 0:
        _fail(f"empty input: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    if not 1 <= Nq <= MAX_NEW_TOKENS:
        _fail(f"q has {Nq} new tokens (dim 1); 1 to {MAX_NEW_TOKENS} are supported")
    if k_cache.shape[3] != D:
        _fail(f"head_dim of q ({D}) and of the caches ({k_cache.shape[3]}) differ")
    if D not in SUPPORTED_HEAD_DIMS:
        _fail(f"head_dim {D} is not supported; supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if H % Hkv != 0:
        _fail(f"query heads ({H}) must be a multiple of the caches' kv heads ({Hkv}) for GQA/MQA")
    if cache_seqlens.dtype != torch.int32:
        _fail(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (B,):
        _fail(f"cache_seqlens must have shape ({B},) (one length per sequence), got {tuple(cache_seqlens.shape)}")
    if block_table is None:
        if k_cache.shape[0] != B:
            _fail(f"batch of q ({B}) and of the contiguous caches ({k_cache.shape[0]}) differ")
        return k_cache.shape[1], 0
    page = k_cache.shape[1]
    if page not in PAGE_SIZES:
        _fail(f"page size (k_cache dim 1) {page} is not supported; supported: {', '.join(map(str, PAGE_SIZES))}")
    if block_table.dtype != torch.int32:
        _fail(f"block_table must be int32, got {block_table.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.shape[1] == 0:
        _fail(f"block_table must have shape ({B}, max_blocks) with max_blocks >= 1, got {tuple(block_table.shape)}")
    return block_table.shape[1] * page, page


def _check_values(cache_seqlens, block_table, capacity: int, page: int, num_blocks: int) -> int:
    """Range checks of the lengths and of the table entries in use (one device-to-host sync); returns the longest length."""
    lens = cache_seqlens.to(torch.int64)
    stats = [lens.min(), lens.max()]
    if block_table is not None:
        used_pages = (lens.clamp(min=0) + page - 1) // page
        used = torch.arange(block_table.shape[1], device=lens.device)[None, :] < used_pages[:, None]
        bad = used & ((block_table < 0) | (block_table >= num_blocks))
        stats.append(bad.sum())
    stats = torch.stack(stats).tolist()
    shortest, longest = stats[0], stats[1]
    if shortest < 1:
        b = int(torch.argmin(lens))
        _fail(f"cache_seqlens[{b}] = {shortest}; every sequence needs at least 1 key in its cache")
    if longest > capacity:
        b = int(torch.argmax(lens))
        what = "max_blocks * page_size" if block_table is not None else "k_cache dim 1"
        _fail(f"cache_seqlens[{b}] = {longest} exceeds the cache capacity {capacity} ({what})")
    if block_table is not None and stats[2] > 0:
        b, i = (int(x) for x in bad.nonzero()[0])
        _fail(f"block_table[{b}, {i}] = {int(block_table[b, i])} is outside [0, {num_blocks}) "
              f"(num_blocks = k_cache dim 0) and is used by sequence {b} of length {int(lens[b])}")
    return longest


def _check_options(q, sm_scale, num_splits, launch_log) -> float:
    scale = default_scale(q.shape[-1], sm_scale)
    if not (math.isfinite(scale) and scale > 0.0):
        _fail(f"sm_scale must be a positive finite number, got {sm_scale}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 0 <= num_splits <= MAX_SPLITS:
        _fail(f"num_splits must be an int in [0, {MAX_SPLITS}] (0 picks it from the shape), got {num_splits!r}")
    if launch_log is not None and not isinstance(launch_log, dict):
        _fail(f"launch_log must be a dict or None, got {type(launch_log).__name__}")
    return scale


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = None, sm_scale: float | None = None, num_splits: int = 0,
                 launch_log: dict | None = None) -> torch.Tensor:
    """Flash-Decoding: Nq (1..16) new tokens per sequence against a contiguous or paged KV cache.

    q (B, Nq, H, D); k_cache, v_cache (B, N_max, H_kv, D), or (num_blocks, page_size, H_kv, D) with
    block_table (B, max_blocks) int32; cache_seqlens (B,) int32 counts each sequence's keys, the new
    tokens' included (they are its last Nq positions).  Returns (B, Nq, H, D) in q's dtype; rows of
    new tokens at negative positions (cache_seqlens[b] < Nq) are 0.  Forward only.

    num_splits: 0 picks the split count from the shape and the SM count (module docstring), else
    1..128.  launch_log: a dict that receives the launch's choices (num_splits, block_m, block_n,
    m_blocks, kv_gather, page_size, num_warps, num_stages, combine).  Synchronises with the device
    once to check cache_seqlens and block_table (module docstring).
    """
    _check_tensors(q, k_cache, v_cache, cache_seqlens, block_table)
    capacity, page = _check_shapes(q, k_cache, v_cache, cache_seqlens, block_table)
    scale = _check_options(q, sm_scale, num_splits, launch_log)
    if block_table is not None:
        block_table = block_table.contiguous()
    cache_seqlens = cache_seqlens.contiguous()
    longest = _check_values(cache_seqlens, block_table, capacity, page, k_cache.shape[0])

    B, Nq, H, D = q.shape
    Hkv = k_cache.shape[2]
    group = H // Hkv
    plan = _tile_plan(D, group * Nq, q.dtype)
    programs = B * Hkv * plan.m_blocks
    splits = num_splits or choose_num_splits(programs, triton.cdiv(longest, plan.block_n), _num_sms(q.device))

    out = _empty((B, Nq, H, D), q.dtype, q.device)
    if splits == 1:
        o_part, lse_part, o_split_stride = out, out, 0
    else:
        o_part = _empty((splits, B, Nq, H, D), torch.float32, q.device)
        lse_part = _empty((splits, B, Nq, H), torch.float32, q.device)
        o_split_stride = o_part.stride(0)
    table = block_table if block_table is not None else cache_seqlens  # a placeholder never read
    _split_kernel[(programs, splits)](
        q, k_cache, v_cache, o_part, lse_part, cache_seqlens, table, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o_split_stride, o_part.stride(-4), o_part.stride(-3), o_part.stride(-2),
        *(lse_part.stride() if splits > 1 else (0,) * 4),
        table.stride(0),
        Hkv, plan.m_blocks, splits,
        N_Q=Nq, GROUP=group, HEAD_DIM=D, BLOCK_D=plan.block_d, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        PAGED=block_table is not None, PAGE_SIZE=max(page, 1), WRITE_LSE=splits > 1,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=plan.num_warps, num_stages=plan.num_stages)
    if splits > 1:
        rows = B * Nq * H
        block_s = max(2, _next_pow2(splits))
        _combine_kernel[(rows,)](o_part, lse_part, out, rows, splits, HEAD_DIM=D, BLOCK_D=plan.block_d,
                                 BLOCK_S=block_s, CHUNK_S=min(block_s, 16), num_warps=_COMBINE_WARPS)
    if launch_log is not None:
        launch_log.update(num_splits=splits, block_m=plan.block_m, block_n=plan.block_n, m_blocks=plan.m_blocks,
                          kv_gather="contiguous" if not page else ("page" if page >= plan.block_n else "row"),
                          page_size=page, num_warps=plan.num_warps, num_stages=plan.num_stages, combine=splits > 1)
    return out
