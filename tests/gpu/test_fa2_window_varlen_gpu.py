"""GPU tests of sliding windows and packed batches in the FA2 kernels (marked ``gpu``; skipped without CUDA).

bf16 and fp16, head dims 64 and 128.  Windows of 256 to 4096 keys at N up to 8k (left reach only, both
reaches, a right reach only, causal with a left reach, Nq != Nkv, GQA/MQA); packed batches of about
16k tokens drawn from lengths 128 to 4096 (equal and unequal query/key lengths, causal, windows, GQA,
sequences with no queries or no keys).  Each case meets flash-attention's rule against the fp64
reference (``flashbench.attention.reference``, per sequence for packed batches) for the output and the
three gradients, with every buffer the launcher allocates NaN-poisoned.  The grid runs the first
configuration of each space (bounded compile time); the ``autotuned`` tests run the tuner, which
times several block sizes (and so several program tables for packed batches).
"""
from __future__ import annotations

import pytest
import torch
import triton

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch
from kernel_checks import (check_against_reference, check_varlen_against_reference, make_inputs, make_packed_inputs,
                           poisoned_empty, window_case_id)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


FIXED = FA2Options(autotune=False)

WINDOW_GRID = [
    # B, H, Hkv, Nq, Nkv, D, causal, window
    (2, 8, 8, 2048, 2048, 128, True, (256, -1)),
    (1, 8, 2, 4096, 4096, 64, False, (512, 512)),
    (1, 4, 4, 8192, 8192, 128, True, (4096, -1)),
    (1, 8, 8, 8192, 8192, 64, False, (1024, 0)),  # right reach 0: runs as causal with a window
    (1, 4, 2, 3000, 5000, 128, False, (2048, 256)),
    (1, 4, 4, 5000, 3000, 64, True, (300, -1)),  # Nq > Nkv: the first 2000 rows see no key
    (2, 4, 1, 1537, 1537, 128, False, (-1, 700)),  # MQA, right reach only
    (1, 8, 4, 4096, 4096, 128, False, (256, 256)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", WINDOW_GRID, ids=window_case_id)
def test_gpu_window_grid(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 3 * Nkv + window[0])
    log = {}
    check_against_reference(q, k, v, do, causal, window=window, options=FIXED, launch_log=log)
    assert not log["fwd"].startswith("gluon") and "warp_specialize" not in log["fwd"]


@pytest.mark.parametrize("causal, window", [(True, (1024, -1)), (False, (512, 512))])
def test_gpu_window_autotuned(causal, window):
    q, k, v, do = make_inputs(1, 16, 16, 4096, 4096, 128, torch.bfloat16, seed=3)
    check_against_reference(q, k, v, do, causal, window=window)


def _lengths(total: int, lo: int, hi: int, seed: int) -> list[int]:
    """Lengths drawn uniformly from [lo, hi] until they hold ``total`` tokens (the last one cut to fit)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    while sum(out) < total:
        out.append(min(int(torch.randint(lo, hi + 1, (1,), generator=g)), total - sum(out)))
    return out


def _jitter(lengths: list[int], seed: int) -> list[int]:
    """Key lengths that differ from the query lengths by up to a quarter either way."""
    g = torch.Generator().manual_seed(seed)
    return [max(1, n + int(torch.randint(-n // 4, n // 4 + 1, (1,), generator=g))) for n in lengths]


VARLEN_GRID = [
    # seed, H, Hkv, D, causal, window, unequal key lengths
    (1, 16, 16, 128, True, (-1, -1), False),
    (2, 16, 4, 128, False, (-1, -1), True),
    (3, 16, 4, 64, True, (-1, -1), True),
    (4, 16, 16, 64, False, (-1, -1), False),
    (5, 16, 2, 128, True, (512, -1), False),
    (6, 16, 16, 64, False, (256, 256), True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("seed, H, Hkv, D, causal, window, unequal", VARLEN_GRID,
                         ids=[f"s{c[0]}-H{c[1]}-Hkv{c[2]}-D{c[3]}-{'causal' if c[4] else 'full'}-w{c[5][0]}_{c[5][1]}"
                              f"{'-unequal' if c[6] else ''}" for c in VARLEN_GRID])
def test_gpu_varlen_16k_tokens(seed, H, Hkv, D, causal, window, unequal, dtype):
    lq = _lengths(16384, 128, 4096, seed)
    lk = _jitter(lq, seed) if unequal else lq
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, D, dtype, seed=seed)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window, options=FIXED)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_varlen_with_empty_and_tiny_sequences(dtype):
    # sequences without queries or keys (their TMA descriptors span one row, never read), one-token ones
    lq, lk = [0, 1, 700, 129, 0, 4096, 1], [300, 0, 700, 1000, 5, 4000, 1]
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, 8, 2, 128, dtype, seed=7)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, True, options=FIXED)


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_varlen_autotuned(causal):
    lq = _lengths(16384, 128, 4096, 11)
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lq, 16, 16, 128, torch.bfloat16, seed=11)
    log = {}
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, launch_log=log)
    assert set(log) == {"fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq"}


def test_gpu_window_runs_fewer_blocks_than_the_full_causal_call():
    """The work scales with the window: a 256-key window over 8k keys is several times faster than causal.
    It visits about a sixth of the causal call's key blocks; the bound, 2x, leaves room for launch and
    the window's edge blocks, and for other processes on the GPU (the GPU tests run several at once).
    Four sequences a call: with one (0.64 ms causal on an H200) the windowed call's time was its host
    path's, 0.36 ms, while other test processes compiled on the same CPUs."""
    q, k, v, _ = make_inputs(4, 16, 16, 8192, 8192, 128, torch.bfloat16, seed=5)
    full = triton.testing.do_bench(lambda: flash_attn_v2(q, k, v, causal=True, options=FIXED), rep=200)
    windowed = triton.testing.do_bench(lambda: flash_attn_v2(q, k, v, causal=True, window=(256, -1), options=FIXED),
                                       rep=200)
    assert windowed < full / 2, f"windowed {windowed:.3f} ms against causal {full:.3f} ms"
