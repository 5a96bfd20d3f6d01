"""Sliding windows in ``flash_attn_v2``: outputs and gradients, the blocks each program visits, validation.

FlashAttention's convention (``flashbench.attention.reference.visible_mask`` is the one definition the
tests use): query i sees key j iff i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right, -1 unbounded,
causal capping right at 0.  On the CPU interpreter (tiny shapes, fp16 and fp32, the interpreter's
fixed 32x16 forward/dQ and 16x32 dK/dV tiles, so windows cross block edges at every offset) every
buffer the launcher allocates is NaN-poisoned first.  The GPU grid is ``tests/gpu/test_fa2_window_varlen_gpu.py``.
"""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from flashbench.attention.reference import reference_attention, visible_mask
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, spaces, tuning
from flashbench_kernels.flash_attn_v2.programs import span
from kernel_checks import DEV, check_against_reference, make_inputs, poisoned_empty, tma_unavailable, window_case_id


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


CASES = [
    # B, H, Hkv, Nq, Nkv, D, causal, window
    (1, 2, 2, 70, 70, 32, False, (20, -1)),    # left reach only: masked blocks at both ends of the band
    (1, 2, 2, 45, 61, 32, False, (-1, 9)),     # right reach only, Nq < Nkv
    (1, 2, 2, 100, 100, 32, False, (48, 24)),  # both: edge blocks and unmasked blocks between them
    (1, 4, 2, 33, 40, 32, False, (100, 100)),  # wider than the sequences (GQA)
    (1, 2, 2, 40, 40, 32, False, (0, 0)),      # zero width: each row sees one key
    (1, 2, 2, 70, 33, 32, False, (8, 3)),      # Nq > Nkv: the first 34 rows see no key
    (1, 4, 1, 50, 37, 64, False, (5, 12)),     # MQA, clipped at both edges
    (1, 4, 2, 33, 70, 32, True, (12, -1)),     # causal with a left reach, GQA, Nq < Nkv
    (1, 2, 2, 64, 48, 32, True, (7, 30)),      # causal caps the right reach at 0; Nq > Nkv
    (2, 2, 2, 17, 17, 32, True, (0, -1)),      # causal, zero left reach: the diagonal only
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=window_case_id)
def test_window_matches_reference(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq * 100 + Nkv + window[0])
    check_against_reference(q, k, v, do, causal, window=window)


@pytest.mark.skipif(tma_unavailable(), reason="tensor descriptors need compute capability >= 9")
def test_window_on_the_tensor_descriptor_path():
    q, k, v, do = make_inputs(1, 4, 2, 45, 61, 64, torch.float16, seed=7)
    log = {}
    check_against_reference(q, k, v, do, False, window=(11, 4), options=FA2Options(path="tma"), launch_log=log)
    assert all(c.endswith("tma=True") for n, c in log.items() if n != "bwd_preprocess")


def test_rows_that_see_no_key_output_zero_with_lse_minus_inf():
    q, k, v, _ = make_inputs(1, 2, 2, 60, 20, 32, torch.float32, seed=3)
    o, lse = flash_attn_v2(q, k, v, window=(4, 2), return_lse=True)
    seen = visible_mask(60, 20, False, (4, 2)).any(1)  # rows 0..37 see nothing
    assert not seen[:38].any() and seen[38:].all()
    assert (o[:, :, :38] == 0).all() and torch.isneginf(lse[:, :, :38]).all()
    assert torch.isfinite(lse[:, :, 38:]).all()
    ref = reference_attention(q, k, v, window=(4, 2), compute_dtype=torch.float64)
    assert (o.double() - ref).abs().max().item() < 1e-5


def test_the_causal_mask_spelt_as_a_window_is_the_causal_call():
    q, k, v, _ = make_inputs(1, 2, 2, 40, 50, 32, torch.float32, seed=9)
    causal = flash_attn_v2(q, k, v, causal=True)
    assert torch.equal(flash_attn_v2(q, k, v, window=(-1, 0)), causal)
    assert torch.equal(flash_attn_v2(q, k, v, causal=True, window=(-1, 5)), causal)  # causal caps right at 0


def test_a_window_wider_than_the_sequences_is_the_unwindowed_result():
    q, k, v, _ = make_inputs(1, 2, 2, 40, 30, 32, torch.float32, seed=4)
    dense = flash_attn_v2(q, k, v)
    wide = flash_attn_v2(q, k, v, window=(1000, 2**40))
    assert (wide - dense).abs().max().item() < 1e-5  # on a GPU the two may be tuned to different tiles


# ---------------------------------------------------------------------------------------------
# Which blocks a program visits (the kernels' loop bounds, run through a probe kernel)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _span_probe(OUT, n_own, n_other, shift, reach_before, reach_after, OWN_BLOCK: tl.constexpr,
                BLOCK: tl.constexpr, BOUNDED_BEFORE: tl.constexpr, BOUNDED_AFTER: tl.constexpr):
    first = tl.program_id(0) * OWN_BLOCK
    lo, full_lo, full_hi, hi = span(first, tl.minimum(first + OWN_BLOCK, n_own) - 1, n_other, shift, reach_before,
                                    reach_after, BLOCK, BOUNDED_BEFORE, BOUNDED_AFTER)
    out = OUT + 4 * tl.program_id(0)
    tl.store(out, lo)
    tl.store(out + 1, full_lo)
    tl.store(out + 2, full_hi)
    tl.store(out + 3, hi)


def _spans(n_own, n_other, shift, reach_before, reach_after, own_block, block, bounded=(True, True)):
    n = triton.cdiv(n_own, own_block)
    out = torch.full((n, 4), -1, dtype=torch.int32, device=DEV)
    _span_probe[(n,)](out, n_own, n_other, shift, reach_before, reach_after, OWN_BLOCK=own_block, BLOCK=block,
                      BOUNDED_BEFORE=bounded[0], BOUNDED_AFTER=bounded[1])
    return out.cpu().tolist()


def _check_spans(mask, own_block, block, reach_before, reach_after, bounded):
    """mask (own, other): the visited blocks are exactly those with a visible pair, the unmasked ones
    exactly those visible whole to every row of the program's block."""
    n_own, n_other = mask.shape
    shift = n_other - n_own
    for i, (lo, full_lo, full_hi, hi) in enumerate(_spans(n_own, n_other, shift, reach_before, reach_after,
                                                          own_block, block, bounded)):
        rows = mask[i * own_block:(i + 1) * own_block]
        assert lo <= full_lo <= full_hi <= hi and lo % block == 0, (i, lo, full_lo, full_hi, hi)
        some = {s for s in range(0, n_other, block) if rows[:, s:s + block].any()}
        whole = {s for s in range(0, n_other, block) if s + block <= n_other and rows[:, s:s + block].all()}
        assert set(range(lo, hi, block)) == some, (i, lo, hi, sorted(some))
        assert set(range(full_lo, full_hi, block)) == whole, (i, full_lo, full_hi, sorted(whole))
        assert full_lo == full_hi or (full_lo % block == 0 and full_hi % block == 0)


SPAN_CASES = [  # Nq, Nkv, causal, window
    (100, 100, False, (-1, -1)), (100, 100, True, (-1, -1)), (70, 33, True, (-1, -1)), (33, 70, True, (-1, -1)),
    (100, 100, False, (20, -1)), (100, 100, False, (-1, 20)), (100, 100, False, (17, 5)), (100, 100, False, (0, 0)),
    (90, 130, False, (40, 40)), (130, 90, False, (3, 70)), (130, 90, True, (25, -1)), (64, 64, False, (64, 64)),
    (50, 50, False, (1000, 1000)), (1, 77, False, (10, 3)), (77, 1, True, (2, -1)),
]


@pytest.mark.parametrize("n_q, n_kv, causal, window", SPAN_CASES)
@pytest.mark.parametrize("own_block, block", [(32, 16), (16, 32), (64, 64)])
@pytest.mark.parametrize("general", [True, False], ids=["general", "as-launched"])
def test_programs_visit_exactly_the_blocks_their_window_touches(n_q, n_kv, causal, window, own_block, block, general):
    """``general``: both reaches through the formula; "as-launched": an unbounded reach as the kernels
    pass it, with constant bounds on that side."""
    mask = visible_mask(n_q, n_kv, causal, window)
    effective = launch.check_window(window, causal, "t")
    left, right = launch._window_args(effective, n_q, n_kv)
    is_causal, is_window = launch._masking(effective)
    fwd = (True, True) if general else (is_window, is_causal or is_window)
    dkdv = (True, True) if general else (is_causal or is_window, is_window)
    _check_spans(mask, own_block, block, left, right, fwd)  # query blocks over keys (forward, dQ)
    _check_spans(mask.T, own_block, block, right, left, dkdv)  # key blocks over queries (dK/dV)


def test_visited_blocks_scale_with_the_window():
    """Causal N = 4096 with a left reach of 256, 128-row query blocks over 64-key blocks: each program
    visits the (256 + 128) / 64 = 6 blocks of its band (fewer at the start), the causal call without a
    window visits 2 + 4 + ... + 64 = 1056 blocks in all."""
    n, left = 4096, 256
    spans = _spans(n, n, 0, left, 0, 128, 64)
    visited = sum((hi - lo) // 64 for lo, _, _, hi in spans)
    masked = sum((full_lo - lo) // 64 + (hi - full_hi) // 64 for lo, full_lo, full_hi, hi in spans)
    assert visited == 32 * 6 - 4 - 2
    assert masked == 32 * 4 - 2 - 2  # two left-edge and two diagonal blocks a program (none left of key 0)
    assert sum((hi - lo) // 64 for lo, _, _, hi in _spans(n, n, 0, 2 * n, 0, 128, 64)) == 1056


# ---------------------------------------------------------------------------------------------
# What cannot run a window, and bad windows
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(tma_unavailable(), reason="tensor descriptors need compute capability >= 9")
def test_warp_specialised_forwards_are_never_offered_or_pinned_for_a_window(monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    prune = tuning.TUNERS["fwd"][0].prune
    named = {"TMA_OK": tuning.BOTH, "NQ_BUCKET": 4096, "NKV_BUCKET": 4096}
    kept = prune(tuning.all_configs(spaces.FWD_SPACE), named, HEAD_DIM=128, IEEE=False, CAUSAL=False, WINDOW=True,
                 VARLEN=False)
    assert kept and not any(c.kwargs.get("WARP_SPEC") for c in kept)
    assert tuning.ws_refusals(tuning.BOTH, False, False, True) == ["a sliding window"]
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    with pytest.raises(ValueError, match="warp specialisation.*a sliding window"):
        flash_attn_v2(q, k, v, window=(4, 4),
                      options=FA2Options(path="tma", configs={"fwd": (128, 128, 4, 2, spaces.WS)}))


def test_window_is_in_every_tuning_key():
    for kernel in tuning.TUNERS.values():
        assert {"WINDOW", "VARLEN"} <= set(kernel.tuner.key)
    named = {"TMA_OK": tuning.BOTH, "NQ_BUCKET": 1024, "NKV_BUCKET": 1024}
    tuner = tuning.TUNERS["bwd_dq"][0]
    assert tuner._key(named, launch.kernel_meta(64, False, False, 256, window=True)) != \
        tuner._key(named, launch.kernel_meta(64, False, False, 256))
    assert tuner._key(named, launch.kernel_meta(64, False, False, 256, varlen=True)) != \
        tuner._key(named, launch.kernel_meta(64, False, False, 256))


@pytest.mark.parametrize("bad", [(-2, 0), (0, -2), (1.5, 2), (1, 2, 3), (4,), "ab", (True, 1), None, 3, [1, None]])
def test_bad_window_raises(bad):
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=1)
    with pytest.raises(ValueError, match="flash_attn_v2: window must be a pair of ints >= -1"):
        flash_attn_v2(q, k, v, window=bad)
