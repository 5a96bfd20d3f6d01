"""GPU tests of ``flash_decode`` (marked ``gpu``; skipped without CUDA): bf16 and fp16 over decode shapes.

Grid: head dims 64 and 128, 1 / 4 / 16 new tokens, caches of up to 32k keys with lengths that
differ within the batch (and are not multiples of any block or page), pages of 16 (row gather),
64 and 256 (one page per chunk), batches 1 to 64, GQA 32/8 and 64/8 (and MQA), split counts chosen
automatically and forced.  For each case the contiguous cache and a shuffled paged copy are run,
their outputs must agree with each other, and both must meet flash-attention's rule against the
fp64 reference (max error <= 2 x the error of PyTorch's same-dtype math + a small absolute term).
Every buffer the launcher allocates is NaN-poisoned first.
"""
from __future__ import annotations

import pytest
import torch

import flashbench_kernels.flash_decode as fd
from decode_reference import decode_reference, gather_pages, page_cache, random_tensor
from flashbench_kernels.flash_decode import choose_num_splits, flash_decode

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
ATOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fd, "_empty", empty)


def _lengths(B: int, longest: int, seed: int) -> list[int]:
    """B lengths: the longest one, then random ones in [max(1, longest / 3), longest]."""
    g = torch.Generator().manual_seed(seed)
    return [longest] + torch.randint(max(1, longest // 3), longest + 1, (B - 1,), generator=g).tolist()


def _check(out, q, k_seqs, v_seqs):
    ref = decode_reference(q, k_seqs, v_seqs)
    same_dtype = decode_reference(q, k_seqs, v_seqs, dtype=q.dtype)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all(), "non-finite values (unwritten or NaN)"
    err = (out.double() - ref).abs().max().item()
    err_torch = (same_dtype.double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[q.dtype], f"max error {err:.3e} > 2 x torch {err_torch:.3e} + {ATOL[q.dtype]:g}"


def _run_case(B, Nq, H, Hkv, D, longest, page, dtype, num_splits=0, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    lengths = _lengths(B, longest, seed)
    q = random_tensor((B, Nq, H, D), dtype, g)
    k = random_tensor((B, longest, Hkv, D), dtype, g)
    v = random_tensor((B, longest, Hkv, D), dtype, g)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    k_pages, v_pages, table = page_cache(k, v, lengths, page, g)

    log_dense, log_paged = {}, {}
    dense = flash_decode(q, k, v, seqlens, num_splits=num_splits, launch_log=log_dense)
    paged = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=num_splits, launch_log=log_paged)
    assert log_dense["num_splits"] == log_paged["num_splits"]
    assert log_paged["kv_gather"] == ("row" if page < log_paged["block_n"] else "page")
    # the same chunks in the same order: the two layouts agree to the last bit or so
    torch.testing.assert_close(paged, dense, rtol=0, atol=1e-3 if dtype == torch.float16 else 8e-3)
    _check(dense, q, [k[b, :n] for b, n in enumerate(lengths)], [v[b, :n] for b, n in enumerate(lengths)])
    _check(paged, q, gather_pages(k_pages, table, lengths), gather_pages(v_pages, table, lengths))
    return log_dense


# B, Nq, H, H_kv, D, longest cache, page size
GRID = [
    (1, 1, 32, 8, 128, 32768, 16),
    (1, 16, 64, 8, 128, 32768, 256),
    (2, 4, 32, 8, 64, 32768, 64),
    (4, 1, 64, 8, 128, 8191, 64),
    (8, 4, 32, 8, 128, 4096, 16),
    (8, 16, 32, 8, 64, 4097, 256),
    (16, 1, 64, 8, 64, 2049, 16),
    (32, 16, 64, 8, 128, 1025, 64),
    (64, 1, 32, 8, 128, 4096, 256),
    (64, 4, 64, 8, 64, 1000, 16),
    (64, 16, 32, 8, 128, 517, 64),
    (3, 16, 16, 1, 128, 3000, 16),  # MQA: 256 rows, two row blocks
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,Nq,H,Hkv,D,longest,page", GRID,
                         ids=[f"B{c[0]}-Nq{c[1]}-H{c[2]}/{c[3]}-D{c[4]}-N{c[5]}-p{c[6]}" for c in GRID])
def test_grid_against_reference(B, Nq, H, Hkv, D, longest, page, dtype):
    _run_case(B, Nq, H, Hkv, D, longest, page, dtype, seed=B * 131 + Nq * 7 + D)


@pytest.mark.parametrize("num_splits", [1, 3, 17, 128])
def test_forced_split_counts(num_splits):
    """Forced counts, 128 included (more splits than most sequences have chunks: empty splits)."""
    log = _run_case(4, 4, 32, 8, 128, 5000, 64, torch.bfloat16, num_splits=num_splits, seed=num_splits)
    assert log["num_splits"] == num_splits and log["combine"] == (num_splits > 1)


def test_auto_split_count_follows_the_heuristic():
    """The automatic count is choose_num_splits of the launch's shape and the SM count."""
    log = _run_case(1, 1, 32, 8, 128, 32768, 64, torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert log["num_splits"] == choose_num_splits(8, -(-32768 // log["block_n"]), sms) > 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_other_head_dims(dtype):
    for D in (32, 96, 256):
        _run_case(2, 4, 32, 8, D, 3001, 16, dtype, seed=D)
