"""The one FLOP count and the one minimum-bytes count every backend is measured against.

Convention of FlashAttention and tritonbench (REFERENCE §3), so TFLOP/s are comparable
"effective" figures across backends:
- forward: 4·B·H·Nq·Nkv·D (two matmuls of 2·Nq·Nkv·D each);
- causal: only the visible part of the score matrix counts (half when Nq = Nkv);
- backward: 2.5× forward; fwd_bwd: 3.5× forward.
"""
from __future__ import annotations

from .case import Case

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def visible_pairs(n_q: int, n_kv: int, causal: bool) -> int:
    """Number of (query, key) pairs that are not masked.

    Causal is bottom-right aligned: query i sees keys j <= i + (n_kv - n_q), so row i sees
    i + n_kv - n_q + 1 keys (never more than n_kv, since i < n_q), and rows with i < n_q - n_kv
    see none. The sum is an arithmetic series: N(N+1)/2 when n_q = n_kv = N.
    """
    if not causal:
        return n_q * n_kv
    offset = n_kv - n_q
    first = max(0, -offset)  # first row that sees at least one key
    rows = n_q - first
    if rows <= 0:
        return 0
    a, b = first + offset + 1, n_q - 1 + offset + 1
    return (a + b) * rows // 2


def attention_flops(case: Case) -> float:
    fwd = 4.0 * case.batch * case.heads * visible_pairs(case.seq_len_q, case.seq_len_kv, case.causal) * case.head_dim
    return fwd * MODE_FACTOR[case.mode]


def dtype_bytes(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}[dtype]


def min_hbm_bytes(case: Case) -> int:
    """Fewest bytes any implementation must move through HBM.

    forward: read Q, K, V once, write O once.
    backward: read Q, K, V, O, dO and the fp32 log-sum-exp, write dQ, dK, dV.
    fwd_bwd: both (the forward's O and LSE are written then read again).
    """
    e = dtype_bytes(case.dtype)
    q = case.batch * case.heads * case.seq_len_q * case.head_dim * e
    kv = case.batch * case.kv_heads * case.seq_len_kv * case.head_dim * e
    o = q
    lse = case.batch * case.heads * case.seq_len_q * 4
    fwd = q + 2 * kv + o
    bwd = (q + 2 * kv + o + o + lse) + (q + 2 * kv)
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + lse + bwd}[case.mode]
