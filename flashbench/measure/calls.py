"""Inputs for a case and the zero-argument call that the timer runs, per mode.

- fwd: ``fn(q, k, v)`` on inputs without autograd;
- bwd: the forward runs once outside the call; the call is the backward alone
  (``torch.autograd.grad`` with ``retain_graph``);
- fwd_bwd: forward then backward in one call.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.case import Case


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None  # upstream gradient, for modes with a backward


def case_seed(case: Case, seed: int) -> int:
    """A seed per case, so every backend of one case sees the same inputs, and cases differ."""
    digest = hashlib.sha256(f"{seed}:{case.label()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_inputs(case: Case, device: str, seed: int) -> Inputs:
    """Fresh standard-normal inputs (never zeros), reproducible from the case and the seed."""
    g = torch.Generator(device=device).manual_seed(case_seed(case, seed))
    dt = case.torch_dtype()

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    q = randn(case.batch, case.heads, case.seq_len_q, case.head_dim)
    k = randn(case.batch, case.kv_heads, case.seq_len_kv, case.head_dim)
    v = randn(case.batch, case.kv_heads, case.seq_len_kv, case.head_dim)
    do = randn(case.batch, case.heads, case.seq_len_q, case.head_dim) if case.has_backward else None
    if case.has_backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    return Inputs(q, k, v, do)


def outputs_of(fn: Callable, inputs: Inputs, case: Case) -> dict[str, torch.Tensor]:
    """Run once and return what correctness compares: o, and dq, dk, dv with a backward."""
    if not case.has_backward:
        with torch.no_grad():
            return {"o": fn(inputs.q, inputs.k, inputs.v)}
    o = fn(inputs.q, inputs.k, inputs.v)
    dq, dk, dv = torch.autograd.grad(o, (inputs.q, inputs.k, inputs.v), inputs.do)
    return {"o": o.detach(), "dq": dq, "dk": dk, "dv": dv}


def bind(fn: Callable, inputs: Inputs, case: Case) -> Callable[[], object]:
    """The zero-argument call to time for this mode."""
    q, k, v, do = inputs.q, inputs.k, inputs.v, inputs.do
    if case.mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(q, k, v)
        return call
    if case.mode == "fwd_bwd":
        def call():
            o = fn(q, k, v)
            return torch.autograd.grad(o, (q, k, v), do)
        return call
    o = fn(q, k, v)  # bwd: the forward is outside the timed call

    def call():
        return torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    return call
