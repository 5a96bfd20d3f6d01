"""FLOP and byte counts, and the timing statistics."""
import math

import pytest

from flashbench.model.flops import attention_flops, min_hbm_bytes, visible_pairs
from flashbench.measure.stats import percentile, summarize
from cases import case_maker  # tests/support


case = case_maker(batch=2, heads=4, kv_heads=4, seq_len_q=128, seq_len_kv=128, head_dim=64, dtype="bfloat16",
                  causal=False, mode="fwd")


def test_forward_flops_are_4_b_h_n_n_d():
    assert attention_flops(case()) == 4 * 2 * 4 * 128 * 128 * 64


def test_mode_factors():
    f = attention_flops(case())
    assert attention_flops(case(mode="bwd")) == 2.5 * f
    assert attention_flops(case(mode="fwd_bwd")) == 3.5 * f


def test_causal_counts_the_visible_triangle():
    # Nq = Nkv = N: N(N+1)/2 visible pairs, i.e. half plus the diagonal
    assert visible_pairs(4, 4, True) == 10
    assert attention_flops(case(causal=True)) == 4 * 2 * 4 * (128 * 129 // 2) * 64
    # bottom-right alignment, Nq < Nkv: row i sees i + (Nkv - Nq) + 1 keys
    assert visible_pairs(2, 5, True) == 4 + 5
    # Nq > Nkv: the first Nq - Nkv rows see nothing
    assert visible_pairs(5, 2, True) == 0 + 0 + 0 + 1 + 2
    assert visible_pairs(3, 7, False) == 21


def test_visible_pairs_matches_brute_force():
    for nq in range(1, 9):
        for nkv in range(1, 9):
            brute = sum(1 for i in range(nq) for j in range(nkv) if j <= i + nkv - nq)
            assert visible_pairs(nq, nkv, True) == brute


def test_min_hbm_bytes():
    c = case(kv_heads=2)
    q = 2 * 4 * 128 * 64 * 2
    kv = 2 * 2 * 128 * 64 * 2
    assert min_hbm_bytes(c) == q + 2 * kv + q  # read Q, K, V; write O
    lse = 2 * 4 * 128 * 4
    bwd = (q + 2 * kv + q + q + lse) + (q + 2 * kv)  # read Q K V O dO LSE; write dQ dK dV
    assert min_hbm_bytes(case(kv_heads=2, mode="bwd")) == bwd
    assert min_hbm_bytes(case(dtype="float32")) == 2 * min_hbm_bytes(case())


def test_percentiles_match_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0])
    for q in (0, 20, 50, 80, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summary():
    s = summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert (s.median_ms, s.min_ms, s.samples, s.mean_ms) == (3.0, 1.0, 5, 3.0)
    assert s.p20_ms == pytest.approx(1.8) and s.p80_ms == pytest.approx(4.2)
    assert math.isclose(s.spread, (4.2 - 1.8) / 3.0)
    with pytest.raises(ValueError):
        summarize([])
