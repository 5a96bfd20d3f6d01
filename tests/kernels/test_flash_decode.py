"""Tests of the bundled Flash-Decoding kernel (``flash_decode``) under Triton's CPU interpreter.

Tiny, odd shapes in fp16 and fp32 (the interpreter has no bf16; tests/gpu covers it): one batch
holds caches of 1, 17 and 129 keys (one key, one chunk plus one, several chunks plus one), the
contiguous cache and a paged copy in shuffled pages are both run, and every output and partial
buffer is NaN-poisoned first.  Tolerance rule (flash-attention's): max error against the fp64
reference <= 2 x the error of PyTorch's same-dtype math + a small absolute term.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import pytest
import torch
import triton

import flashbench_kernels._validate as validate
import flashbench_kernels.flash_decode.launch as fd_launch
import flashbench_kernels.flash_decode.run as fd_run
from decode_reference import gather_pages, page_cache, random_tensor
from kernel_checks import assert_decode_within_rule
from flashbench_kernels._validate import interpreting
from flashbench_kernels.flash_decode import DecodeOptions, choose_num_splits, flash_decode, tuning
from flashbench_kernels.flash_decode.options import Tile

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float16: 1e-2, torch.float32: 1e-5}
LENGTHS = [1, 17, 129]


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """NaN-fill every buffer the launcher allocates, so an element the kernels do not write shows."""
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fd_run, "new_buffer", empty)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def _case(Nq, H, Hkv, D, dtype, lengths=LENGTHS, page_size=None, seed=0, spare=5):
    """q, dense caches with `spare` rows past the longest length, lengths; paged copies if page_size."""
    g = _gen(seed)
    B = len(lengths)
    q = random_tensor((B, Nq, H, D), dtype, g)
    k = random_tensor((B, max(lengths) + spare, Hkv, D), dtype, g)
    v = random_tensor((B, max(lengths) + spare, Hkv, D), dtype, g)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
    paged = page_cache(k, v, lengths, page_size, g) if page_size else None
    return q, k, v, seqlens, paged


def _assert_within_rule(out, q, k_seqs, v_seqs, sm_scale=None):
    assert_decode_within_rule(out, q, k_seqs, v_seqs, sm_scale, atol=ATOL[q.dtype])  # this file's fp32 atol


# Each tuple: Nq, H, H_kv, page size (None: contiguous only), num_splits, dtype.  Together they cover
# Nq 1-5, GQA 1/2/4 and MQA, pages 16 (row gather), 32 (one page per chunk) and 64 (chunks inside a
# page), num_splits 1, 2, several (more than some sequences have chunks) and 0, fp16 and fp32.
CASES = [
    (1, 2, 2, None, 1, torch.float16),
    (1, 4, 2, 16, 2, torch.float16),
    (1, 8, 2, 32, 0, torch.float32),
    (2, 4, 1, 16, 5, torch.float16),
    (2, 2, 2, 32, 1, torch.float32),
    (3, 8, 2, 16, 0, torch.float16),
    (3, 2, 2, 64, 3, torch.float32),
    (4, 4, 1, 32, 2, torch.float16),
    (4, 2, 2, 16, 5, torch.float32),
    (5, 4, 1, 32, 7, torch.float16),
    (5, 8, 1, 16, 1, torch.float32),
    (5, 2, 1, 64, 0, torch.float16),
]


@pytest.mark.parametrize("Nq,H,Hkv,page,splits,dtype", CASES)
def test_matches_reference_contiguous_and_paged(Nq, H, Hkv, page, splits, dtype):
    q, k, v, seqlens, paged = _case(Nq, H, Hkv, 32, dtype, page_size=page, seed=Nq * 31 + H)
    dense = flash_decode(q, k, v, seqlens, num_splits=splits)
    _assert_within_rule(dense, q, [k[b, :n] for b, n in enumerate(LENGTHS)], [v[b, :n] for b, n in enumerate(LENGTHS)])
    if page is None:
        return
    k_pages, v_pages, table = paged
    log = {}
    out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=splits, launch_log=log)
    _assert_within_rule(out, q, gather_pages(k_pages, table, LENGTHS), gather_pages(v_pages, table, LENGTHS))
    assert log["kv_gather"] == ("row" if page < log["block_n"] else "page")
    # the same chunks in the same order: the paged result is the contiguous one (bit for bit in the
    # interpreter; compiled code is held to one unit in the last place)
    if interpreting():
        assert torch.equal(out, dense)
    else:
        torch.testing.assert_close(out, dense, rtol=0, atol=1e-3 if dtype == torch.float16 else 1e-6)


@pytest.mark.parametrize("D", [64, 96, 128])
def test_head_dims(D):
    dtype = torch.float16 if D != 96 else torch.float32
    q, k, v, seqlens, (k_pages, v_pages, table) = _case(2, 4, 2, D, dtype, lengths=[17, 40], page_size=16, seed=D)
    out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=2)
    _assert_within_rule(out, q, gather_pages(k_pages, table, [17, 40]), gather_pages(v_pages, table, [17, 40]))


def test_new_tokens_before_the_cache_start_are_zero():
    """cache_seqlens < Nq: tokens at negative positions see no key and give 0; the others attend normally."""
    q, k, v, seqlens, _ = _case(5, 4, 2, 32, torch.float32, lengths=[2, 3])
    out = flash_decode(q, k, v, seqlens, num_splits=2)
    assert torch.equal(out[0, :3], torch.zeros_like(out[0, :3]))  # positions -3, -2, -1
    assert torch.equal(out[1, :2], torch.zeros_like(out[1, :2]))
    assert (out[0, 3:].abs().amax(dim=-1) > 0).all() and (out[1, 2:].abs().amax(dim=-1) > 0).all()
    # token at position 0 sees exactly key 0: its output is v[0] of its kv head
    torch.testing.assert_close(out[0, 3], v[0, 0].repeat_interleave(2, dim=0), rtol=0, atol=1e-6)
    _assert_within_rule(out, q, [k[0, :2], k[1, :3]], [v[0, :2], v[1, :3]])


def test_several_row_blocks_and_scale():
    """MQA with 16 heads x 9 new tokens = 144 rows: two row blocks of 128; a non-default scale."""
    q, k, v, seqlens, _ = _case(9, 16, 1, 32, torch.float32, lengths=[33, 20], spare=0)
    log = {}
    out = flash_decode(q, k, v, seqlens, sm_scale=0.3, num_splits=2, launch_log=log)
    assert log["m_blocks"] == 2 and log["block_m"] == 128
    _assert_within_rule(out, q, [k[0, :33], k[1, :20]], [v[0, :33], v[1, :20]], sm_scale=0.3)


def test_strided_views():
    """q from a (B, H, Nq, D) tensor and caches that are halves of one KV tensor: strides are honoured."""
    g = _gen(7)
    q = random_tensor((2, 4, 3, 32), torch.float16, g).transpose(1, 2)
    kv = random_tensor((2, 50, 2, 64), torch.float16, g)
    k, v = kv[..., :32], kv[..., 32:]
    seqlens = torch.tensor([50, 21], dtype=torch.int32, device=DEV)
    out = flash_decode(q, k, v, seqlens, num_splits=3)
    _assert_within_rule(out, q, [k[0], k[1, :21]], [v[0], v[1, :21]])


@pytest.mark.skipif(not interpreting(), reason="the expected split count is the interpreter's (4 SMs, BLOCK_N 32)")
def test_auto_splits_and_launch_log():
    """num_splits=0 under the interpreter (4 SMs): 2 programs, capacity 1105 -> min(ceil(16 / 2), 1105 // 256) = 4."""
    q, k, v, seqlens, _ = _case(1, 2, 1, 32, torch.float16, lengths=[1100, 13])
    log = {}
    out = flash_decode(q, k, v, seqlens, launch_log=log)
    assert log == dict(num_splits=4, block_m=16, block_n=32, m_blocks=1, kv_gather="contiguous", page_size=0,
                       num_warps=4, num_stages=1, combine=True, overlap_combine=False, config_source="interpreter",
                       splits_source="heuristic")
    _assert_within_rule(out, q, [k[0, :1100], k[1, :13]], [v[0, :1100], v[1, :13]])
    one = flash_decode(q, k, v, seqlens, num_splits=1, launch_log=log)
    assert log["num_splits"] == 1 and log["combine"] is False
    torch.testing.assert_close(one, out, rtol=0, atol=2e-3)
    flash_decode(q, k, v, seqlens, num_splits=3, launch_log=log)
    assert log["num_splits"] == 3 and log["splits_source"] == "given"


def test_shared_pages():
    """Two sequences whose tables point at the same pages (a shared prefix) read the same keys."""
    q, k, v, seqlens, (k_pages, v_pages, table) = _case(2, 4, 2, 32, torch.float16, lengths=[40, 40], page_size=16)
    table[1] = table[0]
    out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=2)
    _assert_within_rule(out, q, gather_pages(k_pages, table, [40, 40]), gather_pages(v_pages, table, [40, 40]))


def test_refuses_grad_but_runs_under_no_grad():
    q, k, v, seqlens, _ = _case(1, 2, 1, 32, torch.float32, lengths=[5])
    q.requires_grad_()
    with pytest.raises(ValueError, match="forward only"):
        flash_decode(q, k, v, seqlens)
    with torch.no_grad():
        out = flash_decode(q, k, v, seqlens)
    _assert_within_rule(out, q.detach(), [k[0, :5]], [v[0, :5]])


# ---------------------------------------------------------------------------------------------
# Validation: every bad input is a ValueError naming the argument and the reason
# ---------------------------------------------------------------------------------------------
def _valid(paged: bool):
    """Valid arguments as a dict: B 2, Nq 2, H 4, H_kv 2, D 32, lengths 5 and 20 (paged: page 16, 4 pages)."""
    q, k, v, seqlens, p = _case(2, 4, 2, 32, torch.float16, lengths=[5, 20], page_size=16 if paged else None)
    if paged:
        k, v, table = p
        return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens, block_table=table)
    return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens)


def _set(name, value):
    return lambda a: {**a, name: value(a) if callable(value) else value}


BAD_CONTIGUOUS = [
    ("q not a tensor", _set("q", lambda a: a["q"].tolist()), "q must be a torch.Tensor"),
    ("k not a tensor", _set("k_cache", 3), "k_cache must be a torch.Tensor"),
    ("v not a tensor", _set("v_cache", None), "v_cache must be a torch.Tensor"),
    ("seqlens a list", _set("cache_seqlens", [5, 20]), "cache_seqlens must be a torch.Tensor"),
    ("q 3-D", _set("q", lambda a: a["q"][0]), "q must be 4-D"),
    ("k 3-D", _set("k_cache", lambda a: a["k_cache"][0]), "k_cache must be 4-D"),
    ("dtypes differ", _set("v_cache", lambda a: a["v_cache"].float()), "share one dtype"),
    ("float64", lambda a: {**a, **{n: a[n].double() for n in ("q", "k_cache", "v_cache")}}, "not supported"),
    ("seqlens on another device", _set("cache_seqlens", lambda a: a["cache_seqlens"].to("meta")), "cache_seqlens is on meta but q is on"),
    ("last dim strided", _set("q", lambda a: torch.cat([a["q"], a["q"]], -1)[..., ::2]), "q must have a contiguous last"),
    ("k, v shapes differ", _set("v_cache", lambda a: a["v_cache"][:, :-1]), "same shape"),
    ("empty batch", lambda a: {**a, "q": a["q"][:0], "k_cache": a["k_cache"][:0], "v_cache": a["v_cache"][:0],
                               "cache_seqlens": a["cache_seqlens"][:0]}, "empty input"),
    ("17 new tokens", _set("q", lambda a: a["q"][:, :1].expand(-1, 17, -1, -1)), "17 new tokens"),
    ("head dims differ", _set("q", lambda a: a["q"][..., :16]), "head_dim of q (16)"),
    ("head dim 48", lambda a: {**a, **{n: a[n][..., :48 - 32].repeat(1, 1, 1, 3) for n in ("q", "k_cache", "v_cache")}},
     "head_dim 48 is not supported"),
    ("H % H_kv", _set("q", lambda a: a["q"][:, :, :3]), "multiple of the caches' kv heads"),
    ("seqlens int64", _set("cache_seqlens", lambda a: a["cache_seqlens"].long()), "cache_seqlens must be int32"),
    ("seqlens shape", _set("cache_seqlens", lambda a: a["cache_seqlens"].repeat(2)), "cache_seqlens must have shape (2,)"),
    ("batch differs", lambda a: {**a, "k_cache": a["k_cache"][:1], "v_cache": a["v_cache"][:1]}, "batch of q (2)"),
    ("length 0", _set("cache_seqlens", lambda a: a["cache_seqlens"] * torch.tensor([0, 1], dtype=torch.int32, device=DEV)),
     "cache_seqlens[0] = 0"),
    ("length past capacity", _set("cache_seqlens", lambda a: a["cache_seqlens"] + 6), "cache_seqlens[1] = 26 exceeds the cache capacity 25 (k_cache dim 1)"),
    ("scale 0", _set("sm_scale", 0.0), "sm_scale must be a positive finite"),
    ("scale negative", _set("sm_scale", -0.1), "sm_scale must be a positive finite"),
    ("scale nan", _set("sm_scale", float("nan")), "sm_scale must be a positive finite"),
    ("scale inf", _set("sm_scale", math.inf), "sm_scale must be a positive finite"),
    ("splits negative", _set("num_splits", -1), "num_splits must be an int"),
    ("splits too many", _set("num_splits", 129), "num_splits must be an int"),
    ("splits float", _set("num_splits", 2.0), "num_splits must be an int"),
    ("splits bool", _set("num_splits", True), "num_splits must be an int"),
    ("launch_log a list", _set("launch_log", []), "launch_log must be a dict"),
]

BAD_PAGED = [
    ("table not a tensor", _set("block_table", lambda a: a["block_table"].tolist()), "block_table must be a torch.Tensor"),
    ("page size 8", lambda a: {**a, "k_cache": a["k_cache"][:, :8], "v_cache": a["v_cache"][:, :8]}, "page size (k_cache dim 1) 8"),
    ("page size 24", lambda a: {**a, "k_cache": a["k_cache"].repeat(1, 2, 1, 1)[:, :24],
                                "v_cache": a["v_cache"].repeat(1, 2, 1, 1)[:, :24]}, "page size (k_cache dim 1) 24"),
    ("table int64", _set("block_table", lambda a: a["block_table"].long()), "block_table must be int32"),
    ("table 1-D", _set("block_table", lambda a: a["block_table"][0]), "block_table must have shape (2, max_blocks)"),
    ("table rows", _set("block_table", lambda a: a["block_table"][:1]), "block_table must have shape (2, max_blocks)"),
    ("table no columns", _set("block_table", lambda a: a["block_table"][:, :0]), "block_table must have shape (2, max_blocks)"),
    ("table on another device", _set("block_table", lambda a: a["block_table"].to("meta")), "block_table is on meta"),
    ("length past capacity", _set("cache_seqlens", lambda a: a["cache_seqlens"] + 29),
     "cache_seqlens[1] = 49 exceeds the cache capacity 48 (max_blocks * page_size)"),
    ("entry negative", lambda a: {**a, "block_table": _entry(a["block_table"], 1, 1, -1)}, "block_table[1, 1] = -1 is outside [0, 6)"),
    ("entry too large", lambda a: {**a, "block_table": _entry(a["block_table"], 0, 0, 6)}, "block_table[0, 0] = 6 is outside [0, 6)"),
]


def _entry(table, b, i, value):
    table = table.clone()
    table[b, i] = value
    return table


@pytest.mark.parametrize("paged,mutate,message", [(False, m, s) for _, m, s in BAD_CONTIGUOUS]
                         + [(True, m, s) for _, m, s in BAD_PAGED],
                         ids=[f"contiguous-{n}" for n, _, _ in BAD_CONTIGUOUS] + [f"paged-{n}" for n, _, _ in BAD_PAGED])
def test_rejects_bad_input(paged, mutate, message):
    with pytest.raises(ValueError, match="^flash_decode: .*" + re.escape(message)):
        flash_decode(**mutate(_valid(paged)))


def test_valid_inputs_of_the_validation_table_run():
    """The base arguments of the table above are accepted (so each failure is due to its one change)."""
    for paged in (False, True):
        a = _valid(paged)
        lengths = [5, 20]
        if paged:
            ks, vs = gather_pages(a["k_cache"], a["block_table"], lengths), gather_pages(a["v_cache"], a["block_table"], lengths)
        else:
            ks, vs = [a["k_cache"][b, :n] for b, n in enumerate(lengths)], [a["v_cache"][b, :n] for b, n in enumerate(lengths)]
        _assert_within_rule(flash_decode(**a), a["q"], ks, vs)


def test_unused_table_entries_are_not_checked():
    """Entries past a sequence's last page are never read, so they need not be valid: the host check accepts any
    value there, and the output still matches the reference over each sequence's own pages (a kernel that read the
    padding would fault or return garbage or NaN there, caught against the reference). The -1 padding page_cache
    leaves is tried, and entries outside the pool's [0, 6) pages on both sides, in both sequences' padding."""
    a = _valid(True)
    lengths = [5, 20]
    table = a["block_table"]
    assert (table[0, 1:] == -1).all() and (table[1, 2:] == -1).all()  # 5 keys: one page of 16; 20 keys: two
    ks, vs = gather_pages(a["k_cache"], table, lengths), gather_pages(a["v_cache"], table, lengths)
    for padding in (-1, -7, 6, 1 << 30):
        padded = table.clone()
        padded[0, 1:], padded[1, 2:] = padding, padding
        _assert_within_rule(flash_decode(**{**a, "block_table": padded}), a["q"], ks, vs)


def test_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(validate, "interpreting", lambda: False)  # what check_device asks
    cpu_args = {n: t.cpu() for n, t in _valid(False).items()}
    with pytest.raises(ValueError, match="inputs must be CUDA tensors"):
        flash_decode(**cpu_args)


# ---------------------------------------------------------------------------------------------
# check_values=False: no host check; bad values never read outside the caches and give NaN rows
# ---------------------------------------------------------------------------------------------
def test_unchecked_call_skips_the_host_check_and_matches_the_checked_one(monkeypatch):
    import flashbench_kernels.flash_decode.launch as fd_launch

    for paged in (False, True):
        a = _valid(paged)
        checked = flash_decode(**a, num_splits=2)

        def no_check(*args):
            raise AssertionError("the values were checked on the host")

        monkeypatch.setattr(fd_launch, "check_lengths_and_table", no_check)
        unchecked = flash_decode(**a, num_splits=2, check_values=False)
        assert torch.equal(unchecked, checked)
        with pytest.raises(AssertionError, match="checked on the host"):
            flash_decode(**a, num_splits=2)
        monkeypatch.undo()


def _expect_only_poisoned(out, good, poisoned: set[int]):
    """Sequences in ``poisoned`` are NaN in every element; the others equal the good run bit for bit."""
    for b in range(out.shape[0]):
        if b in poisoned:
            assert out[b].isnan().all(), f"sequence {b} should be NaN everywhere"
        else:
            assert torch.equal(out[b], good[b]), f"sequence {b} changed"


# (page size, sequence, table column, bad entry): pages of 16 take the row gather under the
# interpreter (BLOCK_N 32), pages of 32 and 64 one page a chunk; entries too large and negative,
# in a sequence's first page and in its last (the masked chunk)
BAD_ENTRIES = [(16, 2, 0, 10_000), (16, 2, 8, -1), (32, 1, 0, -7), (32, 2, 4, 1 << 30), (64, 2, 2, 99)]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("page,b,i,entry", BAD_ENTRIES)
def test_unchecked_bad_table_entry_poisons_only_its_sequence(page, b, i, entry, splits):
    q, k, v, seqlens, (k_pages, v_pages, table) = _case(2, 4, 2, 32, torch.float16, page_size=page, seed=page + i)
    good = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=splits)
    assert torch.isfinite(good).all()
    assert table[b, i] >= 0 and i * page < LENGTHS[b]  # the entry is in use
    table[b, i] = entry
    with pytest.raises(ValueError, match=rf"block_table\[{b}, {i}\] = {entry} is outside"):
        flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=splits)
    out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=splits, check_values=False)
    _expect_only_poisoned(out, good, {b})


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_unchecked_bad_lengths_poison_only_their_sequences(paged):
    """Lengths 0, negative and past the capacity: NaN for those sequences, the others untouched."""
    q, k, v, seqlens, p = _case(2, 4, 2, 32, torch.float16, lengths=[17, 40, 5, 30, 9], page_size=16, spare=0)
    args = (q, k, v) if not paged else (q, p[0], p[1])
    table = p[2] if paged else None
    good = flash_decode(*args, seqlens, block_table=table, num_splits=2)
    capacity = k.shape[1] if not paged else table.shape[1] * 16
    bad = seqlens.clone()
    bad[0], bad[2], bad[3] = 0, -3, capacity + 1
    out = flash_decode(*args, bad, block_table=table, num_splits=2, check_values=False)
    _expect_only_poisoned(out, good, {0, 2, 3})


def test_unchecked_unused_padding_entries_are_not_read():
    """-1 padding past a sequence's last page is not an error with or without the check."""
    a = _valid(True)
    assert (a["block_table"] == -1).any()
    out = flash_decode(**a, check_values=False)
    assert torch.equal(out, flash_decode(**a))


@pytest.mark.parametrize("value", [1, None, "yes"])
def test_check_values_must_be_a_bool(value):
    with pytest.raises(ValueError, match="^flash_decode: check_values must be True or False"):
        flash_decode(**_valid(False), check_values=value)


# ---------------------------------------------------------------------------------------------
# DecodeOptions
# ---------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    (dict(autotune=1), "autotune must be True or False"),
    (dict(tune_splits="no"), "tune_splits must be True or False"),
    (dict(config=(64, 4)), "expected three ints"),
    (dict(config=64), "expected three ints"),
    (dict(config=(64.0, 4, 2)), "expected three ints"),
    (dict(config=(64, True, 2)), "expected three ints"),
    (dict(config=(48, 4, 2)), "BLOCK_N must be a power of two in 16..256"),
    (dict(config=(8, 4, 2)), "BLOCK_N must be a power of two in 16..256"),
    (dict(config=(512, 4, 2)), "BLOCK_N must be a power of two in 16..256"),
    (dict(config=(64, 3, 2)), "num_warps must be one of 1, 2, 4, 8, 16"),
    (dict(config=(64, 4, 0)), "num_stages must be in 1..8"),
    (dict(config=(64, 4, 9)), "num_stages must be in 1..8"),
]


@pytest.mark.parametrize("kwargs,message", BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_options_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match="^DecodeOptions: .*" + re.escape(message)):
        DecodeOptions(**kwargs)


def test_options_are_frozen_hashable_and_normalised():
    o = DecodeOptions(config=[64, 4, 2])
    assert o.config == (64, 4, 2) and o.pinned == Tile(64, 4, 2)
    assert hash(o) == hash(DecodeOptions(config=(64, 4, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.autotune = False
    assert DecodeOptions().pinned is None


def test_options_must_be_decode_options():
    with pytest.raises(ValueError, match="^flash_decode: options must be a DecodeOptions, got dict"):
        flash_decode(**_valid(False), options={"autotune": False})


@pytest.mark.parametrize("page,config,gather", [(16, (16, 4, 2), "page"), (32, (64, 4, 2), "row"),
                                                (None, (64, 8, 3), "contiguous"), (64, (16, 4, 5), "page")])
def test_pinned_tile_runs_under_the_interpreter(page, config, gather):
    q, k, v, seqlens, paged = _case(3, 8, 2, 32, torch.float16, page_size=page, seed=len(config) + (page or 0))
    log = {}
    options = DecodeOptions(config=config)
    if page is None:
        out = flash_decode(q, k, v, seqlens, num_splits=2, options=options, launch_log=log)
        ks, vs = [k[b, :n] for b, n in enumerate(LENGTHS)], [v[b, :n] for b, n in enumerate(LENGTHS)]
    else:
        kp, vp, table = paged
        out = flash_decode(q, kp, vp, seqlens, block_table=table, num_splits=2, options=options, launch_log=log)
        ks, vs = gather_pages(kp, table, LENGTHS), gather_pages(vp, table, LENGTHS)
    assert (log["block_n"], log["num_warps"], log["num_stages"]) == config
    assert log["kv_gather"] == gather and log["config_source"] == "pinned"
    _assert_within_rule(out, q, ks, vs)


# ---------------------------------------------------------------------------------------------
# The split heuristic (capacity-based; on an H200's 132 SMs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("programs,capacity,sms,expected", [
    (512, 32768, 132, 1),    # B 64 x 8 kv heads: ~4 programs per SM already
    (264, 4096, 132, 1),     # exactly two per SM
    (256, 4096, 132, 3),     # B 32: ceil(528 / 256)
    (64, 4096, 132, 9),      # B 8, 4k: ceil(528 / 64)
    (64, 32768, 132, 9),     # B 8, 32k
    (8, 4096, 132, 16),      # B 1, 4k: capped at 4096 // 256
    (8, 32768, 132, 66),     # B 1, 32k: ceil(528 / 8)
    (8, 131072, 132, 66),    # B 1, 128k
    (1, 1 << 24, 132, 128),  # capped at MAX_SPLITS
    (8, 1000, 132, 3),       # capped at 1000 // 256
    (8, 500, 132, 1),        # less than two splits of 256 keys: never split
])
def test_choose_num_splits(programs, capacity, sms, expected):
    assert choose_num_splits(programs, capacity, sms) == expected


@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("capacity", [4096, 32768, 131072])
def test_heuristic_is_sensible_for_the_decode_benchmark(B, capacity):
    """GQA 32/8 on 132 SMs: split launches hold 2+ programs per SM and 256+ keys of capacity per split."""
    programs, sms = B * 8, 132
    splits = choose_num_splits(programs, capacity, sms)
    if B == 64:
        assert splits == 1
    else:
        assert programs * splits >= 2 * sms or capacity // splits == tuning.MIN_SPLIT_KEYS
        assert capacity // splits >= tuning.MIN_SPLIT_KEYS and programs * splits <= 8 * sms


def test_split_count_follows_the_capacity_not_the_lengths():
    """The count must not need the lengths (that would be a device read): equal capacity, equal count."""
    logs = []
    for lengths in ([1100, 13], [20, 13]):
        q, k, v, seqlens, _ = _case(1, 2, 1, 32, torch.float16, lengths=lengths, spare=1105 - max(lengths))
        logs.append({})
        out = flash_decode(q, k, v, seqlens, launch_log=logs[-1])
        _assert_within_rule(out, q, [k[b, :n] for b, n in enumerate(lengths)], [v[b, :n] for b, n in enumerate(lengths)])
    assert logs[0]["num_splits"] == logs[1]["num_splits"] == 4


def test_many_splits_combine_in_column_blocks():
    """65 splits of D 64 (most of them empty): the combine loads 128 splits x 32 columns a program."""
    q, k, v, seqlens, _ = _case(2, 2, 1, 64, torch.float32, lengths=[129])
    out = flash_decode(q, k, v, seqlens, num_splits=65)
    _assert_within_rule(out, q, [k[0, :129]], [v[0, :129]])


# ---------------------------------------------------------------------------------------------
# Tile candidates
# ---------------------------------------------------------------------------------------------
def test_candidates_per_class():
    mid = list(tuning.candidates(128, 16, 0, 32768, 2))
    assert mid == [Tile(n, w, d + 1) for n, w, d in tuning.SPACE["mid"]]  # contiguous: depth + 1 stages
    assert mid[0] == Tile(64, 4, 3)
    paged = list(tuning.candidates(128, 16, 256, 32768, 2))
    assert paged == [Tile(n, w, 2 * d + 1) for n, w, d in tuning.SPACE["mid"]]  # paged: 2 depth + 1
    # a chunk of one page for pages of 16 and 32: the class's own entry, else one of 4 warps, 3 deep
    assert list(tuning.candidates(128, 16, 16, 32768, 2)) == paged
    assert tuning.candidates(64, 16, 16, 32768, 2)[-1] == Tile(16, 4, 7)
    assert list(tuning.candidates(64, 16, 32, 32768, 2)) == [Tile(n, w, 2 * d + 1) for n, w, d in tuning.SPACE["small"]]
    for block_d in (32, 64, 128, 256):
        for page in (0, 16, 32, 256):
            tiles = tuning.candidates(block_d, 16, page, 1 << 17, 2)
            assert 1 <= len(tiles) <= 7 and len(set(tiles)) == len(tiles)
            assert not page or page > tuning.SMALL_PAGE or any(t.block_n == page for t in tiles)


def test_candidates_respect_budget_capacity_and_warps():
    # fp32: only entries whose K/V buffers fit the budget
    fp32 = tuning.candidates(128, 16, 0, 32768, 4)
    assert fp32 and all(t.block_n * (t.num_stages - 1) * 2 * 128 * 4 <= tuning.SMEM_BUDGET for t in fp32)
    assert len(fp32) < len(tuning.SPACE["mid"])
    # a 20-key capacity: no chunk above 32 keys
    assert all(t.block_n <= 32 for t in tuning.candidates(128, 16, 0, 20, 2))
    assert all(t.block_n == 16 for t in tuning.candidates(128, 16, 0, 3, 2))
    assert tuning.candidates(32, 16, 0, 3, 2) == (Tile(32, 1, 4),)  # none that short: the shortest
    # wider tiles, more warps: 128 rows at D 128 take 8 at least, 32 rows 2
    wide = tuning.candidates(128, 128, 0, 32768, 2)
    assert wide and all(t.num_warps >= 8 for t in wide) and len(wide) == len(set(wide))
    assert min(t.num_warps for t in tuning.candidates(128, 32, 0, 32768, 2)) == 2
    assert min(t.num_warps for t in tuning.candidates(256, 16, 0, 32768, 2)) == 4
    assert [tuning.min_warps(m, d) for m, d in ((16, 64), (16, 128), (32, 128), (64, 128), (64, 256))] == [1, 1, 2, 4, 8]


def test_shifted_splits():
    assert tuning.shifted_splits(8, 0, 100) == 8
    assert tuning.shifted_splits(8, -1, 100) == 4 and tuning.shifted_splits(8, 1, 100) == 16
    assert tuning.shifted_splits(8, -2, 100) == 2 and tuning.shifted_splits(8, 2, 100) == 32
    assert tuning.shifted_splits(6, -2, 100) is None  # a quarter of 6 rounds down to 1: no unsplit launch
    assert tuning.shifted_splits(8, 2, 20) == 20 and tuning.shifted_splits(3, 2, 3) is None
    assert tuning.shifted_splits(8, 1, 10) == 10 and tuning.shifted_splits(8, 1, 8) is None
    assert tuning.shifted_splits(3, -1, 100) is None  # never down to an unsplit launch
    assert tuning.shifted_splits(100, 1, tuning.MAX_SPLITS) == tuning.MAX_SPLITS


# ---------------------------------------------------------------------------------------------
# The tuner, on a fake clock: launches are recorded, not run (the interpreter tunes nothing)
# ---------------------------------------------------------------------------------------------
class FakeDevice:
    """Stands in for the GPU: records what ``run.run`` was asked to launch and times it from a table."""

    def __init__(self, monkeypatch, time_ms, unbuildable=()):
        import flashbench_kernels._tuner as tuner_mod
        import flashbench_kernels.flash_decode.launch as fd_launch

        self.launches = []
        self.timed = []
        self.time_ms = time_ms  # (tile, splits) -> ms; anything else 1.0
        self.unbuildable = set(unbuildable)
        monkeypatch.setattr(fd_launch, "interpreting", lambda: False)
        monkeypatch.setattr(fd_run, "run", self.run)
        monkeypatch.setattr(tuner_mod, "_bench", self.bench)
        monkeypatch.setattr(tuning, "held_bench", self.bench)  # the decode tuner's timing (GPU time only)
        monkeypatch.setattr(tuning, "TUNER", tuning.make_tuner())

    def run(self, call, tile, splits):
        if tile in self.unbuildable:
            from triton.runtime.errors import OutOfResources
            raise OutOfResources(300000, 232448, "shared memory")
        self.launches.append((tile, splits))

    def bench(self, fn):
        fn()
        self.timed.append(self.launches[-1])
        return self.time_ms.get(self.launches[-1], 1.0)


def _decode_args(lengths=(1100, 13), Nq=1, H=4, Hkv=1, D=32, dtype=torch.float16, page=None, spare=5):
    q, k, v, seqlens, paged = _case(Nq, H, Hkv, D, dtype, lengths=list(lengths), page_size=page, spare=spare)
    if page:
        return dict(q=q, k_cache=paged[0], v_cache=paged[1], cache_seqlens=seqlens, block_table=paged[2])
    return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens)


def test_tuner_times_every_tile_and_split_count_and_keeps_the_fastest(monkeypatch):
    # capacity 1105, 2 programs on the interpreter's 4 SMs: the heuristic's 4 splits, 2, 8 and 16 (a quarter
    # is 1: not tried), each capped at the tile's chunks of capacity (256-key chunks: 5)
    tiles = tuning.candidates(32, 16, 0, 1105, 2)
    best = (tiles[2], 8)
    dev = FakeDevice(monkeypatch, {best: 0.5})
    log = {}
    flash_decode(**_decode_args(), launch_log=log)
    offered = {(t, min(s, -(-1105 // t.block_n))) for t in tiles for s in (2, 4, 8, 16)}
    assert (Tile(256, 8, 3), 5) in offered and (Tile(32, 1, 4), 16) in offered
    assert set(dev.timed) == offered and len(dev.timed) == len(offered) * 4  # 4 interleaved rounds
    assert dev.launches[-1] == best
    assert (log["block_n"], log["num_warps"], log["num_stages"], log["num_splits"]) == (*best[0], 8)
    assert log["config_source"] == "tuned" and log["splits_source"] == "tuned"
    # the same class again: no timing, one launch of the choice
    n = len(dev.timed)
    flash_decode(**_decode_args(lengths=(1000, 1100)), launch_log=log)
    assert len(dev.timed) == n and dev.launches[-1] == best


@pytest.mark.parametrize("change", [
    dict(page=16), dict(page=32), dict(dtype=torch.float32), dict(D=64), dict(Nq=5), dict(spare=2000),
    dict(lengths=(1100, 13, 40, 50, 60, 70, 80, 90)),  # 8 programs: 1 split (a smaller split bucket)
    dict(lengths=(1100, 13, 40)),  # 3 programs: still 4 splits, but a larger batch (B1 and B8 must not share)
], ids=["page16", "page32", "fp32", "D64", "rows", "capacity", "splits", "batch"])
def test_tuner_key_separates_shape_classes(monkeypatch, change):
    dev = FakeDevice(monkeypatch, {})
    flash_decode(**_decode_args())
    n = len(dev.timed)
    flash_decode(**_decode_args(lengths=(1000, 3), spare=105))  # same class: lengths are not in the key
    assert len(dev.timed) == n
    flash_decode(**_decode_args(**change))
    assert len(dev.timed) > n


def test_tuner_key_fields():
    assert tuning.KEY == ["HEAD_DIM", "BLOCK_M", "PAGE_SIZE", "DTYPE", "SPLITS", "CAPACITY", "PROGRAMS", "VARY_SPLITS",
                          "PINNED", "OVERLAP"]


def test_overlap_combine_needs_hopper_and_is_an_option():
    """The combine overlaps the split kernel only where the GPU has programmatic dependent launch: never
    under the interpreter or on a CPU tensor, whatever the option says; the option is a checked bool."""
    launch = fd_launch
    assert not launch.can_overlap_combine(torch.device("cpu")) and not launch.can_overlap_combine(torch.device("meta"))
    q = torch.empty(1, 1, 4, 64, dtype=torch.float16, device="meta")
    k = torch.empty(1, 256, 1, 64, dtype=torch.float16, device="meta")
    lens = torch.empty(1, dtype=torch.int32, device="meta")
    assert launch.prepare_call(q, k, k, lens, None, 0.1, 256, 0, True).overlap_combine is False
    call = launch.prepare_call(q, k, k, lens, None, 0.1, 256, 0, False)._replace(overlap_combine=True)
    assert fd_run.split_constexprs(call, 32, 2)["OVERLAP"] is True  # only a split launch has a combine to overlap
    assert fd_run.split_constexprs(call, 32, 1)["OVERLAP"] is False
    assert DecodeOptions().overlap_combine is True
    with pytest.raises(ValueError, match="overlap_combine must be True or False"):
        DecodeOptions(overlap_combine=1)


def test_given_split_count_is_not_tuned(monkeypatch):
    dev = FakeDevice(monkeypatch, {})
    log = {}
    flash_decode(**_decode_args(), num_splits=3, launch_log=log)
    assert {s for _, s in dev.timed} == {3} and log["splits_source"] == "given" and log["config_source"] == "tuned"


def test_tune_splits_off_keeps_the_heuristic(monkeypatch):
    dev = FakeDevice(monkeypatch, {})
    log = {}
    flash_decode(**_decode_args(), options=DecodeOptions(tune_splits=False), launch_log=log)
    assert {s for _, s in dev.timed} == {4} and log["splits_source"] == "heuristic"


def test_pinned_tile_tunes_only_the_split_count(monkeypatch):
    pinned = Tile(16, 4, 2)
    dev = FakeDevice(monkeypatch, {(pinned, 8): 0.1})
    log = {}
    flash_decode(**_decode_args(), options=DecodeOptions(config=tuple(pinned)), launch_log=log)
    assert set(dev.timed) == {(pinned, 2), (pinned, 4), (pinned, 8), (pinned, 16)} and dev.launches[-1] == (pinned, 8)
    assert log["config_source"] == "pinned" and log["splits_source"] == "tuned"
    # nothing left to tune: runs at once
    n = len(dev.timed)
    flash_decode(**_decode_args(), options=DecodeOptions(config=tuple(pinned), tune_splits=False), launch_log=log)
    assert len(dev.timed) == n and dev.launches[-1] == (pinned, 4) and log["splits_source"] == "heuristic"


def test_autotune_off_runs_the_first_candidate(monkeypatch):
    dev = FakeDevice(monkeypatch, {})
    log = {}
    flash_decode(**_decode_args(), options=DecodeOptions(autotune=False), launch_log=log)
    assert not dev.timed and dev.launches == [(tuning.candidates(32, 16, 0, 1105, 2)[0], 4)]
    assert log["config_source"] == "default" and log["splits_source"] == "heuristic"


def test_unbuildable_candidates_are_dropped_and_a_pinned_one_is_a_value_error(monkeypatch):
    tiles = tuning.candidates(32, 16, 0, 1105, 2)
    dev = FakeDevice(monkeypatch, {}, unbuildable=tiles[:2])
    flash_decode(**_decode_args())
    assert {t for t, _ in dev.timed} == set(tiles[2:])
    for tune_splits in (False, True):
        with pytest.raises(ValueError, match=r"^flash_decode: options.config = \(\d+, 4, 3\) cannot be built"):
            flash_decode(**_decode_args(), options=DecodeOptions(config=tuple(tiles[0]), tune_splits=tune_splits))


# ---------------------------------------------------------------------------------------------
# Every candidate compiled for sm_90 (no GPU needed: Triton's wheel carries ptxas and cuobjdump)
# ---------------------------------------------------------------------------------------------
# Runs in a child process without the interpreter.  One JSON line per candidate: its class, tile,
# depth (K/V chunks in flight), registers, spilled bytes and shared memory.
_COMPILE_SCRIPT = r"""
import json, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from flashbench_kernels.flash_decode import launch, run, tuning
from flashbench_kernels.flash_decode.kernels import split_kernel

sys.path.insert(0, sys.argv[2])  # tools/: the compile report's reading of cuobjdump (registers, spills, shared)
from fa2_compile_report import resource_usage

TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

def call_for(D, page, dtype=torch.bfloat16, B=2, Nq=4, H=32, Hkv=8, capacity=4096):
    q = torch.empty(B, Nq, H, D, dtype=dtype, device="meta")
    lens = torch.empty(B, dtype=torch.int32, device="meta")
    if page:
        k = torch.empty(B * capacity // page, page, Hkv, D, dtype=dtype, device="meta")
        table = torch.empty(B, capacity // page, dtype=torch.int32, device="meta")
    else:
        k, table = torch.empty(B, capacity, Hkv, D, dtype=dtype, device="meta"), None
    return launch.prepare_call(q, k, k, lens, table, 0.1, capacity, page)

def compile_tile(call, tile, splits):
    fn = split_kernel
    consts = run.split_constexprs(call, tile.block_n, splits)
    dt = TYPES[call.q.dtype]
    sig = {n: "i32" for n in fn.arg_names}
    sig.update(Q="*" + dt, K="*" + dt, V="*" + dt, O="*fp32" if splits > 1 else "*" + dt, LSE="*fp32",
               SEQLENS="*i32", TABLE="*i32", qk_scale="fp32")
    sig.update({n: "constexpr" for n in consts})
    aligned = [n for n in fn.arg_names if n in ("Q", "K", "V", "O", "LSE", "SEQLENS", "TABLE")
               or (n.startswith("stride_") and n not in fn.do_not_specialize and n != "stride_lh")]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=tile.num_warps, num_stages=tile.num_stages))

for D, page in json.loads(sys.argv[1]):
    call = call_for(D, page)
    for tile in tuning.candidates(call.block_d, call.block_m, page, call.capacity, 2):
        depth = (tile.num_stages - 1) // (2 if page else 1)
        row = dict(D=D, page=page, tile=list(tile), depth=depth, kv_chunk_bytes=2 * tile.block_n * call.block_d * 2)
        print(json.dumps({**row, **resource_usage(compile_tile(call, tile, 3))}), flush=True)
"""
_COMPILE_CLASSES = [(128, 0), (128, 16), (64, 0), (256, 0)]  # (head dim, page size): about 25 builds
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# Candidates that spill, with their stack frame in bytes (ptxas -v: 4 bytes of spill stores and loads each);
# every other candidate spills nothing.
_KNOWN_SPILLS = {(128, 0, (32, 2, 3)): 8, (128, 16, (128, 8, 5)): 8}


@pytest.fixture(scope="module")
def compiled_candidates():
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tools = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, json.dumps(_COMPILE_CLASSES), tools],
                          capture_output=True, text=True, env=env, timeout=1200)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and rows, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return rows


_OVERLAP_SCRIPT = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from flashbench_kernels.flash_decode import launch, run
from flashbench_kernels.flash_decode.kernels import combine_kernel, split_kernel

q = torch.empty(2, 1, 32, 128, dtype=torch.bfloat16, device="meta")
k = torch.empty(2, 4096, 8, 128, dtype=torch.bfloat16, device="meta")
lens = torch.empty(2, dtype=torch.int32, device="meta")
call = launch.prepare_call(q, k, k, lens, None, 0.1, 4096, 0)._replace(overlap_combine=True)
target = GPUTarget("cuda", 90, 32)
for overlap in (True, False):
    consts = run.split_constexprs(call._replace(overlap_combine=overlap), 64, 4)
    sig = {n: "i32" for n in split_kernel.arg_names}
    sig.update(Q="*bf16", K="*bf16", V="*bf16", O="*fp32", LSE="*fp32", SEQLENS="*i32", TABLE="*i32", qk_scale="fp32")
    sig.update({n: "constexpr" for n in consts})
    ptx = triton.compile(ASTSource(fn=split_kernel, signature=sig, constexprs=consts), target=target,
                         options=dict(num_warps=4, num_stages=3)).asm["ptx"]
    print("split", overlap, "griddepcontrol.launch_dependents" in ptx, "griddepcontrol.wait" in ptx)
    consts = dict(HEAD_DIM=128, BLOCK_S=4, BLOCK_DC=128, OVERLAP=overlap)
    sig = dict(O_PART="*fp32", LSE_PART="*fp32", OUT="*bf16", ROWS="i32", NUM_SPLITS="i32")
    sig.update({n: "constexpr" for n in consts})
    ptx = triton.compile(ASTSource(fn=combine_kernel, signature=sig, constexprs=consts), target=target,
                         options=dict(num_warps=4, launch_pdl=overlap)).asm["ptx"]
    print("combine", overlap, "griddepcontrol.launch_dependents" in ptx, "griddepcontrol.wait" in ptx)
"""


def test_overlapped_builds_signal_and_wait_for_sm90():
    """With OVERLAP the split kernel signals its dependents (griddepcontrol.launch_dependents) and the
    combine waits for the split kernel (griddepcontrol.wait) before reading; without it neither does."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _OVERLAP_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:4] == ["split True True False", "combine True False True",
                                           "split False False False", "combine False False False"]


@pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")), reason="this Triton carries no NVIDIA toolchain")
def test_every_candidate_builds_for_sm90_without_spills_at_its_depth(compiled_candidates):
    """Each candidate compiles for sm_90, spills nothing (two: 8 bytes, ``_KNOWN_SPILLS``), fits a block's 227 KB of shared memory and
    gets exactly ``depth`` K/V buffers in both layouts (what ``pipeline_stages`` promises)."""
    assert {(r["D"], r["page"]) for r in compiled_candidates} == set(_COMPILE_CLASSES)
    for r in compiled_candidates:
        where = f"D{r['D']} page {r['page']} tile {r['tile']}"
        allowed = _KNOWN_SPILLS.get((r["D"], r["page"], tuple(r["tile"])), 0)
        assert r["spill_bytes"] <= allowed, f"{where} spills {r['spill_bytes']} bytes"
        assert r["shared_bytes"] <= 227 * 1024, f"{where}: {r['shared_bytes']} bytes of shared memory"
        buffers = r["depth"] * r["kv_chunk_bytes"]
        assert buffers <= r["shared_bytes"] < buffers + r["kv_chunk_bytes"] // 2 + 16 * 1024, \
            f"{where}: {r['shared_bytes']} bytes of shared memory for {r['depth']} K/V buffers of {r['kv_chunk_bytes']}"
