"""Correctness against a high-precision reference (the flash-attention test rule).

A backend's error on each tensor (O, and dQ, dK, dV with a backward) must be at most
``factor`` × the error of PyTorch's own same-dtype math on the same inputs + ``atol``.
The reference is fp32 for half-precision cases on a GPU and fp64 otherwise (fp32 cases, CPU).
The reference runs one (batch, kv-head group) at a time so that its N×N matrices, and their
autograd state, never exceed one group's worth of memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .calls import Inputs
from .cases import Case
from .reference import reference_attention


def reference_dtype(case: Case, device: str) -> torch.dtype:
    if str(device).startswith("cuda") and case.dtype in ("float16", "bfloat16"):
        return torch.float32
    return torch.float64


def reference_outputs(inputs: Inputs, case: Case, compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """O (and dQ, dK, dV) of the reference formula, computed in ``compute_dtype``."""
    group = case.heads // case.kv_heads
    out = {"o": torch.empty(inputs.q.shape, dtype=compute_dtype, device=inputs.q.device)}
    if case.has_backward:
        out["dq"] = torch.empty_like(out["o"])
        out["dk"] = torch.empty(inputs.k.shape, dtype=compute_dtype, device=inputs.k.device)
        out["dv"] = torch.empty_like(out["dk"])
    for b in range(case.batch):
        for g in range(case.kv_heads):
            hs = slice(g * group, (g + 1) * group)
            q = inputs.q.detach()[b:b + 1, hs].to(compute_dtype)
            k = inputs.k.detach()[b:b + 1, g:g + 1].to(compute_dtype)
            v = inputs.v.detach()[b:b + 1, g:g + 1].to(compute_dtype)
            if not case.has_backward:
                with torch.no_grad():
                    out["o"][b:b + 1, hs] = reference_attention(q, k, v, case.causal, compute_dtype=compute_dtype)
                continue
            q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
            o = reference_attention(q, k, v, case.causal, compute_dtype=compute_dtype)
            dq, dk, dv = torch.autograd.grad(o, (q, k, v), inputs.do[b:b + 1, hs].to(compute_dtype))
            out["o"][b:b + 1, hs] = o.detach()
            out["dq"][b:b + 1, hs], out["dk"][b:b + 1, g:g + 1], out["dv"][b:b + 1, g:g + 1] = dq, dk, dv
    return out


@dataclass
class Reference:
    """High-precision outputs and PyTorch's own same-dtype error on them, for one case's inputs."""

    outputs: dict[str, torch.Tensor]
    same_dtype_err: dict[str, float]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) - b).abs().max().item()


def compute_reference(inputs: Inputs, case: Case, device: str) -> Reference:
    high = reference_outputs(inputs, case, reference_dtype(case, device))
    low = reference_outputs(inputs, case, case.torch_dtype())
    err = {name: _max_abs(low[name], high[name]) for name in high}
    del low
    return Reference(high, err)


@dataclass
class Verdict:
    ok: bool
    max_abs_err: float
    rel_err: float
    tolerance_abs: float  # the bound of the tensor with the largest error
    detail: str


def check(outputs: dict[str, torch.Tensor], ref: Reference, atol: float, factor: float) -> Verdict:
    worst_err, worst_rel, worst_bound, problems = 0.0, 0.0, 0.0, []
    for name, want in ref.outputs.items():
        got = outputs[name]
        diff = got.to(want.dtype) - want
        err = diff.abs().max().item()
        rel = (diff.norm() / want.norm().clamp_min(1e-30)).item()
        bound = factor * ref.same_dtype_err[name] + atol
        if not math.isfinite(err):
            problems.append(f"{name}: non-finite values")
        elif err > bound:
            problems.append(f"{name}: max abs err {err:.3g} > bound {bound:.3g} "
                            f"({factor:g}x PyTorch same-dtype err {ref.same_dtype_err[name]:.3g} + atol {atol:g})")
        if not math.isfinite(err) or err >= worst_err:
            worst_err, worst_bound = err, bound
        worst_rel = max(worst_rel, rel) if math.isfinite(rel) else math.nan
    return Verdict(not problems, worst_err, worst_rel, worst_bound, "; ".join(problems))
