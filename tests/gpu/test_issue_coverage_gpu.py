"""GPU cases that issues #18 and #19 ask for and the per-kernel GPU files leave out (marked ``gpu``; skipped
without CUDA; the Gluon ones also skipped off Hopper).

- The deterministic backward (``FA2Options(backward="triton")``, no atomics): bit-reproducible output and
  gradients over head dims 64, 128 and 256, bf16 and fp16, odd lengths, Nq != Nkv, GQA and MQA, causal,
  windows and packed batches, autotuned and not, the launch log showing the Triton kernels ran, and each case
  within the rule first (a reproducible wrong answer is no use).
- The default backward (``"auto"``) over D 64/128/256 x bf16/fp16 x odd and aligned lengths, Nq != Nkv, GQA,
  causal: within the rule, the Gluon backward run exactly where it takes the inputs, the Triton one elsewhere.
- D256 forward and backward through the Gluon forward (64-key blocks) in both dtypes, GQA/MQA, Nq != Nkv,
  causal windows; the Gluon D256 backward (``sm90_bwd_d256``) in the log.
- Windows and packed batches at head dims 32, 96 and 256 (the varlen/window grid runs 64 and 128 only).
- ``flash_decode`` with odd new-token counts (2, 3, 5, 7: row blocks that are not powers of two under GQA
  packing) over caches of 1, 17, 129 and ~4k keys, contiguous and paged.

Every case meets flash-attention's rule (max error <= 2 x PyTorch's same-dtype error + a small atol) against
the fp64 reference (``kernel_checks``), with every buffer the launchers allocate NaN-poisoned before each call.
"""
from __future__ import annotations

import pytest
import torch

import flashbench_kernels.flash_decode.run as fd_run
from decode_reference import gather_pages, page_cache, random_tensor
from flashbench_kernels.flash_attn_v2 import (FA2Options, flash_attn_v2, flash_attn_varlen, launch, sm90, sm90_bwd,
                                              spaces)
from flashbench_kernels.flash_decode import DecodeOptions, flash_decode
from kernel_checks import (NO_WINDOW, assert_decode_within_rule, check_against_reference,
                           check_varlen_against_reference, make_inputs, make_packed_inputs, on_hopper, poisoned_empty,
                           window_case_id)

pytestmark = pytest.mark.gpu
hopper_only = pytest.mark.skipif(not on_hopper(), reason="the Gluon kernels run on Hopper (capability 9.x) only")

DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]
FIXED = FA2Options(autotune=False)  # one configuration a kernel: bounded compile time
DETERMINISTIC = FA2Options(autotune=False, backward="triton")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    monkeypatch.setattr(fd_run, "new_buffer", poisoned_empty)


def _ran_gluon_backward(log) -> bool:
    """Which backward the launch log says ran: the Gluon one logs both gradient kernels by its label."""
    gluon = [log[name].startswith("gluon_sm90_bwd") for name in ("bwd_dkdv", "bwd_dq")]
    assert gluon[0] == gluon[1], log
    return gluon[0]


# ---------------------------------------------------------------------------------------------
# The deterministic path: FA2Options(backward="triton")
# ---------------------------------------------------------------------------------------------
def _dense_fwd_bwd(options, q, k, v, do, causal, window, log=None):
    """[out, dq, dk, dv] of one dense call on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_v2(*leaves, causal=causal, window=window, options=options, launch_log=log)
    out.backward(do)
    return [out.detach()] + [t.grad for t in leaves]


def _assert_bit_equal(first, again):
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, again):
        assert torch.equal(a, b), f"{name}: {int((a != b).sum())} elements differ between runs"


DETERMINISM_GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal, window
    (2, 8, 2, 1000, 1000, 64, True, NO_WINDOW),  # odd N, GQA
    (1, 8, 1, 640, 1537, 128, False, NO_WINDOW),  # MQA, Nq < Nkv
    (1, 8, 2, 1024, 1024, 128, True, NO_WINDOW),  # aligned: "auto" would run the Gluon backward here
    (1, 8, 8, 1024, 1536, 64, True, (200, -1)),  # a causal window, keys ahead of the queries
    (1, 4, 2, 777, 333, 256, False, (64, 64)),  # D256, Nq > Nkv, both reaches
    (2, 4, 4, 384, 384, 256, True, NO_WINDOW),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DETERMINISM_GRID, ids=window_case_id)
def test_gpu_deterministic_backward_is_bit_reproducible(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 3 * Nkv + D)
    log = {}
    check_against_reference(q, k, v, do, causal, window=window, options=DETERMINISTIC, launch_log=log)
    assert not _ran_gluon_backward(log)
    first = _dense_fwd_bwd(DETERMINISTIC, q, k, v, do, causal, window)
    for _ in range(3):
        _assert_bit_equal(first, _dense_fwd_bwd(DETERMINISTIC, q, k, v, do, causal, window))


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_deterministic_backward_is_bit_reproducible_when_autotuned(causal):
    """As users call it (the tuner on): the first call tunes each kernel once for the shape class, every later
    call runs the chosen configurations and gives the same bits."""
    options = FA2Options(backward="triton")
    q, k, v, do = make_inputs(2, 16, 4, 2048, 2048, 128, torch.bfloat16, seed=40 + causal)
    log = {}
    check_against_reference(q, k, v, do, causal, options=options, launch_log=log)  # tunes
    assert not _ran_gluon_backward(log)
    first = _dense_fwd_bwd(options, q, k, v, do, causal, NO_WINDOW)
    for _ in range(3):
        _assert_bit_equal(first, _dense_fwd_bwd(options, q, k, v, do, causal, NO_WINDOW))


VARLEN_LQ = [1, 300, 17, 1029, 0, 129, 2048]
VARLEN_LK = [5, 300, 1, 700, 3, 129, 2048]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal, window", [(True, NO_WINDOW), (False, NO_WINDOW), (True, (100, -1))],
                         ids=["causal", "full", "causal-w100"])
def test_gpu_deterministic_varlen_backward_is_bit_reproducible(causal, window, dtype):
    q, k, v, do, cu_q, cu_k = make_packed_inputs(VARLEN_LQ, VARLEN_LK, 8, 2, 128, dtype, seed=17 + causal)
    log = {}
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window, options=DETERMINISTIC, launch_log=log)
    assert not _ran_gluon_backward(log)

    def fwd_bwd():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = flash_attn_varlen(*leaves, cu_q, cu_k, max(VARLEN_LQ), max(VARLEN_LK), causal, window=window,
                                options=DETERMINISTIC)
        out.backward(do)
        return [out.detach()] + [t.grad for t in leaves]

    first = fwd_bwd()
    for _ in range(3):
        _assert_bit_equal(first, fwd_bwd())


# ---------------------------------------------------------------------------------------------
# The default backward ("auto") over the shape grid
# ---------------------------------------------------------------------------------------------
AUTO_GRID = [
    # B, H, Hkv, Nq, Nkv, causal
    (1, 8, 2, 512, 512, True),  # aligned, GQA: the Gluon backward at D64 and D128 on Hopper
    (1, 8, 1, 384, 640, True),  # MQA, keys ahead of the queries
    (1, 4, 4, 640, 256, False),  # Nq > Nkv without the mask
    (1, 4, 4, 640, 256, True),  # causal rows that see no key: declined by the Gluon backward
    (2, 8, 2, 1000, 1000, True),  # odd N: declined
    (1, 4, 2, 333, 517, False),  # odd, Nq != Nkv
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("case", AUTO_GRID, ids=lambda c: "B{}-H{}-Hkv{}-q{}-kv{}-{}".format(
    *c[:5], "causal" if c[5] else "full"))
def test_gpu_auto_backward_grid(case, D, dtype):
    B, H, Hkv, Nq, Nkv, causal = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 5 * Nkv + D)
    log = {}
    check_against_reference(q, k, v, do, causal, options=FIXED, launch_log=log)
    takes = on_hopper() and sm90_bwd.unsupported_reason(q, k, v, causal) is None
    assert _ran_gluon_backward(log) == takes, (sm90_bwd.unsupported_reason(q, k, v, causal), log)


# ---------------------------------------------------------------------------------------------
# D256: forward through the Gluon forward, backward through the Gluon D256 one, both dtypes
# ---------------------------------------------------------------------------------------------
GLUON_256 = (sm90.BLOCK, sm90.block_n(256), 4, 2, spaces.GLUON)  # the D256 entry of the "large" space

D256_GRID = [
    # B, H, Hkv, Nq, Nkv, D (256), causal, window
    (1, 4, 2, 384, 640, 256, True, NO_WINDOW),  # GQA, keys ahead of the queries
    (2, 4, 4, 256, 256, 256, False, NO_WINDOW),
    (1, 8, 1, 1024, 1024, 256, True, NO_WINDOW),  # MQA
    (1, 4, 2, 1024, 256, 256, False, NO_WINDOW),  # Nq > Nkv without the mask
    (1, 4, 4, 128, 384, 256, True, NO_WINDOW),
    (1, 4, 2, 1024, 1024, 256, True, (100, 0)),  # a causal window, its edge inside a 64-key block
    (1, 4, 4, 512, 1024, 256, True, (300, 0)),  # a causal window, keys ahead of the queries
]


@hopper_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", D256_GRID, ids=window_case_id)
def test_gpu_d256_forward_and_gradients_through_the_gluon_forward(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 7 * Nkv + max(window[0], 0))
    log = {}
    check_against_reference(q, k, v, do, causal, window=window, launch_log=log,
                            options=FA2Options(autotune=False, configs={"fwd": GLUON_256}))
    assert log["fwd"] == sm90.config_label(2, 64), log
    # the Gluon D256 backward (``sm90_bwd_d256``) takes dense inputs, causal windows included
    assert _ran_gluon_backward(log), log
    assert "gluon_sm90_bwd_d256" in log["bwd_dq"], log


# ---------------------------------------------------------------------------------------------
# Windows and packed batches at head dims 32, 96 and 256 (the Triton kernels)
# ---------------------------------------------------------------------------------------------
OTHER_DIMS = [32, 96, 256]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("D", OTHER_DIMS)
@pytest.mark.parametrize("Nq, Nkv, causal, window", [
    (1000, 1000, True, (300, -1)),
    (777, 1029, False, (128, 64)),
    (513, 257, False, (5000, 5000)),  # wider than the sequences; Nq > Nkv
], ids=["causal-w300", "full-w128_64", "full-wide"])
def test_gpu_windows_at_other_head_dims(Nq, Nkv, causal, window, D, dtype):
    q, k, v, do = make_inputs(1, 4, 2, Nq, Nkv, D, dtype, seed=Nq + Nkv + D)
    check_against_reference(q, k, v, do, causal, window=window, options=FIXED)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("D", OTHER_DIMS)
@pytest.mark.parametrize("causal, window", [(True, NO_WINDOW), (False, (100, 100))], ids=["causal", "full-w100"])
def test_gpu_varlen_at_other_head_dims(causal, window, D, dtype):
    q, k, v, do, cu_q, cu_k = make_packed_inputs(VARLEN_LQ, VARLEN_LK, 4, 2, D, dtype, seed=D + causal)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window, options=FIXED)


# ---------------------------------------------------------------------------------------------
# flash_decode: odd new-token counts
# ---------------------------------------------------------------------------------------------
DECODE_LENGTHS = [1, 17, 129, 4097, 1000]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("nq, page", [(2, 16), (3, 256), (5, 16), (7, 64)])
def test_gpu_decode_odd_new_token_counts(nq, page, dtype):
    """GQA 32/8 packs nq x 4 rows a KV head (8, 12, 20, 28: row blocks with masked tails), over caches of 1
    (tokens before the cache start give zero rows), 17, 129, 1000 and 4097 keys; the contiguous cache and a
    shuffled paged copy, the split count chosen and forced."""
    g = torch.Generator(device="cuda").manual_seed(nq * 1000 + page)
    B, H, Hkv, D = len(DECODE_LENGTHS), 32, 8, 128
    q = random_tensor((B, nq, H, D), dtype, g)
    k = random_tensor((B, max(DECODE_LENGTHS) + 5, Hkv, D), dtype, g)
    v = random_tensor((B, max(DECODE_LENGTHS) + 5, Hkv, D), dtype, g)
    seqlens = torch.tensor(DECODE_LENGTHS, dtype=torch.int32, device="cuda")
    k_pages, v_pages, table = page_cache(k, v, DECODE_LENGTHS, page, g)
    dense_k = [k[b, :n] for b, n in enumerate(DECODE_LENGTHS)]
    dense_v = [v[b, :n] for b, n in enumerate(DECODE_LENGTHS)]
    untuned = DecodeOptions(autotune=False)
    for num_splits in (0, 3):
        out = flash_decode(q, k, v, seqlens, num_splits=num_splits, options=untuned)
        assert_decode_within_rule(out, q, dense_k, dense_v)
        out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=num_splits, options=untuned)
        assert_decode_within_rule(out, q, gather_pages(k_pages, table, DECODE_LENGTHS),
                                  gather_pages(v_pages, table, DECODE_LENGTHS))
        assert (out[0, :nq - 1] == 0).all()  # the 1-key sequence: only its last new token sees a key
