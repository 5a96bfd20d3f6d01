"""GPU tests of ``flash_decode`` (marked ``gpu``; skipped without CUDA): bf16 and fp16 over decode shapes.

Grid: head dims 64 and 128, 1 / 4 / 16 new tokens, caches of up to 32k keys with lengths that
differ within the batch (and are not multiples of any block or page), pages of 16 (row gather),
64 and 256 (one page per chunk), batches 1 to 64, GQA 32/8 and 64/8 (and MQA), split counts chosen
automatically and forced.  For each case the contiguous cache and a shuffled paged copy are run,
their outputs must agree with each other, and both must meet flash-attention's rule against the
fp64 reference (max error <= 2 x the error of PyTorch's same-dtype math + a small absolute term).
Every buffer the launcher allocates is NaN-poisoned first.  Beyond the grid: every tile the tuner
may choose (pinned), the tuned default, calls that must not synchronise (sync debug mode "error",
CUDA-graph capture), unchecked bad values (NaN rows, no fault), and a smoke run of
tools/decode_bench.py.
"""
from __future__ import annotations

import pytest
import torch

import flashbench_kernels.flash_decode.run as fd_run
from decode_reference import gather_pages, page_cache, random_tensor
from kernel_checks import assert_decode_within_rule
from flashbench_kernels.flash_decode import DecodeOptions, choose_num_splits, flash_decode, tuning

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
UNTUNED = DecodeOptions(autotune=False)  # the grid runs each class's first tile; every tile is run below


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fd_run, "new_buffer", empty)


def _lengths(B: int, longest: int, seed: int) -> list[int]:
    """B lengths: the longest one, then random ones in [max(1, longest / 3), longest]."""
    g = torch.Generator().manual_seed(seed)
    return [longest] + torch.randint(max(1, longest // 3), longest + 1, (B - 1,), generator=g).tolist()


def _inputs(B, Nq, H, Hkv, D, longest, page, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    lengths = _lengths(B, longest, seed)
    q = random_tensor((B, Nq, H, D), dtype, g)
    k = random_tensor((B, longest, Hkv, D), dtype, g)
    v = random_tensor((B, longest, Hkv, D), dtype, g)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    return q, k, v, seqlens, lengths, page_cache(k, v, lengths, page, g)


def _run_case(B, Nq, H, Hkv, D, longest, page, dtype, num_splits=0, seed=0, options=UNTUNED):
    """The contiguous cache and its paged copy, each against the reference; the paged call runs the
    contiguous call's split count, and where both ran the same BLOCK_N they must agree closely."""
    q, k, v, seqlens, lengths, (k_pages, v_pages, table) = _inputs(B, Nq, H, Hkv, D, longest, page, dtype, seed)
    log_dense, log_paged = {}, {}
    dense = flash_decode(q, k, v, seqlens, num_splits=num_splits, launch_log=log_dense, options=options)
    paged = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=log_dense["num_splits"],
                         launch_log=log_paged, options=options)
    assert log_paged["kv_gather"] == ("row" if page < log_paged["block_n"] else "page")
    if log_dense["block_n"] == log_paged["block_n"]:
        # the same chunks in the same order: the two layouts agree to the last bit or so
        torch.testing.assert_close(paged, dense, rtol=0, atol=1e-3 if dtype == torch.float16 else 8e-3)
    assert_decode_within_rule(dense, q, [k[b, :n] for b, n in enumerate(lengths)], [v[b, :n] for b, n in enumerate(lengths)])
    assert_decode_within_rule(paged, q, gather_pages(k_pages, table, lengths), gather_pages(v_pages, table, lengths))
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
    """Untuned, the automatic count is choose_num_splits of the launch's shape, capacity and SM count."""
    log = _run_case(1, 1, 32, 8, 128, 32768, 64, torch.bfloat16, options=DecodeOptions(tune_splits=False))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert log["num_splits"] == choose_num_splits(8, 32768, sms) > 1 and log["splits_source"] == "heuristic"


@pytest.mark.parametrize("num_splits", [3, 64])
def test_overlapped_combine_matches_the_sequential_one(num_splits):
    """On Hopper the combine overlaps the split kernel's tail (programmatic dependent launch): the same
    kernels, so the output is bit for bit the sequential launch's, contiguous and paged; both meet the rule."""
    q, k, v, seqlens, lengths, (kp, vp, table) = _inputs(8, 1, 32, 8, 128, 4096, 16, torch.bfloat16, num_splits)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    for kc, vc, tb in ((k, v, None), (kp, vp, table)):
        outs, logs = [], []
        for overlap in (True, False):
            logs.append({})
            outs.append(flash_decode(q, kc, vc, seqlens, block_table=tb, num_splits=num_splits, launch_log=logs[-1],
                                     options=DecodeOptions(autotune=False, overlap_combine=overlap)))
        assert logs[0]["overlap_combine"] is hopper and logs[1]["overlap_combine"] is False
        assert logs[0]["num_splits"] == logs[1]["num_splits"] == num_splits
        assert torch.equal(outs[0], outs[1])
        if tb is None:
            assert_decode_within_rule(outs[0], q, [k[b, :n] for b, n in enumerate(lengths)], [v[b, :n] for b, n in enumerate(lengths)])
        else:
            assert_decode_within_rule(outs[0], q, gather_pages(kp, table, lengths), gather_pages(vp, table, lengths))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_other_head_dims(dtype):
    for D in (32, 96, 256):
        _run_case(2, 4, 32, 8, D, 3001, 16, dtype, seed=D)


# ---------------------------------------------------------------------------------------------
# Every tile the tuner may choose, and the tuned default
# ---------------------------------------------------------------------------------------------
LAYOUT_CASES = [(128, None), (128, 16), (128, 256), (64, None), (64, 32), (256, None), (256, 16)]


@pytest.mark.parametrize("D,page", LAYOUT_CASES, ids=[f"D{d}-{'p%d' % p if p else 'contiguous'}" for d, p in LAYOUT_CASES])
def test_every_candidate_tile(D, page):
    """Each candidate of the class, pinned, on a batch of unequal lengths with 3 splits (bf16)."""
    q, k, v, seqlens, lengths, (k_pages, v_pages, table) = _inputs(3, 4, 32, 8, D, 3001, page or 16,
                                                                   torch.bfloat16, seed=D)
    if page:
        args, ks, vs = (q, k_pages, v_pages), gather_pages(k_pages, table, lengths), gather_pages(v_pages, table, lengths)
        capacity = table.shape[1] * page
    else:
        args, ks, vs = (q, k, v), [k[b, :n] for b, n in enumerate(lengths)], [v[b, :n] for b, n in enumerate(lengths)]
        capacity = k.shape[1]
    block_d = max(16, 1 << (D - 1).bit_length())
    tiles = tuning.candidates(block_d, 16, page or 0, capacity, 2)
    assert tiles
    for tile in tiles:
        log = {}
        out = flash_decode(*args, seqlens, block_table=table if page else None, num_splits=3,
                           options=DecodeOptions(config=tuple(tile)), launch_log=log)
        assert (log["block_n"], log["num_warps"], log["num_stages"]) == tuple(tile)
        assert_decode_within_rule(out, q, ks, vs)


def test_tuned_default():
    """Default options: the tuner chooses once per class, later calls of the class reuse the choice."""
    logs = [_run_case(8, 1, 32, 8, 128, 4096, 16, torch.bfloat16, options=DecodeOptions()) for _ in range(2)]
    assert logs[0]["config_source"] == "tuned" and logs[0]["splits_source"] == "tuned"
    assert logs[0] == logs[1]


# ---------------------------------------------------------------------------------------------
# No synchronisation with check_values=False
# ---------------------------------------------------------------------------------------------
def _decode_inputs(page):
    q, k, v, seqlens, lengths, (k_pages, v_pages, table) = _inputs(4, 1, 32, 8, 128, 2048, page or 16,
                                                                   torch.bfloat16, seed=11)
    return (q, k_pages, v_pages, seqlens, table) if page else (q, k, v, seqlens, None)


@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "paged16"])
def test_unchecked_calls_do_not_synchronise(page):
    q, k, v, seqlens, table = _decode_inputs(page)
    expected = flash_decode(q, k, v, seqlens, block_table=table)  # checks, and tunes the class
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = flash_decode(q, k, v, seqlens, block_table=table, check_values=False)
        with pytest.raises(RuntimeError):
            flash_decode(q, k, v, seqlens, block_table=table)  # the one sync of the checked call
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out, expected)


@pytest.mark.parametrize("page", [None, 16], ids=["contiguous", "paged16"])
def test_unchecked_calls_capture_in_a_cuda_graph(page):
    q, k, v, seqlens, table = _decode_inputs(page)
    expected = flash_decode(q, k, v, seqlens, block_table=table)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture wants
        flash_decode(q, k, v, seqlens, block_table=table, check_values=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flash_decode(q, k, v, seqlens, block_table=table, check_values=False)
    q.copy_(q.flip(0))  # new inputs in place, then replay
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, flash_decode(q, k, v, seqlens, block_table=table))
    assert not torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------
# Unchecked bad values: NaN rows for their sequences, no fault
# ---------------------------------------------------------------------------------------------
def test_unchecked_bad_values_give_nan_rows_and_no_fault():
    q, k, v, seqlens, lengths, (k_pages, v_pages, table) = _inputs(6, 4, 32, 8, 128, 5000, 16, torch.bfloat16, seed=5)
    good = flash_decode(q, k_pages, v_pages, seqlens, block_table=table)
    table[1, 0] = 1 << 30
    table[3, (lengths[3] - 1) // 16] = -1000
    bad_lengths = seqlens.clone()
    bad_lengths[4] = table.shape[1] * 16 + 1
    bad_lengths[5] = 0
    for splits in (0, 1):
        out = flash_decode(q, k_pages, v_pages, bad_lengths, block_table=table, num_splits=splits,
                           check_values=False)
        torch.cuda.synchronize()  # an out-of-bounds read would fault here
        for b in range(6):
            if b in (1, 3, 4, 5):
                assert out[b].isnan().all(), f"sequence {b}"
            elif splits == 0:
                assert torch.equal(out[b], good[b]), f"sequence {b}"
            else:
                assert torch.isfinite(out[b]).all(), f"sequence {b}"


# ---------------------------------------------------------------------------------------------
# The probe tool
# ---------------------------------------------------------------------------------------------
def test_decode_bench_tool_runs(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "tools", "decode_bench.py"), "--shapes", "2x4096",
                           "--nq", "1", "--pages", "16", "--rep", "10", "--warmup", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["B"] == 2 and rows[0]["N"] == 4096
    assert rows[0]["decode"]["contiguous"]["gbps"] > 0 and rows[0]["decode"]["paged16"]["gbps"] > 0
    # GPU time by the held timer, the host's enqueue time beside it
    assert rows[0]["decode"]["contiguous"]["host_ms"] is not None
    assert all(d["timing_method"].startswith("held_") for d in rows[0]["decode"].values())
