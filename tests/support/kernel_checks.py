"""Checks shared by the FlashAttention-2 test files: inputs, the reference comparison, poisoned outputs.

Tolerance rule (flash-attention's): compared with an fp64 reference on fresh random inputs, the
kernel's max error must be <= 2 x the max error of PyTorch's same-dtype math + a small absolute term.
"""
from __future__ import annotations

import torch

from flashbench.measure.reference import naive_attention, reference_attention
from flashbench_kernels.flash_attn_v2 import flash_attn_v2

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 2e-5}


def make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed, device=DEV):
    """q, k, v and the output gradient do, standard normal from ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)  # noqa: E731
    return mk(B, H, Nq, D), mk(B, Hkv, Nkv, D), mk(B, Hkv, Nkv, D), mk(B, H, Nq, D)


def case_id(c) -> str:
    B, H, Hkv, Nq, Nkv, D, causal = c
    return f"B{B}-H{H}-Hkv{Hkv}-q{Nq}-kv{Nkv}-D{D}-{'causal' if causal else 'full'}"


def poisoned_empty(shape, dtype, device):
    """Stands in for the launcher's allocator: NaN everywhere, so an unwritten element shows."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


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


def check_against_reference(q, k, v, do, causal, sm_scale=None, atol=None, options=None, launch_log=None):
    """flash_attn_v2's output and gradients against the fp64 reference, within the tolerance rule."""
    dtype = q.dtype
    Nq, Nkv = q.shape[2], k.shape[2]
    ref_fn = _visible_rows_fn(lambda a, b, c: reference_attention(a, b, c, causal, sm_scale, compute_dtype=torch.float64),
                              Nq, Nkv, causal)
    naive_fn = _visible_rows_fn(lambda a, b, c: naive_attention(a, b, c, causal, sm_scale), Nq, Nkv, causal)
    ref = _run_with_grads(ref_fn, q, k, v, do, torch.float64)
    naive = _run_with_grads(naive_fn, q, k, v, do)
    ours = _run_with_grads(lambda a, b, c: flash_attn_v2(a, b, c, causal=causal, sm_scale=sm_scale, options=options,
                                                         launch_log=launch_log), q, k, v, do)
    atol = ATOL[dtype] if atol is None else atol
    for name, o, n, r in zip(("out", "dq", "dk", "dv"), ours, naive, ref):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        err = (o.double() - r).abs().max().item()
        err_naive = (n.double() - r).abs().max().item()
        assert err <= 2 * err_naive + atol, f"{name}: max error {err:.3e} > 2 x naive {err_naive:.3e} + {atol:g}"
