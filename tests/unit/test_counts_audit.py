"""An independent audit of the numbers users judge flashbench by: FLOPs, minimum HBM bytes, the IO models
of the FlashAttention papers, the derived metrics and the correctness bound.

Every expected value here is derived without flashbench's closed forms: the (query, key) pairs are
enumerated one by one under the kernels' own mask rule (``kernels/_validate.py`` check_window:
query i sees key j iff i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right, -1 unbounded, causal
right = 0), the sequences of a batch are realised from the length distribution's own draws, the IO
models are simulated loop by loop, and the conventions are REFERENCE.md §3's:

- FLOPs: 4·D per visible (query, key) pair and query head (two matmuls of 2·D), × 1 fwd, 2.5 bwd,
  3.5 fwd_bwd; GQA does not change them;
- minimum bytes: read Q and the visible K, V once (per KV head), write O once; a paged cache adds its
  page-table reads (int32, pages holding a visible key); backward: Q, K, V, O, dO and the fp32 LSE in,
  dQ, dK, dV out (whole tensors: a key no query sees still has its zero gradient written).
"""
from __future__ import annotations

import math
import random

import pytest

from flashbench.analysis.compare import change_words
from flashbench.measure.ceilings_cache import Ceilings, percent_of_roofs
from flashbench.measure.energy import energy_per_call_j, tflop_per_j
from flashbench.model.case import Case, Task
from flashbench.model.config import DEFAULT_TOLERANCES
from flashbench.model.flops import attention_flops, min_hbm_bytes, visible_keys, visible_pairs
from flashbench.model.lengths import parse_lengths
from flashbench.model.metrics import get_metric
from flashbench.model.schema import Record
from flashbench.profile.io_model import H100_SMEM_PER_SM, fa1_traffic, fa2_traffic, io_model, standard_traffic
from flashbench.results.rounds import merge_rounds

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
ELEM = {"float16": 2, "bfloat16": 2, "float32": 4}


# --- the oracle ------------------------------------------------------------------------------------

def sees(i: int, j: int, n_q: int, n_kv: int, causal: bool, window: tuple[int, int]) -> bool:
    """The kernels' rule, written from check_window's docstring and nothing else."""
    left, right = window
    if causal:
        right = 0
    diag = i + n_kv - n_q
    return not ((left >= 0 and j < diag - left) or (right >= 0 and j > diag + right))


def enumerate_sequence(n_q: int, n_kv: int, causal: bool, window: tuple[int, int]) -> tuple[int, set[int]]:
    """(visible pairs, the keys some query sees), one pair at a time."""
    pairs, keys = 0, set()
    for i in range(n_q):
        for j in range(n_kv):
            if sees(i, j, n_q, n_kv, causal, window):
                pairs += 1
                keys.add(j)
    return pairs, keys


def realised_lengths(c: Case) -> tuple[list[int], list[int]]:
    """The batch's (query, key) lengths from the distribution's draws, as the README describes them:
    decode draws one cache length per sequence, varlen draws until the token budget is filled (the last
    sequence taking what is left), dense is B equal sequences."""
    if c.workload == "varlen" and c.lengths:
        out, left = [], c.total_tokens
        for n in parse_lengths(c.lengths).draws():
            out.append(min(n, left))
            left -= out[-1]
            if left == 0:
                return out, out
    if c.lengths:
        draws = parse_lengths(c.lengths).draws()
        kv = [next(draws) for _ in range(c.batch)]
    else:
        kv = [c.seq_len_kv] * c.batch
    return [c.seq_len_q] * len(kv), kv


def expected_counts(c: Case) -> tuple[float, int]:
    """(FLOPs, minimum bytes) of a case, by enumeration and REFERENCE §3."""
    pairs = q_tokens = seen = all_keys = pages = 0
    for n_q, n_kv in zip(*realised_lengths(c)):
        p, keys = enumerate_sequence(n_q, n_kv, c.causal, c.window)
        pairs, q_tokens, seen, all_keys = pairs + p, q_tokens + n_q, seen + len(keys), all_keys + n_kv
        if c.is_paged:
            pages += len({j // c.page_size for j in keys})
    flops = 4 * c.head_dim * c.heads * pairs * MODE_FACTOR[c.mode]
    e = ELEM[c.dtype]
    q = o = do = dq = c.heads * q_tokens * c.head_dim * e
    k = v = c.kv_heads * seen * c.head_dim * e
    dk = dv = c.kv_heads * all_keys * c.head_dim * e
    lse = 4 * c.heads * q_tokens
    fwd = q + k + v + o + 4 * pages
    bwd = q + k + v + o + do + lse + dq + dk + dv
    return flops, {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + lse + bwd}[c.mode]  # fwd_bwd: the forward writes LSE


def random_case(rng: random.Random) -> Case:
    """A small random case of any workload and mode, within what configs allow (decode: causal, fwd, 1-16 new
    tokens; a causal window's right bound 0)."""
    kv_heads = rng.choice([1, 2, 4])
    heads, d, dtype = kv_heads * rng.choice([1, 2, 4]), rng.choice([8, 16, 64]), rng.choice(list(ELEM))
    window = (rng.choice([-1, 0, 1, 3, 7, 50]), rng.choice([-1, 0, 1, 4, 50])) if rng.random() < 0.6 else (-1, -1)
    workload = rng.choice(["dense", "decode", "varlen"])
    causal = workload == "decode" or rng.random() < 0.5
    left, right = window[0], (min(window[1], 0) if causal else window[1])
    mode = "fwd" if workload == "decode" else rng.choice(list(MODE_FACTOR))
    common = dict(heads=heads, kv_heads=kv_heads, head_dim=d, dtype=dtype, causal=causal, mode=mode,
                  window_left=left, window_right=right)
    if workload == "dense":
        return Case(batch=rng.randint(1, 3), seq_len_q=rng.randint(1, 20), seq_len_kv=rng.randint(1, 20), **common)
    if workload == "decode":
        lengths = rng.choice(["", "list(1,3,17)", "uniform(1..30,seed=3)", "lognormal(2..40,seed=1)"])
        paged = rng.random() < 0.5
        return Case(batch=rng.randint(1, 5), seq_len_q=rng.randint(1, 16),
                    seq_len_kv=parse_lengths(lengths).longest if lengths else rng.randint(1, 40),
                    workload="decode", kv_layout="paged" if paged else "contiguous",
                    page_size=rng.choice([1, 2, 4, 16]) if paged else 0, lengths=lengths, **common)
    lengths = rng.choice(["", "list(1,5,2)", "uniform(1..20,seed=2)", "lognormal(1..30,seed=5)"])
    if lengths:
        longest = parse_lengths(lengths).longest
        return Case(batch=1, seq_len_q=longest, seq_len_kv=longest, workload="varlen", lengths=lengths,
                    total_tokens=rng.randint(1, 80), **common)
    n = rng.randint(1, 20)
    return Case(batch=rng.randint(1, 4), seq_len_q=n, seq_len_kv=n, workload="varlen", **common)


# --- 1. FLOPs -------------------------------------------------------------------------------------

def test_visible_pairs_and_keys_match_enumeration_on_random_shapes():
    """5,000 random (Nq, Nkv, causal, window), empty sides and windows wider than the sequence included."""
    rng = random.Random(20240611)
    for _ in range(5000):
        n_q, n_kv = rng.randint(0, 14), rng.randint(0, 14)
        causal = rng.random() < 0.5
        window = (rng.choice([-1, 0, 1, 2, 3, 5, 40]), rng.choice([-1, 0, 1, 2, 3, 40]))
        pairs, keys = enumerate_sequence(n_q, n_kv, causal, window)
        assert (visible_pairs(n_q, n_kv, causal, window), visible_keys(n_q, n_kv, causal, window)) == \
            (pairs, len(keys)), (n_q, n_kv, causal, window)


def test_closed_form_matches_row_by_row_counts_on_longer_sequences():
    """Lengths up to 3,000 (too many pairs to enumerate), against a count row by row: row i sees the keys
    [max(0, i + Nkv - Nq - left), min(Nkv - 1, i + Nkv - Nq + right)]."""
    rng = random.Random(7)
    for _ in range(200):
        n_q, n_kv = rng.randint(1, 3000), rng.randint(1, 3000)
        causal = rng.random() < 0.5
        left, right = rng.choice([-1, 0, 17, 256, 5000]), rng.choice([-1, 0, 9, 300])
        r = 0 if causal else right
        rows = []
        for i in range(n_q):
            d = i + n_kv - n_q
            first = 0 if left < 0 else max(0, d - left)
            last = n_kv - 1 if r < 0 else min(n_kv - 1, d + r)
            rows.append((first, last) if last >= first else None)
        seen = [x for x in rows if x]
        assert visible_pairs(n_q, n_kv, causal, (left, right)) == sum(b - a + 1 for a, b in seen)
        keys = len(set().union(*(range(a, b + 1) for a, b in seen))) if seen else 0
        assert visible_keys(n_q, n_kv, causal, (left, right)) == keys


def test_every_workload_and_mode_counts_like_the_enumeration():
    """800 random cases: dense, decode (contiguous and paged, equal and varied caches), varlen (equal lengths
    and distributions), with and without windows and GQA, every mode the workload takes."""
    rng = random.Random(3)
    seen = set()
    for _ in range(800):
        c = random_case(rng)
        seen.add((c.workload, c.mode, c.kv_layout, bool(c.lengths), c.has_window))
        flops, nbytes = expected_counts(c)
        assert attention_flops(c) == flops, c
        assert min_hbm_bytes(c) == nbytes, c
    assert len(seen) == 8 + 6 + 12  # every combination was drawn: decode 2·2·2, dense 3·2, varlen 3·2·2


@pytest.mark.parametrize("n_q, n_kv, causal, window, pairs, keys", [
    (6, 2, True, (-1, -1), 3, 2),      # causal Nq > Nkv: rows 0-3 see nothing, then 1 and 2 keys
    (1, 1, True, (-1, -1), 1, 1),      # a sequence of one token
    (5, 5, False, (100, 100), 25, 5),  # a window wider than the sequence is no window
    (5, 5, True, (100, 0), 15, 5),
    (4, 4, True, (1, 3), 7, 4),        # causal caps the right reach at 0: 1 + 2 + 2 + 2
    (3, 9, True, (0, 0), 3, 3),        # the diagonal only, at the cache's end: keys 6, 7, 8
    (0, 5, True, (-1, -1), 0, 0),      # empty sides count nothing
    (5, 0, False, (-1, -1), 0, 0),
])
def test_edge_cases(n_q, n_kv, causal, window, pairs, keys):
    assert enumerate_sequence(n_q, n_kv, causal, window)[0] == pairs
    assert visible_pairs(n_q, n_kv, causal, window) == pairs and visible_keys(n_q, n_kv, causal, window) == keys


def test_decode_with_more_new_tokens_than_its_cache():
    # 4 new tokens against a 2-key cache (the new tokens are its last positions): rows see j <= i - 2: 0, 0, 1, 2
    c = Case(1, 2, 1, 4, 2, 8, "float16", True, "fwd", workload="decode", lengths="list(2)")
    assert attention_flops(c) == 4 * 8 * 2 * 3
    # Q read and O written for every new token (also those that see nothing), K and V for both keys
    assert min_hbm_bytes(c) == 2 * (2 * 4 * 8 * 2) + 2 * (1 * 2 * 8 * 2)


def test_varlen_batches_never_hold_empty_sequences():
    for lengths, budget in [("list(3)", 7), ("uniform(1..20,seed=2)", 101), ("lognormal(1..30,seed=5)", 64)]:
        c = Case(1, 1, 1, 30, 30, 8, "float32", True, "fwd", workload="varlen", lengths=lengths, total_tokens=budget)
        q, kv = c.sequence_lengths()
        assert min(q) >= 1 and sum(kv) == budget and list(q) == realised_lengths(c)[0]


def test_flop_convention_of_the_reference():
    c = Case(2, 8, 8, 64, 96, 32, "bfloat16", False, "fwd")
    assert attention_flops(c) == 4 * 2 * 8 * 64 * 96 * 32  # 4·B·H·Nq·Nkv·D
    for mode, factor in MODE_FACTOR.items():
        assert attention_flops(Case(2, 8, 8, 64, 96, 32, "bfloat16", False, mode)) == factor * attention_flops(c)
    # GQA/MQA does not change the work
    assert {attention_flops(Case(2, 8, h, 64, 96, 32, "bfloat16", True, "fwd")) for h in (8, 4, 1)} == \
        {attention_flops(Case(2, 8, 8, 64, 96, 32, "bfloat16", True, "fwd"))}
    # causal Nq = Nkv counts the unmasked part exactly: N(N+1)/2 pairs, (N+1)/N times the N²/2 of
    # FlashAttention's benchmark scripts (0.1% at N = 1024)
    n = 1024
    causal = attention_flops(Case(1, 1, 1, n, n, 64, "bfloat16", True, "fwd"))
    assert causal == 4 * 64 * n * (n + 1) // 2
    assert causal / (4 * 64 * n * n / 2) == pytest.approx((n + 1) / n)


# --- 2. minimum bytes -----------------------------------------------------------------------------

def test_backward_writes_every_key_gradient():
    """Dense Nq = 4 against Nkv = 8 with a left window of 3 and no causal mask: query i sees keys [i+1, 7],
    so key 0 is never read; its gradient (zero) is still written, as O is for a query that sees nothing."""
    e, h, d = 4, 1, 8
    c = Case(1, h, h, 4, 8, d, "float32", False, "bwd", window_left=3)
    q = h * 4 * d * e
    k_read = h * 7 * d * e
    dk_written = h * 8 * d * e
    lse = h * 4 * 4
    assert min_hbm_bytes(c) == (q + 2 * k_read + q + q + lse) + (q + 2 * dk_written)
    fwd = q + 2 * k_read + q
    assert min_hbm_bytes(Case(1, h, h, 4, 8, d, "float32", False, "fwd", window_left=3)) == fwd
    assert min_hbm_bytes(Case(1, h, h, 4, 8, d, "float32", False, "fwd_bwd", window_left=3)) == \
        fwd + lse + min_hbm_bytes(c)


def test_paged_decode_reads_the_page_table_entries_of_visible_keys():
    """A 40-key cache in pages of 4, one new token, window (5, 0): it sees keys 34..39 (pages 8 and 9 of 10)."""
    c = Case(1, 2, 1, 1, 40, 8, "bfloat16", True, "fwd", workload="decode", kv_layout="paged", page_size=4,
             window_left=5, window_right=0)
    assert enumerate_sequence(1, 40, True, (5, 0))[1] == set(range(34, 40))
    q = o = 2 * 1 * 8 * 2
    kv = 1 * 6 * 8 * 2
    assert min_hbm_bytes(c) == q + 2 * kv + o + 4 * 2
    # without the window every page of the cache holds a visible key
    assert min_hbm_bytes(Case(1, 2, 1, 1, 40, 8, "bfloat16", True, "fwd", workload="decode", kv_layout="paged",
                              page_size=4)) == q + 2 * (1 * 40 * 8 * 2) + o + 4 * 10


def test_gqa_reads_keys_and_values_once_per_kv_head():
    base = dict(batch=2, heads=8, seq_len_q=16, seq_len_kv=32, head_dim=64, dtype="bfloat16", causal=True)
    for mode in MODE_FACTOR:
        by_kv = {h: min_hbm_bytes(Case(kv_heads=h, mode=mode, **base)) for h in (8, 2, 1)}
        per_kv_head = (by_kv[2] - by_kv[1])
        assert per_kv_head == (2 if mode == "fwd" else 4 if mode == "bwd" else 6) * 2 * 32 * 64 * 2
        assert by_kv[8] - by_kv[1] == 7 * per_kv_head


def test_decode_reads_only_the_valid_part_of_the_cache():
    # the cache capacity (seq_len_kv = the longest length allowed) is not what is read: each sequence's length is
    c = Case(3, 4, 2, 1, 17, 16, "float16", True, "fwd", workload="decode", lengths="list(1,3,17)")
    assert min_hbm_bytes(c) == 2 * (4 * 3 * 16 * 2) + 2 * (2 * (1 + 3 + 17) * 16 * 2)


# --- the IO models of the papers ------------------------------------------------------------------

def _blocks(n_q, n_k, d, m_bytes, e):
    bc = math.ceil((m_bytes // e) / (4 * d))  # FA1 Algorithm 1, line 1, M in elements
    return min(bc, d), bc


def _block_visible(r0, r1, c0, c1, n_q, n_k, causal):
    return any(sees(i, j, n_q, n_k, causal, (-1, -1)) for i in range(r0, r1) for j in range(c0, c1))


def simulate_fa1(n_q, n_k, d, e, m, causal, s=4):
    """FA1 Algorithm 1 as written: O, l, m initialised in HBM; outer loop over K/V blocks; for every Q block
    with a visible pair: read Q_i, O_i, l_i, m_i, write O_i, l_i, m_i."""
    br, bc = _blocks(n_q, n_k, d, m, e)
    read, written = 0, n_q * (e * d + 2 * s)
    for c0 in range(0, n_k, bc):
        c1 = min(n_k, c0 + bc)
        read += 2 * e * (c1 - c0) * d
        for r0 in range(0, n_q, br):
            r1 = min(n_q, r0 + br)
            if not causal or _block_visible(r0, r1, c0, c1, n_q, n_k, causal):
                read += (r1 - r0) * (2 * e * d + 2 * s)
                written += (r1 - r0) * (e * d + 2 * s)
    return read, written


def simulate_fa2(n_q, n_k, d, e, m, causal, s=4):
    """FA2 Algorithm 1: per Q block read Q_i once, stream the K/V blocks it sees, write O_i and L_i once."""
    br, bc = _blocks(n_q, n_k, d, m, e)
    read = written = 0
    for r0 in range(0, n_q, br):
        r1 = min(n_q, r0 + br)
        read += e * (r1 - r0) * d
        for c0 in range(0, n_k, bc):
            c1 = min(n_k, c0 + bc)
            if not causal or _block_visible(r0, r1, c0, c1, n_q, n_k, causal):
                read += 2 * e * (c1 - c0) * d
        written += (r1 - r0) * (e * d + s)
    return read, written


def test_io_models_match_a_loop_by_loop_simulation():
    rng = random.Random(11)
    for _ in range(300):
        n_q, n_k, d = rng.randint(1, 40), rng.randint(1, 40), rng.choice([2, 4, 8])
        e, m, causal = rng.choice([2, 4]), rng.choice([32, 64, 100, 256, 1000]), rng.random() < 0.5
        std = standard_traffic(n_q, n_k, d, e)
        # FA1 Algorithm 0: write S, read S write P, read P and V write O
        assert (std.read, std.written) == (e * (n_q * d + n_k * d) + e * n_q * n_k + e * (n_q * n_k + n_k * d),
                                           2 * e * n_q * n_k + e * n_q * d)
        f1, f2 = fa1_traffic(n_q, n_k, d, e, m, causal), fa2_traffic(n_q, n_k, d, e, m, causal)
        assert (f1.read, f1.written) == simulate_fa1(n_q, n_k, d, e, m, causal)
        assert (f2.read, f2.written) == simulate_fa2(n_q, n_k, d, e, m, causal)


def test_io_model_figures_quoted_in_the_readme():
    """"standard attention 144, 544, 2,112, 8,320 MiB, FA2 72, 272, 1,056, 4,160 MiB" (B1 H16 D128 bf16, H100 M)."""
    got = []
    for n in (1024, 2048, 4096, 8192):
        m = io_model(Case(1, 16, 16, n, n, 128, "bfloat16", False, "fwd"), H100_SMEM_PER_SM)
        got.append((round(m["standard"].total / 2 ** 20), round(m["fa2"].total / 2 ** 20)))
    assert got == [(144, 72), (544, 272), (2112, 1056), (8320, 4160)]


# --- 3. the metrics table --------------------------------------------------------------------------

def test_derived_metrics_by_hand():
    c = Case(2, 4, 4, 128, 128, 64, "bfloat16", False, "fwd")
    rec = Record.for_task(Task(c, "x"), median_ms=0.25)
    rec.set_rates()
    assert rec.flops == 33_554_432                      # 4 · 2 · 4 · 128 · 128 · 64
    assert rec.min_hbm_bytes == 524_288                 # Q, K, V, O: 4 × (2 · 4 · 128 · 64 · 2 bytes)
    assert rec.tflops == pytest.approx(33_554_432 / 0.25e-3 / 1e12)   # = 0.134217728: ms -> s, 1e12 (not 2**40)
    assert rec.hbm_gbps == pytest.approx(2.097152)      # 524,288 B / 0.25 ms in decimal GB/s (not GiB/s)
    roofs = Ceilings("gpu", "GPU-0", sustained_tflops=800.0, burst_tflops=990.0, read_gbps=4000.0, copy_gbps=4200.0)
    pct_peak, pct_hbm = percent_of_roofs(rec.tflops, rec.hbm_gbps, roofs)
    assert pct_peak == pytest.approx(100 * 0.134217728 / 800)          # the sustained roof, not the burst
    assert pct_hbm == pytest.approx(100 * 2.097152 / 4000)             # the read roof, not the copy
    energy = energy_per_call_j(500.0, rec.median_ms)                   # W × ms / 1e3
    assert energy == pytest.approx(0.125)
    assert tflop_per_j(rec.flops, energy) == pytest.approx(33_554_432 / 0.125 / 1e12)
    # speedups: a metric where higher is better divides new by base, a time divides base by new
    assert get_metric("tflops").speedup(300.0, 200.0) == pytest.approx(1.5)
    assert get_metric("ms").speedup(2.0, 3.0) == pytest.approx(1.5)
    assert change_words(0.5, get_metric("ms")) == "2.00x faster"
    assert change_words(0.5, get_metric("tflops")) == "2.00x slower"  # a timing metric speaks of speed


def test_merged_rounds_keep_their_percentages_of_the_roofs():
    c = Case(1, 2, 2, 64, 64, 32, "float16", True, "fwd")
    roofs = Ceilings("gpu", "GPU-0", sustained_tflops=700.0, burst_tflops=900.0, read_gbps=4500.0, copy_gbps=4000.0)
    recs = []
    for ms in (1.0, 3.0):
        r = Record.for_task(Task(c, "x"), median_ms=ms, samples_ms=[ms] * 5, samples=5)
        r.set_rates()
        r.pct_peak_flops, r.pct_hbm = percent_of_roofs(r.tflops, r.hbm_gbps, roofs)
        recs.append(r)
    merged = merge_rounds(*recs)
    assert merged.median_ms == pytest.approx(2.0)
    assert merged.tflops == pytest.approx(merged.flops / 2e-3 / 1e12)
    assert (merged.pct_peak_flops, merged.pct_hbm) == pytest.approx(percent_of_roofs(merged.tflops, merged.hbm_gbps,
                                                                                     roofs))


# --- 4. the correctness bound ----------------------------------------------------------------------

def test_default_tolerances_follow_the_reference():
    """factor 2 × PyTorch's same-dtype error + about 1e-2 (fp16), 2-3e-2 (bf16)."""
    assert all(t.factor == 2 for t in DEFAULT_TOLERANCES.values())
    assert DEFAULT_TOLERANCES["float16"].atol == pytest.approx(1e-2)
    assert 2e-2 <= DEFAULT_TOLERANCES["bfloat16"].atol <= 3e-2
    assert DEFAULT_TOLERANCES["float32"].atol < DEFAULT_TOLERANCES["float16"].atol


def test_the_bound_is_factor_times_same_dtype_error_plus_atol_per_tensor():
    torch = pytest.importorskip("torch")
    from flashbench.measure.correctness import Reference, check

    want = {"o": torch.zeros(4, dtype=torch.float64), "dq": torch.zeros(4, dtype=torch.float64)}
    ref = Reference(want, {"o": 0.01, "dq": 0.1})
    # o's bound: 2 × 0.01 + 0.005 = 0.025; dq's: 2 × 0.1 + 0.005 = 0.205 (each tensor its own)
    ok = check({"o": torch.tensor([0.024, 0, 0, 0]), "dq": torch.tensor([0.2, 0, 0, 0])}, ref, 0.005, 2)
    assert ok.ok and ok.max_abs_err == pytest.approx(0.2) and ok.tolerance_abs == pytest.approx(0.205)
    bad = check({"o": torch.tensor([0.026, 0, 0, 0]), "dq": torch.tensor([0.0, 0, 0, 0])}, ref, 0.005, 2)
    assert not bad.ok and bad.detail.startswith("o: max abs err 0.026 > bound 0.025")


@pytest.mark.parametrize("same", [math.nan, math.inf])
def test_a_non_finite_same_dtype_error_leaves_atol_alone_as_the_bound(same):
    """2 × NaN + atol is NaN, and `err > NaN` is False: every output passed."""
    torch = pytest.importorskip("torch")
    from flashbench.measure.correctness import Reference, check

    ref = Reference({"o": torch.zeros(3, dtype=torch.float64)}, {"o": same})
    v = check({"o": torch.tensor([0.5, 0.0, 0.0])}, ref, 0.01, 2)
    assert not v.ok and "bound 0.01" in v.detail and "not finite" in v.detail
    assert check({"o": torch.tensor([0.005, 0.0, 0.0])}, ref, 0.01, 2).ok


def test_the_fp32_reference_runs_without_tf32_even_where_the_process_allowed_it(monkeypatch):
    """A plugin that calls torch.set_float32_matmul_precision("high") must not turn the fp32 reference into a TF32
    one: inside the reference TF32 is off, and the process's setting is back after it."""
    import torch

    from flashbench.measure import correctness

    seen = []
    real = correctness.reference_outputs

    def spy(inputs, case, dtype):
        seen.append((dtype, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real(inputs, case, dtype)

    monkeypatch.setattr(correctness, "reference_outputs", spy)
    from flashbench.attention.inputs import make_inputs
    from flashbench.model.case import Case

    case = Case(1, 2, 2, 16, 16, 32, "float32", True, "fwd")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # torch's flag modules are not plain attributes (monkeypatch cannot undo them): set and put back by hand
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    try:
        correctness.compute_reference(make_inputs(case, "cpu", seed=0), case, "cpu")
        assert seen[0][1:] == (False, False)  # the high-precision pass
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
