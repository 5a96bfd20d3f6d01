"""FLOPs and minimum bytes of every workload, against values worked out by hand (and the mask)."""
import itertools

import pytest

from flashbench.attention.reference import visible_mask
from flashbench.model.case import Case
from flashbench.model.flops import attention_flops, min_hbm_bytes, visible_keys, visible_pairs


@pytest.mark.parametrize("n_q, n_kv, causal, window, pairs, keys", [
    # causal, Nq < Nkv: rows see 3, 4, 5 keys (bottom-right aligned)
    (3, 5, True, (-1, -1), 12, 5),
    # causal, Nq > Nkv: the first two rows see nothing, then 1, 2, 3
    (5, 3, True, (-1, -1), 6, 3),
    # window (2, 1), no causal, clipped at both edges: 2, 3, 4, 4, 4, 3
    (6, 6, False, (2, 1), 20, 6),
    # causal window (1, 0) at the end of a 10-key cache: rows see [7, 8] and [8, 9]
    (2, 10, True, (1, 0), 4, 3),
    # left bound only, Nkv > Nq: row i sees [i + 1, 7]: 7, 6, 5, 4; keys 1..7
    (4, 8, False, (3, -1), 22, 7),
    # right bound only (no causal): row i sees [0, i + 1] clipped: 2, 3, 4, 4
    (4, 4, False, (-1, 1), 13, 4),
    # a window wider than the sequence changes nothing
    (4, 4, True, (100, 0), 10, 4),
    # unmasked
    (3, 7, False, (-1, -1), 21, 7),
])
def test_visible_pairs_and_keys_by_hand(n_q, n_kv, causal, window, pairs, keys):
    assert visible_pairs(n_q, n_kv, causal, window) == pairs
    assert visible_keys(n_q, n_kv, causal, window) == keys


def test_counts_agree_with_the_reference_mask():
    windows = [(-1, -1), (0, 0), (2, -1), (-1, 3), (1, 2), (0, -1), (3, 0), (20, 20), (-1, 0)]
    for n_q, n_kv, causal, w in itertools.product([1, 2, 5, 13], [1, 4, 7, 13], [False, True], windows):
        m = visible_mask(n_q, n_kv, causal, w)
        assert visible_pairs(n_q, n_kv, causal, w) == int(m.sum()), (n_q, n_kv, causal, w)
        assert visible_keys(n_q, n_kv, causal, w) == int(m.any(0).sum()), (n_q, n_kv, causal, w)


def test_long_sequences_are_counted_in_closed_form():
    n = 1 << 17
    assert visible_pairs(n, n, True) == n * (n + 1) // 2
    w = 4096  # causal window: row i sees min(i + 1, w + 1) keys
    assert visible_pairs(n, n, True, (w, 0)) == (w + 1) * (w + 2) // 2 + (n - w - 1) * (w + 1)


def test_dense_counts_are_unchanged():
    c = Case(2, 8, 2, 64, 96, 32, "float16", False, "fwd")
    assert attention_flops(c) == 4 * 2 * 8 * 64 * 96 * 32
    q = 2 * 8 * 64 * 32 * 2
    kv = 2 * 2 * 96 * 32 * 2
    assert min_hbm_bytes(c) == q + 2 * kv + q
    causal = Case(1, 1, 1, 4, 4, 8, "float32", True, "fwd_bwd")
    assert attention_flops(causal) == 3.5 * 4 * 10 * 8


def test_varlen_sums_over_sequences():
    def case(causal, mode="fwd"):
        return Case(2, 2, 1, 5, 5, 16, "float16", causal, mode, workload="varlen", lengths="list(3,5)",
                    total_tokens=8)

    assert attention_flops(case(True)) == 4 * 2 * (6 + 15) * 16        # 3·4/2 + 5·6/2 visible pairs
    assert attention_flops(case(False)) == 4 * 2 * (9 + 25) * 16
    assert attention_flops(case(True, "bwd")) == 2.5 * attention_flops(case(True))
    q = o = 2 * 8 * 16 * 2                  # heads × tokens × D × bytes
    kv = 1 * 8 * 16 * 2                     # one tensor of the single kv head
    lse = 2 * 8 * 4
    fwd = q + 2 * kv + o
    bwd = (q + 2 * kv + o + o + lse) + (q + 2 * kv)
    assert min_hbm_bytes(case(True)) == fwd == 1536
    assert min_hbm_bytes(case(True, "bwd")) == bwd == 3136
    assert min_hbm_bytes(case(True, "fwd_bwd")) == fwd + lse + bwd == 4736


def test_varlen_windows_count_within_each_sequence():
    c = Case(2, 1, 1, 6, 6, 8, "float32", False, "fwd", workload="varlen", lengths="list(6,2)", total_tokens=8,
             window_left=2, window_right=1)
    # the 6-token sequence: 20 pairs (see above); the 2-token one: rows see [0, 1] and [0, 1]: 4
    assert attention_flops(c) == 4 * 1 * (20 + 4) * 8


def test_decode_with_varied_caches_and_paging():
    # three sequences with caches of 4, 1 and 10 keys, two new tokens each at the end of the cache
    def case(**kw):
        return Case(3, 4, 2, 2, 10, 8, "float32", True, "fwd", workload="decode", lengths="list(4,1,10)", **kw)

    c = case()
    assert c.sequence_lengths() == ((2, 2, 2), (4, 1, 10)) and c.total_tokens == 15
    # 4 keys: rows see 3 and 4; 1 key: the first new token sees none, the second 1; 10 keys: 9 and 10
    assert attention_flops(c) == 4 * 4 * (7 + 1 + 19) * 8 == 3456
    q = o = 4 * (3 * 2) * 8 * 4
    kv = 2 * (4 + 1 + 10) * 8 * 4
    assert min_hbm_bytes(c) == q + 2 * kv + o == 3456
    paged = case(kv_layout="paged", page_size=4)
    assert attention_flops(paged) == attention_flops(c)
    assert min_hbm_bytes(paged) == min_hbm_bytes(c) + 4 * (1 + 1 + 3)  # one int32 table entry per page in use
    windowed = case(window_left=2, window_right=0)
    # 10 keys: rows see [6, 8] and [7, 9]; 4 keys: [0, 2] and [1, 3]; 1 key: [] and [0]
    assert attention_flops(windowed) == 4 * 4 * (6 + 6 + 1) * 8
    assert min_hbm_bytes(windowed) == q + o + 2 * 2 * (4 + 4 + 1) * 8 * 4


def test_decode_with_equal_caches_matches_the_dense_count():
    dec = Case(4, 8, 2, 1, 4096, 128, "bfloat16", True, "fwd", workload="decode")
    dense = Case(4, 8, 2, 1, 4096, 128, "bfloat16", False, "fwd")
    assert attention_flops(dec) == attention_flops(dense) and min_hbm_bytes(dec) == min_hbm_bytes(dense)
