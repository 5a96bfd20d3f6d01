"""GPU tests of the Gluon Hopper backward (``sm90_bwd``, ``FA2Options(backward="sm90")``; marked ``gpu``,
run on Hopper GPUs only, skipped elsewhere).

One block, several, many programs per SM; GQA and MQA; causal with keys ahead of the queries (the diagonal
shifted by whole blocks); Nq > Nkv without the mask; D 64, 128 and 256; each head's query blocks walked upward
and downward; bf16 and fp16: the three gradients (and the output) meet flash-attention's rule against the fp64
reference, with every buffer the launcher allocates NaN-poisoned, two fresh inputs a shape, and the launch log
shows the Gluon backward ran, and which walk.  Also: shapes it does not take run the Triton backward; the Triton
backward (``backward="triton"``) is bit-reproducible; the Gluon one's dK and dV are.
"""
from __future__ import annotations

import math

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, sm90_bwd
from kernel_checks import case_id, check_against_reference, make_inputs, on_hopper, poisoned_empty


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not on_hopper(), reason="the Gluon backward runs on Hopper (capability 9.x) only")]

# one configuration a kernel (bounded compile time); the backward is what is under test
GLUON_BWD = FA2Options(autotune=False, backward="sm90")

GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal
    (1, 1, 1, 128, 128, 128, True),
    (1, 2, 2, 128, 128, 64, False),
    (2, 4, 4, 512, 512, 128, False),
    (2, 4, 4, 512, 512, 64, True),
    (1, 8, 2, 1024, 1024, 128, True),  # GQA: a program sums dK, dV over its 4 query heads
    (1, 8, 1, 384, 640, 64, True),  # MQA, keys ahead of the queries: the diagonal starts at key 256
    (1, 4, 4, 640, 256, 128, False),  # Nq > Nkv without the mask
    (1, 16, 16, 2048, 2048, 128, False),
    (1, 16, 4, 2048, 2048, 64, True),
    (2, 8, 8, 1024, 3072, 128, True),
    # D128 causal from 2048 queries: query blocks walked from the last down (``sm90_bwd.descending_walk``)
    (2, 4, 4, 2048, 2048, 128, True),
    (1, 4, 2, 4096, 4096, 128, True),  # GQA
    (1, 2, 2, 4096, 6144, 128, True),  # keys ahead of the queries: the diagonal starts at key 2048
    # D256 (``sm90_bwd_d256``: 64-key programs, the head dim split between the consumers)
    (1, 1, 1, 128, 128, 256, True),
    (2, 4, 4, 512, 512, 256, False),
    (1, 8, 2, 1024, 1024, 256, True),  # GQA
    (1, 8, 1, 384, 640, 256, True),  # MQA, keys ahead of the queries: the diagonal starts at key 256
    (1, 4, 4, 640, 256, 256, False),  # Nq > Nkv without the mask
    (2, 8, 8, 1024, 3072, 256, True),
]


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_gpu_gluon_backward_gradients(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal = case
    for rep in range(2):
        q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 7 * Nkv + D + 1000 * rep)
        log = {}
        check_against_reference(q, k, v, do, causal, options=GLUON_BWD, launch_log=log)
        descending = sm90_bwd.descending_walk(D, Nq, causal, False)
        assert descending == (D == 256 or (D == 128 and causal and Nq >= 2048))
        assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D, descending=descending), log


WINDOWS = [
    # B, H, Hkv, Nq, Nkv, D, left: causal windows (left, 0)
    (1, 4, 2, 1024, 1024, 128, 0),  # each query sees its diagonal key only
    (1, 4, 4, 1024, 1024, 128, 100),  # the left edge inside a key block: masked tail steps
    (1, 4, 4, 2048, 2048, 128, 256),  # the left edge on block boundaries
    (2, 8, 2, 1024, 1536, 128, 700),  # GQA, keys ahead of the queries
    (1, 4, 4, 1024, 1024, 64, 100),
    (1, 8, 1, 640, 1024, 64, 129),  # MQA, keys ahead
    (1, 2, 2, 512, 512, 64, 5000),  # wider than the sequence: the causal mask
    # D256 (``sm90_bwd_d256``: 64-key programs, its masked steps the diagonal's and the left edge's)
    (1, 4, 4, 1024, 1024, 256, 100),  # the left edge inside a key block
    (1, 4, 4, 2048, 2048, 256, 256),  # the left edge on block boundaries
    (2, 8, 2, 1024, 1536, 256, 700),  # GQA, keys ahead of the queries
    (1, 4, 2, 512, 512, 256, 0),  # each query sees its diagonal key only
    (1, 8, 1, 640, 1024, 256, 129),  # MQA, keys ahead
    (1, 2, 2, 512, 512, 256, 5000),  # wider than the sequence: the causal mask
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", WINDOWS, ids=lambda c: "B{}-H{}-Hkv{}-q{}-kv{}-D{}-left{}".format(*c))
def test_gpu_gluon_backward_windows(case, dtype):
    """Causal sliding windows: query blocks past the window's reach never visited, those its left edge crosses
    masked; gradients against the fp64 reference, the Gluon backward in the log."""
    B, H, Hkv, Nq, Nkv, D, left = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + left)
    log = {}
    check_against_reference(q, k, v, do, True, options=GLUON_BWD, launch_log=log, window=(left, 0))
    walk = sm90_bwd.descending_walk(D, Nq, True, True)  # D256 downward, the others upward with a window
    assert walk == (D == 256)
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D, window=True, descending=walk), log


@pytest.mark.parametrize("shape, causal", [
    ((1, 4, 4, 1000, 1000, 128), True),  # lengths not multiples of 128
    ((1, 4, 4, 256, 256, 96), False),  # head dim
    ((1, 4, 4, 512, 256, 128), True),  # causal rows that see no key
    ((1, 4, 4, 1000, 1000, 256), False),  # D256: lengths not multiples of 128
])
def test_gpu_inputs_it_declines_run_the_triton_backward(shape, causal):
    q, k, v, do = make_inputs(*shape, torch.bfloat16, seed=3)
    log = {}
    check_against_reference(q, k, v, do, causal, options=GLUON_BWD, launch_log=log)
    assert "gluon" not in log["bwd_dkdv"] and "gluon" not in log["bwd_dq"], log


def _grads(options, q, k, v, do, causal):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    flash_attn_v2(*leaves, causal=causal, options=options).backward(do)
    return [t.grad for t in leaves]


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_the_triton_backward_is_bit_reproducible(causal):
    """The deterministic path (the Triton dK/dV and dQ kernels, no atomics) gives the same bits every run;
    the Gluon one's dK and dV too (summed in registers), its dQ within fp32 rounding of the reduce order."""
    q, k, v, do = make_inputs(2, 16, 4, 2048, 2048, 128, torch.bfloat16, seed=21)
    fixed = FA2Options(autotune=False, backward="triton")
    first = _grads(fixed, q, k, v, do, causal)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, _grads(fixed, q, k, v, do, causal)))
    g1 = _grads(GLUON_BWD, q, k, v, do, causal)
    for _ in range(3):
        g2 = _grads(GLUON_BWD, q, k, v, do, causal)
        assert torch.equal(g1[1], g2[1]) and torch.equal(g1[2], g2[2])
        assert (g1[0].float() - g2[0].float()).abs().max().item() <= 1e-2 * g1[0].float().abs().max().item()


def test_gpu_auto_runs_the_gluon_backward_wherever_it_takes_the_inputs():
    """The default (``backward="auto"``) runs the Gluon backward (faster than the Triton one at every measured
    shape), causal D128 at Nkv 8192 included, and D256 (its own kernel); lengths it does not take run the Triton
    one; the log says which."""
    for n, D, gluon in ((1024, 128, True), (8192, 128, True), (1000, 128, False), (1024, 256, True)):
        q, k, v, do = make_inputs(1, 2, 2, n, n, D, torch.bfloat16, seed=n)
        log = {}
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        flash_attn_v2(*leaves, causal=True, options=FA2Options(autotune=False), launch_log=log).backward(do)
        assert log["bwd_dq"].startswith("gluon_sm90_bwd") == gluon, log
        assert ("gluon_sm90_bwd_d256" in log["bwd_dq"]) == (D == 256), log
        assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("D", [128, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_split_dq_matches_the_per_consumer_reduce(causal, D):
    """The default dQ layouts split a step's dQ between the consumers (D128 by columns, D64 by the rows of
    128-row steps), with barriers between them; the per-consumer reduce computes the same sums in another order.
    At D128 both run 64-row steps, so dV is bit-equal; dK differs by fp32 rounding there too (the split builds
    start dP^T from zero and subtract Delta_i after it, the per-consumer ones start it from -Delta_i); dQ, and at
    D64 all three, agree within fp32 rounding.  (The gradient tests above check the default layouts against the
    reference.)"""
    q, k, v, do = make_inputs(2, 8, 2, 1024, 1536, D, torch.bfloat16, seed=5 + D)
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=FA2Options(autotune=False))
    lse2 = (lse / math.log(2)).contiguous()
    delta = (do.float() * o.float()).sum(-1)
    got = {}
    for layout in (sm90_bwd.dq_layout(D), "per_consumer"):
        grads = [poisoned_empty(t.shape, t.dtype, t.device) for t in (q, k, v)]
        sm90_bwd.backward(q, k, v, do, lse2, delta, *grads, causal, D ** -0.5, layout=layout)
        got[layout] = grads
    split, whole = got[sm90_bwd.dq_layout(D)], got["per_consumer"]
    for i, (a, b) in enumerate(zip(split, whole)):
        assert torch.isfinite(a).all()
        if D == 128 and i == 2:
            assert torch.equal(a, b)
        else:
            assert (a.float() - b.float()).abs().max().item() <= 1e-2 * b.float().abs().max().item()


CHUNKED = [
    # B, H, Hkv, Nq, Nkv, D, causal: 5 or 6 (batch, kv head) pairs, run in chunks of 4 (the last shorter) and of 1
    (3, 4, 2, 1024, 1024, 128, False),
    (3, 4, 2, 1024, 1024, 128, True),
    (3, 8, 2, 512, 512, 64, False),  # GQA: a chunk's accumulator holds 4 query heads a pair
    (5, 2, 1, 512, 768, 64, True),  # MQA, keys ahead of the queries
    (2, 12, 4, 768, 768, 128, True),  # GQA, 8 pairs: chunks of 4, 4
    # 64 pairs of one head, chunks of 16 and 32 below: the conversion zeroing a large chunk's accumulator raced
    # with its own reads before it had a barrier between them
    (4, 16, 16, 2048, 2048, 128, False),
    (4, 16, 16, 1024, 1024, 64, True),
    (3, 4, 2, 512, 512, 256, True),  # D256: its 64-key programs make the chunks
    (4, 16, 16, 1024, 1024, 256, False),
]


@pytest.mark.parametrize("case", CHUNKED, ids=case_id)
def test_gpu_chunked_dq_matches_one_launch_and_the_reference(case, monkeypatch):
    """Dense pairs run in chunks, each into one chunk-sized accumulator that the chunk's conversion zeroes for the
    next.  Through the launcher (``FA2Options.dq_chunk_waves`` 1 with the SM count taken as two programs: chunks
    of 2 pairs at Nkv 1024, of 1 beyond) the gradients meet the rule against the fp64 reference; alone
    (``sm90_bwd.backward``), chunks of 4 and of 1 pair give one launch's dK and dV bits (the same programs' register
    sums) and its dQ within fp32 rounding of the reduce order (64 pairs: chunks of 32 and 16)."""
    B, H, Hkv, Nq, Nkv, D, causal = case
    monkeypatch.setattr(launch, "sm_count", lambda index: 2)
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, torch.bfloat16, seed=B * Nq + D)
    log = {}
    chunked = FA2Options(autotune=False, backward="sm90", dq_chunk_waves=1)
    check_against_reference(q, k, v, do, causal, options=chunked, launch_log=log)
    pairs = sm90_bwd.dq_chunk_pairs((B, H, Nq, D), Hkv, Nkv, 1, 2)
    assert pairs < B * Hkv
    walk = sm90_bwd.descending_walk(D, Nq, causal, False)
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D, chunk_pairs=pairs, descending=walk), log

    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=FA2Options(autotune=False))
    lse2 = (lse / math.log(2)).contiguous()
    delta = (do.float() * o.float()).sum(-1)
    got = {}
    chunks = (4, 1) if B * Hkv <= 8 else (32, 16)
    for pairs in (None, *chunks):
        grads = [poisoned_empty(t.shape, t.dtype, t.device) for t in (q, k, v)]
        sm90_bwd.backward(q, k, v, do, lse2, delta, *grads, causal, D ** -0.5, chunk_pairs=pairs)
        got[pairs] = grads
    for pairs in chunks:
        for i, (a, b) in enumerate(zip(got[pairs], got[None])):
            assert torch.isfinite(a).all(), (pairs, i)
            if i > 0:
                assert torch.equal(a, b), (pairs, i)
            else:
                assert (a.float() - b.float()).abs().max().item() <= 1e-2 * b.float().abs().max().item(), pairs


@pytest.mark.parametrize("waves", [0, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_fwd_bwd_peak_memory_is_the_gradients_and_the_accumulator(causal, waves):
    """16k tokens, hidden 2048 (B4 H16 N4096 D128 bf16): fwd_bwd's peak above the inputs is O, dQ, dK, dV and the
    fp32 dQ accumulator (``accumulator_shape``: whole, twice dQ, with ``dq_chunk_waves`` 0; one chunk's with 4:
    16 of the 64 pairs on a 132-SM GPU, 32 MiB), with a few MiB for L, Delta and the allocator's rounding."""
    B, H, N, D = 4, 16, 4096, 128
    q, k, v, do = make_inputs(B, H, H, N, N, D, torch.bfloat16, seed=11)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    mib = 2 ** 20
    pairs = sm90_bwd.dq_chunk_pairs((B, H, N, D), H, N, waves, launch.sm_count(q.device.index))
    acc = math.prod(sm90_bwd.accumulator_shape((B, H, N, D), H, pairs)) * 4
    assert (acc == 2 * q.numel() * q.element_size()) == (waves == 0)
    options = FA2Options(backward="sm90", dq_chunk_waves=waves)
    flash_attn_v2(*leaves, causal=causal, options=options).backward(do)  # tuned and compiled outside the peak
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    log = {}
    o = flash_attn_v2(*leaves, causal=causal, options=options, launch_log=log)
    grads = torch.autograd.grad(o, leaves, do)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    walk = sm90_bwd.descending_walk(D, N, causal, False)  # causal: downward at 4096 queries
    assert log["bwd_dq"] == sm90_bwd.config_label(D, chunk_pairs=pairs if pairs < B * H else None,
                                                  descending=walk), log
    assert all(torch.isfinite(g).all() for g in grads)
    expected = 4 * q.numel() * q.element_size() + acc  # O, dQ, dK, dV and the accumulator
    assert expected <= peak <= expected + 8 * mib, \
        f"peak {peak / mib:.1f} MiB above the inputs, expected {expected / mib:.1f}"
