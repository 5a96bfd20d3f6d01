"""Tests of the bundled Flash-Decoding kernel (``flash_decode``) under Triton's CPU interpreter.

Tiny, odd shapes in fp16 and fp32 (the interpreter has no bf16; tests/gpu covers it): one batch
holds caches of 1, 17 and 129 keys (one key, one chunk plus one, several chunks plus one), the
contiguous cache and a paged copy in shuffled pages are both run, and every output and partial
buffer is NaN-poisoned first.  Tolerance rule (flash-attention's): max error against the fp64
reference <= 2 x the error of PyTorch's same-dtype math + a small absolute term.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

import flashbench_kernels.flash_decode as fd
from decode_reference import decode_reference, gather_pages, page_cache, random_tensor
from flashbench_kernels._validate import interpreting
from flashbench_kernels.flash_decode import choose_num_splits, flash_decode

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float16: 1e-2, torch.float32: 1e-5}
LENGTHS = [1, 17, 129]


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """NaN-fill every buffer the launcher allocates, so an element the kernels do not write shows."""
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(fd, "_empty", empty)


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
    ref = decode_reference(q, k_seqs, v_seqs, sm_scale)
    same_dtype = decode_reference(q, k_seqs, v_seqs, sm_scale, dtype=q.dtype)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all(), "non-finite values (unwritten or NaN)"
    err = (out.double() - ref).abs().max().item()
    err_torch = (same_dtype.double() - ref).abs().max().item()
    atol = ATOL[q.dtype]
    assert err <= 2 * err_torch + atol, f"max error {err:.3e} > 2 x torch {err_torch:.3e} + {atol:g}"


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
    """num_splits=0 under the interpreter (4 SMs): 2 programs, 10 chunks -> min(ceil(12 / 2), 10 // 4) = 2."""
    q, k, v, seqlens, _ = _case(1, 2, 1, 32, torch.float16, lengths=[300, 13])
    log = {}
    out = flash_decode(q, k, v, seqlens, launch_log=log)
    assert log == dict(num_splits=2, block_m=16, block_n=32, m_blocks=1, kv_gather="contiguous", page_size=0,
                       num_warps=4, num_stages=3, combine=True)
    _assert_within_rule(out, q, [k[0, :300], k[1, :13]], [v[0, :300], v[1, :13]])
    one = flash_decode(q, k, v, seqlens, num_splits=1, launch_log=log)
    assert log["num_splits"] == 1 and log["combine"] is False
    torch.testing.assert_close(one, out, rtol=0, atol=2e-3)


def test_shared_pages():
    """Two sequences whose tables point at the same pages (a shared prefix) read the same keys."""
    q, k, v, seqlens, (k_pages, v_pages, table) = _case(2, 4, 2, 32, torch.float16, lengths=[40, 40], page_size=16)
    table[1] = table[0]
    out = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=2)
    _assert_within_rule(out, q, gather_pages(k_pages, table, [40, 40]), gather_pages(v_pages, table, [40, 40]))


@pytest.mark.parametrize("programs,chunks,sms,expected", [
    (512, 512, 132, 1),    # B 64 x 8 kv heads: ~4 programs per SM already
    (264, 512, 132, 1),    # exactly two per SM
    (64, 64, 132, 7),      # B 8 x 8 kv heads, 4k keys: ceil(396 / 64) = 7 (64 chunks allow 16)
    (8, 512, 132, 50),     # B 1, 32k keys: ceil(396 / 8) = 50
    (8, 64, 132, 16),      # capped at 64 chunks // 4
    (1, 1 << 20, 132, 128),  # capped at MAX_SPLITS
    (8, 3, 132, 1),        # fewer than 4 chunks: never split
])
def test_choose_num_splits(programs, chunks, sms, expected):
    assert choose_num_splits(programs, chunks, sms) == expected


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
    """Entries past a sequence's last page (here -1 padding) are never read, so they need not be valid."""
    a = _valid(True)
    assert (a["block_table"][0, 1:] == -1).all()  # sequence 0 (5 keys) uses one page of 16
    flash_decode(**a)


def test_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(fd, "interpreting", lambda: False)
    cpu_args = {n: t.cpu() for n, t in _valid(False).items()}
    with pytest.raises(ValueError, match="inputs must be CUDA tensors"):
        flash_decode(**cpu_args)
