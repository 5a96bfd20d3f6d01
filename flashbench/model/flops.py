"""The one FLOP count and the one minimum-bytes count every backend is measured against.

Convention of FlashAttention and tritonbench (REFERENCE §3), so TFLOP/s are comparable
"effective" figures across backends, counted per sequence over the batch (dense: B equal sequences;
decode: the new tokens against each sequence's cache; varlen: each packed sequence against itself):

- forward: 4·H·D·Σ_s pairs_s (two matmuls of 2·D per visible (query, key) pair), where pairs_s is
  the number of (query, key) pairs of sequence s that causal masking and the sliding window leave
  visible, counted exactly (:func:`visible_pairs`; Nq·Nkv without a mask, N(N+1)/2 causal Nq = Nkv);
- backward: 2.5× forward; fwd_bwd: 3.5× forward.

Minimum bytes (:func:`min_hbm_bytes`): Q read and O written once, and the keys some query sees
(:func:`visible_keys`) read once per KV head, for K and V; a paged cache adds its page-table
entries (int32, one per page that holds a key some query sees). A backward writes dQ, dK and dV
whole: a key no query sees has a zero gradient, which is written like any other (as O is for a
query that sees no key).
"""
from __future__ import annotations

from collections import Counter

from .case import Case

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
INDEX_BYTES = 4  # int32 page-table entries


def _reach(n_q: int, n_kv: int, causal: bool, window: tuple[int, int]) -> tuple[float, float]:
    """Offsets (lo, hi) such that query i sees keys i + lo <= j <= i + hi (before clipping to [0, n_kv)):
    the diagonal of row i is i + (n_kv - n_q); -1 bounds are unbounded; causal caps the right at 0."""
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    diag = n_kv - n_q
    return (-float("inf") if left < 0 else diag - left), (float("inf") if right < 0 else diag + right)


def _clamped_sum(start: float, count: int, n: int) -> int:
    """Σ_{i=0}^{count-1} clamp(start + i, 0, n) in closed form (start may be ±inf)."""
    if start == float("inf"):
        return n * count
    if start == -float("inf"):
        return 0
    start = int(start)
    first, last = start, start + count - 1
    lo, hi = max(first, 0), min(last, n)     # the part of the range that is not clipped
    middle = (lo + hi) * (hi - lo + 1) // 2 if lo <= hi else 0
    above = max(0, last - max(n + 1, first) + 1)  # terms clipped to n
    return middle + n * above


def visible_pairs(n_q: int, n_kv: int, causal: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """Number of (query, key) pairs that are not masked, exactly.

    Query i sees keys j with i + (n_kv − n_q) − left ≤ j ≤ i + (n_kv − n_q) + right, clipped to
    [0, n_kv) (causal: right = 0; −1: unbounded). Row i therefore sees A(i) − B(i) keys with
    A(i) = clamp(i + hi + 1, 0, n_kv) and B(i) = clamp(i + lo, 0, n_kv), and the total is two
    sums of clipped arithmetic series. Rows that see nothing (causal with n_q > n_kv) count 0.
    """
    lo, hi = _reach(n_q, n_kv, causal, window)
    return _clamped_sum(hi + 1, n_q, n_kv) - _clamped_sum(lo, n_q, n_kv)


def visible_key_range(n_q: int, n_kv: int, causal: bool,
                      window: tuple[int, int] = (-1, -1)) -> tuple[int, int] | None:
    """(first, last) of the keys at least one query sees, None when no query sees any. Row i sees
    [max(0, i + lo), min(n_kv − 1, i + hi)], an interval that moves right by one key per row
    (hi ≥ lo), so the union over the rows that see any key (i + hi ≥ 0 and i + lo ≤ n_kv − 1) is
    one interval, from the first such row's first key to the last such row's last key."""
    lo, hi = _reach(n_q, n_kv, causal, window)
    first_row = max(0, -hi)
    last_row = min(n_q - 1, n_kv - 1 - lo)
    if n_kv < 1 or first_row > last_row:
        return None
    return int(max(0, first_row + lo)), int(min(n_kv - 1, last_row + hi))


def visible_keys(n_q: int, n_kv: int, causal: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """Number of keys at least one query sees (:func:`visible_key_range`)."""
    seen = visible_key_range(n_q, n_kv, causal, window)
    return 0 if seen is None else seen[1] - seen[0] + 1


def visible_pages(n_q: int, n_kv: int, causal: bool, window: tuple[int, int], page_size: int) -> int:
    """Pages of ``page_size`` tokens (the cache's pages in order) that hold a key some query sees:
    the page-table entries a paged kernel must read."""
    seen = visible_key_range(n_q, n_kv, causal, window)
    return 0 if seen is None else seen[1] // page_size - seen[0] // page_size + 1


def _sequences(case: Case) -> Counter:
    """Distinct (Nq, Nkv) pairs of the batch's sequences with their counts (a dense batch is one pair)."""
    q_lens, kv_lens = case.sequence_lengths()
    return Counter(zip(q_lens, kv_lens))


def attention_flops(case: Case) -> float:
    """4·H·D·Σ_s visible_pairs(Nq_s, Nkv_s) × the mode's factor (see the module docstring)."""
    pairs = sum(n * visible_pairs(nq, nkv, case.causal, case.window) for (nq, nkv), n in _sequences(case).items())
    return 4.0 * case.heads * pairs * case.head_dim * MODE_FACTOR[case.mode]


def dtype_bytes(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}[dtype]


def min_hbm_bytes(case: Case) -> int:
    """Fewest bytes any implementation must move through HBM.

    forward: read Q, the visible K and V once (per KV head), write O once; a paged cache also reads
    the page-table entries of the pages that hold a visible key.
    backward: read Q, the visible K and V, O, dO and the fp32 log-sum-exp; write dQ, dK, dV whole
    (every key's gradient, zero for a key no query sees).
    fwd_bwd: both (the forward's O and LSE are written then read again).
    """
    e = dtype_bytes(case.dtype)
    seqs = _sequences(case)
    q_tokens = sum(n * nq for (nq, _), n in seqs.items())
    seen_tokens = sum(n * visible_keys(nq, nkv, case.causal, case.window) for (nq, nkv), n in seqs.items())
    kv_tokens = sum(n * nkv for (_, nkv), n in seqs.items())
    q = case.heads * q_tokens * case.head_dim * e
    kv_read = case.kv_heads * seen_tokens * case.head_dim * e   # one of K, V: the keys some query sees
    kv_grad = case.kv_heads * kv_tokens * case.head_dim * e     # one of dK, dV: every key
    o = q
    lse = case.heads * q_tokens * 4
    table = 0
    if case.is_paged:
        table = INDEX_BYTES * sum(n * visible_pages(nq, nkv, case.causal, case.window, case.page_size)
                                  for (nq, nkv), n in seqs.items())
    fwd = q + 2 * kv_read + o + table
    bwd = (q + 2 * kv_read + o + o + lse) + (q + 2 * kv_grad)
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + lse + bwd}[case.mode]
