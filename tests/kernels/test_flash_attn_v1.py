"""Tests of the bundled Triton FlashAttention-1 kernel (``flashbench_kernels.flash_attn_v1``).

CPU (CI): Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), tiny odd shapes, fp16 and
fp32, with every buffer the launcher allocates filled with NaN (``_poisoned_launcher_buffers``) so that
an element the kernels fail to write shows up.  Every check compares against ``reference_attention`` in float64 on fresh random inputs, with
the flash-attention rule: error <= 2 x (error of PyTorch's same-dtype math) + a small absolute term.
GPU (``-m gpu``): bf16 / fp16 / fp32 over a grid, outputs read from a poisoned allocator so that any
element the kernels fail to write shows up as NaN.
"""
from __future__ import annotations

import math

import pytest
import torch

import flashbench_kernels.flash_attn_v1 as fa1_module
from flashbench.attention.reference import naive_attention, reference_attention
from flashbench_kernels.flash_attn_v1 import flash_attn_v1

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
ATOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-5}

_seed = [1234]


class _PoisoningTorch:
    """``torch`` as the launcher module sees it, except that ``empty`` and ``empty_like`` return
    NaN-filled floating tensors: CPU memory often comes back zeroed, which would pass for a written 0."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def _poisoned_launcher_buffers(monkeypatch):
    monkeypatch.setattr(fa1_module, "torch", _PoisoningTorch())


def _fresh_gen(device):
    _seed[0] += 1
    g = torch.Generator(device=device)
    g.manual_seed(_seed[0])
    return g


def _inputs(B, H, Hkv, Nq, Nkv, D, dtype, device=DEVICE):
    g = _fresh_gen(device)
    q = torch.randn(B, H, Nq, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    k = torch.randn(B, Hkv, Nkv, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    v = torch.randn(B, Hkv, Nkv, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    do = torch.randn(B, H, Nq, D, generator=g, device=device, dtype=torch.float32).to(dtype)
    return q, k, v, do


def _grads(fn, q, k, v, do, cast=None):
    leaves = [(t.detach().to(cast) if cast is not None else t.detach().clone()).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return out.detach(), [t.grad.detach() for t in leaves]


def _maxerr(a, b):
    return (a.double() - b.double()).abs().max().item()


def _check(B, H, Hkv, Nq, Nkv, D, causal, dtype, grads=True, sm_scale=None, device=DEVICE):
    q, k, v, do = _inputs(B, H, Hkv, Nq, Nkv, D, dtype, device)
    ref_dtype = torch.float64 if device == "cpu" else torch.float32
    ref = lambda a, b, c: reference_attention(a, b, c, causal=causal, sm_scale=sm_scale, compute_dtype=ref_dtype)  # noqa: E731
    naive = lambda a, b, c: naive_attention(a, b, c, causal=causal, sm_scale=sm_scale)  # noqa: E731
    ours = lambda a, b, c: flash_attn_v1(a, b, c, causal=causal, sm_scale=sm_scale)  # noqa: E731
    atol = ATOL[dtype]
    if not grads:
        with torch.no_grad():
            o = ours(q, k, v)
            r = ref(q, k, v)
            n = naive(q, k, v)
        assert o.dtype == dtype and o.shape == (B, H, Nq, D)
        assert torch.isfinite(o).all()
        assert _maxerr(o, r) <= 2 * _maxerr(n, r) + atol
        return
    r, rg = _grads(ref, q, k, v, do, cast=ref_dtype)
    n, ng = _grads(naive, q, k, v, do)
    o, og = _grads(ours, q, k, v, do)
    assert o.dtype == dtype and o.shape == (B, H, Nq, D)
    for name, x in zip(("out", "dq", "dk", "dv"), [o] + og):
        assert torch.isfinite(x).all(), f"{name} has non-finite values"
    e, en = _maxerr(o, r), _maxerr(n, r)
    assert e <= 2 * en + atol, f"out: err {e:.3e} vs naive {en:.3e}"
    for name, a, b, c in zip(("dq", "dk", "dv"), og, ng, rg):
        assert a.dtype == dtype and a.shape == c.shape
        e, en = _maxerr(a, c), _maxerr(b, c)
        assert e <= 2 * en + atol, f"{name}: err {e:.3e} vs naive {en:.3e}"


# --------------------------------------------------------------------------------------------
# CPU / interpreter (CI): forward + backward on tiny odd shapes
# --------------------------------------------------------------------------------------------

SHAPES = [  # B, H, Hkv, Nq, Nkv, D
    (1, 1, 1, 1, 1, 32),
    (1, 2, 2, 17, 17, 32),
    (2, 2, 2, 129, 129, 64),
    (1, 2, 2, 17, 129, 32),   # Nq < Nkv
    (1, 2, 2, 129, 17, 64),   # Nq > Nkv (causal: fully masked rows)
    (1, 4, 2, 40, 33, 32),    # GQA
    (2, 3, 1, 33, 50, 64),    # MQA
    (1, 2, 1, 1, 17, 32),     # one query, GQA
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Hkv{}Nq{}Nkv{}D{}".format(*s))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_fwd_bwd_matches_reference(shape, causal, dtype):
    _check(*shape, causal, dtype)


def test_head_dim_96_padded():
    _check(1, 2, 1, 20, 37, 96, True, torch.float32)


def test_custom_scale():
    _check(1, 2, 2, 33, 21, 32, False, torch.float16, sm_scale=0.3)


def test_fully_masked_rows_are_zero_with_zero_grads():
    # Nq > Nkv, causal: the first Nq - Nkv query rows see no key
    B, H, Nq, Nkv, D = 1, 2, 70, 9, 32
    q, k, v, do = _inputs(B, H, H, Nq, Nkv, D, torch.float32)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    o, lse = flash_attn_v1(q, k, v, causal=True, return_lse=True)
    o.backward(do)
    dead = Nq - Nkv
    assert torch.all(o[:, :, :dead] == 0)
    assert torch.all(lse[:, :, :dead] == float("-inf"))
    assert torch.isfinite(lse[:, :, dead:]).all()
    assert torch.all(q.grad[:, :, :dead] == 0)
    for t in (o, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("causal", [False, True])
def test_return_lse(causal):
    B, H, Hkv, Nq, Nkv, D = 1, 4, 2, 45, 30, 32
    q, k, v, _ = _inputs(B, H, Hkv, Nq, Nkv, D, torch.float32)
    o, lse = flash_attn_v1(q, k, v, causal=causal, return_lse=True)
    assert lse.shape == (B, H, Nq) and lse.dtype == torch.float32
    kk = k.double().repeat_interleave(H // Hkv, dim=1)
    s = q.double() @ kk.transpose(-1, -2) / math.sqrt(D)
    if causal:
        i = torch.arange(Nq)[:, None]
        j = torch.arange(Nkv)[None, :]
        s = s.masked_fill(~(j <= i + Nkv - Nq), float("-inf"))
    ref = torch.logsumexp(s, dim=-1)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse.double()[finite] - ref[finite]).abs().max().item() < 1e-5
    o2 = flash_attn_v1(q, k, v, causal=causal)
    assert torch.equal(o, o2)


def test_non_contiguous_inputs():
    # (B, N, H, D) storage viewed as (B, H, N, D): strides are passed, nothing is copied
    B, H, Hkv, Nq, Nkv, D = 2, 4, 2, 23, 31, 32
    g = _fresh_gen(DEVICE)
    q = torch.randn(B, Nq, H, D, generator=g, device=DEVICE).transpose(1, 2)
    k = torch.randn(B, Nkv, Hkv, D, generator=g, device=DEVICE).transpose(1, 2)
    v = torch.randn(B, Nkv, Hkv, D, generator=g, device=DEVICE).transpose(1, 2)
    do = torch.randn(B, Nq, H, D, generator=g, device=DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]  # clone keeps the strides
    o = flash_attn_v1(*leaves, causal=True)
    o.backward(do)
    rl = [t.detach().double().requires_grad_() for t in (q, k, v)]
    r = reference_attention(*rl, causal=True, compute_dtype=torch.float64)
    r.backward(do.double())
    assert _maxerr(o, r) < 1e-5
    for a, b in zip(leaves, rl):
        assert _maxerr(a.grad, b.grad) < 1e-5


def test_launch_log_reports_each_kernel_the_call_ran():
    q, k, v, do = _inputs(1, 1, 1, 17, 17, 32, torch.float32)
    q.requires_grad_()
    fwd_only, cfg = {}, {}
    with torch.no_grad():
        flash_attn_v1(q, k, v, launch_log=fwd_only)
    out = flash_attn_v1(q, k, v, launch_log=cfg)
    assert list(cfg) == ["fwd"]
    out.backward(do)  # autograd hands the forward's log to the backward
    assert {"fwd", "bwd", "bwd_preprocess"} <= set(cfg)
    assert list(fwd_only) == ["fwd"]  # one log per call
    assert "BLOCK_M=" in cfg["fwd"] and "num_warps=" in cfg["fwd"]
    assert all(isinstance(x, str) for x in cfg.values())


@pytest.mark.parametrize("bad", [[], "fwd"])
def test_launch_log_that_is_not_a_dict_raises(bad):
    q, k, v, _ = _inputs(1, 1, 1, 8, 8, 32, torch.float32)
    with pytest.raises(ValueError, match="launch_log must be a dict"):
        flash_attn_v1(q, k, v, launch_log=bad)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 8, 32), torch.randn(2, 8, 32), torch.randn(2, 8, 32)), "4-D"),
        (lambda: (torch.randn(1, 2, 8, 48), torch.randn(1, 2, 8, 48), torch.randn(1, 2, 8, 48)), "head_dim"),
        (lambda: (torch.randn(1, 3, 8, 32), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32)), "multiple"),
        (lambda: (torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32).half(), torch.randn(1, 2, 8, 32)), "dtype"),
        (lambda: (torch.randn(1, 2, 8, 32).double(),) * 3, "not supported"),
        (lambda: (torch.randn(1, 2, 8, 32), torch.randn(1, 2, 9, 32), torch.randn(1, 2, 8, 32)), "same shape"),
        (lambda: (torch.randn(1, 2, 8, 32), torch.randn(2, 2, 8, 32), torch.randn(2, 2, 8, 32)), "batch"),
        (lambda: (torch.randn(1, 2, 32, 8).transpose(-1, -2),) * 3, "contiguous last"),
        (lambda: (torch.randn(1, 2, 0, 32),) * 3, "empty"),
    ],
    ids=["3d", "head_dim48", "gqa_ratio", "dtype_mix", "float64", "kv_shape", "batch", "last_stride", "empty"],
)
def test_invalid_inputs_raise_value_error(make, match):
    q, k, v = (t.to(DEVICE) for t in make())
    with pytest.raises(ValueError, match=match):
        flash_attn_v1(q, k, v)


# --------------------------------------------------------------------------------------------
# GPU: bf16 / fp16 (and fp32) over a grid, poisoned allocator
# --------------------------------------------------------------------------------------------


def _poison_allocator():
    """Fill the caching allocator's free blocks with NaN so that unwritten outputs are caught."""
    torch.cuda.synchronize()
    x = torch.empty(64 << 20, device="cuda", dtype=torch.float32)  # 256 MiB
    x.fill_(float("nan"))
    del x


_TAIL_GQA = (1, 4, 2, 1000, 777)  # B, H, Hkv, Nq, Nkv: GQA, tails, Nq > Nkv
GPU_CASES = (  # (dtype, D, shape): every head dim on the tail/GQA shape, more shapes at D 64 / 128
    [(torch.bfloat16, d, _TAIL_GQA) for d in (32, 64, 96, 128, 256)]
    + [(torch.bfloat16, d, s) for d in (64, 128) for s in ((2, 4, 4, 256, 256), (2, 3, 1, 300, 1029), (1, 2, 2, 1, 65))]
    + [(torch.float16, d, _TAIL_GQA) for d in (64, 128, 256)]
    + [(torch.float16, 64, (2, 3, 1, 300, 1029))]
)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, D, shape", GPU_CASES,
    ids=["{}-D{}-B{}H{}Hkv{}Nq{}Nkv{}".format(str(c[0]).split(".")[-1], c[1], *c[2]) for c in GPU_CASES],
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_grid(dtype, D, shape, causal):
    _poison_allocator()
    _check(*shape, D, causal, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_fp32_exact_dots(D):
    _poison_allocator()
    _check(1, 4, 2, 300, 257, D, True, torch.float32, device="cuda")


@pytest.mark.gpu
def test_gpu_large_fully_masked_rows():
    _poison_allocator()
    B, H, Nq, Nkv, D = 1, 2, 1024, 200, 64
    q, k, v, do = _inputs(B, H, H, Nq, Nkv, D, torch.bfloat16, "cuda")
    q.requires_grad_()
    o, lse = flash_attn_v1(q, k, v, causal=True, return_lse=True)
    o.backward(do)
    dead = Nq - Nkv
    assert torch.all(o[:, :, :dead] == 0) and torch.all(q.grad[:, :, :dead] == 0)
    assert torch.all(lse[:, :, :dead] == float("-inf")) and torch.isfinite(lse[:, :, dead:]).all()
    assert torch.isfinite(o).all() and torch.isfinite(q.grad).all()
