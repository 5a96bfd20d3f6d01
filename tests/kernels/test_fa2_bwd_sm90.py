"""The Gluon Hopper backward (kernels/flash_attn_v2/sm90_bwd.py) without a GPU: which inputs it takes, when the
launcher runs it, and (through ``tools/fa2_compile_report.py --gluon-bwd`` in a process without the
interpreter) that every build compiles for sm_90 into a producer warp and two consumer warp groups within
the shared memory of a block.  tests/gpu/test_fa2_bwd_sm90_gpu.py checks what it computes.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import (FA2Options, flash_attn_v2, launch, sm90, sm90_bwd, sm90_bwd_common,
                                             sm90_bwd_d256, tuning)
from kernel_checks import ClaimsCuda, fake_gluon_backward, make_inputs, poisoned_empty

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
_BIN = os.path.join(os.path.dirname(__import__("triton").__file__), "backends", "nvidia", "bin")


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype)


@pytest.mark.parametrize("q_shape, kv_shape, causal", [
    ((2, 16, 1024, 128), (2, 16, 1024, 128), True),
    ((1, 8, 256, 64), (1, 2, 768, 64), True),  # GQA, keys ahead of the queries
    ((1, 8, 512, 64), (1, 1, 128, 64), False),  # MQA, Nq > Nkv without the mask
    ((1, 4, 256, 256), (1, 2, 384, 256), True),  # D256 (``sm90_bwd_d256``), GQA, keys ahead
])
def test_takes_block_aligned_16bit_contiguous_inputs(q_shape, kv_shape, causal):
    for dtype in (torch.bfloat16, torch.float16):
        q, k = _t(*q_shape, dtype=dtype), _t(*kv_shape, dtype=dtype)
        assert sm90_bwd.input_reason(q, k, k, causal) is None
        if causal:  # and causal sliding windows, (left, 0)
            assert sm90_bwd.input_reason(q, k, k, causal, window=True) is None


@pytest.mark.parametrize("q, k, causal, window, words", [
    (_t(1, 2, 256, 128, dtype=torch.float32), _t(1, 2, 256, 128, dtype=torch.float32), False, False, "fp16 and bf16"),
    (_t(1, 2, 256, 96), _t(1, 2, 256, 96), False, False, "head_dim 96"),
    (_t(1, 2, 256, 32), _t(1, 2, 256, 32), False, False, "head_dim 32"),
    (_t(1, 2, 1000, 128), _t(1, 2, 1024, 128), False, False, "multiples of 128"),
    (_t(1, 2, 256, 128), _t(1, 2, 200, 128), False, False, "multiples of 128"),
    (_t(1, 2, 512, 128), _t(1, 2, 256, 128), True, False, "Nq=512 > Nkv=256"),
    (_t(1, 256, 2, 128).transpose(1, 2), _t(1, 2, 256, 128), False, False, "contiguous"),
    (_t(1, 2, 256, 128), _t(1, 2, 256, 128), False, True, "right reach"),  # a window without causal
    (_t(256, 2, 128), _t(256, 2, 128), False, False, "dense"),
])
def test_says_why_it_declines_other_inputs(q, k, causal, window, words):
    reason = sm90_bwd.input_reason(q, k, k, causal, window)
    assert reason is not None and words in reason, reason


def test_takes_packed_batches_of_any_lengths():
    q, k = _t(1000, 8, 128), _t(777, 2, 128)
    for causal, window in ((False, False), (True, False), (True, True)):
        assert sm90_bwd.input_reason(q, k, k, causal, window, varlen=True) is None
    assert "right reach" in sm90_bwd.input_reason(q, k, k, False, True, varlen=True)
    assert "packed (total, H, D)" in sm90_bwd.input_reason(_t(1, 8, 128, 128), k, k, False, varlen=True)
    assert "dense" in sm90_bwd.input_reason(q, k, k, False)
    q256, k256 = _t(1000, 8, 256), _t(777, 2, 256)  # D256: its own kernel, packed too (the forward's is dense only)
    for causal, window in ((False, False), (True, False), (True, True)):
        assert sm90_bwd.input_reason(q256, k256, k256, causal, window, varlen=True) is None
    assert "built dense only" in sm90.input_reason(q256, k256, k256, True, varlen=True)


def test_never_runs_without_a_hopper_gpu(monkeypatch):
    """The Gluon backward runs on a Hopper GPU (capability 9.x) only, through the forward's check
    (``sm90.unsupported_reason``). Under the interpreter (every CPU run) that check returns before the GPU test, so
    it is reached here with sm90's ``interpreting`` patched off and its ``device_capability`` patched: CPU tensors are
    refused, so are CUDA tensors (stand-ins) on a capability-8.0 GPU, each with the message, even with
    ``backward="sm90"``; the same inputs on a 9.0 GPU are taken (the patches reach the check)."""
    q = _t(1, 2, 256, 128)
    sm90_only = FA2Options(backward="sm90")
    monkeypatch.setattr(sm90, "interpreting", lambda: True)
    assert sm90_bwd.unsupported_reason(q, q, q, False) == "Gluon kernels do not run under TRITON_INTERPRET"
    monkeypatch.setattr(sm90, "interpreting", lambda: False)
    assert sm90_bwd.unsupported_reason(q, q, q, False) == "needs a Hopper GPU (capability 9.x)"  # CPU tensors
    assert launch._sm90_bwd_refusal(q, q, q, False, False, tuning.BOTH, sm90_only, False) == \
        "needs a Hopper GPU (capability 9.x)"
    on_gpu = ClaimsCuda(q)
    monkeypatch.setattr(sm90, "device_capability", lambda index: (8, 0))  # an A100
    assert sm90_bwd.unsupported_reason(on_gpu, on_gpu, on_gpu, False) == "needs a Hopper GPU (capability 9.x)"
    assert launch._sm90_bwd_refusal(on_gpu, on_gpu, on_gpu, False, False, tuning.BOTH, sm90_only, False) == \
        "needs a Hopper GPU (capability 9.x)"
    monkeypatch.setattr(sm90, "device_capability", lambda index: (9, 0))  # an H100
    assert sm90_bwd.unsupported_reason(on_gpu, on_gpu, on_gpu, False) is None


def test_runs_unless_told_triton_on_the_tma_path_and_dense_inputs(monkeypatch):
    monkeypatch.setattr(sm90_bwd, "unsupported_reason", lambda *a: None)  # as if on an H100
    q = _t(1, 2, 256, 128)
    for backward in ("auto", "sm90"):
        assert launch._sm90_bwd_refusal(q, q, q, True, False, tuning.BOTH, FA2Options(backward=backward), False) is None
    assert "deterministic" in launch._sm90_bwd_refusal(q, q, q, True, False, tuning.BOTH,
                                                       FA2Options(backward="triton"), False)
    assert "TMA" in launch._sm90_bwd_refusal(q, q, q, True, False, tuning.PTR_ONLY, FA2Options(), False)
    assert launch._sm90_bwd_refusal(q, q, q, True, False, tuning.BOTH, FA2Options(), True) is None  # packed too
    pinned = FA2Options(configs={"bwd_dq": (64, 64, 4, 2)})
    assert "pinned" in launch._sm90_bwd_refusal(q, q, q, True, False, tuning.BOTH, pinned, False)


@pytest.mark.parametrize("D, causal, n_kv", [(128, True, 8192), (128, True, 16384), (128, False, 16384),
                                              (64, True, 16384), (64, False, 1024), (256, True, 4096),
                                              (256, False, 1024)])
def test_auto_runs_it_wherever_it_takes_the_inputs(D, causal, n_kv, monkeypatch):
    """It measured faster than the Triton backward at every shape of the fa2 sweep, D64 and D128, causal or not,
    and at D256 (``sm90_bwd_d256``) at every shape of the fa2_d256 sweep."""
    monkeypatch.setattr(sm90_bwd, "unsupported_reason", lambda *a: None)
    q, k = _t(1, 2, 1024, D), _t(1, 2, n_kv, D)
    for backward in ("auto", "sm90"):
        assert launch._sm90_bwd_refusal(q, k, k, causal, False, tuning.BOTH, FA2Options(backward=backward),
                                        False) is None


def test_the_option_is_checked():
    assert FA2Options().backward == "auto"
    with pytest.raises(ValueError, match="backward must be one of 'auto', 'sm90', 'triton'"):
        FA2Options(backward="gluon")
    assert hash(FA2Options(backward="triton")) != hash(FA2Options())


def _as_on_a_hopper_gpu(monkeypatch, chunk_ref_n: int | None = None):
    """The launcher as where the Gluon backward may run (here the interpreter runs the rest), its buffers poisoned;
    with ``chunk_ref_n``, dQ chunks counted in programs of that many queries, so that small shapes make several."""
    monkeypatch.setattr(launch, "_sm90_bwd_refusal", lambda *a: None)
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    if chunk_ref_n is not None:
        monkeypatch.setattr(sm90_bwd, "CHUNK_REF_N", chunk_ref_n)


def _forbid_triton_backward(monkeypatch):
    """Let the launcher start the forward only: a Triton gradient kernel launched beside the Gluon backward fails."""
    real_prepare = launch._prepare

    def forward_only(name, *args, **kwargs):
        assert name == "fwd", f"{name} launched beside the Gluon backward"
        return real_prepare(name, *args, **kwargs)

    monkeypatch.setattr(launch, "_prepare", forward_only)


def test_the_launcher_hands_it_the_call_and_delta_and_logs_it(monkeypatch):
    """Where the Gluon backward may run (as on an H100; here the interpreter runs the rest), ``_backward``
    runs the Delta kernel, hands the Gluon backward the call's tensors, Delta = rowsum(dO * O), the
    gradient buffers, the fp32 dQ accumulator zeroed by the same kernel (allocations poisoned) and the causal
    launch order, launches no Triton gradient kernel, and logs the Gluon configuration under both gradient
    kernels' names."""
    _as_on_a_hopper_gpu(monkeypatch, chunk_ref_n=128)  # these 128-query shapes make several chunks
    seen = {}

    def gluon_backward(q, k, v, do, lse, delta, dq, dk, dv, causal, sm_scale, group_programs, window_left=-1,
                       dq_acc=None, chunk_pairs=None):
        seen.update(chunk_pairs=chunk_pairs, do=do.clone(), delta=delta.clone(), causal=causal, sm_scale=sm_scale,
                    window_left=window_left,
                    group_programs=group_programs, shapes=(dq.shape, dk.shape, dv.shape), dq_acc=dq_acc.clone())
        for g in (dq, dk, dv):
            g.fill_(1.0)

    fake_gluon_backward(monkeypatch, gluon_backward)
    _forbid_triton_backward(monkeypatch)
    q, k, v, do = make_inputs(1, 4, 2, 32, 48, 32, torch.float32, seed=3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    log = {}
    o = flash_attn_v2(*leaves, causal=True, sm_scale=0.3, options=FA2Options(causal_group_programs=7), launch_log=log)
    o.backward(do)
    assert seen["causal"] is True and seen["sm_scale"] == 0.3 and seen["group_programs"] == 7
    assert seen["window_left"] == -1 and seen["chunk_pairs"] is None  # 2 pairs, far less than 8 waves: one launch
    assert seen["shapes"] == (q.shape, k.shape, v.shape)  # GQA: dK, dV have the kv heads
    assert torch.allclose(seen["delta"], (o.detach() * seen["do"]).sum(-1), atol=1e-5)
    assert seen["dq_acc"].dtype == torch.float32 and torch.equal(seen["dq_acc"], torch.zeros(q.shape))
    assert all(torch.equal(t.grad, torch.ones_like(t)) for t in leaves)
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(32)


@pytest.mark.parametrize("window, left", [((5, 0), 5), ((0, 0), 0), ((1000, 0), 80)])  # wider: clipped
def test_the_launcher_hands_it_the_windows_left_reach(window, left, monkeypatch):
    """A causal window (left, 0) reaches the Gluon backward as its left reach (clipped to Nq + Nkv, as the Triton
    kernels get it); the causal mask alone as -1."""
    monkeypatch.setattr(launch, "_sm90_bwd_refusal", lambda *a: None)
    seen = {}

    def gluon_backward(*args, window_left=-1, dq_acc=None, chunk_pairs=None):
        seen["causal"], seen["window_left"] = args[9], window_left

    fake_gluon_backward(monkeypatch, gluon_backward)
    q, k, v, do = make_inputs(1, 2, 2, 32, 48, 32, torch.float32, seed=4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attn_v2(*leaves, causal=True, window=window).backward(do)
    assert seen == {"causal": True, "window_left": left}


@pytest.mark.parametrize("causal, window, left, D", [(False, (-1, -1), -1, 32), (True, (-1, -1), -1, 32),
                                                     (True, (7, 0), 7, 32), (True, (-1, -1), -1, 256)])
def test_the_launcher_hands_a_packed_batch_its_key_block_table(causal, window, left, D, monkeypatch):
    """A packed batch reaches ``backward_varlen`` with its offsets, the (sequence, key block) table built on the
    device over the key axis (128-key blocks, 64 at D256: ``sm90_bwd.block_n``), Delta in the (H, total_q) layout,
    the launch order and the window's left reach; no Triton gradient kernel runs."""
    from flashbench_kernels.flash_attn_v2 import flash_attn_varlen
    from kernel_checks import make_packed_inputs

    _as_on_a_hopper_gpu(monkeypatch)
    seen = {}

    def gluon_backward_varlen(q, k, v, do, lse, delta, dq, dk, dv, cu_q, cu_k, table, causal, sm_scale,
                              group_programs, window_left=-1, dq_acc=None):
        seen.update(cu=(cu_q.tolist(), cu_k.tolist()), table=table.clone(), delta_shape=tuple(delta.shape),
                    causal=causal, group_programs=group_programs, window_left=window_left, dq_acc=dq_acc.clone())
        for g in (dq, dk, dv):
            g.zero_()

    monkeypatch.setattr(sm90_bwd, "backward_varlen", gluon_backward_varlen)
    _forbid_triton_backward(monkeypatch)
    lengths_q, lengths_k = [5, 130, 1], [9, 300, 1]
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lengths_q, lengths_k, 4, 2, D, torch.float32, seed=2)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_varlen(*leaves, cu_q, cu_k, 130, 300, causal, window=window,
                            options=FA2Options(causal_group_programs=5))
    out.backward(do)
    assert seen["cu"] == (cu_q.tolist(), cu_k.tolist()) and seen["delta_shape"] == (4, sum(lengths_q))
    assert seen["causal"] is causal and seen["group_programs"] == 5 and seen["window_left"] == left
    assert torch.equal(seen["dq_acc"], torch.zeros(q.shape))  # (total_q, H, D), zeroed by the Delta kernel
    real = seen["table"][seen["table"][:, 0] >= 0].tolist()  # (sequence, key block) rows, padding dropped
    blocks = -(-300 // sm90_bwd.block_n(D))  # the middle sequence's 300 keys
    assert sorted(map(tuple, real)) == [(0, 0), *((1, j) for j in range(blocks)), (2, 0)]


def test_a_window_without_causal_is_refused_before_any_launch():
    q = _t(1, 2, 256, 128)
    with pytest.raises(ValueError, match="a window needs causal"):
        sm90_bwd.backward(q, q, q, q, None, None, q.clone(), q.clone(), q.clone(), False, 0.125, window_left=64)
    p = _t(256, 2, 128)
    with pytest.raises(ValueError, match="backward_varlen: a window needs causal"):
        sm90_bwd.backward_varlen(p, p, p, p, None, None, p.clone(), p.clone(), p.clone(), None, None, None, False,
                                 0.125, window_left=64)


def test_gradient_buffers_that_are_not_contiguous_are_refused_before_any_launch():
    q = _t(1, 2, 128, 64)
    stats = torch.empty(1, 2, 128)
    strided = torch.empty(1, 128, 2, 64, dtype=torch.bfloat16).transpose(1, 2)
    with pytest.raises(ValueError, match="dq, dk, dv must be contiguous"):
        sm90_bwd.backward(q, q, q, q, stats, stats, strided, q.clone(), q.clone(), False, 0.125)


def test_ring_depth_is_three_at_d128_without_a_window_and_is_checked():
    assert sm90_bwd.ring_stages(128) == 3 and sm90_bwd.ring_stages(64) == 2
    assert sm90_bwd.ring_stages(128, window=True) == 2
    assert "num_stages=3" in sm90_bwd.config_label(128) and "num_stages=2" in sm90_bwd.config_label(128, window=True)
    q = _t(1, 2, 256, 128)
    with pytest.raises(ValueError, match=r"stages must be one of \(2, 3\) at head dim 128, got 4"):
        sm90_bwd.backward(q, q, q, q, None, None, q.clone(), q.clone(), q.clone(), False, 0.125, stages=4)
    # D256: a 2-slot Q ring beside a 1-slot dO ring (``sm90_bwd_d256``: no room for more)
    assert sm90_bwd.ring_stages(256) == 2 and "num_stages=2" in sm90_bwd.config_label(256)
    q = _t(1, 2, 256, 256)
    with pytest.raises(ValueError, match=r"stages must be one of \(2,\) at head dim 256, got 3"):
        sm90_bwd.backward(q, q, q, q, None, None, q.clone(), q.clone(), q.clone(), False, 0.125, stages=3)


def test_configuration_is_reported_by_name():
    assert sm90_bwd.config_label(256) == ("gluon_sm90_bwd_d256,BLOCK_M=64,BLOCK_N=64,num_warps=4+4+1,num_stages=2,"
                                          "tma=True,warp_specialize=True,dq=tma_reduce_add,dq_layout=split_head_dim")
    assert sm90_bwd.config_label(128).startswith("gluon_sm90_bwd,BLOCK_M=64,BLOCK_N=128")
    assert sm90_bwd.config_label(128).endswith("dq_layout=split_cols")
    assert sm90_bwd.config_label(64).startswith("gluon_sm90_bwd,BLOCK_M=128,BLOCK_N=128")
    assert sm90_bwd.config_label(64).endswith("dq_layout=split_rows")
    assert sm90_bwd.config_label(64, layout="per_consumer").startswith("gluon_sm90_bwd,BLOCK_M=64,")


def test_the_walk_is_downward_where_it_measured_faster():
    """``descending_walk``: D256 always (its kernel, dense inputs, windows included), D128 causal without a
    window from ``DESCENDING_MIN_N`` queries, never at D64; the launch log says so."""
    assert sm90_bwd.DESCENDING_MIN_N == 2048  # 1k measured slower downward, 2k faster
    assert sm90_bwd.descending_walk(256, 1024, False, False) and sm90_bwd.descending_walk(256, 1024, True, False)
    assert sm90_bwd.descending_walk(256, 4096, True, True)
    assert sm90_bwd.descending_walk(128, 4096, True, False) and sm90_bwd.descending_walk(128, 16384, True, False)
    assert sm90_bwd.descending_walk(128, 2048, True, False) and not sm90_bwd.descending_walk(128, 1024, True, False)
    assert not sm90_bwd.descending_walk(128, 16384, False, False)
    assert not sm90_bwd.descending_walk(128, 16384, True, True)
    assert not any(sm90_bwd.descending_walk(64, n, True, False) for n in (1024, 4096, 16384))
    assert sm90_bwd.config_label(128, descending=True) == sm90_bwd.config_label(128) + ",walk=descending"
    assert sm90_bwd.config_label(128, chunk_pairs=4, descending=True).endswith(",dq_chunk_pairs=4,walk=descending")


@pytest.mark.parametrize("D, n, causal, descending", [
    (128, 4096, True, True), (128, 1024, True, False), (128, 8192, False, False), (64, 4096, True, False),
])
def test_the_launch_walks_as_descending_walk_says(D, n, causal, descending, monkeypatch):
    """``backward`` builds the kernel with ``descending_walk``'s answer as its DESCENDING constexpr (the D256
    kernel has none: it walks downward always)."""
    kernel = _Launch()
    monkeypatch.setattr(sm90_bwd, "bwd_sm90_kernel", kernel)
    monkeypatch.setattr(sm90_bwd, "_dq_convert_kernel", _Launch())
    q, stats = _t(1, 2, n, D), torch.empty(1, 2, n)
    sm90_bwd.backward(q, q, q, q, stats, stats, q.clone(), q.clone(), q.clone(), causal, 0.125)
    assert kernel.calls[-1][2]["DESCENDING"] is descending is sm90_bwd.descending_walk(D, n, causal, False)
    assert sm90_bwd.kernel_constexprs(True, 256, 3, descending=True)["DESCENDING"] is True
    assert sm90_bwd.kernel_constexprs(True, 256, 3)["DESCENDING"] is False


@pytest.mark.parametrize("D, layout, block_m, tile", [
    (128, "split_cols", 64, [64, 64]),  # half the columns of a 64-row step over all 128 keys
    (128, "per_consumer", 64, [64, 128]),  # a consumer's 64 keys' partial of the whole tile
    (64, "split_rows", 128, [64, 64]),  # half the rows of a 128-row step over all 128 keys
    (64, "per_consumer", 64, [64, 64]),
    (256, "split_head_dim", 64, [64, 64]),  # a 64-column quarter of a 64-row step over the program's 64 keys
])
def test_each_dq_layout_reduces_its_tile(D, layout, block_m, tile):
    assert sm90_bwd.block_m(D, layout) == block_m and sm90_bwd.dq_tile(D, layout) == tile
    acc = torch.zeros(1, 2, 256, D)
    assert list(sm90_bwd.dq_descriptor(acc, layout).block_shape) == tile


@pytest.mark.parametrize("D, layout, words", [
    (64, "split_cols", "runs head dim 128, got 64"),  # a 32-column half is narrower than the 128-byte swizzle
    (128, "split_rows", "runs head dim 64, got 128"),  # a 128-row step at D128 needs 256 registers
    (128, "rows", "dq_layout must be one of split_cols, split_rows, per_consumer, split_head_dim"),
    (128, "split_head_dim", "runs head dim 256, got 128"),  # D256's own kernel
    (256, "split_cols", "runs head dim 128, got 256"),
])
def test_a_layout_the_head_dim_cannot_run_is_refused_before_any_launch(D, layout, words):
    assert sm90_bwd.dq_layout(128) == "split_cols" and sm90_bwd.dq_layout(64) == "split_rows"
    assert sm90_bwd.dq_layout(256) == "split_head_dim"
    q = _t(1, 2, 256, D)
    with pytest.raises(ValueError, match=words):
        sm90_bwd.backward(q, q, q, q, None, None, q.clone(), q.clone(), q.clone(), False, 0.125, layout=layout)


# bytes of stack a thread by (head dim, causal, window, dQ layout, packed, walked downward), as sm90_bwd's
# docstring states them
SPILLS = {(128, False, False, "split_cols", False, False): 8, (128, False, False, "per_consumer", False, False): 64,
          (128, True, False, "split_cols", False, False): 112, (128, True, False, "per_consumer", False, False): 208,
          (64, True, False, "split_rows", False, False): 136, (128, True, True, "split_cols", False, False): 160,
          (128, True, True, "per_consumer", False, False): 160, (64, True, True, "split_rows", False, False): 168,
          (128, False, False, "split_cols", True, False): 160, (128, True, False, "split_cols", True, False): 184,
          (128, True, True, "split_cols", True, False): 208, (64, False, False, "split_rows", True, False): 96,
          (64, True, False, "split_rows", True, False): 192, (64, True, True, "split_rows", True, False): 320,
          (128, True, False, "split_cols", False, True): 88, (128, True, False, "per_consumer", False, True): 208,
          (256, False, False, "split_head_dim", False, True): 152,
          (256, True, False, "split_head_dim", False, True): 192, (256, True, True, "split_head_dim", False, True): 8,
          (256, False, False, "split_head_dim", True, True): 8, (256, True, False, "split_head_dim", True, True): 48,
          (256, True, True, "split_head_dim", True, True): 64}


@pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")),
                    reason="this Triton build carries no NVIDIA toolchain")
def test_compiles_for_sm90_into_producer_and_consumers():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fa2_compile_report.py"), "--gluon-bwd",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    masks = ((False, False), (True, False), (True, True))
    dense = {(d, c, w, lay, False, False) for d in (64, 128) for c, w in masks
             for lay in ("per_consumer", sm90_bwd.dq_layout(d))}
    packed = {(d, c, w, sm90_bwd.dq_layout(d), True, False) for d in (64, 128) for c, w in masks}
    # D128 causal walked downward (``descending_walk``); D256, dense and packed: its own kernel, walked downward
    descending = {(128, True, False, lay, False, True) for lay in ("per_consumer", "split_cols")}
    d256 = {(256, c, w, "split_head_dim", varlen, True) for c, w in masks for varlen in (False, True)}
    assert {(r["head_dim"], r["causal"], r["window"], r["dq_layout"], r["varlen"], r["descending"])
            for r in rows} == dense | packed | descending | d256, proc.stderr[-2000:]
    for r in rows:
        key = (r["head_dim"], r["causal"], r["window"], r["dq_layout"], r["varlen"], r["descending"])
        where = "D={} causal={} window={} {} varlen={} descending={}".format(*key)
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["warps"] == 12, f"{where}: expected two consumer warp groups and the producer's"
        assert r["shared_bytes"] <= 232448, f"{where}: more shared memory than an H100 block may use"
        # D256: two Q slots, one dO slot, P^T and dS^T double-buffered and one dQ tile a consumer (225 KiB)
        assert r["head_dim"] != 256 or r["shared_bytes"] > 224 * 1024, f"{where}: not the layout sm90_bwd_d256 states"
        assert sm90_bwd.CONSUMER_REGS in r["setmaxnreg"], f"{where}: consumers not given the producer's registers"
        # the causal and packed builds but D64's per-consumer ones spill a little (sm90_bwd's docstring); the
        # others nothing
        allowed = SPILLS.get(key, 0)
        assert r["spill_bytes"] <= allowed, f"{where}: spills {r['spill_bytes']} bytes"
        # the asynchronous products overlap only if ptxas keeps them asynchronous (a value carried into the
        # next loop iteration while its product ran made it serialise every wgmma of the kernel)
        assert r["wgmma_serialized"] is False, f"{where}: ptxas serialised the wgmma instructions"
        # dense split builds start dP^T from zero: no read of S^T's registers before dP^T's issue, so ptxas injects
        # no wait for S^T there (packed and per-consumer builds start it from -Delta_i and keep one)
        split = r["dq_layout"] != "per_consumer"
        if split and not r["varlen"]:
            assert r["injected_waits"] == 0, f"{where}: ptxas injected {r['injected_waits']} wgmma waits"
        # D128's split builds issue dV's product before the wait for dP^T: every exponential of every key loop
        # precedes that wait
        loops = r["exps_before_dp_wait"]
        assert loops and all(n > 0 for _, n in loops), f"{where}: no key loop found in the SASS"
        if r["head_dim"] == 128 and split:
            assert all(before == n for before, n in loops), f"{where}: exponentials after dP^T's wait: {loops}"


@pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")),
                    reason="this Triton build carries no NVIDIA toolchain")
def test_the_descending_walk_is_refused_at_compile_time_with_a_window_or_a_packed_batch():
    """``DESCENDING`` is built for dense causal calls without a window only: asked for with a window or a packed
    batch, the kernel's static assertion stops the compile and says so."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; sys.path.insert(0, 'tools'); import fa2_compile_report as r\n"
            "for kw in ({'window': True}, {'varlen': True}):\n"
            "    try:\n"
            "        r.compile_sm90_gluon_bwd(128, True, descending=True, **kw)\n"
            "    except Exception as e:\n"
            "        print(type(e).__name__, 'descending walk is built for dense causal calls' in str(e))\n"
            "    else:\n"
            "        print('compiled')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.stdout.splitlines() == ["CompileTimeAssertionFailure True"] * 2, proc.stdout + proc.stderr[-2000:]


class _Launch:
    """Stands in for a kernel: records what ``kernel[grid](*args, **kwargs)`` was given."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


@pytest.mark.parametrize("D", [128, 64])
def test_the_host_path_launches_the_kernel_and_the_dq_conversion(D, monkeypatch):
    """``backward`` and ``backward_varlen`` up to the launches, on CPU tensors (descriptors are host objects):
    the grid, the base-2 scale, the window's reach, the constexprs of the head dim's layout and ring depth, L and
    Delta (1-D descriptors of one query block dense, the tensors themselves packed), and the fp32 accumulator
    handed to the conversion kernel."""
    kernel, convert = _Launch(), _Launch()
    monkeypatch.setattr(sm90_bwd, "bwd_sm90_kernel", kernel)
    monkeypatch.setattr(sm90_bwd, "_dq_convert_kernel", convert)
    q, k = _t(2, 4, 256, D), _t(2, 2, 512, D)
    stats = torch.empty(2, 4, 256)
    sm90_bwd.backward(q, k, k, q, stats, stats, q.clone(), k.clone(), k.clone(), True, 0.125, window_left=300)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (512 // 128, 2 * 2)
    assert args[9] == pytest.approx(0.125 * sm90_bwd.LOG2E) and args[10] == 0.125 and args[15] == 300
    assert list(args[6].block_shape) == sm90_bwd.dq_tile(D, sm90_bwd.dq_layout(D))
    for desc in args[7:9]:  # the producer loads a step's L_i and Delta_i with Q_i and dO_i
        assert desc.base.data_ptr() == stats.data_ptr() and list(desc.shape) == [stats.numel()]
        assert list(desc.block_shape) == [sm90_bwd.block_m(D, sm90_bwd.dq_layout(D))]
    assert kwargs["WINDOW"] and kwargs["CAUSAL"] and not kwargs["VARLEN"]
    assert kwargs["STAGES"] == sm90_bwd.ring_stages(D, window=True) == 2
    assert convert.calls[-1][1][0].dtype == torch.float32 and convert.calls[-1][1][0].shape == q.shape

    cu = torch.tensor([0, 100, 256], dtype=torch.int32)
    table = torch.zeros(5, 2, dtype=torch.int32)
    pq, pk = _t(256, 4, D), _t(512, 2, D)
    pstats = torch.empty(4, 256)
    sm90_bwd.backward_varlen(pq, pk, pk, pq, pstats, pstats, pq.clone(), pk.clone(), pk.clone(), cu, cu, table,
                             False, 0.2)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (5, 2) and kwargs["VARLEN"] and not kwargs["CAUSAL"] and args[15] == 0
    assert args[7] is pstats and args[8] is pstats  # a sequence's rows start anywhere: the consumers read them
    assert kwargs["STAGES"] == sm90_bwd.ring_stages(D)
    assert list(args[6].block_shape) == sm90_bwd.dq_tile(D, sm90_bwd.dq_layout(D))
    assert convert.calls[-1][1][0].shape == pq.shape


def test_the_host_path_launches_the_d256_kernel_and_the_dq_conversion(monkeypatch):
    """At D256 ``backward`` launches ``sm90_bwd_d256``'s kernel: one program per 64 keys and (batch, kv head), Q and
    dO in 64-row tiles, K and V in 64-key tiles, dK and dV stored a consumer's 128 columns at a time, dQ reduced in
    (64, 64) tiles, L and Delta in 64-value tiles, a causal window's left reach (0 without), no packed arguments;
    then the conversion."""
    kernel, convert = _Launch(), _Launch()
    monkeypatch.setattr(sm90_bwd_d256, "bwd_sm90_d256_kernel", kernel)
    monkeypatch.setattr(sm90_bwd, "_dq_convert_kernel", convert)
    q, k = _t(2, 4, 256, 256), _t(2, 2, 512, 256)
    stats = torch.empty(2, 4, 256)
    sm90_bwd.backward(q, k, k, q, stats, stats, q.clone(), k.clone(), k.clone(), True, 0.125)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (512 // 64, 2 * 2)
    assert [list(d.block_shape) for d in args[:7]] == [[64, 256], [64, 256], [64, 256], [64, 256], [64, 128],
                                                       [64, 128], [64, 64]]
    assert [list(d.block_shape) for d in args[7:9]] == [[64], [64]]
    assert args[9] == pytest.approx(0.125 * sm90_bwd.LOG2E) and args[10:16] == (0.125, 4, 2, 256, 512, 0)
    assert args[16:] == (None,) * 5  # the packed-only pointers
    assert kwargs["CAUSAL"] and kwargs["GROUP_PROGRAMS"] == 256 and not kwargs["WINDOW"] and not kwargs["VARLEN"]
    assert convert.calls[-1][1][0].dtype == torch.float32 and convert.calls[-1][1][0].shape == q.shape
    with pytest.raises(ValueError, match="a window needs causal"):
        sm90_bwd.backward(q, k, k, q, stats, stats, q.clone(), k.clone(), k.clone(), False, 0.125, window_left=8)
    # a causal window: its left reach travels as WIN_LEFT, the WINDOW build launched
    sm90_bwd.backward(q, k, k, q, stats, stats, q.clone(), k.clone(), k.clone(), True, 0.125, window_left=300)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (512 // 64, 2 * 2) and args[10:16] == (0.125, 4, 2, 256, 512, 300)
    assert kwargs["CAUSAL"] and kwargs["WINDOW"]
    # packed: the (sequence, 64-key block) table's rows by kv head, descriptors over the (total, heads * 256) views
    # (a head is a column offset), L and Delta the (H, total_q) tensors themselves, the offsets and table, and the
    # grid grouped whether causal or not
    cu = torch.tensor([0, 100, 300], dtype=torch.int32)
    table = torch.zeros(7, 2, dtype=torch.int32)
    pq, pk = _t(300, 4, 256), _t(300, 2, 256)
    pstats = torch.empty(4, 300)
    dq, dk, dv = pq.clone(), pk.clone(), pk.clone()
    sm90_bwd.backward_varlen(pq, pk, pk, pq, pstats, pstats, dq, dk, dv, cu, cu, table, False, 0.2)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (7, 2) and kwargs["VARLEN"] and not kwargs["CAUSAL"] and kwargs["GROUP_PROGRAMS"] == 256
    assert [(list(d.shape), list(d.block_shape)) for d in args[:7]] == [
        ([300, 1024], [64, 256]), ([300, 1024], [64, 256]), ([300, 512], [64, 256]), ([300, 512], [64, 256]),
        ([300, 512], [64, 128]), ([300, 512], [64, 128]), ([300, 1024], [64, 64])]
    assert args[7] is pstats and args[8] is pstats and args[10:16] == (0.2, 4, 2, 300, 300, 0)
    assert args[16] is dk and args[17] is dv and args[18] is cu and args[19] is cu and args[20] is table
    assert convert.calls[-1][1][0].shape == pq.shape


def test_a_statistic_tma_cannot_read_in_place_is_copied():
    """TMA reads from 16-byte aligned addresses only: L or Delta in a view that starts elsewhere is copied (same
    values), an aligned one is read where it is."""
    buf = torch.arange(1 + 2 * 256, dtype=torch.float32)
    aligned, shifted = buf[:512].view(2, 256), buf[1:].view(2, 256)
    assert sm90_bwd.stat_descriptor(aligned, 64).base.data_ptr() == aligned.data_ptr()
    desc = sm90_bwd.stat_descriptor(shifted, 64)
    assert desc.base.data_ptr() % 16 == 0 and torch.equal(desc.base, shifted.reshape(-1))
    assert list(desc.block_shape) == [64] and list(desc.shape) == [512]


def test_a_callers_zeroed_accumulator_is_used_and_a_wrong_one_refused(monkeypatch):
    """``dq_acc`` (zeroed by the launcher's Delta kernel) is the tensor the kernel reduces into and the conversion
    reads; one of another dtype, shape or layout is a ValueError before any launch."""
    kernel, convert = _Launch(), _Launch()
    monkeypatch.setattr(sm90_bwd, "bwd_sm90_kernel", kernel)
    monkeypatch.setattr(sm90_bwd, "_dq_convert_kernel", convert)
    q = _t(1, 2, 256, 128)
    stats = torch.empty(1, 2, 256)
    acc = torch.zeros(q.shape, dtype=torch.float32)
    sm90_bwd.backward(q, q, q, q, stats, stats, q.clone(), q.clone(), q.clone(), False, 0.125, dq_acc=acc)
    assert kernel.calls[-1][1][6].base.data_ptr() == acc.data_ptr() and convert.calls[-1][1][0] is acc
    for bad in (acc.half(), acc[:, :1], acc.transpose(1, 2).contiguous().transpose(1, 2)):
        with pytest.raises(ValueError, match="dq_acc must be a contiguous float32 tensor shaped"):
            sm90_bwd.backward(q, q, q, q, stats, stats, q.clone(), q.clone(), q.clone(), False, 0.125, dq_acc=bad)
    assert len(kernel.calls) == 1


def _emulated_kernel(launches: list):
    """Stands in for ``bwd_sm90_kernel``: from its descriptors' bases (the chunk's views) it computes the chunk's
    gradients exactly (fp32 autograd), stores dK and dV and adds dQ / sm_scale into the accumulator, as the kernel's
    reduce-adds do; each launch's grid, heads and accumulator are recorded."""
    def launch(grid):
        def run(q_d, do_d, k_d, v_d, dk_d, dv_d, dq_d, lse_d, delta_d, qk_scale, sm_scale, H, group, n_q, n_kv,
                *rest, **meta):
            pairs, D = grid[1], q_d.base.shape[-1]  # program (j, p): kv head p's keys, query heads p * group ..
            assert grid[0] == n_kv // 128 and q_d.base.numel() == pairs * group * n_q * D and H % group == 0
            assert H == q_d.base.shape[1]  # the heads of what the launch reads: B's H, or a chunk view's GROUP
            q, do = (d.base.float().reshape(pairs, group, n_q, D) for d in (q_d, do_d))
            k, v = (d.base.float().reshape(pairs, 1, n_kv, D).requires_grad_() for d in (k_d, v_d))
            q.requires_grad_()
            s = q @ k.transpose(-1, -2) * sm_scale
            if meta["CAUSAL"]:
                s = s.masked_fill(torch.ones(n_q, n_kv, dtype=torch.bool).triu(1 + n_kv - n_q), float("-inf"))
            (s.softmax(-1) @ v).backward(do)
            dk_d.base.view(k.shape).copy_(k.grad)
            dv_d.base.view(v.shape).copy_(v.grad)
            dq_d.base.view(q.shape).add_(q.grad / sm_scale)
            launches.append((grid, dq_d.base.data_ptr(), q_d.base.data_ptr()))
        return run
    return type("Emulated", (), {"__getitem__": lambda self, grid: launch(grid)})()


@pytest.mark.parametrize("chunk_pairs, grids", [(None, [6]), (4, [4, 2]), (1, [1] * 6), (3, [3, 3]), (99, [6])])
@pytest.mark.parametrize("causal", [False, True])
def test_chunked_pairs_give_the_gradients_of_one_launch(chunk_pairs, grids, causal, monkeypatch):
    """``chunk_pairs`` runs the (batch, kv head) pairs in launches of that many, each into the same chunk-sized
    accumulator (``accumulator_shape``) that the chunk's conversion (the real Triton kernel, interpreted) zeroes
    for the next: with the kernel emulated exactly, dQ, dK and dV (GQA, B3 H4 Hkv2: 6 pairs, 2 query heads a
    pair) are the reference's whatever the chunks, and each chunk reads its own pairs' rows."""
    launches = []
    monkeypatch.setattr(sm90_bwd, "bwd_sm90_kernel", _emulated_kernel(launches))
    q, k, v, do = make_inputs(3, 4, 2, 128, 128, 64, torch.float16, seed=7)
    ref = [t.clone().float().requires_grad_() for t in (q, k, v)]
    scale = 64 ** -0.5
    s = ref[0] @ ref[1].repeat_interleave(2, 1).transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(torch.ones(128, 128, dtype=torch.bool).triu(1), float("-inf"))
    (s.softmax(-1) @ ref[2].repeat_interleave(2, 1)).backward(do.float())
    stats = torch.zeros(3, 4, 128)
    grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    shape = sm90_bwd.accumulator_shape(tuple(q.shape), 2, chunk_pairs)
    assert shape == ((min(chunk_pairs, 6), 2, 128, 64) if chunk_pairs and chunk_pairs < 6 else tuple(q.shape))
    sm90_bwd.backward(q, k, v, do, stats, stats, *grads, causal, scale, chunk_pairs=chunk_pairs)
    assert [grid[1] for grid, _, _ in launches] == grids
    assert len({acc for _, acc, _ in launches}) == 1  # one accumulator serves every chunk
    pair = 2 * 128 * 64 * q.element_size()  # a pair's query rows: 2 heads
    assert [(ptr - q.data_ptr()) // pair for _, _, ptr in launches] == [sum(grids[:i]) for i in range(len(grids))]
    for got, want in zip(grads, ref):
        assert torch.allclose(got.float(), want.grad, atol=2e-3, rtol=2e-3)


def test_chunks_are_about_so_many_waves_of_programs_and_balanced():
    """``dq_chunk_pairs``: pairs of n_kv / 128 programs each (n_kv / 64 at D256), chunks of about ``chunk_waves``
    x SMs programs, balanced to within a pair; 0 waves, or a problem that fits one chunk, is one launch of every
    pair."""
    # 16k tokens, hidden 2048 at N 4096: 64 pairs of 32 programs; 4 waves on 132 SMs = 528 programs, 16.5 pairs
    assert sm90_bwd.dq_chunk_pairs((4, 16, 4096, 128), 16, 4096, 4, 132) == 16  # 4 chunks of 16 (17 would make 4)
    assert sm90_bwd.dq_chunk_pairs((4, 16, 4096, 128), 16, 4096, 0, 132) == 64
    assert sm90_bwd.dq_chunk_pairs((4, 16, 4096, 128), 16, 4096, 16, 132) == 64  # 2048 programs < 16 waves
    assert sm90_bwd.dq_chunk_pairs((1, 16, 16384, 128), 16, 16384, 4, 132) == 4  # 128 programs a pair
    assert sm90_bwd.dq_chunk_pairs((1, 8, 131072, 128), 2, 131072, 1, 132) == 1  # a pair is more than the chunk
    assert sm90_bwd.dq_chunk_pairs((7, 1, 4096, 64), 1, 4096, 1, 64) == 2  # 7 pairs: 4 chunks of 2 (the last 1)
    # below 4096 queries a program is counted as its share of a 4096-query one: at N 1k (the sweep's B16 H16) four
    # times as many programs make a chunk, so the 256 pairs of 8 programs are one launch; at N 2k, D64 B8 H32, 256
    # pairs of 16 programs, two chunks of 128 (8 waves of 132 programs of 2048 queries: 132 pairs)
    assert sm90_bwd.dq_chunk_pairs((16, 16, 1024, 128), 16, 1024, 8, 132) == 256
    assert sm90_bwd.dq_chunk_pairs((8, 32, 2048, 64), 32, 2048, 8, 132) == 128
    assert sm90_bwd.dq_chunk_pairs((7, 1, 1024, 64), 1, 1024, 1, 16) == 7  # 16 x 4 short programs: all 56
    assert sm90_bwd.dq_chunk_pairs((7, 1, 1024, 64), 1, 1024, 1, 8) == 4  # 32 short programs: 2 chunks of 4 and 3
    assert sm90_bwd.dq_chunk_pairs((64, 1, 256, 64), 1, 1024, 1, 4) == 8  # the queries count (by keys: 2)
    # D256: 64-key programs (``sm90_bwd_d256``), 64 a pair at N 4096: 8 waves of 132 = 1056 programs, 16.5 pairs
    assert sm90_bwd.dq_chunk_pairs((4, 8, 4096, 256), 8, 4096, 8, 132) == 16  # 2 chunks of 16
    with pytest.raises(ValueError, match="chunk_pairs must be an int >= 1"):
        sm90_bwd.prepare_backward((1, 2, 128, 64), 2, 128, False, 0.1, chunk_pairs=0)


def test_the_accumulator_is_bounded_by_the_gpu_or_one_kv_head_never_by_batch_and_heads():
    """The peak-memory claim of the chunked dQ accumulator (DESIGN.md): over batches, heads, GQA groups and sequence
    lengths it holds at most about ``waves x SMs`` programs' rows (``waves * sms * BLOCK_N * GROUP * D * 4`` bytes,
    times 4096 / N below 4096 queries) plus one (batch, kv head) pair's, so it stops growing with batch and heads
    once a chunk is full, and grows with N only where one pair is more than a chunk (a buffer linear in N, as the
    O(N) statistics are)."""
    block, waves, sms = sm90_bwd.BLOCK_N, 8, 132
    for d in (64, 128):
        for group, kv_heads in ((1, 16), (1, 32), (4, 8), (8, 2)):
            for n in (512, 1024, 4096, 16384, 131072):
                sizes = []
                scale = max(1, sm90_bwd.CHUNK_REF_N // n)
                for batch in (1, 4, 16, 64, 256):
                    q_shape = (batch, kv_heads * group, n, d)
                    pairs = sm90_bwd.dq_chunk_pairs(q_shape, kv_heads, n, waves, sms)
                    acc = 4 * math.prod(sm90_bwd.accumulator_shape(q_shape, kv_heads, pairs))
                    pair = 4 * group * n * d
                    assert acc <= waves * sms * block * group * d * 4 * scale + pair, (d, group, kv_heads, n, batch)
                    sizes.append(acc)
                full = [s for s, batch in zip(sizes, (1, 4, 16, 64, 256))
                        if batch * kv_heads * n // block > 2 * waves * sms * scale]
                # past two chunks' worth of programs, more batches make more chunks, not a larger one (chunks are
                # balanced, so the size moves by at most a pair)
                assert max(full, default=0) - min(full, default=0) <= 4 * group * n * d, (d, group, n, sizes)


def test_the_chunk_option_is_checked_and_the_launcher_hands_on_its_chunks(monkeypatch):
    """``FA2Options.dq_chunk_waves`` (8 by default; 0: one launch) reaches the Gluon backward as chunk pairs, with a
    zeroed chunk-sized accumulator (the allocation poisoned: the launcher zeroes it, not the Delta kernel), and the
    launch log names the chunk; where one chunk holds every pair, it is one launch into a whole accumulator."""
    assert FA2Options().dq_chunk_waves == 8
    with pytest.raises(ValueError, match="dq_chunk_waves must be an int >= 0"):
        FA2Options(dq_chunk_waves=-1)
    assert hash(FA2Options(dq_chunk_waves=4)) != hash(FA2Options())
    _as_on_a_hopper_gpu(monkeypatch, chunk_ref_n=128)  # these 128-query shapes make several chunks
    seen = {}

    def gluon_backward(q, k, v, do, lse, delta, dq, dk, dv, causal, sm_scale, group_programs, window_left=-1,
                       dq_acc=None, chunk_pairs=None):
        seen.update(chunk_pairs=chunk_pairs, dq_acc=dq_acc.clone())
        for g in (dq, dk, dv):
            g.zero_()

    fake_gluon_backward(monkeypatch, gluon_backward, sms=1)
    _forbid_triton_backward(monkeypatch)
    q, k, v, do = make_inputs(3, 4, 2, 128, 128, 32, torch.float32, seed=3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    log = {}
    flash_attn_v2(*leaves, causal=True, options=FA2Options(dq_chunk_waves=2), launch_log=log).backward(do)
    # 6 pairs of one 128-key program; 2 waves of 1 SM: chunks of 2 pairs, which the launch log records
    assert seen["chunk_pairs"] == 2 and torch.equal(seen["dq_acc"], torch.zeros(2, 2, 128, 32))
    assert log["bwd_dq"] == sm90_bwd.config_label(32, chunk_pairs=2) == sm90_bwd.config_label(32) + ",dq_chunk_pairs=2"
    flash_attn_v2(*[t.clone().requires_grad_() for t in (q, k, v)], causal=True,
                  options=FA2Options(dq_chunk_waves=6), launch_log=log).backward(do)
    assert seen["chunk_pairs"] is None and log["bwd_dq"] == sm90_bwd.config_label(32)  # 6 waves: all 6 pairs
    assert tuple(seen["dq_acc"].shape) == q.shape


# The dQ tile's conflict-free store (``_store_dq``), checked on the CPU: the view's layout must put every value
# where the TMA reduce reads it, and the stores it makes must cover all banks.
def _tma_offset(row: int, col: int, rows: int) -> int:
    """The element offset TMA's 128-byte swizzle gives fp32 (row, col) of a (rows, C) tile: 32-column blocks of
    rows x 128 bytes, 16-byte unit XOR row mod 8 (written out here, not taken from Triton)."""
    block, c = divmod(col, 32)
    return block * rows * 32 + row * 32 + (((c // 4) ^ (row % 8)) * 4) + c % 4


def _view_coords(bases) -> dict:
    """offset -> (row, col) of a shared linear layout: the XOR of the bases of the offset's set bits."""
    coords = {}
    for offset in range(1 << len(bases)):
        r = c = 0
        for bit, (br, bc) in enumerate(bases):
            if offset >> bit & 1:
                r, c = r ^ br, c ^ bc
        coords[offset] = (r, c)
    return coords


@pytest.mark.parametrize("rows, cols", [(64, 64), (64, 128)])
def test_the_dq_view_puts_each_value_where_the_tma_reduce_reads_it(rows, cols):
    # the tile the view reinterprets has the swizzle written out in _tma_offset
    assert sm90_bwd.dq_descriptor(torch.zeros(1, 1, 64, 128), "split_cols").layout.swizzle_byte_width == 128
    coords = _view_coords(sm90_bwd_common._dq_swapped_view(rows, cols).offset_bases)
    assert sorted(coords.values()) == [(r, c) for r in range(rows) for c in range(cols)]  # a bijection
    for offset, (r, c) in coords.items():
        # the view's (r, c) holds, on odd rows, the value of column c ^ 16 (the exchanged group)
        assert _tma_offset(r, c ^ (16 if r % 2 else 0), rows) == offset


@pytest.mark.parametrize("swapped", [False, True])
def test_the_dq_stores_take_one_wavefront_a_half_warp_only_when_swapped(swapped):
    # the wgmma accumulator: lane l holds rows l // 4 (+ 8) and columns 8 g + 2 (l % 4) (+ 1) of each group g;
    # store i writes the register pair of group i (of each row half), 8 bytes a lane, 16 lanes a wavefront at best
    rows = 64
    view = {v: k for k, v in _view_coords(sm90_bwd_common._dq_swapped_view(rows, 64).offset_bases).items()}
    worst = 0
    for group in range(8):
        for row_half in (0, 8):
            for half in (0, 1):
                banks = {}
                for lane in range(16 * half, 16 * half + 16):
                    r = lane // 4 + row_half
                    for k in (0, 1):
                        c = 8 * group + 2 * (lane % 4) + k
                        offset = view[(r, c)] if swapped else _tma_offset(r, c, rows)
                        banks.setdefault(offset % 32, set()).add(offset)
                worst = max(worst, max(len(words) for words in banks.values()))
    assert worst == (1 if swapped else 2)


def test_the_sm_count_is_asked_once_a_device_and_none_means_the_current_one(monkeypatch):
    """``_validate.sm_count``, which sizes the dQ chunks: None is the current device, resolved before the cache (so
    a later current device is not answered with the first one's count), and each device is asked once."""
    from flashbench_kernels import _validate

    asked = []
    current = [0]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: asked.append(index) or type("Props", (), {"multi_processor_count": 100 + index}))
    _validate._sm_count.cache_clear()
    try:
        assert _validate.sm_count(None) == 100 and _validate.sm_count(0) == 100
        current[0] = 1
        assert _validate.sm_count(None) == 101 and _validate.sm_count(1) == 101
        assert asked == [0, 1]
    finally:
        _validate._sm_count.cache_clear()
