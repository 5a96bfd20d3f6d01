"""GPU tests of the Gluon Hopper backward (``sm90_bwd``, ``FA2Options(backward="sm90")``; marked ``gpu``,
run on Hopper GPUs only, skipped elsewhere).

One block, several, many programs per SM; GQA and MQA; causal with keys ahead of the queries (the diagonal
shifted by whole blocks); Nq > Nkv without the mask; D 64 and 128; bf16 and fp16: the three gradients (and
the output) meet flash-attention's rule against the fp64 reference, with every buffer the launcher allocates
NaN-poisoned, two fresh inputs a shape, and the launch log shows the Gluon backward ran.  Also: shapes it
does not take run the Triton backward; the Triton backward (``backward="triton"``) is bit-reproducible;
the Gluon one's dK and dV are.
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
        assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D), log


WINDOWS = [
    # B, H, Hkv, Nq, Nkv, D, left: causal windows (left, 0)
    (1, 4, 2, 1024, 1024, 128, 0),  # each query sees its diagonal key only
    (1, 4, 4, 1024, 1024, 128, 100),  # the left edge inside a key block: masked tail steps
    (1, 4, 4, 2048, 2048, 128, 256),  # the left edge on block boundaries
    (2, 8, 2, 1024, 1536, 128, 700),  # GQA, keys ahead of the queries
    (1, 4, 4, 1024, 1024, 64, 100),
    (1, 8, 1, 640, 1024, 64, 129),  # MQA, keys ahead
    (1, 2, 2, 512, 512, 64, 5000),  # wider than the sequence: the causal mask
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
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D, window=True), log


@pytest.mark.parametrize("shape, causal", [
    ((1, 4, 4, 1000, 1000, 128), True),  # lengths not multiples of 128
    ((1, 4, 4, 256, 256, 96), False),  # head dim
    ((1, 4, 4, 512, 256, 128), True),  # causal rows that see no key
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
    shape), causal D128 at Nkv 8192 included; lengths it does not take run the Triton one; the log says which."""
    for n, gluon in ((1024, True), (8192, True), (1000, False)):
        q, k, v, do = make_inputs(1, 2, 2, n, n, 128, torch.bfloat16, seed=n)
        log = {}
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        flash_attn_v2(*leaves, causal=True, options=FA2Options(autotune=False), launch_log=log).backward(do)
        assert log["bwd_dq"].startswith("gluon_sm90_bwd") == gluon, log
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
