"""Correctness against a high-precision reference (the flash-attention test rule).

A backend's error on each tensor (O, and dQ, dK, dV with a backward) must be at most
``factor`` × the error of PyTorch's own same-dtype math on the same inputs + ``atol``. Where that
math is not finite (an overflow of the same-dtype path), its error says nothing and the bound is
``atol`` alone: a NaN bound would pass every output.
The reference is fp32 for half-precision cases on a GPU and fp64 otherwise (fp32 cases, CPU).
The reference runs in chunks of (batch, kv-head) groups so that its N×N matrices, and their
autograd state, stay within a fixed memory bound; a varlen or decode batch runs sequence by sequence,
with the case's causal form and sliding window.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..attention.inputs import Inputs
from ..attention.sequences import assemble, sequences
from ..model.case import Case
from ..attention.reference import reference_attention


def reference_dtype(case: Case, device: str) -> torch.dtype:
    if str(device).startswith("cuda") and case.dtype in ("float16", "bfloat16"):
        return torch.float32
    return torch.float64


def dense_reference(q, k, v, do, causal: bool, window: tuple[int, int], compute_dtype: torch.dtype,
                    chunk_elems: int = 1 << 28) -> dict[str, torch.Tensor]:
    """O (and dQ, dK, dV when ``do`` is given) of the reference formula for dense (B, H, N, D)
    inputs, computed in ``compute_dtype``.

    Work goes in chunks of whole (batch, kv-head) groups, each group holding the query heads that
    share one K/V head, so a chunk's autograd graph is independent of every other chunk's and its
    score matrices stay under ``chunk_elems`` elements (2**28: 1 GiB in fp32).
    """
    B, H, n_q, D = q.shape
    h_kv, n_kv = k.shape[1], k.shape[2]
    group = H // h_kv
    # (B, H, N, D) -> (B*H_kv, group, N, D): query heads h = g*group + i share kv head g
    q_all = q.detach().reshape(B * h_kv, group, n_q, D)
    k_all = k.detach().reshape(B * h_kv, 1, n_kv, D)
    v_all = v.detach().reshape(B * h_kv, 1, n_kv, D)
    do_all = do.reshape(B * h_kv, group, n_q, D) if do is not None else None
    per_group = group * n_q * n_kv
    step = max(1, chunk_elems // max(per_group, 1))
    outs: dict[str, list[torch.Tensor]] = {"o": [], "dq": [], "dk": [], "dv": []}
    for i in range(0, B * h_kv, step):
        qc, kc, vc = (t[i:i + step].to(compute_dtype) for t in (q_all, k_all, v_all))
        if do is None:
            with torch.no_grad():
                outs["o"].append(reference_attention(qc, kc, vc, causal, compute_dtype=compute_dtype, window=window))
            continue
        qc.requires_grad_(True), kc.requires_grad_(True), vc.requires_grad_(True)
        o = reference_attention(qc, kc, vc, causal, compute_dtype=compute_dtype, window=window)
        dq, dk, dv = torch.autograd.grad(o, (qc, kc, vc), do_all[i:i + step].to(compute_dtype))
        for name, t in (("o", o.detach()), ("dq", dq), ("dk", dk), ("dv", dv)):
            outs[name].append(t)
    result = {"o": torch.cat(outs["o"]).reshape(B, H, n_q, D)}
    if do is not None:
        result["dq"] = torch.cat(outs["dq"]).reshape(B, H, n_q, D)
        result["dk"] = torch.cat(outs["dk"]).reshape(B, h_kv, n_kv, D)
        result["dv"] = torch.cat(outs["dv"]).reshape(B, h_kv, n_kv, D)
    return result


def reference_outputs(inputs: Inputs, case: Case, compute_dtype: torch.dtype,
                      chunk_elems: int = 1 << 28) -> dict[str, torch.Tensor]:
    """O (and dQ, dK, dV) of the reference formula for the case's inputs, in ``compute_dtype`` and in
    the workload's layout: varlen and decode batches sequence by sequence (:func:`sequences`)."""
    do = inputs.do if case.has_backward else None
    if case.workload == "dense":
        return dense_reference(inputs.q, inputs.k, inputs.v, do, case.causal, case.window, compute_dtype, chunk_elems)
    per_seq = [dense_reference(s.q, s.k, s.v, s.do, case.causal, case.window, compute_dtype, chunk_elems)
               for s in sequences(case, inputs.args, do)]
    return {name: assemble(case, [r[name] for r in per_seq]) for name in per_seq[0]}


@dataclass
class Reference:
    """High-precision outputs and PyTorch's own same-dtype error on them, for one case's inputs."""

    outputs: dict[str, torch.Tensor]
    same_dtype_err: dict[str, float]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) - b).abs().max().item()


@contextmanager
def full_fp32_matmuls():
    """Matmuls and convolutions in full fp32 for the reference: a plugin or a user's setup may have allowed TF32
    for the whole process (``torch.set_float32_matmul_precision("high")``), which would make the "fp32"
    reference a 10-bit-mantissa one and loosen every bound. The flags are put back after."""
    flags = ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"))
    saved = []
    try:
        for owner, name in flags:
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, False)
    except Exception:  # noqa: BLE001 - a torch whose precision settings refuse the legacy flags: leave them be
        pass
    try:
        yield
    finally:
        for owner, name, value in saved:
            try:
                setattr(owner, name, value)
            except Exception:  # noqa: BLE001
                pass


def compute_reference(inputs: Inputs, case: Case, device: str) -> Reference:
    with full_fp32_matmuls():
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
        same = ref.same_dtype_err[name]
        if math.isfinite(same):
            bound, rule = factor * same + atol, f"{factor:g}x PyTorch same-dtype err {same:.3g} + atol {atol:g}"
        else:  # NaN or inf: factor × it would let anything through
            bound, rule = atol, f"atol {atol:g} alone: PyTorch's same-dtype math was not finite here"
        if not math.isfinite(err):
            problems.append(f"{name}: non-finite values")
        elif err > bound:
            problems.append(f"{name}: max abs err {err:.3g} > bound {bound:.3g} ({rule})")
        if not math.isfinite(err) or err >= worst_err:
            worst_err, worst_bound = err, bound
        worst_rel = max(worst_rel, rel) if math.isfinite(rel) else math.nan
    return Verdict(not problems, worst_err, worst_rel, worst_bound, "; ".join(problems))
