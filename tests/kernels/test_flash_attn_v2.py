"""Tests of the bundled Triton FlashAttention-2 kernel (forward, backward, LSE, options, launch log, validation).

Without CUDA the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), on
tiny shapes, fp16 and fp32, through both tile paths (pointer loads and tensor descriptors).
Tests marked ``gpu`` run on a CUDA device (bf16 and fp16 over a grid, outputs poisoned first).
The tolerance rule is ``kernel_checks.check_against_reference``'s.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import triton
import triton.language as tl

import flashbench_kernels._validate as validate
from flashbench.attention.reference import reference_attention
from flashbench_kernels._schedule import block_and_head
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, spaces, tuning
from kernel_checks import DEV, case_id, check_against_reference, make_inputs, poisoned_empty


# ---------------------------------------------------------------------------------------------
# CPU (interpreter) or GPU: small and odd shapes
# ---------------------------------------------------------------------------------------------
CASES = [
    # B, H, Hkv, Nq, Nkv, D, causal
    (1, 1, 1, 1, 1, 32, False),
    (1, 1, 1, 1, 1, 32, True),
    (1, 2, 2, 17, 17, 32, True),
    (2, 2, 2, 17, 17, 64, False),
    (1, 2, 2, 129, 129, 32, True),
    (1, 2, 2, 129, 129, 64, False),
    (1, 4, 2, 33, 70, 32, True),   # GQA, Nq < Nkv
    (1, 4, 2, 70, 33, 64, True),   # GQA, Nq > Nkv: first 37 rows see no key
    (1, 4, 1, 40, 23, 32, False),  # MQA, Nq > Nkv
    (1, 4, 1, 23, 40, 64, True),   # MQA, Nq < Nkv
    (1, 2, 1, 24, 31, 96, True),   # head dim 96 (padded to a 128-wide tile)
]


def case_id(c):
    B, H, Hkv, Nq, Nkv, D, causal = c
    return f"B{B}-H{H}-Hkv{Hkv}-q{Nq}-kv{Nkv}-D{D}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq * 1000 + Nkv + D)
    check_against_reference(q, k, v, do, causal)


@pytest.mark.parametrize("path", ["ptr", "tma"])
@pytest.mark.parametrize("causal", [False, True])
def test_both_tile_paths(path, causal):
    if DEV == "cuda" and path == "tma" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability >= 9")
    q, k, v, do = make_inputs(1, 4, 2, 45, 61, 64, torch.float16, seed=7)
    log = {}
    check_against_reference(q, k, v, do, causal, options=FA2Options(path=path), launch_log=log)
    assert set(log) == {"fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq"}
    assert all(c.endswith(f"tma={path == 'tma'}") for n, c in log.items() if n != "bwd_preprocess")


@pytest.mark.parametrize("dq", spaces.DQ_SPACE["large"], ids=lambda t: "x".join(map(str, t)))
def test_d256_dq_tiles_on_the_tma_path(dq):
    """The D256 dQ space's tiles run on the TMA path (spaces.PREFERRED_PATH): each pinned there, at an odd shape
    whose last query block is mostly rows past the sequence (zero-filled on load, clipped on store)."""
    if DEV == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability >= 9")
    q, k, v, do = make_inputs(1, 2, 1, 131, 67, 256, torch.float16, seed=11)
    log = {}
    check_against_reference(q, k, v, do, True, options=FA2Options(path="tma", backward="triton",
                                                                  configs={"bwd_dq": dq}), launch_log=log)
    assert log["bwd_dq"].startswith(f"BLOCK_M={dq[0]},BLOCK_N={dq[1]},") and log["bwd_dq"].endswith("tma=True")


def test_custom_scale_and_noncontiguous_inputs():
    # (B, N, H, D) storage viewed as (B, H, N, D): non-contiguous, last dim contiguous
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 37, 4, 32, generator=g).to(DEV, torch.float16).transpose(1, 2)
    kv = torch.randn(2, 29, 2, 2, 32, generator=g).to(DEV, torch.float16)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    do = torch.randn(2, 4, 37, 32, generator=g).to(DEV, torch.float16)
    assert not q.is_contiguous() and not k.is_contiguous()
    check_against_reference(q, k, v, do, causal=True, sm_scale=0.3)


@pytest.mark.parametrize("causal", [False, True])
def test_return_lse(causal):
    q, k, v, _ = make_inputs(1, 4, 2, 50, 30, 32, torch.float32, seed=11)
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True)
    assert lse.shape == (1, 4, 50) and lse.dtype == torch.float32
    kk = k.double().repeat_interleave(2, dim=1)
    s = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(32)
    if causal:
        i = torch.arange(50, device=q.device)[:, None]
        j = torch.arange(30, device=q.device)[None, :]
        s = s.masked_fill(j > i + (30 - 50), float("-inf"))
    expected = torch.logsumexp(s, dim=-1)
    if causal:
        assert torch.isneginf(lse[..., :20]).all() and torch.isneginf(expected[..., :20]).all()
        assert (o[..., :20, :] == 0).all()
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite].double() - expected[finite]).abs().max().item() < 1e-4
    o2 = flash_attn_v2(q, k, v, causal=causal)
    assert torch.equal(o, o2)


def test_launch_log_names_each_kernel_the_call_ran():
    q, k, v, do = make_inputs(1, 2, 2, 20, 20, 32, torch.float16, seed=5)
    q.requires_grad_()
    fwd_only, both = {}, {}
    with torch.no_grad():
        flash_attn_v2(q, k, v, launch_log=fwd_only)
    out = flash_attn_v2(q, k, v, launch_log=both)
    assert list(fwd_only) == ["fwd"] and list(both) == ["fwd"]  # the backward has not run yet
    out.backward(do)  # autograd hands the forward's log to the backward
    assert list(both) == ["fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq"]
    assert list(fwd_only) == ["fwd"]  # one log per call: nothing is shared between calls
    for name in ("fwd", "bwd_dkdv", "bwd_dq"):
        assert "BLOCK_M=" in both[name] and "num_warps=" in both[name]
    assert both["bwd_preprocess"].startswith("BLOCK_M=")


@pytest.mark.parametrize("bad", [[], "fwd", 3])
def test_launch_log_that_is_not_a_dict_raises(bad):
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=5)
    with pytest.raises(ValueError, match="launch_log must be a dict"):
        flash_attn_v2(q, k, v, launch_log=bad)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def _t(*shape, dtype=torch.float16):
    return torch.randn(*shape).to(DEV, dtype)


@pytest.mark.parametrize("make, match", [
    (lambda: (_t(2, 16, 32), _t(2, 16, 32), _t(2, 16, 32)), "4-D"),
    (lambda: (_t(1, 2, 16, 32), _t(1, 2, 16, 32, dtype=torch.float32), _t(1, 2, 16, 32)), "dtype"),
    (lambda: (_t(1, 3, 16, 32), _t(1, 2, 16, 32), _t(1, 2, 16, 32)), "multiple"),
    (lambda: (_t(1, 2, 16, 48), _t(1, 2, 16, 48), _t(1, 2, 16, 48)), "head_dim"),
    (lambda: (_t(1, 2, 16, 32), _t(1, 2, 16, 64), _t(1, 2, 16, 64)), "head_dim"),
    (lambda: (_t(1, 2, 16, 32), _t(1, 2, 16, 32), _t(1, 2, 8, 32)), "same shape"),
    (lambda: (_t(1, 2, 16, 32), _t(2, 2, 16, 32), _t(2, 2, 16, 32)), "batch"),
    (lambda: (_t(1, 2, 16, 32, dtype=torch.float64),) * 3, "not supported"),
    (lambda: (_t(1, 2, 32, 16).transpose(-1, -2), _t(1, 2, 16, 32), _t(1, 2, 16, 32)), "contiguous"),
])
def test_bad_inputs_raise_value_error(make, match):
    q, k, v = make()
    with pytest.raises(ValueError, match=match):
        flash_attn_v2(q, k, v)


def test_bad_scale_raises():
    q = _t(1, 2, 16, 32)
    with pytest.raises(ValueError, match="sm_scale"):
        flash_attn_v2(q, q, q, sm_scale=-1.0)


def test_cpu_tensors_rejected_when_not_interpreting(monkeypatch):
    monkeypatch.setattr(validate, "interpreting", lambda: False)
    q = torch.randn(1, 2, 16, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        flash_attn_v2(q, q, q)


WS_128 = (128, 128, 4, 2, spaces.WS)


def test_pinning_a_warp_specialised_config_where_not_allowed_raises():
    # the interpreter (and any pointer-only input) cannot run the warp-specialised forward
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    with pytest.raises(ValueError, match="warp specialisation.*pointer path.*interpreter"):
        flash_attn_v2(q, k, v, options=FA2Options(path="ptr", configs={"fwd": WS_128}))


def test_pinning_a_warp_specialised_causal_forward_raises(monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)  # as on a Hopper GPU, TMA path forced
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    with pytest.raises(ValueError, match="non-causal") as err:
        flash_attn_v2(q, k, v, causal=True, options=FA2Options(path="tma", configs={"fwd": WS_128}))
    assert "which this call does not allow: a causal call (" in str(err.value)  # the only reason here


def test_pinning_a_warp_specialised_backward_raises():
    with pytest.raises(ValueError, match="only the forward"):
        FA2Options(configs={"bwd_dq": WS_128})


def test_pinned_config_is_used_and_reported():
    q, k, v, _ = make_inputs(1, 2, 2, 40, 40, 32, torch.float16, seed=5)
    log = {}
    out = flash_attn_v2(q, k, v, causal=True, options=FA2Options(configs={"fwd": (16, 32, 1, 1)}), launch_log=log)
    ref = reference_attention(q, k, v, True, compute_dtype=torch.float64)
    assert (out.double() - ref).abs().max().item() < 1e-2
    assert log["fwd"].startswith("BLOCK_M=16,BLOCK_N=32,num_warps=1,num_stages=1")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(autotune=1), "autotune must be True or False"),
    (dict(sm90_forward="yes"), "sm90_forward must be True or False"),
    (dict(path="TMA"), "path must be one of"),
    (dict(path=None), "path must be one of"),
    (dict(causal_group_programs=-1), "causal_group_programs must be an int >= 0"),
    (dict(causal_group_programs=1.5), "causal_group_programs must be an int >= 0"),
    (dict(causal_group_programs=True), "causal_group_programs must be an int >= 0"),
    (dict(causal_group_programs="grouped"), "causal_group_programs must be an int >= 0"),
    (dict(configs=[("fwd", (64, 64, 4, 2))]), "configs must be a mapping"),
    (dict(configs={"bwd": (64, 64, 4, 2)}), "no kernel 'bwd'"),
    (dict(configs={"bwd_preprocess": (64, 64, 4, 2)}), "no kernel 'bwd_preprocess'"),
    (dict(configs={"fwd": (64, 64, 4)}), "expected \\(BLOCK_M, BLOCK_N"),
    (dict(configs={"fwd": "64x64"}), "expected \\(BLOCK_M, BLOCK_N"),
    (dict(configs={"fwd": (48, 64, 4, 2)}), "powers of two >= 16"),
    (dict(configs={"fwd": (8, 64, 4, 2)}), "powers of two >= 16"),
    (dict(configs={"fwd": (64, 64, 3, 2)}), "num_warps must be a power of two"),
    (dict(configs={"fwd": (64, 64, 4, 0)}), "num_stages must be an int >= 1"),
    (dict(configs={"fwd": (64, 64, 4, 2, "tma")}), "the tag must be"),
    (dict(configs={"bwd_dkdv": (128, 128, 4, 2, spaces.GLUON)}), "only the forward"),
    (dict(configs={"fwd": (128, 128, 8, 2, spaces.WS)}), "4 warps and 2 stages only"),
    (dict(configs={"fwd": (128, 128, 4, 3, spaces.WS)}), "4 warps and 2 stages only"),  # wrote NaN rows
    (dict(configs={"fwd": (64, 64, 4, 2, spaces.GLUON)}), "the Gluon forward runs 128x128 blocks"),
    (dict(configs={"fwd": (128, 32, 4, 2, spaces.GLUON)}), "128x64 at D256"),  # (128, 64, ...): D256's
    (dict(configs={"fwd": (128, 128, 8, 2, spaces.GLUON)}), "4 warps a consumer"),
    (dict(configs={"fwd": (128, 128, 4, 4, spaces.GLUON)}), "2 or 3 stages"),
])
def test_bad_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FA2Options(**kwargs)


def test_flashbench_exports_the_kernel_and_its_options():
    import flashbench
    assert flashbench.flash_attn_v2 is flash_attn_v2 and flashbench.FA2Options is FA2Options


def test_options_that_are_not_an_fa2options_raise():
    q, k, v, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=5)
    with pytest.raises(ValueError, match="options must be an FA2Options, got dict"):
        flash_attn_v2(q, k, v, options={"autotune": False})


def test_options_are_frozen_and_keep_their_own_copy_of_the_configs():
    pinned = {"fwd": [64, 64, 4, 2]}
    opts = FA2Options(configs=pinned)
    pinned["fwd"] = (16, 16, 1, 1)
    assert opts.configs == {"fwd": (64, 64, 4, 2)}  # a list becomes a tuple; the caller's dict is not read again
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.autotune = False
    with pytest.raises(TypeError):
        opts.configs["bwd_dq"] = (64, 64, 4, 2)
    same = FA2Options(configs={"fwd": (64, 64, 4, 2)})
    assert opts == same and hash(opts) == hash(same)
    assert FA2Options() != FA2Options(causal_group_programs=0)


def test_tuning_keys_hold_every_launch_argument_the_options_change():
    # path -> TMA_OK, causal_group_programs -> GROUP_PROGRAMS, sm90_forward -> SM90_OK (forward only);
    # autotune and configs bypass the tuners
    for kernel in tuning.TUNERS.values():
        assert {"TMA_OK", "GROUP_PROGRAMS", "NQ_BUCKET", "NKV_BUCKET", "HEAD_DIM", "CAUSAL", "IEEE"} <= set(kernel.tuner.key)
    assert {"SM90_OK", "EVEN_KV"} <= set(tuning.TUNERS["fwd"][0].key)
    tuner = tuning.TUNERS["bwd_dq"][0]
    named = {"TMA_OK": tuning.BOTH, "NQ_BUCKET": 1024, "NKV_BUCKET": 1024}
    meta = launch.kernel_meta(128, True, False, 256)
    assert tuner._key(named, meta) != tuner._key(named, launch.kernel_meta(128, True, False, 0))


def test_forcing_the_tma_path_where_the_tensors_cannot_take_it_raises(monkeypatch):
    monkeypatch.setattr(launch, "interpreting", lambda: False)  # as on a GPU: CPU tensors have no TMA
    q, _, _, _ = make_inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=5)
    with pytest.raises(ValueError, match="options.path='tma' needs a GPU of capability >= 9"):
        launch._tma_ok("tma", q)
    assert launch._tma_ok("auto", q) == tuning.PTR_ONLY and launch._tma_ok("ptr", q) == tuning.PTR_ONLY


def test_autotune_off_runs_the_first_entry_of_each_space_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    ran, labels = [], {}
    for name, kernel in tuning.TUNERS.items():
        prepare = (lambda cfg, grid, args, meta, n=name: ran.append((n, tuning.signature(cfg))))
        monkeypatch.setitem(tuning.TUNERS, name, kernel._replace(prepare=prepare))
        monkeypatch.setattr(kernel.tuner, "choose", lambda *a: pytest.fail("tuned although autotune is off"))
    for name in tuning.TUNERS:
        _, labels[name] = launch._prepare(name, None, (), launch.kernel_meta(64, False, False, 256), tuning.PTR_ONLY,
                                          FA2Options(autotune=False))
    first = {"fwd": spaces.FWD_SPACE, "bwd_dkdv": spaces.DKDV_SPACE, "bwd_dq": spaces.DQ_SPACE}
    assert ran == [(name, first[name]["small"][0]) for name in tuning.TUNERS]
    assert labels == {name: tuning.launch_label(tuning.to_config(first[name]["small"][0], False)) for name in first}


@pytest.mark.parametrize("tma_ok, ieee, causal, expect_ws", [
    (tuning.BOTH, False, False, True),       # Hopper, aligned, 16-bit, non-causal: warp-specialised entries tried
    (tuning.TMA_ONLY, False, False, True),
    (tuning.PTR_ONLY, False, False, False),  # pre-Hopper or misaligned: never
    (tuning.BOTH, True, False, False),       # fp32 reference path: never
    (tuning.BOTH, False, True, False),       # causal: never (one masked loop measured slower)
])
def test_pruner_offers_warp_specialised_forwards_only_where_they_run(tma_ok, ieee, causal, expect_ws, monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    configs = tuning.all_configs(spaces.FWD_SPACE)
    prune = tuning.TUNERS["fwd"][0].prune  # the shipped forward pruner
    kept = prune(configs, {"TMA_OK": tma_ok, "NQ_BUCKET": 4096, "NKV_BUCKET": 4096}, HEAD_DIM=128, IEEE=ieee,
                 CAUSAL=causal)
    ws = [c for c in kept if c.kwargs.get("WARP_SPEC")]
    assert bool(ws) == expect_ws
    assert all(c.kwargs["USE_TMA"] and c.num_warps == 4 for c in ws)
    expected_ws = {t for t in spaces.FWD_SPACE["mid"] if tuning.is_ws(t)} if expect_ws else set()
    assert {tuning.signature(c) for c in ws} == expected_ws
    skipped = set(spaces.FWD_SKIP.get(("mid", causal, 4096), []))
    assert {tuning.signature(c) for c in kept if not c.kwargs.get("WARP_SPEC")} == \
        {t for t in spaces.FWD_SPACE["mid"] if not tuning.is_ws(t) and not tuning.is_gluon(t)} - skipped  # no SM90_OK


@pytest.mark.parametrize("nq, offered", [(2048, True), (4096, False), (16384, False)])
def test_pruner_leaves_out_skipped_forward_entries_from_their_nq_bucket_up(nq, offered, monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    prune = tuning.TUNERS["fwd"][0].prune
    # 64x64 is skipped from Nq = 4096 up for the D128 causal and the D64 non-causal forward only
    for d, causal, first, skips in [(128, True, (128, 128, 8, 3), True), (128, False, (128, 128, 8, 3), False),
                                    (64, False, (128, 64, 8, 3), True), (64, True, (128, 64, 8, 3), False)]:
        kept = {tuning.signature(c) for c in prune(tuning.all_configs(spaces.FWD_SPACE),
                                                   {"TMA_OK": tuning.BOTH, "NQ_BUCKET": nq, "NKV_BUCKET": nq},
                                                   HEAD_DIM=d, IEEE=False, CAUSAL=causal)}
        assert ((64, 64, 4, 3) in kept) == (offered or not skips), (d, causal)
        assert first in kept


@pytest.mark.parametrize("name, head_dim, tma_ok, expect_tma", [
    ("bwd_dq", 128, tuning.BOTH, False),     # dQ by pointers up to D128 (faster on the H100)
    ("bwd_dq", 64, tuning.BOTH, False),
    ("bwd_dq", 256, tuning.BOTH, True),      # ... and by TMA at D256 (faster on the H200)
    ("bwd_dkdv", 128, tuning.BOTH, True),    # dK/dV by TMA at every head dim
    ("bwd_dkdv", 256, tuning.BOTH, True),
    ("bwd_dq", 256, tuning.PTR_ONLY, False),  # the inputs allow one path: that one, whatever is preferred
    ("bwd_dq", 128, tuning.TMA_ONLY, True),
])
def test_pruner_offers_each_backward_kernel_its_preferred_tile_path_per_head_dim_class(name, head_dim, tma_ok,
                                                                                       expect_tma, monkeypatch):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    kernel = tuning.TUNERS[name][0]
    kept = kernel.prune(kernel.configs, {"TMA_OK": tma_ok, "NQ_BUCKET": 4096, "NKV_BUCKET": 4096},
                        HEAD_DIM=head_dim, IEEE=False, CAUSAL=False)
    space = (spaces.DQ_SPACE if name == "bwd_dq" else spaces.DKDV_SPACE)[tuning.head_dim_class(head_dim)]
    assert {c.kwargs["USE_TMA"] for c in kept} == {expect_tma}
    assert {tuning.signature(c) for c in kept} == set(space)


# ---------------------------------------------------------------------------------------------
# GPU only: bf16/fp16 grid with poisoned outputs
# ---------------------------------------------------------------------------------------------
def poisoned_empty(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


GPU_GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal
    (2, 4, 4, 256, 256, 32, True),
    (1, 4, 2, 257, 1000, 64, False),
    (1, 4, 2, 1000, 257, 64, True),
    (2, 8, 1, 333, 333, 96, True),
    (1, 4, 4, 1024, 1024, 128, True),
    (1, 4, 2, 511, 700, 128, False),
    (1, 2, 1, 300, 200, 256, True),
    (2, 2, 2, 129, 129, 256, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GPU_GRID, ids=case_id)
def test_gpu_grid_poisoned(case, dtype, monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 7 * Nkv + D)
    # one configuration per head dim: bounded compile time
    check_against_reference(q, k, v, do, causal, options=FA2Options(autotune=False))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_autotuned_bf16(causal, monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(1, 16, 16, 1537, 1537, 128, torch.bfloat16, seed=21)
    check_against_reference(q, k, v, do, causal)


@pytest.mark.gpu
def test_gpu_fp32_ieee_path(monkeypatch):
    """fp32 inputs (exact dots) against the reference with fp32's tolerance, outputs and gradients poisoned."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(1, 4, 2, 200, 300, 64, torch.float32, seed=4)
    check_against_reference(q, k, v, do, causal=True, atol=1e-4, options=FA2Options(autotune=False))


@pytest.mark.gpu
def test_gpu_pointer_path_on_misaligned_view(monkeypatch):
    """A view whose data pointer is not 16-byte aligned forces the pointer path on any GPU: it meets the reference
    with outputs and gradients poisoned (an element the pointer path leaves unwritten shows as NaN), and a pinned
    TMA path is refused."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    base = torch.randn(2 * 100 * 64 + 1, dtype=torch.float16, device="cuda")
    q = base[1:].view(1, 2, 100, 64)  # data_ptr offset by 2 bytes
    k, v, do = (torch.randn(1, 2, 100, 64, dtype=torch.float16, device="cuda") for _ in range(3))
    log = {}
    check_against_reference(q, k, v, do, causal=True, options=FA2Options(autotune=False), launch_log=log)
    assert log["fwd"].endswith("tma=False")
    with pytest.raises(ValueError, match="options.path='tma' needs"):
        flash_attn_v2(q, k, v, options=FA2Options(path="tma"))


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


WS_GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal (always False: causal runs are never warp-specialised): key
    # lengths that 128 divides (one unmasked loop) and tails (key mask in every block), query
    # tails shorter than a consumer half, Nq != Nkv both ways, GQA/MQA, many programs per SM
    (1, 4, 4, 1024, 1024, 128, False),
    (2, 8, 8, 2048, 2048, 128, False),
    (1, 4, 2, 40, 1024, 128, False),
    (1, 4, 2, 511, 700, 128, False),
    (1, 4, 2, 1000, 257, 128, False),
    (2, 8, 1, 333, 333, 96, False),
    (1, 8, 2, 640, 4096, 96, False),
]
WS_CONFIGS = sorted({t for lst in spaces.FWD_SPACE.values() for t in lst if tuning.is_ws(t)})


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="warp-specialised forward: Hopper (capability 9+) only")
@pytest.mark.parametrize("config", WS_CONFIGS, ids=lambda t: "x".join(map(str, t[:4])))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", WS_GRID, ids=case_id)
def test_gpu_warp_specialised_forward_poisoned(case, dtype, config, monkeypatch):
    """Each shipped warp-specialised configuration, three fresh inputs per shape (a race would be
    intermittent: Triton 3.6's pass produced NaN rows with 3-stage configs, kernels/DESIGN.md)."""
    B, H, Hkv, Nq, Nkv, D, causal = case
    if config not in spaces.FWD_SPACE[tuning.head_dim_class(D)]:
        pytest.skip(f"{config} is not in the D={D} class")
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    options = FA2Options(autotune=False, configs={"fwd": config})
    for rep in range(3):
        q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 5 * Nkv + D + 1000 * rep)
        log = {}
        check_against_reference(q, k, v, do, causal, options=options, launch_log=log)
        assert log["fwd"].endswith("tma=True,warp_specialize=True")


def test_every_head_dim_class_with_warp_specialised_entries_is_covered_by_the_gpu_grid():
    ws_classes = {c for c, lst in spaces.FWD_SPACE.items() if any(tuning.is_ws(t) for t in lst)}
    assert ws_classes <= {tuning.head_dim_class(case[5]) for case in WS_GRID}


# ---------------------------------------------------------------------------------------------
# Launch order of causal programs (CPU interpreter or GPU)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _schedule_probe(OUT, n_bh, HEAVY_LAST_BLOCK: tl.constexpr, GROUP_PROGRAMS: tl.constexpr):
    blk, bh = block_and_head(n_bh, HEAVY_LAST_BLOCK, GROUP_PROGRAMS)
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(OUT + 2 * pid, blk)
    tl.store(OUT + 2 * pid + 1, bh)


def _launch_order(n_blk, n_bh, heavy_last, group_programs):
    out = torch.full((n_blk * n_bh, 2), -1, dtype=torch.int32, device=DEV)
    _schedule_probe[(n_blk, n_bh)](out, n_bh, HEAVY_LAST_BLOCK=heavy_last, GROUP_PROGRAMS=group_programs)
    return [tuple(r) for r in out.cpu().tolist()]


def _expected_grouped(n_blk, n_bh, heavy_last, group_programs):
    """Heads in groups of >= group_programs programs; in each, every head's heaviest block, then the next."""
    heads = -(-group_programs // n_blk)
    order = []
    for first in range(0, n_bh, heads):
        group = range(first, min(first + heads, n_bh))
        for rank in range(n_blk):
            order += [(n_blk - 1 - rank if heavy_last else rank, bh) for bh in group]
    return order


# (blocks, heads, programs per group): one group, several with a partial last one, one head a group
@pytest.mark.parametrize("n_blk, n_bh, group_programs",
                         [(5, 3, 128), (3, 200, 256), (7, 90, 128), (300, 2, 128), (64, 5, 128)])
@pytest.mark.parametrize("heavy_last", [True, False], ids=["query-blocks", "key-blocks"])
def test_grouped_causal_schedule_runs_every_block_once_heaviest_first(n_blk, n_bh, group_programs, heavy_last):
    order = _launch_order(n_blk, n_bh, heavy_last, group_programs)
    assert sorted(order) == [(i, bh) for i in range(n_blk) for bh in range(n_bh)]
    assert order == _expected_grouped(n_blk, n_bh, heavy_last, group_programs)
    # the sweep ends on the lightest block of each head in the last group
    heads = -(-group_programs // n_blk)
    last_group = n_bh - heads * ((n_bh - 1) // heads)
    lightest = 0 if heavy_last else n_blk - 1
    assert {blk for blk, _ in order[-last_group:]} == {lightest}


def test_per_head_causal_schedule_launches_head_after_head():
    n_blk, n_bh = 4, 3
    assert _launch_order(n_blk, n_bh, True, 0) == [(n_blk - 1 - i, bh) for bh in range(n_bh) for i in range(n_blk)]
    assert _launch_order(n_blk, n_bh, False, 0) == [(i, bh) for bh in range(n_bh) for i in range(n_blk)]


# 0: per head; 4: several heads a group at these sizes; 256: the shipped value, one group here
@pytest.mark.parametrize("group_programs", [0, 4, 256])
def test_causal_schedules_agree_with_the_reference(group_programs):
    q, k, v, do = make_inputs(1, 4, 2, 70, 33, 32, torch.float16, seed=11)
    check_against_reference(q, k, v, do, causal=True, options=FA2Options(causal_group_programs=group_programs))
