"""``flash_attn_varlen``: packed batches of sequences of different lengths, forward and gradients,
program tables, validation.

Each sequence is checked against the fp64 reference of that sequence alone (bottom-right causal and
windows aligned within it, its own Nq_b and Nkv_b), by flash-attention's rule, with every buffer the
launcher allocates NaN-poisoned.  CPU interpreter: tiny shapes, fp16 and fp32, the interpreter's
fixed tiles (32-row query blocks, 32-key dK/dV blocks), so sequences of 1, 17, 5 and 33 tokens give
programs with one row, tails and several blocks.  The GPU grid is ``tests/gpu/test_fa2_window_varlen_gpu.py``.
"""
from __future__ import annotations

import random

import pytest
import torch

import flashbench
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import flashbench_kernels._validate as validate
from flashbench_kernels import _schedule
from flashbench_kernels._schedule import SequenceBlocks
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, flash_attn_varlen, launch, sm90, spaces
from kernel_checks import (DEV, check_varlen_against_reference, cu_seqlens, make_inputs, make_packed_inputs,
                           only_padding_tables, poisoned_empty, repeat_without_sync, tma_unavailable)


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


def _outputs(q, k, v, do, cu_q, cu_k, max_q, max_k, causal, window, **kwargs):
    """Output and (dq, dk, dv) of one call on leaf copies (every launcher buffer NaN-poisoned)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_varlen(*leaves, cu_q, cu_k, max_q, max_k, causal, window=window, **kwargs)
    out.backward(do)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_unchecked_values_give_the_checked_results_bit_for_bit(case):
    """check_values=False runs the same tables and kernels: forward and the three gradients are equal
    bit for bit, and every element is written (the launcher's buffers start as NaN; padding programs
    write nothing, real ones everything: a NaN left over or a stray write would show)."""
    lq, lk, H, Hkv, D, causal, window = case
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, D, torch.float16, seed=sum(lq) + 7 * sum(lk))
    checked = _outputs(q, k, v, do, cu_q, cu_k, max(lq), max(lk), causal, window)
    unchecked = _outputs(q, k, v, do, cu_q, cu_k, max(lq), max(lk), causal, window, check_values=False)
    for name, a, b in zip(("out", "dq", "dk", "dv"), checked, unchecked):
        assert not b.isnan().any(), f"{name}: an element was left unwritten"
        assert torch.equal(a, b), name


@pytest.mark.parametrize("path", ["ptr", "tma"])
def test_padding_programs_write_nothing(path, monkeypatch):
    """A table of nothing but padding rows: the outputs and gradients stay NaN (the launcher poisons
    them), on the pointer path and on the tensor-descriptor path (whose descriptors span >= 1 row).

    The backward's tables are made padding only after a forward on the real ones: behind a padding-only
    forward, O and LSE are NaN, so whatever a backward program wrote would be NaN as well and could not
    be told from an element left unwritten."""
    if path == "tma" and tma_unavailable():
        pytest.skip("tensor descriptors need compute capability >= 9")
    q, k, v, do, cu_q, cu_k = make_packed_inputs([32, 3], [9, 30], 2, 2, 32, torch.float32, seed=5)
    args = (cu_q, cu_k, 32, 30, True)
    kwargs = dict(window=(4, -1), check_values=False, options=FA2Options(path=path))
    with monkeypatch.context() as m, torch.no_grad():
        only_padding_tables(m)
        out = flash_attn_varlen(q, k, v, *args, **kwargs)
    assert out.isnan().all(), f"out: a padding program wrote {int((~out.isnan()).sum())} elements"
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_attn_varlen(*leaves, *args, **kwargs)  # the real tables: O and LSE written
    assert not out.isnan().any()
    only_padding_tables(monkeypatch)
    out.backward(do)
    for name, t in zip(("dq", "dk", "dv"), (leaf.grad for leaf in leaves)):
        assert t.isnan().all(), f"{name}: a padding program wrote {int((~t.isnan()).sum())} elements"


@pytest.mark.parametrize("check_values", [True, False])
def test_max_seqlen_larger_than_the_longest_sequence(check_values):
    """max_seqlen_* above the longest sequences (flash-attn's API asks only >=) are accepted and change nothing:
    output and gradients equal bit for bit, values checked or not, up to 2**40 (capped at total_q). The window's
    unbounded left side is where max_seqlen reaches the kernels' arguments (max_seqlen_q + max_seqlen_k)."""
    q, k, v, do, cu_q, cu_k = make_packed_inputs([3, 40, 1, 9], [20, 7, 1, 45], 4, 2, 32, torch.float16, seed=11)
    exact = _outputs(q, k, v, do, cu_q, cu_k, 40, 45, False, (-1, 3), check_values=check_values)
    for max_q, max_k in ((41, 46), (53, 73), (2**40, 1000)):  # 2**40: capped at total_q
        larger = _outputs(q, k, v, do, cu_q, cu_k, max_q, max_k, False, (-1, 3), check_values=check_values)
        assert all(torch.equal(a, b) for a, b in zip(exact, larger))


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
def _visible_span(first, last, n_other, shift, reach_before, reach_after):
    """``_schedule.visible_span`` in torch operations, for the reference tables."""
    start = (first + shift - reach_before).clamp(min=0)
    end = torch.minimum(n_other, last + shift + reach_after + 1)
    return start, torch.maximum(end, start)


def _host_table(own, other, reach, block):
    """The program table as the host built it before the tables moved to the device: one row per real
    block, in (sequence, block) order, then stably sorted by visible span, longest first."""
    own, other = torch.tensor(own), torch.tensor(other)
    n_blocks = (own + block - 1) // block
    seq = torch.repeat_interleave(torch.arange(len(own)), n_blocks)
    starts = torch.cumsum(n_blocks, 0) - n_blocks
    blk = torch.arange(len(seq)) - torch.repeat_interleave(starts, n_blocks)
    first = blk * block
    last = torch.minimum(first + block, own[seq]) - 1
    lo, hi = _visible_span(first, last, other[seq], other[seq] - own[seq], *reach)
    order = torch.sort(hi - lo, descending=True, stable=True).indices
    return torch.stack([seq[order], blk[order]], dim=1).tolist()


TABLE_LENGTHS = [([1, 17, 0, 33, 5, 130], [40, 17, 9, 3, 0, 100]), ([32, 32, 64], [1, 70, 64]), ([0, 0, 3], [2, 0, 0])]


@pytest.mark.parametrize("lengths", TABLE_LENGTHS, ids=["mixed", "whole-blocks", "mostly-empty"])
@pytest.mark.parametrize("reach", [(10**6, 10**6), (10**6, 0), (5, 2)])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_device_table_is_the_host_table_then_padding(block, reach, lengths):
    own, other = lengths
    blocks = SequenceBlocks(cu_seqlens(own), cu_seqlens(other), sum(own), *reach, "BLOCK_M")
    table = blocks.table(block)
    assert table.dtype == torch.int32 and table.device == cu_seqlens(own).device
    rows = table.tolist()
    assert blocks.count({"BLOCK_M": block}) == len(rows) == sum(own) // block + len(own)  # from shapes alone
    host = _host_table(own, other, reach, block)
    # the real rows: the same (sequence, block) rows in the same heaviest-first order; then padding
    assert rows[:len(host)] == host
    assert rows[len(host):] == [[-1, 0]] * (len(rows) - len(host))
    assert blocks.table(block) is table  # built once per block size


def _torch_table(cu_own, cu_other, total_own, reach, block):
    """The table as torch operations built it on the device before the Triton build (the definition, in
    about 25 launches): any offsets, clamped lengths, padding rows (-1, 0) last."""
    batch = cu_own.shape[0] - 1
    own = torch.diff(cu_own.long()).clamp(min=0)
    other = torch.diff(cu_other.long()).clamp(min=0)
    n_blocks = (own + block - 1) // block
    ends = torch.cumsum(n_blocks, 0)
    j = torch.arange(total_own // block + batch, device=cu_own.device)
    seq = torch.searchsorted(ends, j, right=True)
    real = seq < batch
    seq = seq.clamp(max=batch - 1)
    blk = j - (ends - n_blocks)[seq]
    own_b, other_b = own[seq], other[seq]
    first = blk * block
    last = torch.minimum(first + block, own_b) - 1
    lo, hi = _visible_span(first, last, other_b, other_b - own_b, *reach)
    work = torch.where(real, hi - lo, -1)
    order = torch.sort(work, descending=True, stable=True).indices
    rows = torch.stack([torch.where(real, seq, -1), torch.where(real, blk, 0)], dim=1)
    return rows[order].to(torch.int32)


def _random_lengths(rng, batch, longest):
    """Lengths with the edges over-represented: empty, one token, whole blocks and one past them."""
    pick = lambda: rng.choice([0, 1, 16, 17, 64, 127, 128, 129, rng.randint(0, longest)])  # noqa: E731
    return [pick() for _ in range(batch)]


REACHES = [(10**6, 10**6), (10**6, 0), (0, 10**6), (0, 0), (5, 2), (130, 1)]


@pytest.mark.parametrize("batch", [1, 2, 7, 65, 300])
def test_table_is_the_torch_definition_bit_for_bit(batch):
    """Random packed batches (own and other lengths drawn apart, so Nq_b != Nkv_b), every reach and
    block size: the Triton-built table equals the torch definition, padding included.  A batch of 300
    spans two tiles of the batch (``_schedule._TABLE_TILE``), its tables several programs and tiles."""
    rng = random.Random(batch)
    for _ in range(4 if batch < 300 else 2):
        own, other = _random_lengths(rng, batch, 300), _random_lengths(rng, batch, 300)
        cu_own, cu_other = cu_seqlens(own), cu_seqlens(other)
        reach, block = rng.choice(REACHES), rng.choice([16, 64, 128])
        table = SequenceBlocks(cu_own, cu_other, sum(own), *reach, "BLOCK_M").table(block)
        expected = _torch_table(cu_own, cu_other, sum(own), reach, block)
        assert table.dtype == torch.int32 and table.shape == expected.shape
        assert torch.equal(table, expected), (own, other, reach, block)


@pytest.mark.parametrize("reach", [(10**6, 10**6), (3, 0)])
@pytest.mark.parametrize("block", [16, 128])
def test_table_of_equal_sequences_keeps_ties_in_sequence_order(block, reach):
    # equal work everywhere but at the causal edge: the stable order is what tells the tables apart
    own = [2048] * 8 if block == 128 else [100] * 8
    cu = cu_seqlens(own)
    table = SequenceBlocks(cu, cu, sum(own), *reach, "BLOCK_M").table(block)
    assert torch.equal(table, _torch_table(cu, cu, sum(own), reach, block))


GARBAGE = [
    [5, 3, 0, 7],  # decreasing then increasing: lengths 0 and 7
    [0, -40, -3, -100, 2],  # negative offsets
    [10, 10, 10],  # nothing but empty sequences
    [-2**31, 2**31 - 1, 0, 2**31 - 1],  # the int32 extremes: lengths of 2^32 - 1 (int64 sums)
    [100, 0],  # one sequence, negative length
]


@pytest.mark.parametrize("total", [0, 1, 130])
@pytest.mark.parametrize("cu", GARBAGE, ids=lambda cu: "_".join(map(str, cu)))
def test_garbage_offsets_give_a_table_of_the_right_shape(cu, total):
    """Unchecked offsets are trusted, never checked: the table has the rows the shapes give and is the
    definition's (lengths clamped at 0), nothing raises."""
    cu_own = torch.tensor(cu, dtype=torch.int32, device=DEV)
    cu_other = cu_own.flip(0).contiguous()
    for block in (16, 64):
        table = SequenceBlocks(cu_own, cu_other, total, 7, 1, "BLOCK_M").table(block)
        assert table.shape == (total // block + len(cu) - 1, 2)
        assert torch.equal(table, _torch_table(cu_own, cu_other, total, (7, 1), block))


class _TorchOps(TorchDispatchMode):
    """Records the torch operators called, except those inside a Triton launch (the interpreter copies
    its arguments with torch)."""

    def __init__(self):
        super().__init__()
        self.ops, self.launches, self.inside = [], [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_building_a_table_is_two_launches_and_allocations(monkeypatch):
    """On the host, a table is three allocations and two Triton launches with a grid from shapes: no
    operator that could read a value back (``item``, ``nonzero``, boolean masks) and no torch kernel.
    (On a GPU, ``test_tables_are_built_on_the_gpu_without_a_host_sync`` runs it with syncs an error.)"""
    mode = _TorchOps()

    class Recorded:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                mode.launches.append((self.kernel.fn.__name__, grid))
                mode.inside = True
                try:
                    return self.kernel[grid](*args, **kwargs)
                finally:
                    mode.inside = False
            return launch

    for name in ("_sequence_rows", "_sorted_rows"):
        monkeypatch.setattr(_schedule, name, Recorded(getattr(_schedule, name)))
    own = [1, 17, 0, 33, 5, 130]
    blocks = SequenceBlocks(cu_seqlens(own), cu_seqlens([40, 17, 9, 3, 0, 100]), 186, 5, 2, "BLOCK_M")
    with mode:
        table = blocks.table(16)
        assert blocks.table(16) is table  # kept: no second build
    assert mode.ops == ["aten.empty.memory_format"] * 3
    rows = 186 // 16 + 6
    assert mode.launches == [(n, (-(-rows // _schedule._TABLE_ROWS),)) for n in ("_sequence_rows", "_sorted_rows")]
    assert torch.equal(table, _torch_table(cu_seqlens(own), cu_seqlens([40, 17, 9, 3, 0, 100]), 186, (5, 2), 16))


def _tables_on_the_gpu_without_a_sync(cu_own, cu_other):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tables = [SequenceBlocks(cu_own, cu_other, 186, 5, 2, "BLOCK_M").table(b) for b in (16, 64, 128)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return tables


@pytest.mark.gpu
def test_tables_are_built_on_the_gpu_without_a_host_sync():
    cu_own = cu_seqlens([1, 17, 0, 33, 5, 130], "cuda")
    cu_other = cu_seqlens([40, 17, 9, 3, 0, 100], "cuda")
    for block in (16, 64, 128):  # compiles (which may wait) once per block size
        SequenceBlocks(cu_own, cu_other, 186, 5, 2, "BLOCK_M").table(block)
    for t, block in zip(_tables_on_the_gpu_without_a_sync(cu_own, cu_other), (16, 64, 128)):
        assert t.is_cuda and torch.equal(t, _torch_table(cu_own, cu_other, 186, (5, 2), block))


@pytest.mark.gpu
def test_an_unchecked_call_forward_and_backward_never_syncs():
    q, k, v, do, cu_q, cu_k = make_packed_inputs([3, 40, 1, 9], [20, 7, 1, 45], 4, 2, 64, torch.float16, seed=3,
                                                 device="cuda")
    q.requires_grad_()

    def call():  # the first one: the tuner chooses (and waits) here, once per key
        q.grad = None
        out = flash_attn_varlen(q, k, v, cu_q, cu_k, 40, 45, causal=True, window=(9, -1), check_values=False)
        out.backward(do)
        return out

    expected, out = repeat_without_sync(call)
    assert torch.equal(out, expected)


def test_the_launch_takes_the_table_for_the_configuration_it_runs():
    q, k, v, do, cu_q, cu_k = make_packed_inputs([70, 5], [70, 5], 2, 2, 32, torch.float16, seed=1)
    log = {}
    options = FA2Options(configs={"fwd": (16, 16, 1, 1), "bwd_dq": (64, 16, 1, 1), "bwd_dkdv": (16, 64, 1, 1)})
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, True, options=options, launch_log=log)
    assert log["fwd"].startswith("BLOCK_M=16,BLOCK_N=16") and log["bwd_dq"].startswith("BLOCK_M=64")


@pytest.mark.skipif(tma_unavailable(), reason="tensor descriptors need compute capability >= 9")
def test_pinned_gluon_forward_says_why_and_warp_specialised_forward_refuses_packed_batches():
    # the Gluon forward runs packed batches on Hopper GPUs (tests/gpu/test_fa2_varlen_sm90_gpu.py), not head dim
    # 32, nor anywhere under the interpreter; the warp-specialised forward runs none
    q, k, v, _, cu_q, cu_k = make_packed_inputs([16, 16], [16, 16], 2, 2, 32, torch.float16, seed=1)
    with pytest.raises(ValueError, match="Gluon Hopper forward, which cannot run these inputs: "
                                         "(Gluon kernels do not run under TRITON_INTERPRET|head_dim 32)"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 16, 16, options=FA2Options(path="tma",
                          configs={"fwd": (128, 128, 4, 2, spaces.GLUON)}))
    q, k, v, _, cu_q, cu_k = make_packed_inputs([16, 16], [16, 16], 2, 2, 64, torch.float16, seed=1)
    with pytest.raises(ValueError, match="warp specialisation.*a variable-length .packed. batch"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 16, 16, options=FA2Options(path="tma",
                          configs={"fwd": (128, 128, 4, 2, spaces.WS)}))


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype)


@pytest.mark.parametrize("causal, window", [(False, False), (True, False), (True, True)])
def test_gluon_forward_takes_packed_16bit_batches_of_any_lengths(causal, window):
    """The packed layout has no multiple-of-128 condition (the kernel masks each sequence's tails and
    causal edges); GQA and MQA, fp16 and bf16, D 64 and 128; causal windows (left, 0)."""
    for dtype in (torch.bfloat16, torch.float16):
        for D in (64, 128):
            for Hkv in (8, 2, 1):
                q, k = _t(1001, 8, D, dtype=dtype), _t(77, Hkv, D, dtype=dtype)
                assert sm90.input_reason(q, k, k, causal, window, True) is None


@pytest.mark.parametrize("q, k, causal, window, words", [
    (_t(300, 2, 128, dtype=torch.float32), _t(300, 2, 128, dtype=torch.float32), False, False, "fp16 and bf16"),
    (_t(300, 2, 96), _t(300, 2, 96), False, False, "head_dim 96"),
    (_t(300, 2, 256), _t(300, 2, 256), True, False, "head_dim 256"),
    (_t(300, 2, 128), _t(300, 2, 128), False, True, "right reach"),
    (_t(2, 300, 128).transpose(0, 1), _t(300, 2, 128), False, False, "contiguous"),
])
def test_gluon_forward_says_why_it_declines_other_packed_batches(q, k, causal, window, words):
    reason = sm90.input_reason(q, k, k, causal, window, True)
    assert reason is not None and words in reason


@pytest.mark.parametrize("causal, window, left", [
    (False, (-1, -1), -1),
    (True, (-1, -1), -1),
    (True, (20, -1), 20),  # a causal window: its left reach
    (False, (-1, 0), -1),  # the causal mask spelt as a window runs as causal
])
def test_a_pinned_gluon_forward_gets_the_packed_batch_and_its_table(causal, window, left, monkeypatch):
    """What the launcher hands the Gluon kernel for a packed batch (its arithmetic runs on Hopper GPUs
    only): the tensors, the offsets, the device-built table of 128-row query blocks, the left reach, and
    the launch-order group size, causal or not (packed programs differ in work either way)."""
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    seen = []

    def fake_forward_varlen(q, k, v, o, lse, cu_q, cu_k, table, causal, sm_scale, group_programs, stages,
                            window_left=-1):
        seen.append((q.shape, k.shape, o.shape, lse.shape, cu_q, cu_k, table, causal, group_programs, stages,
                     window_left))
        o.zero_()
        lse.zero_()

    monkeypatch.setattr(sm90, "forward_varlen", fake_forward_varlen)
    lq, lk = [300, 1, 129], [200, 17, 129]
    q, k, v, _, cu_q, cu_k = make_packed_inputs(lq, lk, 4, 2, 64, torch.float16, seed=3)
    log = {}
    flash_attn_varlen(q, k, v, cu_q, cu_k, 300, 200, causal, window=window, launch_log=log,
                      options=FA2Options(path="tma", configs={"fwd": (128, 128, 4, 2, spaces.GLUON)}))
    assert log["fwd"] == sm90.config_label(2)
    [(q_shape, k_shape, o_shape, lse_shape, got_cu_q, got_cu_k, table, got_causal, group, stages, got_left)] = seen
    assert (q_shape, k_shape, o_shape, lse_shape) == ((430, 4, 64), (346, 2, 64), (430, 4, 64), (4, 430))
    assert got_cu_q is cu_q and got_cu_k is cu_k
    assert (got_causal, got_left, stages) == (True if window == (-1, 0) else causal, left, 2)
    assert group == FA2Options().causal_group_programs
    # one (sequence, block) row per 128-row block (3 + 1 + 2), then padding to 430 // 128 + 3 rows
    assert table.dtype == torch.int32 and table.shape == (430 // 128 + 3, 2)
    assert sorted(map(tuple, table.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)]


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


# bad metadata: a ValueError whether or not the offsets' values are checked
METADATA_ERRORS = [
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
    (_with(max_seqlen_k=lambda a: 6.0), "max_seqlen_k must be an int"),
    (_with(max_seqlen_k=lambda a: True), "max_seqlen_k must be an int"),
    (_with(max_seqlen_q=lambda a: -1), "max_seqlen_q must be an int"),
]

# bad values: checked with check_values=True (the default) only
VALUE_ERRORS = [
    (_with(cu_seqlens_q=lambda a: a["cu_seqlens_q"] + 1), "cu_seqlens_q must start at 0"),
    (_with(cu_seqlens_q=lambda a: torch.tensor([0, 9, 8], dtype=torch.int32, device=DEV)), "non-decreasing"),
    (_with(cu_seqlens_q=lambda a: cu_seqlens([3, 4])), "cu_seqlens_q must end at the packed length 8, got 7"),
    (_with(cu_seqlens_k=lambda a: cu_seqlens([4, 7])), "cu_seqlens_k must end at the packed length 10, got 11"),
    (_with(max_seqlen_q=lambda a: 4), "max_seqlen_q must be an int >= the longest sequence \\(5\\), got 4"),
]


@pytest.mark.parametrize("make, match", METADATA_ERRORS + VALUE_ERRORS)
def test_bad_packed_inputs_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attn_varlen(**make())


@pytest.mark.parametrize("make, match", METADATA_ERRORS)
def test_metadata_errors_raise_value_error_with_unchecked_values(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attn_varlen(**make(), check_values=False)


class _HostReads(TorchFunctionMode):
    """Records the tensor methods through which the host reads a tensor's values (on a GPU each is a device-to-host
    copy and a sync; on a CPU they copy nothing, so the call itself is what is recorded)."""

    NAMES = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        to_host = name == "to" and "cpu" in map(str, [*args[1:], *(kwargs or {}).values()])
        if name in self.NAMES or to_host:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_the_host_read_recorder_sees_the_checked_calls_copy():
    """The one host copy of a checked call (``_validate._check_offsets``) is what ``_HostReads`` records, so its
    empty record in test_unchecked_values_are_trusted means no copy, not a recorder that sees nothing."""
    with _HostReads() as mode:
        flash_attn_varlen(**_packed())
    assert "tolist" in mode.reads


@pytest.mark.parametrize("make, match", VALUE_ERRORS)
def test_unchecked_values_are_trusted(make, match, monkeypatch):
    """Values are not read with check_values=False: no error, no host copy (the contract says the
    results are then undefined; the kernels clamp the offsets into the packed tensors, so it runs).
    As test_flash_decode's unchecked call does, the host check raises if it is called; and no tensor's values are
    read on the host during the call (``_HostReads``: ``item``, ``tolist``, ``cpu``...), which a copy made outside
    the check would be. The recorded call is the second: the first may tune (on a GPU, timing reads times back)."""
    args = make()

    def no_check(*a):
        raise AssertionError("the offsets' values were checked on the host")

    monkeypatch.setattr(validate, "_check_offsets", no_check)
    flash_attn_varlen(**args, check_values=False)
    with _HostReads() as mode:
        out = flash_attn_varlen(**args, check_values=False)
    assert mode.reads == []
    assert out.shape == args["q"].shape
    with pytest.raises(AssertionError, match="checked on the host"):  # the patch is the one a checked call runs
        flash_attn_varlen(**args)


def test_check_values_must_be_a_bool():
    with pytest.raises(ValueError, match="check_values must be True or False, got 1"):
        flash_attn_varlen(**_packed(), check_values=1)


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


def test_cpu_tensors_rejected_when_not_interpreting(monkeypatch):
    import flashbench_kernels._validate as validate
    monkeypatch.setattr(validate, "interpreting", lambda: False)
    q, k, v, _, cu_q, cu_k = make_packed_inputs([3, 5], [4, 6], 2, 2, 32, torch.float16, seed=0, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 5, 6)
