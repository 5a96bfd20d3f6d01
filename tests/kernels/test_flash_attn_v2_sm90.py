"""The Gluon Hopper forward (kernels/flash_attn_v2/sm90.py): when it runs, how it compiles, what it computes.

Without a GPU: which inputs it takes (the tuner offers it only for those, and at D128 and D256 only), and,
through ``tools/fa2_compile_report.py --gluon`` in a process without the interpreter, that it compiles for
sm_90 into the intended shape (one producer warp, two consumer warp groups given 240 registers, no
spills, the asynchronous wgmma waits).  On a Hopper GPU: outputs, LSE and gradients (the backward is
the Triton one, fed by this forward's O and LSE) against the float64 reference with outputs poisoned,
three fresh inputs a shape, scores whose row max rises over the key blocks (O rescaled), the tuner timing it,
and shapes it does not take; at D256 (64-key blocks,
``-k d256``) output and LSE against an fp32 reference, and the tuner offering it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, sm90, sm90_persistent, spaces, tuning
from flashbench_kernels._validate import NO_WINDOW
from kernel_checks import (ClaimsCuda, assert_forwards_agree, check_against_reference, check_forward_against_fp32,
                           fake_gluon_forward, make_inputs, offered_forward_configs, on_hopper, poisoned_empty,
                           window_case_id)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype)


@pytest.mark.parametrize("q_shape, kv_shape, causal", [
    ((2, 16, 1024, 128), (2, 16, 1024, 128), False),
    ((2, 16, 1024, 128), (2, 16, 1024, 128), True),
    ((1, 8, 256, 64), (1, 2, 768, 64), True),  # GQA, Nkv - Nq a multiple of 128
    ((1, 8, 512, 64), (1, 1, 128, 64), False),  # MQA, Nq > Nkv non-causal
])
def test_takes_block_aligned_16bit_contiguous_inputs(q_shape, kv_shape, causal):
    for dtype in (torch.bfloat16, torch.float16):
        q, k = _t(*q_shape, dtype=dtype), _t(*kv_shape, dtype=dtype)
        assert sm90.input_reason(q, k, k, causal) is None


@pytest.mark.parametrize("q, k, causal, words", [
    (_t(1, 2, 256, 128, dtype=torch.float32), _t(1, 2, 256, 128, dtype=torch.float32), False, "fp16 and bf16"),
    (_t(1, 2, 256, 96), _t(1, 2, 256, 96), False, "head_dim 96"),
    (_t(1, 2, 256, 32), _t(1, 2, 256, 32), False, "head_dim 32"),
    (_t(1, 2, 1000, 128), _t(1, 2, 1024, 128), False, "multiples of 128"),
    (_t(1, 2, 256, 128), _t(1, 2, 200, 128), False, "multiples of 128"),
    (_t(1, 2, 512, 128), _t(1, 2, 256, 128), True, "see no key"),
    (_t(1, 2, 256, 128), _t(1, 2, 320, 128), False, "multiples of 128"),
    (_t(1, 256, 2, 128).transpose(1, 2), _t(1, 2, 256, 128), False, "contiguous"),
])
def test_says_why_it_declines_other_inputs(q, k, causal, words):
    reason = sm90.input_reason(q, k, k, causal)
    assert reason is not None and words in reason


def test_never_offered_without_a_hopper_gpu(monkeypatch):
    """The Gluon forward is offered on a Hopper GPU (capability 9.x) only. Under the interpreter (every CPU run) it is
    refused before the GPU check is reached, so that check is reached here with sm90's ``interpreting`` patched off
    and its ``device_capability`` patched: CPU tensors are refused, so are CUDA tensors (stand-ins) on a
    capability-8.0 GPU, each with the message, and the same inputs on a 9.0 GPU are taken (the patches reach the
    check). The launcher's refusal is the kernel's own reason."""
    q = _t(1, 2, 256, 128)
    monkeypatch.setattr(sm90, "interpreting", lambda: True)
    assert sm90.unsupported_reason(q, q, q, False) == "Gluon kernels do not run under TRITON_INTERPRET"
    monkeypatch.setattr(sm90, "interpreting", lambda: False)
    assert sm90.unsupported_reason(q, q, q, False) == "needs a Hopper GPU (capability 9.x)"  # CPU tensors
    assert launch._sm90_refusal(q, q, q, False, False, tuning.BOTH, FA2Options(), False) == \
        "needs a Hopper GPU (capability 9.x)"
    on_gpu = ClaimsCuda(q)
    monkeypatch.setattr(sm90, "device_capability", lambda index: (8, 0))  # an A100
    assert sm90.unsupported_reason(on_gpu, on_gpu, on_gpu, False) == "needs a Hopper GPU (capability 9.x)"
    assert launch._sm90_refusal(on_gpu, on_gpu, on_gpu, False, False, tuning.BOTH, FA2Options(), False) == \
        "needs a Hopper GPU (capability 9.x)"
    monkeypatch.setattr(sm90, "device_capability", lambda index: (9, 0))  # an H100
    assert sm90.unsupported_reason(on_gpu, on_gpu, on_gpu, False) is None


def test_offered_only_with_the_option_the_tma_path_and_supported_dense_inputs(monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", lambda *a: None)  # as if on an H100
    q = _t(1, 2, 256, 128)
    assert launch._sm90_refusal(q, q, q, True, False, tuning.BOTH, FA2Options(), False) is None
    assert "TMA" in launch._sm90_refusal(q, q, q, True, False, tuning.PTR_ONLY, FA2Options(), False)
    assert "sm90_forward" in launch._sm90_refusal(q, q, q, True, False, tuning.BOTH, FA2Options(sm90_forward=False),
                                                  False)
    # packed batches too (sm90.forward_varlen), with their own input conditions (test_fa2_varlen.py)
    packed = _t(300, 2, 128)
    assert launch._sm90_refusal(packed, packed, packed, True, False, tuning.BOTH, FA2Options(), True) is None


def test_takes_causal_windows_declines_right_reaches_and_takes_the_causal_mask_spelt_as_a_window():
    q = _t(1, 2, 256, 128)
    assert "right reach" in sm90.input_reason(q, q, q, False, window=True)
    assert sm90.input_reason(q, q, q, True, window=True) is None  # window (w, 0)
    assert sm90.input_reason(q, q, q, True, window=False) is None
    # window (-1, 0) is the causal mask: it runs as causal (Gluon allowed), (-1, 1) or (5, 0) as a window
    assert launch._masking((-1, 0)) == (True, False)
    assert launch._masking((-1, 1)) == (False, True) and launch._masking((5, 0)) == (True, True)


GLUON_128 = next(t for t in spaces.FWD_SPACE["mid"] if tuning.is_gluon(t))


@pytest.mark.parametrize("causal, window, left", [
    (True, (300, -1), 300),  # the left reach as the launcher passes it
    (True, (100000, 0), 512),  # wider than both sequences: clipped to Nq + Nkv
    (True, (-1, -1), -1),  # plain causal: no window
    (False, (-1, 0), -1),  # the causal mask spelt as a window
])
def test_a_pinned_gluon_forward_gets_the_calls_left_reach(causal, window, left, monkeypatch):
    """What the launcher hands the Gluon kernel (its arithmetic runs on Hopper GPUs only)."""
    monkeypatch.setattr(sm90, "unsupported_reason", lambda *a: None)  # as if on an H100
    seen = []

    def fake_forward(q, k, v, o, lse, causal, sm_scale, group_programs, stages, window_left=-1, block_rows=128):
        seen.append((causal, window_left))
        o.zero_()
        lse.zero_()

    fake_gluon_forward(monkeypatch, sm90, fake_forward)
    fake_gluon_forward(monkeypatch, sm90_persistent, fake_forward)  # which of the two runs: its own test file
    q = _t(1, 2, 256, 64, dtype=torch.float16)
    flash_attn_v2(q, q, q, causal=causal, window=window, options=FA2Options(path="tma", configs={"fwd": GLUON_128}))
    assert seen == [(True, left)]


def test_a_pinned_gluon_forward_refuses_a_right_reach(monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    q = _t(1, 2, 256, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="cannot run these inputs: .*right reach"):
        flash_attn_v2(q, q, q, window=(8, 8), options=FA2Options(path="tma", configs={"fwd": GLUON_128}))
    with pytest.raises(ValueError, match="right reach"):
        sm90.forward(q, q, q, q, q, False, 1.0, 0, 2, window_left=8)


@pytest.mark.parametrize("sm90_ok", [0, 1])
@pytest.mark.parametrize("nq", [512, 1024, 2048, 16384])
@pytest.mark.parametrize("causal", [False, True])
def test_pruner_offers_the_gluon_forward_only_where_it_runs(sm90_ok, nq, causal, monkeypatch):
    d128 = offered_forward_configs(monkeypatch, 128, nq, causal, sm90_ok)
    # at Nq = 512 its host path outlasts its kernel (launch-bound, spaces.GLUON_MIN_NQ)
    assert (GLUON_128 in d128) == (bool(sm90_ok) and nq >= 1024)
    # D64: the two-consumer build was 1-12% slower than the Triton forward below N = 8k on the H200, level
    # above: never offered there; the three-consumer one is (test_flash_attn_v2_sm90_wide.py)
    d64 = offered_forward_configs(monkeypatch, 64, nq, causal, sm90_ok)
    assert d64 and not any(tuning.is_gluon(t) and t[0] == sm90.BLOCK for t in d64)


def test_gluon_configuration_is_reported_by_name():
    cfg = tuning.to_config(GLUON_128, True)
    assert tuning.signature(cfg) == GLUON_128 and cfg.kwargs["USE_TMA"]
    label = tuning.launch_label(cfg)
    assert label == sm90.config_label(GLUON_128[3])
    assert label.startswith("gluon_sm90,BLOCK_M=128,BLOCK_N=128,") and "num_stages=2" in label


def test_pinning_the_gluon_forward_where_it_cannot_run_says_why():
    q, k, v, _ = make_inputs(1, 2, 2, 128, 128, 64, torch.float16, seed=1)
    with pytest.raises(ValueError, match="Gluon Hopper forward, which cannot run these inputs"):
        flash_attn_v2(q, k, v, options=FA2Options(configs={"fwd": GLUON_128}))
    with pytest.raises(ValueError, match="cannot run these inputs: options.sm90_forward is False"):
        flash_attn_v2(q, k, v, options=FA2Options(configs={"fwd": GLUON_128}, sm90_forward=False))
    with pytest.raises(ValueError, match="only the forward"):
        FA2Options(configs={"bwd_dq": GLUON_128})


# ---------------------------------------------------------------------------------------------
# D256: 64-key blocks (sm90.block_n), dense only, 2 stages
# ---------------------------------------------------------------------------------------------
GLUON_256 = next(t for t in spaces.FWD_SPACE["large"] if tuning.is_gluon(t))


def test_d256_runs_64_key_blocks_and_the_spaces_gluon_entries_match_their_head_dims():
    assert (sm90.block_n(64), sm90.block_n(128), sm90.block_n(256)) == (128, 128, 64)
    assert GLUON_256 == (128, 64, 4, 2, spaces.GLUON)
    for d in sm90.HEAD_DIMS:
        for t in spaces.FWD_SPACE[tuning.head_dim_class(d)]:
            if tuning.is_gluon(t):  # what the tuner may launch at d is what sm90.forward runs there
                assert t[:3] in {(sm90.BLOCK, sm90.block_n(d), 4), (sm90.WIDE_BLOCK, sm90.block_n(d), 4)}
                assert sm90.config_reason(d, t[1], t[3], t[0]) is None


@pytest.mark.parametrize("q_shape, kv_shape, causal, window", [
    ((2, 8, 1024, 256), (2, 8, 1024, 256), False, False),
    ((2, 8, 1024, 256), (2, 8, 1024, 256), True, False),
    ((1, 8, 128, 256), (1, 2, 384, 256), True, False),  # GQA, Nkv - Nq a multiple of 128
    ((1, 8, 1024, 256), (1, 1, 256, 256), False, False),  # MQA, Nq > Nkv non-causal
    ((1, 4, 1024, 256), (1, 4, 1024, 256), True, True),  # a causal window (left, 0)
])
def test_d256_takes_dense_block_aligned_16bit_contiguous_inputs(q_shape, kv_shape, causal, window):
    for dtype in (torch.bfloat16, torch.float16):
        q, k = _t(*q_shape, dtype=dtype), _t(*kv_shape, dtype=dtype)
        assert sm90.input_reason(q, k, k, causal, window) is None


@pytest.mark.parametrize("q, k, causal, window, varlen, words", [
    (_t(300, 2, 256), _t(300, 2, 256), True, False, True, "built dense only"),  # packed
    (_t(300, 2, 256), _t(300, 2, 256), False, False, True, "built dense only"),
    (_t(1, 2, 1000, 256), _t(1, 2, 1024, 256), False, False, False, "multiples of 128"),
    (_t(1, 2, 256, 256), _t(1, 2, 192, 256), False, False, False, "multiples of 128"),  # 64 is not enough
    (_t(1, 2, 512, 256), _t(1, 2, 256, 256), True, False, False, "see no key"),
    (_t(1, 2, 256, 256), _t(1, 2, 256, 256), False, True, False, "right reach"),
    (_t(1, 2, 256, 256, dtype=torch.float32), _t(1, 2, 256, 256, dtype=torch.float32), False, False, False,
     "fp16 and bf16"),
    (_t(1, 256, 2, 256).transpose(1, 2), _t(1, 2, 256, 256), False, False, False, "contiguous"),
    (_t(1, 2, 256, 96), _t(1, 2, 256, 96), False, False, False, "64, 128 and 256 only"),
])
def test_d256_says_why_it_declines_other_inputs(q, k, causal, window, varlen, words):
    reason = sm90.input_reason(q, k, k, causal, window, varlen)
    assert reason is not None and words in reason, reason


def test_d256_tiles_and_stages_other_than_its_own_are_refused():
    assert sm90.config_reason(256, 64, 2) is None and sm90.config_reason(128, 128, 3) is None
    assert "BLOCK_N=64" in sm90.config_reason(256, 128, 2)
    assert "BLOCK_N=128" in sm90.config_reason(128, 64, 2)
    assert "256 KiB of shared memory" in sm90.config_reason(256, 64, 3)  # Q 64 KiB + 3 x 64 KiB
    q = _t(1, 2, 256, 256)
    with pytest.raises(ValueError, match="256 KiB of shared memory"):  # before any descriptor or launch
        sm90.forward(q, q, q, q, q, True, 1.0, 0, 3)
    packed = _t(300, 2, 256)
    with pytest.raises(ValueError, match="dense only"):
        sm90.forward_varlen(packed, packed, packed, packed, packed, None, None, None, True, 1.0, 0, 2)


def test_d256_packed_batches_are_not_offered_it(monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    packed = _t(300, 2, 256)
    assert "dense only" in launch._sm90_refusal(packed, packed, packed, True, False, tuning.BOTH, FA2Options(), True)
    q = _t(1, 2, 1024, 256)
    assert launch._sm90_refusal(q, q, q, True, False, tuning.BOTH, FA2Options(), False) is None


@pytest.mark.parametrize("sm90_ok", [0, 1])
@pytest.mark.parametrize("nq", [512, 1024, 4096])
@pytest.mark.parametrize("causal", [False, True])
def test_d256_pruner_offers_the_gluon_forward_where_it_runs(sm90_ok, nq, causal, monkeypatch):
    kept = offered_forward_configs(monkeypatch, 256, nq, causal, sm90_ok)
    gluon = {t for t in kept if tuning.is_gluon(t)}
    assert gluon == ({GLUON_256} if sm90_ok and nq >= spaces.GLUON_MIN_NQ else set())
    assert kept - gluon == {t for t in spaces.FWD_SPACE["large"] if not tuning.is_gluon(t)}  # the Triton ones too


def test_d256_gluon_configuration_is_reported_with_its_64_key_blocks():
    label = tuning.launch_label(tuning.to_config(GLUON_256, True))
    assert label == sm90.config_label(2, sm90.block_n(256))
    assert label.startswith("gluon_sm90,BLOCK_M=128,BLOCK_N=64,") and "num_stages=2" in label
    assert sm90.config_label(2) == tuning.launch_label(tuning.to_config(GLUON_128, True))  # D128 as before


@pytest.mark.parametrize("causal, window, left", [(False, (-1, -1), -1), (True, (-1, -1), -1), (True, (200, 0), 200)])
def test_d256_a_pinned_gluon_forward_runs_it(causal, window, left, monkeypatch):
    """What the launcher hands the Gluon kernel at D256 and what it logs (the kernel runs on Hopper GPUs only)."""
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    seen = []

    def fake_forward(q, k, v, o, lse, causal, sm_scale, group_programs, stages, window_left=-1, block_rows=128):
        seen.append((q.shape[-1], causal, stages, window_left))
        o.zero_()
        lse.zero_()

    fake_gluon_forward(monkeypatch, sm90, fake_forward)
    fake_gluon_forward(monkeypatch, sm90_persistent, fake_forward)  # which of the two runs: its own test file
    q = _t(1, 2, 256, 256, dtype=torch.float16)
    log = {}
    flash_attn_v2(q, q, q, causal=causal, window=window, launch_log=log,
                  options=FA2Options(path="tma", configs={"fwd": GLUON_256}))
    assert seen == [(256, causal, 2, left)]
    assert log["fwd"] == sm90.config_label(2, 64)


@pytest.mark.parametrize("d, pinned, words", [
    (256, (128, 128, 4, 2, spaces.GLUON), "BLOCK_N=64"),  # D128's tile
    (256, (128, 64, 4, 3, spaces.GLUON), "256 KiB of shared memory"),
    (128, (128, 64, 4, 2, spaces.GLUON), "BLOCK_N=128"),  # D256's tile
    (64, (128, 64, 4, 2, spaces.GLUON), "BLOCK_N=128"),
])
def test_d256_pinning_a_gluon_tile_the_head_dim_does_not_run_says_why(d, pinned, words, monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    fake_gluon_forward(monkeypatch, sm90, lambda *a, **kw: pytest.fail("launched"))
    q = _t(1, 2, 256, d, dtype=torch.float16)
    with pytest.raises(ValueError, match=f"cannot run this configuration: .*{words}"):
        flash_attn_v2(q, q, q, causal=True, options=FA2Options(path="tma", configs={"fwd": pinned}))


# ---------------------------------------------------------------------------------------------
# sm_90 build, no GPU needed
# ---------------------------------------------------------------------------------------------
_BIN = os.path.join(os.path.dirname(__import__("triton").__file__), "backends", "nvidia", "bin")


@pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")),
                    reason="this Triton build carries no NVIDIA toolchain")
def test_compiles_for_sm90_into_producer_and_consumers():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fa2_compile_report.py"), "--gluon", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # the dense builds and the packed (varlen) ones; D256 dense only; three consumers: D64 dense, no window;
    # the persistent build (sm90_persistent): the dense ones at D64 and D128
    builds = {(d, c, w, p, sm90.BLOCK) for d in (64, 128, 256) for c, w in ((False, False), (True, False), (True, True))
              for p in (False, True) if not (d == 256 and p)} | \
        {(64, c, False, False, sm90.WIDE_BLOCK) for c in (False, True)}
    key = lambda r: (r["head_dim"], r["causal"], r["window"], r["varlen"], r["block_m"])  # noqa: E731
    assert {key(r) for r in rows if r["kernel"] == "gluon_sm90"} == builds, proc.stderr[-2000:]
    assert {key(r) for r in rows if r["kernel"] == "gluon_sm90_persistent"} == \
        {b for b in builds if b[0] != 256 and not b[3]}, proc.stderr[-2000:]
    for r in rows:
        where = (f"D={r['head_dim']} causal={r['causal']} window={r['window']} varlen={r['varlen']} "
                 f"BLOCK_M={r['block_m']}")
        assert "error" not in r, f"{where}: {r.get('error')}"
        persistent = r["kernel"] == "gluon_sm90_persistent"
        where += " persistent" if persistent else ""
        if not (persistent or r["varlen"]):
            # whatever a dense build spills lies outside its key loops (the packed windowed D128 build and the
            # persistent D128 causal and D64 windowed ones read or write spilled registers in theirs)
            assert not any(r["loop_local_accesses"]), f"{where}: key loops touch local memory"
        if r["block_m"] == sm90.WIDE_BLOCK:
            assert r["warps"] == 16, f"{where}: expected three consumer warp groups and the producer's"
            # the persistent causal build spills 40 bytes a thread (the tile loop's state beside the ring's)
            allowed = 40 if (persistent and r["causal"]) else 0
            assert r["spill_bytes"] <= allowed, f"{where}: spills {r['spill_bytes']} bytes"
            assert r["worker_regs"] == [sm90.WIDE_CONSUMER_REGS] * 2 + [sm90.PRODUCER_REGS], where
            assert sm90.WIDE_CONSUMER_REGS in r["setmaxnreg"], f"{where}: consumers not given their registers"
            assert r["wgmma_waits"] == [0, 1], f"{where}: no wait that leaves P V in flight"
            assert r["wgmma_serialized"] is False, f"{where}: ptxas serialised the wgmma instructions"
            continue
        assert r["warps"] == 12, f"{where}: expected two consumer warp groups and the producer's"
        # the windowed D128 builds spill (56-64 bytes a thread, as they did when their speed was measured),
        # the windowed D256 one 8 bytes; persistent, the D128 causal build 16 and the D64 windowed one 8; the
        # others spill nothing
        allowed = {128: 64, 256: 8}.get(r["head_dim"], 0) if r["window"] else 0
        if persistent:
            allowed = {(128, True, False): 16, (64, True, True): 8}.get((r["head_dim"], r["causal"], r["window"]), 0)
        assert r["spill_bytes"] <= allowed, f"{where}: spills {r['spill_bytes']} bytes"
        assert r["shared_bytes"] <= 232448, f"{where}: more shared memory than an H100 block may use"
        assert r["worker_regs"] == [sm90.CONSUMER_REGS, sm90.PRODUCER_REGS], f"{where}: worker registers"
        assert 240 in r["setmaxnreg"], f"{where}: consumers not given the producer's registers"
        assert r["wgmma_waits"] == [0, 1], f"{where}: no wait that leaves P V in flight"
        assert r["wgmma_serialized"] is False, f"{where}: ptxas serialised the wgmma instructions"


# ---------------------------------------------------------------------------------------------
# Hopper GPU
# ---------------------------------------------------------------------------------------------
hopper_only = pytest.mark.skipif(not on_hopper(), reason="the Gluon forward runs on Hopper (capability 9.x) only")


GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal: one block, several, many programs per SM, Nq < Nkv with the
    # diagonal shifted by whole blocks, GQA and MQA, Nq > Nkv non-causal
    (1, 2, 2, 128, 128, 128, True),
    (1, 2, 2, 128, 128, 64, False),
    (2, 4, 4, 512, 512, 128, True),
    (2, 4, 4, 512, 512, 64, False),
    (1, 16, 16, 2048, 2048, 128, False),
    (1, 16, 16, 2048, 2048, 64, True),
    (1, 4, 2, 256, 768, 128, True),
    (1, 8, 1, 384, 640, 64, True),
    (1, 8, 2, 640, 256, 128, False),
]


WINDOW_GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal, window: a row seeing only itself, reaches inside one block, at a
    # block's width, across two blocks, wider than the sequence; keys ahead of the queries; GQA
    (1, 2, 2, 512, 512, 128, True, (0, 0)),
    (1, 4, 4, 1024, 1024, 128, True, (1, 0)),
    (2, 4, 2, 1024, 1024, 64, True, (100, -1)),
    (1, 4, 4, 1024, 1024, 128, True, (128, 0)),
    (1, 8, 2, 2048, 2048, 128, True, (200, 0)),
    (1, 4, 1, 768, 1280, 128, True, (300, 0)),
    (1, 16, 16, 4096, 4096, 128, True, (1000, -1)),
    (1, 2, 2, 512, 512, 64, True, (4096, 0)),
]


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", [c + (NO_WINDOW,) for c in GRID] + WINDOW_GRID, ids=window_case_id)
def test_gpu_gluon_forward_poisoned(case, dtype, stages, monkeypatch):
    """Pinned (D64 is never chosen by the tuner; 3 stages fill 224 KiB of shared memory at D128), three
    fresh inputs a shape against the float64 reference, outputs poisoned; the backward runs one
    configuration (bounded compile time)."""
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    options = FA2Options(autotune=False, configs={"fwd": (128, 128, 4, stages, spaces.GLUON)})
    for rep in range(3):
        q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 7 * Nkv + D + max(window[0], 0) + 1000 * rep)
        log = {}
        check_against_reference(q, k, v, do, causal, window=window, options=options, launch_log=log)
        persistent = sm90_persistent.reason(D, stages, 128, varlen=False, n_kv=Nkv) is None
        assert log["fwd"] == sm90.config_label(stages, persistent=persistent)


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_gluon_lse_matches_the_triton_forward(causal, monkeypatch):
    """The Gluon forward's LSE (``return_lse=True``: natural log, the base-2 LSE the backward reads times ln 2)
    against the fp32 logsumexp of the scaled, masked scores computed from the inputs, outputs poisoned; then against
    the Triton forward's on the same inputs (itself checked against the inputs first: two forwards agreeing is not
    the only evidence)."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, _ = make_inputs(2, 8, 4, 1024, 1024, 128, torch.bfloat16, seed=5)
    gluon_log, triton_log = {}, {}
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=FA2Options(configs={"fwd": GLUON_128}),
                           launch_log=gluon_log)
    assert gluon_log["fwd"].startswith("gluon_sm90")
    check_forward_against_fp32(o, lse, q, k, v, causal)
    triton_fwd = FA2Options(configs={"fwd": spaces.FWD_SPACE["mid"][0]})
    o_ref, lse_ref = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=triton_fwd, launch_log=triton_log)
    assert not triton_log["fwd"].startswith("gluon")
    check_forward_against_fp32(o_ref, lse_ref, q, k, v, causal)
    assert_forwards_agree(o, lse, o_ref, lse_ref)


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("d, causal, entry", [(128, True, GLUON_128), (64, False, (sm90.WIDE_BLOCK, 128, 4, 2, spaces.GLUON))],
                         ids=["d128", "d64-three-consumers"])
def test_gpu_tuner_may_choose_it_and_either_choice_is_correct(d, causal, entry, monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(1, 16, 16, 2048, 2048, d, torch.bfloat16, seed=11 + d)
    check_against_reference(q, k, v, do, causal=causal)
    offered = {tuning.signature(c) for c in tuning.TUNERS["fwd"][0].timings}
    assert entry in offered, f"the tuner did not time the Gluon forward: {offered}"


# A score ramp over the key blocks, in base-2 units of the scaled scores: the row max rises by 10 at block 1, by 5
# at blocks 2 and 3 (a rescale of O by 2**-10, then two of 2**-5), falls at block 4 (no rescale), rises by 10 again
# at block 5, then stays.  A lazy rescale (FlashAttention-4's, which skips rises below 8; tried here, DESIGN.md)
# would take the first rise, skip the second and take the third against the stale max.
RAMP_LOG2 = [0.0, 10.0, 15.0, 20.0, 4.0, 30.0]


def _ramped_inputs(B, H, N, D, dtype, seed):
    """q and k whose scores rise block by block along RAMP_LOG2 for the even query rows and stay near 0 for the odd
    ones (so one consumer holds rows that need the rescale and rows that do not), with noise on both."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32)  # noqa: E731
    u = torch.ones(D) / D ** 0.5  # a unit direction: score = |q . u| |k . u| D**-0.5 along it
    ramp = torch.tensor(RAMP_LOG2 + [RAMP_LOG2[-1]] * (N // sm90.BLOCK - len(RAMP_LOG2)))
    # natural-log units of the scaled score: log2 units x ln 2; k's component along u makes the score
    k_along = (ramp * 0.6931471805599453).repeat_interleave(sm90.BLOCK)[:N]
    q_along = torch.tensor([D ** 0.5 if i % 2 == 0 else 0.0 for i in range(N)])
    q = 0.3 * rnd(B, H, N, D) + q_along[:, None] * u
    k = 0.3 * rnd(B, H, N, D) + k_along[:, None] * u
    v = rnd(B, H, N, D)
    return (t.to(device="cuda", dtype=dtype) for t in (q, k, v))


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d, entry, n", [(128, GLUON_128, 1024), (128, GLUON_128, 4096), (64, GLUON_128, 1024),
                                         (64, (sm90.WIDE_BLOCK, 128, 4, 2, spaces.GLUON), 1024),
                                         (256, (128, 64, 4, 2, spaces.GLUON), 1024)],
                         ids=["d128-persistent", "d128", "d64", "d64-three-consumers", "d256"])
def test_gpu_o_is_rescaled_as_the_row_max_rises_over_the_key_blocks(d, entry, n, causal, dtype, monkeypatch):
    """Scores whose row max rises block by block, by 2**10 and by 2**5, and falls: O and LSE against the fp32
    reference, outputs poisoned.  Random inputs (the other tests) barely move the max after the first block, so an
    error in the rescale shows there as a small one; here a missed or wrong rescale is off by 2**5 or more."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v = _ramped_inputs(1, 4, n, d, dtype, seed=d + n)
    log = {}
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True,
                           options=FA2Options(autotune=False, configs={"fwd": entry}), launch_log=log)
    assert log["fwd"].startswith("gluon_sm90"), log
    check_forward_against_fp32(o, lse, q, k, v, causal)


@pytest.mark.gpu
@hopper_only
def test_gpu_unsupported_shape_is_never_given_to_it(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(1, 4, 4, 1000, 1000, 128, torch.bfloat16, seed=9)
    log = {}
    check_against_reference(q, k, v, do, causal=True, launch_log=log)
    assert not log["fwd"].startswith("gluon")


# ---------------------------------------------------------------------------------------------
# Hopper GPU, D256 (64-key blocks): ``-k d256``
# ---------------------------------------------------------------------------------------------
D256_GRID = [
    # B, H, Hkv, Nq, Nkv, causal, window: one program (its diagonal is the last two 64-key blocks, one a
    # consumer), several, Nq < Nkv (the diagonal shifted by whole 128-row blocks), Nq > Nkv non-causal,
    # GQA and MQA; causal windows (left, 0): a row seeing only itself, the left edge inside a 64-key block,
    # on a block boundary with keys ahead, wider than the sequence
    (1, 2, 2, 128, 128, True, NO_WINDOW),
    (1, 2, 2, 128, 128, False, NO_WINDOW),
    (2, 4, 2, 256, 256, True, NO_WINDOW),
    (2, 4, 4, 256, 256, False, NO_WINDOW),
    (1, 4, 4, 384, 384, True, NO_WINDOW),
    (1, 8, 2, 384, 384, False, NO_WINDOW),
    (1, 8, 8, 1024, 1024, True, NO_WINDOW),
    (1, 8, 1, 1024, 1024, False, NO_WINDOW),
    (1, 4, 2, 128, 384, True, NO_WINDOW),
    (1, 4, 4, 384, 1024, True, NO_WINDOW),
    (1, 4, 2, 1024, 256, False, NO_WINDOW),
    (1, 4, 4, 384, 128, False, NO_WINDOW),
    (1, 4, 4, 1024, 1024, True, (0, 0)),
    (1, 4, 2, 1024, 1024, True, (100, 0)),
    (1, 2, 2, 384, 1024, True, (64, 0)),
    (1, 4, 4, 256, 256, True, (1000, 0)),
]


def _d256_case_id(c) -> str:
    B, H, Hkv, Nq, Nkv, causal, window = c
    return window_case_id((B, H, Hkv, Nq, Nkv, 256, causal, window))


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", D256_GRID, ids=_d256_case_id)
def test_gpu_d256_gluon_forward_poisoned(case, dtype, monkeypatch):
    """Pinned (128, 64, 4, 2, GLUON), two fresh inputs a shape, outputs poisoned: O and LSE against the
    fp32 reference, and the launch log shows the Gluon forward with 64-key blocks ran."""
    B, H, Hkv, Nq, Nkv, causal, window = case
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    options = FA2Options(autotune=False, configs={"fwd": GLUON_256})
    for rep in range(2):
        q, k, v, _ = make_inputs(B, H, Hkv, Nq, Nkv, 256, dtype, seed=Nq + 7 * Nkv + max(window[0], 0) + 1000 * rep)
        log = {}
        o, lse = flash_attn_v2(q, k, v, causal=causal, window=window, return_lse=True, options=options,
                               launch_log=log)
        assert log["fwd"] == sm90.config_label(2, 64), log
        check_forward_against_fp32(o, lse, q, k, v, causal, window)


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_d256_gradients_through_the_gluon_forward(causal, monkeypatch):
    """The Triton backward fed by the D256 Gluon forward's O and LSE: output and gradients against the
    float64 reference, buffers poisoned."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(1, 4, 2, 384, 640, 256, torch.bfloat16, seed=256 + causal)
    log = {}
    check_against_reference(q, k, v, do, causal, launch_log=log,
                            options=FA2Options(autotune=False, configs={"fwd": GLUON_256}))
    assert log["fwd"] == sm90.config_label(2, 64), log


@pytest.mark.gpu
@hopper_only
def test_gpu_d256_tuner_times_the_gluon_forward(monkeypatch):
    """Autotuned at D256 from Nq = GLUON_MIN_NQ up, the tuner times the Gluon entry beside the Triton ones;
    whichever it picks is correct."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, _ = make_inputs(1, 8, 8, 2048, 2048, 256, torch.bfloat16, seed=2560)
    o, lse = flash_attn_v2(q, k, v, causal=True, return_lse=True)
    offered = {tuning.signature(c) for c in tuning.TUNERS["fwd"][0].timings}
    assert GLUON_256 in offered, f"the tuner did not time the Gluon forward: {offered}"
    check_forward_against_fp32(o, lse, q, k, v, True, NO_WINDOW)
