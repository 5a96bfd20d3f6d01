"""``flash_attn_varlen``: packed batches of sequences of different lengths, forward and gradients,
program tables, validation.

Each sequence is checked against the fp64 reference of that sequence alone (bottom-right causal and
windows aligned within it, its own Nq_b and Nkv_b), by flash-attention's rule, with every buffer the
launcher allocates NaN-poisoned.  CPU interpreter: tiny shapes, fp16 and fp32, the interpreter's
fixed tiles (32-row query blocks, 32-key dK/dV blocks), so sequences of 1, 17, 5 and 33 tokens give
programs with one row, tails and several blocks.  The GPU grid is ``tests/gpu/test_fa2_window_varlen_gpu.py``.
"""
from __future__ import annotations

import pytest
import torch

import flashbench
from flashbench_kernels._schedule import SequenceBlocks, visible_span
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, flash_attn_varlen, launch, spaces
from kernel_checks import (DEV, check_varlen_against_reference, cu_seqlens, make_inputs, make_packed_inputs,
                           poisoned_empty, tma_unavailable)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


CASES = [
    # lengths_q, lengths_k, H, H_kv, D, causal, window
    ([1, 17, 5, 33], [1, 17, 5, 33], 2, 2, 32, False, (-1, -1)),
    ([1, 17, 5, 33], [1, 17, 5, 33], 2, 2, 32, True, (-1, -1)),
    ([3, 40, 1, 9], [20, 7, 1, 45], 4, 2, 32, True, (-1, -1)),  # Nq_b != Nkv_b both ways, GQA: rows that see no key
    ([3, 40, 1, 9], [20, 7, 1, 45], 4, 1, 64, False, (-1, -1)),  # MQA
    ([33, 1, 17, 5], [40, 2, 17, 30], 2, 2, 32, False, (6, 3)),  # windows per sequence
    ([33, 1, 17, 5], [40, 2, 17, 30], 4, 2, 32, True, (9, -1)),  # causal with a left reach, GQA
    ([0, 12, 7, 0, 25], [5, 0, 7, 3, 25], 2, 1, 32, True, (-1, -1)),  # sequences with no queries or no keys
    ([50], [50], 2, 2, 32, False, (0, 0)),  # one sequence, zero-width window
]


def case_id(c):
    lq, lk, H, Hkv, D, causal, (left, right) = c
    return (f"q{'-'.join(map(str, lq))}-kv{'-'.join(map(str, lk))}-H{H}-Hkv{Hkv}-D{D}-"
            f"{'causal' if causal else 'full'}-w{left}_{right}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_varlen_matches_reference(case, dtype):
    lq, lk, H, Hkv, D, causal, window = case
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, D, dtype, seed=sum(lq) * 10 + sum(lk))
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window)


@pytest.mark.skipif(tma_unavailable(), reason="tensor descriptors need compute capability >= 9")
def test_varlen_on_the_tensor_descriptor_path_with_empty_sequences():
    # one descriptor per sequence, sized to it: a sequence without keys or queries gets a 1-row one, never read
    q, k, v, do, cu_q, cu_k = make_packed_inputs([0, 20, 3], [9, 0, 30], 4, 2, 64, torch.float16, seed=5)
    log = {}
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, True, (12, -1), options=FA2Options(path="tma"),
                                   launch_log=log)
    assert set(log) == {"fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq"}
    assert all(c.endswith("tma=True") for n, c in log.items() if n != "bwd_preprocess")


def test_one_sequence_is_the_dense_call():
    q, k, v, _ = make_inputs(1, 4, 2, 37, 45, 32, torch.float32, seed=8)
    fixed = FA2Options(autotune=False)  # one tile for both on a GPU too: the same sums in the same order
    dense = flash_attn_v2(q, k, v, causal=True, window=(10, -1), options=fixed)
    packed = flash_attn_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu_seqlens([37]),
                               cu_seqlens([45]), 37, 45, causal=True, window=(10, -1), options=fixed)
    assert torch.equal(packed, dense[0].transpose(0, 1))


def test_rows_of_a_sequence_without_keys_are_zero():
    q, k, v, _, cu_q, cu_k = make_packed_inputs([4, 6], [0, 8], 2, 2, 32, torch.float32, seed=2)
    out = flash_attn_varlen(q, k, v, cu_q, cu_k, 6, 8)
    assert (out[:4] == 0).all() and (out[4:] != 0).any()


def test_exported_from_flashbench():
    assert flashbench.flash_attn_varlen is flash_attn_varlen


# ---------------------------------------------------------------------------------------------
# Program tables
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reach", [(10**6, 10**6), (10**6, 0), (5, 2)])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_program_table_holds_every_real_block_once_longest_span_first(block, reach):
    own, other = [1, 17, 0, 33, 5, 130], [40, 17, 9, 3, 0, 100]
    blocks = SequenceBlocks(own, other, *reach, "BLOCK_M", "cpu")
    table = blocks.table(block).tolist()
    assert blocks.count({"BLOCK_M": block}) == len(table)
    assert sorted(map(tuple, table)) == [(b, i) for b, n in enumerate(own) for i in range(-(-n // block))]
    seq = torch.tensor([b for b, _ in table])
    first = torch.tensor([i * block for _, i in table])
    last = torch.minimum(first + block, torch.tensor(own)[seq]) - 1
    n_other = torch.tensor(other)[seq]
    lo, hi = visible_span(first, last, n_other, n_other - torch.tensor(own)[seq], *reach)
    work = (hi - lo).tolist()
    assert work == sorted(work, reverse=True)
    assert blocks.table(block) is blocks.table(block)  # built once per block size


def test_the_launch_takes_the_table_for_the_configuration_it_runs():
    q, k, v, do, cu_q, cu_k = make_packed_inputs([70, 5], [70, 5], 2, 2, 32, torch.float16, seed=1)
    log = {}
    options = FA2Options(configs={"fwd": (16, 16, 1, 1), "bwd_dq": (64, 16, 1, 1), "bwd_dkdv": (16, 64, 1, 1)})
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, True, options=options, launch_log=log)
    assert log["fwd"].startswith("BLOCK_M=16,BLOCK_N=16") and log["bwd_dq"].startswith("BLOCK_M=64")


@pytest.mark.skipif(tma_unavailable(), reason="tensor descriptors need compute capability >= 9")
def test_gluon_and_warp_specialised_forwards_refuse_packed_batches():
    q, k, v, _, cu_q, cu_k = make_packed_inputs([16, 16], [16, 16], 2, 2, 64, torch.float16, seed=1)
    with pytest.raises(ValueError, match="Gluon Hopper forward, which cannot run these inputs: "
                                         "variable-length .packed. batches are not supported"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 16, 16, options=FA2Options(path="tma",
                          configs={"fwd": (128, 128, 4, 2, spaces.GLUON)}))
    with pytest.raises(ValueError, match="warp specialisation.*a variable-length .packed. batch"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 16, 16, options=FA2Options(path="tma",
                          configs={"fwd": (128, 128, 4, 2, spaces.WS)}))


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def _packed(lq=(3, 5), lk=(4, 6), H=2, Hkv=2, D=32, dtype=torch.float16):
    q, k, v, _, cu_q, cu_k = make_packed_inputs(list(lq), list(lk), H, Hkv, D, dtype, seed=0)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lq), max_seqlen_k=max(lk))


def _with(**changes):
    def make():
        args = _packed()
        for key, fn in changes.items():
            args[key] = fn(args)
        return args
    return make


@pytest.mark.parametrize("make, match", [
    (_with(q=lambda a: a["q"][None]), "q must be 3-D .total_tokens, heads, head_dim."),
    (_with(k=lambda a: a["k"][None], v=lambda a: a["v"][None]), "k must be 3-D"),
    (_with(k=lambda a: a["k"].float()), "share one dtype"),
    (lambda: _packed(dtype=torch.float64), "dtype torch.float64 is not supported"),
    (lambda: _packed(H=3, Hkv=2), "multiple of key/value heads"),
    (lambda: _packed(D=48), "head_dim 48 is not supported"),
    (_with(v=lambda a: a["v"][:-1]), "k and v must have the same shape"),
    (_with(q=lambda a: a["q"][:0], cu_seqlens_q=lambda a: cu_seqlens([0, 0])), "empty input"),
    (_with(cu_seqlens_q=lambda a: a["cu_seqlens_q"].long()), "cu_seqlens_q must be int32"),
    (_with(cu_seqlens_k=lambda a: a["cu_seqlens_k"].float()), "cu_seqlens_k must be int32"),
    (_with(cu_seqlens_q=lambda a: a["cu_seqlens_q"][None]), "cu_seqlens_q must be 1-D"),
    (_with(cu_seqlens_q=lambda a: a["cu_seqlens_q"][:1]), "cu_seqlens_q must be 1-D of batch \\+ 1 >= 2"),
    (_with(cu_seqlens_k=lambda a: a["cu_seqlens_k"].to("meta")), "cu_seqlens_k must be on q's device"),
    (_with(cu_seqlens_q=lambda a: [0, 3, 8]), "cu_seqlens_q must be a torch.Tensor"),
    (_with(cu_seqlens_k=lambda a: cu_seqlens([4, 3, 3])), "must have the same length"),
    (_with(cu_seqlens_q=lambda a: a["cu_seqlens_q"] + 1), "cu_seqlens_q must start at 0"),
    (_with(cu_seqlens_q=lambda a: torch.tensor([0, 9, 8], dtype=torch.int32, device=DEV)), "non-decreasing"),
    (_with(cu_seqlens_q=lambda a: cu_seqlens([3, 4])), "cu_seqlens_q must end at the packed length 8, got 7"),
    (_with(cu_seqlens_k=lambda a: cu_seqlens([4, 7])), "cu_seqlens_k must end at the packed length 10, got 11"),
    (_with(max_seqlen_q=lambda a: 4), "max_seqlen_q must be an int >= the longest sequence \\(5\\), got 4"),
    (_with(max_seqlen_k=lambda a: 6.0), "max_seqlen_k must be an int"),
    (_with(max_seqlen_k=lambda a: True), "max_seqlen_k must be an int"),
])
def test_bad_packed_inputs_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attn_varlen(**make())


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=(-2, 3)), "flash_attn_varlen: window must be a pair of ints >= -1"),
    (dict(window=(1, 2.0)), "window must be a pair"),
    (dict(sm_scale=0.0), "sm_scale must be a positive finite number"),
    (dict(sm_scale=float("nan")), "sm_scale must be a positive finite number"),
    (dict(options={"autotune": False}), "options must be an FA2Options"),
    (dict(launch_log=[]), "launch_log must be a dict"),
])
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attn_varlen(**_packed(), **kwargs)


def test_max_seqlen_larger_than_needed_is_accepted_and_changes_nothing():
    args = _packed()
    out = flash_attn_varlen(**args)
    assert torch.equal(flash_attn_varlen(**{**args, "max_seqlen_q": 2**40, "max_seqlen_k": 1000}), out)


def test_cpu_tensors_rejected_when_not_interpreting(monkeypatch):
    import flashbench_kernels._validate as validate
    monkeypatch.setattr(validate, "interpreting", lambda: False)
    q, k, v, _, cu_q, cu_k = make_packed_inputs([3, 5], [4, 6], 2, 2, 32, torch.float16, seed=0, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 5, 6)
