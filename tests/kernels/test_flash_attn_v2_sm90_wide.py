"""The Gluon Hopper forward's three-consumer build (``sm90.WIDE_BLOCK``: 192 query rows a program, D64).

Without a GPU: which configurations and inputs it takes (D64, dense, no window, 2 or 3 stages), that the
options, the tuner's pruner and the launcher hand it exactly those and log it by name, and that it
compiles for sm_90 into three consumer warp groups of 160 registers and the producer without spills
(``test_flash_attn_v2_sm90.py``'s compile test covers it with the other builds).  On a Hopper GPU: outputs
and gradients against the float64 reference with outputs poisoned, on sequence lengths that are and are
not multiples of 192 (a program's first consumers then have no row and only drain the rings), causal with
the diagonal shifted, GQA and MQA (the tuner timing it: ``test_flash_attn_v2_sm90.py``).
"""
from __future__ import annotations

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, sm90, sm90_persistent, spaces, tuning
from flashbench_kernels._validate import NO_WINDOW
from kernel_checks import (assert_forwards_agree, check_against_reference, check_forward_against_fp32,
                           fake_gluon_forward, make_inputs, offered_forward_configs, on_hopper, poisoned_empty)

WIDE = (sm90.WIDE_BLOCK, 128, 4, 2, spaces.GLUON)


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype)


def test_the_wide_tile_runs_d64_dense_inputs_without_a_window_only():
    assert sm90.WIDE_BLOCK == 192 and sm90.consumers(sm90.WIDE_BLOCK) == 3 and sm90.consumers(sm90.BLOCK) == 2
    assert sm90.config_reason(64, 128, 2, 192) is None and sm90.config_reason(64, 128, 3, 192) is None
    assert "head_dim 64 only" in sm90.config_reason(128, 128, 2, 192)
    assert "head_dim 64 only" in sm90.config_reason(256, 64, 2, 192)
    assert "without a window" in sm90.config_reason(64, 128, 2, 192, window=True)
    assert "dense inputs" in sm90.config_reason(64, 128, 2, 192, varlen=True)
    assert "BLOCK_N=128" in sm90.config_reason(64, 64, 2, 192)
    assert "128 (two consumers) or 192 (three)" in sm90.config_reason(64, 128, 2, 256)
    # Q 24 KiB + stages x (K, V) 32 KiB: 2 stages 88 KiB, 3 stages 120 KiB
    assert sm90.shared_tile_bytes(64, 2, 192) == 88 * 1024 and sm90.shared_tile_bytes(64, 3, 192) == 120 * 1024


def test_sm90_forward_refuses_the_wide_tile_where_it_is_not_built_before_any_launch():
    q = _t(1, 2, 256, 128)
    with pytest.raises(ValueError, match="head_dim 64 only"):
        sm90.forward(q, q, q, q, q, True, 1.0, 0, 2, block_rows=192)
    q = _t(1, 2, 256, 64)
    with pytest.raises(ValueError, match="without a window"):
        sm90.forward(q, q, q, q, q, True, 1.0, 0, 2, window_left=8, block_rows=192)


def test_the_wide_launch_takes_cdiv_programs_its_own_descriptors_and_registers(monkeypatch):
    """What ``sm90.forward`` hands the kernel for 192-row programs (the kernel itself runs on Hopper only)."""
    seen = {}

    class FakeKernel:
        def __getitem__(self, grid):
            def run(*args, **kw):
                seen.update(grid=grid, q_rows=args[0].block_shape[0], o_rows=args[3].block_shape[0], **kw)
            return run

    monkeypatch.setattr(sm90, "fwd_sm90_kernel", FakeKernel())
    q = _t(2, 4, 640, 64)
    sm90.forward(q, q, q, q, _t(2, 4, 640, dtype=torch.float32), True, 1.0, 0, 2, block_rows=192)
    assert seen["grid"] == (4, 8)  # 640 rows: a first program with one consumer's rows, then three of 192
    assert (seen["q_rows"], seen["o_rows"]) == (64, 64)  # Q one tile a consumer, O stored per consumer
    assert seen["CONSUMERS"] == 3 and seen["CONSUMER_REGS"] == sm90.WIDE_CONSUMER_REGS
    assert seen["maxnreg"] == sm90.WIDE_MAXNREG
    # the register file: 16 warps before reallocation; after it, three 160-register consumers, the producer's
    # warp group at 24 and what is left for the default partition fit 64 K registers
    assert 16 * 32 * sm90.WIDE_MAXNREG == 65536
    assert 128 * (2 * sm90.WIDE_CONSUMER_REGS + sm90.PRODUCER_REGS) <= 65536 - 128 * sm90.WIDE_CONSUMER_REGS
    sm90.forward(q, q, q, q, _t(2, 4, 640, dtype=torch.float32), True, 1.0, 0, 2)
    assert seen["grid"] == (5, 8) and seen["q_rows"] == 128 and seen["CONSUMERS"] == 2
    assert seen["maxnreg"] == sm90.MAXNREG


def test_options_take_the_wide_gluon_tile_and_no_other_192_row_one():
    assert FA2Options(configs={"fwd": WIDE}).configs["fwd"] == WIDE
    assert FA2Options(configs={"fwd": (192, 128, 4, 3, spaces.GLUON)}).configs["fwd"][0] == 192
    for bad in [(192, 128, 8, 3), (192, 64, 4, 2, spaces.GLUON), (192, 128, 8, 2, spaces.GLUON),
                (192, 128, 4, 2, spaces.WS)]:
        with pytest.raises(ValueError):
            FA2Options(configs={"fwd": bad})


@pytest.mark.parametrize("nq", [512, 1024, 16384])
@pytest.mark.parametrize("causal, window, varlen", [  # a window here is causal: (left, 0)
    (False, False, False), (True, False, False), (True, True, False), (False, False, True), (True, False, True)])
def test_the_pruner_offers_the_wide_tile_at_d64_dense_without_a_window_from_gluon_min_nq(nq, causal, window,
                                                                                        varlen, monkeypatch):
    kept = offered_forward_configs(monkeypatch, 64, nq, causal, 1, window, varlen)
    assert (WIDE in kept) == (nq >= spaces.GLUON_MIN_NQ and not window and not varlen)
    assert {t for t in kept if not tuning.is_gluon(t)}, "the Triton tiles stay candidates"
    assert WIDE not in offered_forward_configs(monkeypatch, 64, nq, causal, 0, window, varlen)  # not on this GPU / input
    assert not any(t[0] == 192 for t in offered_forward_configs(monkeypatch, 128, nq, causal, 1, window, varlen))


@pytest.mark.parametrize("causal", [False, True])
def test_a_pinned_wide_forward_is_launched_with_192_rows_and_logged_by_name(causal, monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    seen = []

    def fake_forward(q, k, v, o, lse, causal, sm_scale, group_programs, stages, window_left=-1, block_rows=128):
        seen.append((causal, stages, window_left, block_rows))
        o.zero_()
        lse.zero_()

    fake_gluon_forward(monkeypatch, sm90, fake_forward)
    fake_gluon_forward(monkeypatch, sm90_persistent, fake_forward)  # which of the two runs: its own test file
    q = _t(1, 2, 256, 64, dtype=torch.float16)
    log = {}
    flash_attn_v2(q, q, q, causal=causal, launch_log=log, options=FA2Options(path="tma", configs={"fwd": WIDE}))
    assert seen == [(causal, 2, -1, 192)]
    assert log["fwd"] == sm90.config_label(2, 128, 192, persistent=True)  # 256 keys: the persistent build
    assert log["fwd"].startswith("gluon_sm90,BLOCK_M=192,BLOCK_N=128,num_warps=4+4+4+1,")


@pytest.mark.parametrize("d, window, words", [(128, NO_WINDOW, "head_dim 64 only"), (64, (100, 0), "without a window")])
def test_pinning_the_wide_tile_where_it_is_not_built_says_why(d, window, words, monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    fake_gluon_forward(monkeypatch, sm90, lambda *a, **kw: pytest.fail("launched"))
    q = _t(1, 2, 256, d, dtype=torch.float16)
    with pytest.raises(ValueError, match=f"cannot run this configuration: .*{words}"):
        flash_attn_v2(q, q, q, causal=True, window=window, options=FA2Options(path="tma", configs={"fwd": WIDE}))


# ---------------------------------------------------------------------------------------------
# Hopper GPU
# ---------------------------------------------------------------------------------------------
hopper_only = pytest.mark.skipif(not on_hopper(), reason="the Gluon forward runs on Hopper (capability 9.x) only")

WIDE_GRID = [
    # B, H, Hkv, Nq, Nkv, causal: the programs end at row Nq, so a first program starting before row 0
    # has one consumer without rows (128 = 192 - 64), or two (256 = 64 + 192; 640 and 1024 = 64 + k x
    # 192); whole programs (384); Nq < Nkv (the diagonal shifted by whole 128-row blocks, so the consumers'
    # diagonal blocks differ), Nq > Nkv non-causal, GQA and MQA
    (1, 2, 2, 128, 128, True),
    (1, 2, 2, 128, 128, False),
    (2, 4, 4, 256, 256, True),
    (2, 4, 2, 256, 256, False),
    (1, 4, 4, 384, 384, True),
    (1, 4, 2, 384, 384, False),
    (1, 4, 4, 640, 640, True),
    (1, 8, 1, 1024, 1024, True),
    (1, 8, 8, 1024, 1024, False),
    (1, 4, 2, 128, 640, True),
    (1, 4, 4, 384, 1024, True),
    (1, 4, 2, 1024, 256, False),
    (1, 16, 16, 2048, 2048, True),
    (1, 16, 4, 4096, 4096, False),
]


def _case_id(c) -> str:
    B, H, Hkv, Nq, Nkv, causal = c
    return f"B{B}-H{H}-Hkv{Hkv}-Nq{Nq}-Nkv{Nkv}-{'causal' if causal else 'full'}"


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", WIDE_GRID, ids=_case_id)
def test_gpu_wide_gluon_forward_poisoned(case, dtype, stages, monkeypatch):
    """Pinned, two fresh inputs a shape against the float64 reference (output, LSE through the backward's
    gradients), outputs poisoned; the launch log shows the three-consumer build ran."""
    B, H, Hkv, Nq, Nkv, causal = case
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    options = FA2Options(autotune=False, configs={"fwd": (192, 128, 4, stages, spaces.GLUON)})
    for rep in range(2):
        q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, 64, dtype, seed=Nq + 7 * Nkv + 192 + 1000 * rep)
        log = {}
        check_against_reference(q, k, v, do, causal, options=options, launch_log=log)
        persistent = sm90_persistent.reason(64, stages, 192, varlen=False, n_kv=Nkv) is None
        assert log["fwd"] == sm90.config_label(stages, 128, 192, persistent), log


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_wide_lse_matches_the_two_consumer_build(causal, monkeypatch):
    """The three-consumer build's natural-log LSE (``return_lse=True``) against the fp32 logsumexp of the scaled,
    masked scores computed from the inputs, outputs poisoned; then against the two-consumer build's on the same
    inputs (checked against the inputs too: two builds of one kernel could agree on a wrong LSE)."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, _ = make_inputs(2, 8, 4, 1024, 1024, 64, torch.bfloat16, seed=64)
    log = {}
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=FA2Options(configs={"fwd": WIDE}),
                           launch_log=log)
    assert log["fwd"].startswith("gluon_sm90,BLOCK_M=192,"), log
    check_forward_against_fp32(o, lse, q, k, v, causal)
    two = FA2Options(configs={"fwd": (128, 128, 4, 2, spaces.GLUON)})
    o_two, lse_two = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=two)
    check_forward_against_fp32(o_two, lse_two, q, k, v, causal)
    assert_forwards_agree(o, lse, o_two, lse_two)

