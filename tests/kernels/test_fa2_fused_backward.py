"""The one-pass Triton backward (``FA2Options(backward="triton_fused")``): the dK/dV kernel adds each step's dS K into
an fp32 dQ accumulator by atomics (``FUSED_DQ``) and one conversion writes dQ.

CPU (interpreter, its fixed tiles, fp16 and fp32, every launcher buffer NaN-poisoned so that an accumulator the
preprocess did not zero shows): dense odd shapes, GQA/MQA, Nq != Nkv both ways, D96 and D256, both tile paths,
windows, packed batches, a second call of the same plan, the launch log and the options' checks.  GPU (marked): the
grid in bf16 and fp16 with the autotuner choosing, whose candidates are timed into the accumulator before the call.
"""
from __future__ import annotations

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, spaces
from kernel_checks import (DEV, case_id, check_against_reference, check_varlen_against_reference, make_inputs,
                           make_packed_inputs, poisoned_empty, tma_unavailable)

FUSED = FA2Options(backward="triton_fused")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


CASES = [
    # B, H, Hkv, Nq, Nkv, D, causal
    (1, 1, 1, 1, 1, 32, False),
    (1, 2, 2, 17, 17, 32, True),
    (2, 2, 2, 45, 61, 64, False),
    (1, 4, 2, 33, 70, 32, True),   # GQA, Nq < Nkv: dQ of a head gets adds from several key blocks
    (1, 4, 2, 70, 33, 64, True),   # GQA, Nq > Nkv: the first 37 rows see no key (dQ stays 0)
    (1, 4, 1, 40, 23, 32, False),  # MQA, Nq > Nkv
    (1, 2, 1, 24, 31, 96, True),   # head dim 96 in a 128-wide tile: the padded columns are never added
    (1, 2, 1, 37, 29, 256, True),  # D256, the head dim the option is for
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_backward_matches_the_reference(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq * 100 + Nkv + D)
    log = {}
    check_against_reference(q, k, v, do, causal, options=FUSED, launch_log=log)
    # one kernel computes dK, dV and dQ: both backward entries name it, and the conversion is not a Triton dQ pass
    assert log["bwd_dkdv"] == log["bwd_dq"] and log["bwd_dkdv"].endswith(",dq=atomic_add")


@pytest.mark.parametrize("path", ["ptr", "tma"])
def test_fused_backward_on_both_tile_paths(path):
    if path == "tma" and tma_unavailable():
        pytest.skip("tensor descriptors need compute capability >= 9")
    q, k, v, do = make_inputs(1, 4, 2, 45, 61, 64, torch.float16, seed=7)
    log = {}
    check_against_reference(q, k, v, do, True, options=FA2Options(path=path, backward="triton_fused"),
                            launch_log=log)
    assert f"tma={path == 'tma'}" in log["bwd_dkdv"]


def test_fused_backward_with_a_window():
    q, k, v, do = make_inputs(1, 2, 1, 53, 47, 32, torch.float16, seed=3)
    check_against_reference(q, k, v, do, False, options=FUSED, window=(9, 4))


def test_fused_backward_on_a_packed_batch():
    """Sequences of 1 to 33 tokens with Nq_b != Nkv_b: each sequence's dQ rows receive only its own keys' adds."""
    q, k, v, do, cu_q, cu_k = make_packed_inputs([3, 40, 1, 9], [20, 7, 1, 45], 4, 2, 32, torch.float16, seed=5)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, True, options=FUSED)


def test_a_second_call_of_the_same_plan_starts_from_a_zeroed_accumulator():
    """Later calls of a kept plan allocate a new accumulator and zero it in the preprocess: the same gradients."""
    q, k, v, do = make_inputs(1, 2, 2, 40, 40, 32, torch.float32, seed=2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    first = torch.autograd.grad(flash_attn_v2(q, k, v, causal=True, options=FUSED), (q, k, v), do)
    second = torch.autograd.grad(flash_attn_v2(q, k, v, causal=True, options=FUSED), (q, k, v), do)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # dQ: the adds' order may differ on a GPU


def test_a_pinned_fused_configuration_runs_and_is_reported():
    q, k, v, do = make_inputs(1, 2, 1, 29, 35, 32, torch.float16, seed=4)
    log = {}
    options = FA2Options(backward="triton_fused", configs={"bwd_fused": (16, 16, 1, 1)})
    check_against_reference(q, k, v, do, True, options=options, launch_log=log)
    assert log["bwd_dkdv"].startswith("BLOCK_M=16,BLOCK_N=16,")


@pytest.mark.parametrize("kwargs, match", [
    (dict(configs={"bwd_fused": (32, 64, 8, 2)}), "needs backward='triton_fused'"),
    (dict(backward="triton", configs={"bwd_fused": (32, 64, 8, 2)}), "needs backward='triton_fused'"),
    (dict(backward="triton_fused", configs={"bwd_dkdv": (32, 64, 8, 2)}), r"pin configs\['bwd_fused'\] instead"),
    (dict(backward="triton_fused", configs={"bwd_dq": (128, 64, 8, 2)}), r"pin configs\['bwd_fused'\] instead"),
    (dict(backward="fused"), "backward must be one of"),
])
def test_fused_options_that_cannot_run_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FA2Options(**kwargs)


def test_every_fused_space_has_each_head_dim_class_and_a_preferred_path():
    assert set(spaces.FUSED_SPACE) == set(spaces.DKDV_SPACE)
    assert set(spaces.PREFERRED_PATH["bwd_fused"]) == set(spaces.FUSED_SPACE)
    assert all(spaces.FUSED_SPACE[c] for c in spaces.FUSED_SPACE)


# ---------------------------------------------------------------------------------------------
# GPU: bf16 and fp16, tuned (the candidates are timed into the accumulator the preprocess zeroed)
# ---------------------------------------------------------------------------------------------
GPU_CASES = [
    (2, 4, 2, 257, 257, 64, True),
    (1, 4, 1, 300, 500, 128, False),
    (1, 8, 2, 513, 385, 256, True),    # Nq > Nkv: rows that see no key
    (2, 4, 4, 1024, 1024, 256, False),
    (1, 4, 2, 1000, 1000, 256, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=case_id)
def test_gpu_fused_backward_tuned_poisoned(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + D)
    log = {}
    check_against_reference(q, k, v, do, causal, options=FUSED, launch_log=log)
    assert log["bwd_dkdv"].endswith(",dq=atomic_add")
    assert DEV == "cuda"
