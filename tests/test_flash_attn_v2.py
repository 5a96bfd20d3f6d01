"""Tests of the bundled Triton FlashAttention-2 kernel (forward, backward, LSE, validation).

Without CUDA the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), on
tiny shapes, fp16 and fp32, through both tile paths (pointer loads and tensor descriptors).
Tests marked ``gpu`` run on a CUDA device (bf16 and fp16 over a grid, outputs poisoned first).

Tolerance rule (flash-attention's): compared with an fp64 reference on fresh random inputs,
the kernel's max error must be <= 2 x the max error of PyTorch's same-dtype math + a small
absolute term.
"""
from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

import flashbench_kernels._validate as validate
import flashbench_kernels.flash_attn_v2 as fa2
from flashbench.reference import naive_attention, reference_attention
from flashbench_kernels.flash_attn_v2 import flash_attn_v2, last_configs

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 2e-5}


def _inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed, device=DEV):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)  # noqa: E731
    return mk(B, H, Nq, D), mk(B, Hkv, Nkv, D), mk(B, Hkv, Nkv, D), mk(B, H, Nq, D)


def _run_with_grads(fn, q, k, v, do, dtype=None):
    """Output and (dq, dk, dv) of fn on leaf copies of q, k, v (cast to dtype if given)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return [out.detach()] + [t.grad.detach() for t in leaves]


def _visible_rows_fn(fn, n_q, n_kv, causal):
    """fn restricted to the query rows that see at least one key; the others are defined as 0.

    (PyTorch's softmax of an all -inf row gives NaN gradients, so the references cannot be
    differentiated through such rows; their correct contribution is zero.)
    """
    cut = n_q - n_kv if (causal and n_q > n_kv) else 0
    if cut == 0:
        return fn

    def wrapped(q, k, v):
        out = fn(q[:, :, cut:], k, v)
        return torch.cat([out.new_zeros(out.shape[0], out.shape[1], cut, out.shape[3]), out], dim=2)

    return wrapped


def _check_against_reference(q, k, v, do, causal, sm_scale=None, atol=None):
    dtype = q.dtype
    Nq, Nkv = q.shape[2], k.shape[2]
    ref_fn = _visible_rows_fn(lambda a, b, c: reference_attention(a, b, c, causal, sm_scale, compute_dtype=torch.float64),
                              Nq, Nkv, causal)
    naive_fn = _visible_rows_fn(lambda a, b, c: naive_attention(a, b, c, causal, sm_scale), Nq, Nkv, causal)
    ref = _run_with_grads(ref_fn, q, k, v, do, torch.float64)
    naive = _run_with_grads(naive_fn, q, k, v, do)
    ours = _run_with_grads(lambda a, b, c: flash_attn_v2(a, b, c, causal=causal, sm_scale=sm_scale), q, k, v, do)
    atol = ATOL[dtype] if atol is None else atol
    for name, o, n, r in zip(("out", "dq", "dk", "dv"), ours, naive, ref):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        err = (o.double() - r).abs().max().item()
        err_naive = (n.double() - r).abs().max().item()
        assert err <= 2 * err_naive + atol, f"{name}: max error {err:.3e} > 2 x naive {err_naive:.3e} + {atol:g}"


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


def _case_id(c):
    B, H, Hkv, Nq, Nkv, D, causal = c
    return f"B{B}-H{H}-Hkv{Hkv}-q{Nq}-kv{Nkv}-D{D}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = _inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq * 1000 + Nkv + D)
    _check_against_reference(q, k, v, do, causal)


@pytest.mark.parametrize("path", ["ptr", "tma"])
@pytest.mark.parametrize("causal", [False, True])
def test_both_tile_paths(path, causal, monkeypatch):
    if DEV == "cuda" and path == "tma" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need compute capability >= 9")
    monkeypatch.setattr(fa2, "FORCE_PATH", path)
    q, k, v, do = _inputs(1, 4, 2, 45, 61, 64, torch.float16, seed=7)
    _check_against_reference(q, k, v, do, causal)
    assert all(c.endswith(f"tma={path == 'tma'}") for n, c in last_configs().items() if n != "bwd_preprocess")


def test_custom_scale_and_noncontiguous_inputs():
    # (B, N, H, D) storage viewed as (B, H, N, D): non-contiguous, last dim contiguous
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 37, 4, 32, generator=g).to(DEV, torch.float16).transpose(1, 2)
    kv = torch.randn(2, 29, 2, 2, 32, generator=g).to(DEV, torch.float16)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    do = torch.randn(2, 4, 37, 32, generator=g).to(DEV, torch.float16)
    assert not q.is_contiguous() and not k.is_contiguous()
    _check_against_reference(q, k, v, do, causal=True, sm_scale=0.3)


@pytest.mark.parametrize("causal", [False, True])
def test_return_lse(causal):
    q, k, v, _ = _inputs(1, 4, 2, 50, 30, 32, torch.float32, seed=11)
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


def test_last_configs_names_each_kernel():
    q, k, v, do = _inputs(1, 2, 2, 20, 20, 32, torch.float16, seed=5)
    q.requires_grad_()
    flash_attn_v2(q, k, v).backward(do)
    cfg = last_configs()
    for name in ("fwd", "bwd_dkdv", "bwd_dq"):
        assert "BLOCK_M=" in cfg[name] and "num_warps=" in cfg[name]


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


def test_forcing_a_warp_specialised_config_where_not_allowed_raises(monkeypatch):
    # the interpreter (and any pointer-only input) cannot run the warp-specialised forward
    monkeypatch.setattr(fa2, "FORCE_PATH", "ptr")
    monkeypatch.setitem(fa2.FORCE_CONFIG, "fwd", (128, 128, 4, 3, fa2.WS))
    q, k, v, _ = _inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    with pytest.raises(ValueError, match="warp specialisation"):
        flash_attn_v2(q, k, v)


def test_forcing_a_warp_specialised_causal_forward_raises(monkeypatch):
    monkeypatch.setattr(fa2, "interpreting", lambda: False)  # as on a Hopper GPU with aligned inputs
    monkeypatch.setattr(fa2, "_tma_ok", lambda *t: fa2._BOTH)
    monkeypatch.setitem(fa2.FORCE_CONFIG, "fwd", (128, 128, 4, 3, fa2.WS))
    q, k, v, _ = _inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    with pytest.raises(ValueError, match="non-causal"):
        fa2._forward(q, k, v, True, 0.125)


def test_forcing_a_warp_specialised_backward_raises(monkeypatch):
    monkeypatch.setitem(fa2.FORCE_CONFIG, "bwd_dq", (128, 128, 4, 2, fa2.WS))
    q, k, v, do = _inputs(1, 2, 2, 16, 16, 32, torch.float16, seed=3)
    out = flash_attn_v2(q.requires_grad_(), k, v)
    with pytest.raises(ValueError, match="only the forward"):
        out.backward(do)


def test_forced_config_is_used_and_reported(monkeypatch):
    monkeypatch.setitem(fa2.FORCE_CONFIG, "fwd", (16, 32, 1, 1))
    q, k, v, _ = _inputs(1, 2, 2, 40, 40, 32, torch.float16, seed=5)
    out = flash_attn_v2(q, k, v, causal=True)
    ref = reference_attention(q, k, v, True, compute_dtype=torch.float64)
    assert (out.double() - ref).abs().max().item() < 1e-2
    assert last_configs()["fwd"].startswith("BLOCK_M=16,BLOCK_N=32,num_warps=1,num_stages=1")


@pytest.mark.parametrize("tma_ok, ieee, causal, expect_ws", [
    (fa2._BOTH, False, False, True),       # Hopper, aligned, 16-bit, non-causal: warp-specialised entries tried
    (fa2._TMA_ONLY, False, False, True),
    (fa2._PTR_ONLY, False, False, False),  # pre-Hopper or misaligned: never
    (fa2._BOTH, True, False, False),       # fp32 reference path: never
    (fa2._BOTH, False, True, False),       # causal: never (one masked loop measured slower)
])
def test_pruner_offers_warp_specialised_forwards_only_where_they_run(tma_ok, ieee, causal, expect_ws, monkeypatch):
    monkeypatch.setattr(fa2, "interpreting", lambda: False)
    configs = fa2._all_configs(fa2.FWD_SPACE)
    prune = fa2._fwd_tuner.prune  # the shipped forward pruner
    kept = prune(configs, {"TMA_OK": tma_ok, "NQ_BUCKET": 4096, "NKV_BUCKET": 4096}, HEAD_DIM=128, IEEE=ieee,
                 CAUSAL=causal)
    ws = [c for c in kept if c.kwargs.get("WARP_SPEC")]
    assert bool(ws) == expect_ws
    assert all(c.kwargs["USE_TMA"] and c.num_warps == 4 for c in ws)
    expected_ws = {t for t in fa2.FWD_SPACE["mid"] if fa2._is_ws(t)} if expect_ws else set()
    assert {fa2._sig(c) for c in ws} == expected_ws
    skipped = set(fa2.FWD_SKIP.get(("mid", causal, 4096), []))
    assert {fa2._sig(c) for c in kept if not c.kwargs.get("WARP_SPEC")} == \
        {t for t in fa2.FWD_SPACE["mid"] if not fa2._is_ws(t) and not fa2._is_gluon(t)} - skipped  # no SM90_OK


@pytest.mark.parametrize("nq, offered", [(2048, True), (4096, False), (16384, False)])
def test_pruner_leaves_out_skipped_forward_entries_from_their_nq_bucket_up(nq, offered, monkeypatch):
    monkeypatch.setattr(fa2, "interpreting", lambda: False)
    prune = fa2._fwd_tuner.prune
    # 64x64 is skipped from Nq = 4096 up for the D128 causal and the D64 non-causal forward only
    for d, causal, first, skips in [(128, True, (128, 128, 8, 3), True), (128, False, (128, 128, 8, 3), False),
                                    (64, False, (128, 64, 8, 3), True), (64, True, (128, 64, 8, 3), False)]:
        kept = {fa2._sig(c) for c in prune(fa2._all_configs(fa2.FWD_SPACE),
                                           {"TMA_OK": fa2._BOTH, "NQ_BUCKET": nq, "NKV_BUCKET": nq},
                                           HEAD_DIM=d, IEEE=False, CAUSAL=causal)}
        assert ((64, 64, 4, 3) in kept) == (offered or not skips), (d, causal)
        assert first in kept


# ---------------------------------------------------------------------------------------------
# GPU only: bf16/fp16 grid with poisoned outputs
# ---------------------------------------------------------------------------------------------
def _poisoned_empty(shape, dtype, device):
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
@pytest.mark.parametrize("case", GPU_GRID, ids=_case_id)
def test_gpu_grid_poisoned(case, dtype, monkeypatch):
    monkeypatch.setattr(fa2, "_empty", _poisoned_empty)
    monkeypatch.setattr(fa2, "AUTOTUNE", False)  # one configuration per head dim: bounded compile time
    B, H, Hkv, Nq, Nkv, D, causal = case
    q, k, v, do = _inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 7 * Nkv + D)
    _check_against_reference(q, k, v, do, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_autotuned_bf16(causal, monkeypatch):
    monkeypatch.setattr(fa2, "_empty", _poisoned_empty)
    q, k, v, do = _inputs(1, 16, 16, 1537, 1537, 128, torch.bfloat16, seed=21)
    _check_against_reference(q, k, v, do, causal)


@pytest.mark.gpu
def test_gpu_fp32_ieee_path(monkeypatch):
    monkeypatch.setattr(fa2, "AUTOTUNE", False)
    q, k, v, do = _inputs(1, 4, 2, 200, 300, 64, torch.float32, seed=4)
    _check_against_reference(q, k, v, do, causal=True, atol=1e-4)


@pytest.mark.gpu
def test_gpu_pointer_path_on_misaligned_view(monkeypatch):
    monkeypatch.setattr(fa2, "AUTOTUNE", False)
    # a view whose head stride is not 16-byte aligned forces the pointer path on any GPU
    base = torch.randn(2 * 100 * 64 + 1, dtype=torch.float16, device="cuda")
    q = base[1:].view(1, 2, 100, 64)  # data_ptr offset by 2 bytes
    k, v, do = (torch.randn(1, 2, 100, 64, dtype=torch.float16, device="cuda") for _ in range(3))
    _check_against_reference(q, k, v, do, causal=True)
    assert last_configs()["fwd"].endswith("tma=False")


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
WS_CONFIGS = sorted({t for lst in fa2.FWD_SPACE.values() for t in lst if fa2._is_ws(t)})


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="warp-specialised forward: Hopper (capability 9+) only")
@pytest.mark.parametrize("config", WS_CONFIGS, ids=lambda t: "x".join(map(str, t[:4])))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", WS_GRID, ids=_case_id)
def test_gpu_warp_specialised_forward_poisoned(case, dtype, config, monkeypatch):
    """Each shipped warp-specialised configuration, three fresh inputs per shape (a race would be
    intermittent: Triton 3.6's pass produced NaN rows with 3-stage configs, TUNING.md v6)."""
    B, H, Hkv, Nq, Nkv, D, causal = case
    if config not in fa2.FWD_SPACE[fa2._dclass(D)]:
        pytest.skip(f"{config} is not in the D={D} class")
    monkeypatch.setattr(fa2, "_empty", _poisoned_empty)
    monkeypatch.setattr(fa2, "AUTOTUNE", False)
    monkeypatch.setitem(fa2.FORCE_CONFIG, "fwd", config)
    for rep in range(3):
        q, k, v, do = _inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 5 * Nkv + D + 1000 * rep)
        _check_against_reference(q, k, v, do, causal)
        assert last_configs()["fwd"].endswith("tma=True,warp_specialize=True")


def test_every_head_dim_class_with_warp_specialised_entries_is_covered_by_the_gpu_grid():
    ws_classes = {c for c, lst in fa2.FWD_SPACE.items() if any(fa2._is_ws(t) for t in lst)}
    assert ws_classes <= {fa2._dclass(case[5]) for case in WS_GRID}


# ---------------------------------------------------------------------------------------------
# Launch order of causal programs (CPU interpreter or GPU)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _schedule_probe(OUT, n_bh, HEAVY_LAST_BLOCK: tl.constexpr, GROUP_PROGRAMS: tl.constexpr):
    blk, bh = fa2.block_and_head(n_bh, HEAVY_LAST_BLOCK, GROUP_PROGRAMS)
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


def test_per_head_causal_schedule_is_v6s_order():
    n_blk, n_bh = 4, 3
    assert _launch_order(n_blk, n_bh, True, 0) == [(n_blk - 1 - i, bh) for bh in range(n_bh) for i in range(n_blk)]
    assert _launch_order(n_blk, n_bh, False, 0) == [(i, bh) for bh in range(n_bh) for i in range(n_blk)]


# 0: per head (v6); 4: several heads a group at these sizes; 256: the shipped value, one group here
@pytest.mark.parametrize("group_programs", [0, 4, 256])
def test_causal_schedules_agree_with_the_reference(group_programs, monkeypatch):
    monkeypatch.setattr(fa2, "CAUSAL_GROUP_PROGRAMS", group_programs)
    q, k, v, do = _inputs(1, 4, 2, 70, 33, 32, torch.float16, seed=11)
    _check_against_reference(q, k, v, do, causal=True)


@pytest.mark.parametrize("bad", [-1, 1.5, "grouped"])
def test_bad_causal_group_size_raises(bad, monkeypatch):
    monkeypatch.setattr(fa2, "CAUSAL_GROUP_PROGRAMS", bad)
    q, k, v, _ = _inputs(1, 1, 1, 8, 8, 32, torch.float16, seed=0)
    with pytest.raises(ValueError, match="CAUSAL_GROUP_PROGRAMS"):
        flash_attn_v2(q, k, v, causal=True)
