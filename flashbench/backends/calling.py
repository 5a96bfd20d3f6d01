"""Calling a backend's attention function the way every part of flashbench does: once for the outputs
correctness compares (the contract checked), and as the zero-argument call the timer runs, per mode.

The function takes the workload's tensors in :data:`flashbench.attention.inputs.WORKLOAD_ARGS` order.

Modes:

- fwd: ``fn(*args)`` on inputs without autograd;
- bwd: the forward runs once outside the call; the call is the backward alone
  (``torch.autograd.grad`` with ``retain_graph``);
- fwd_bwd: forward then backward in one call.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..attention.inputs import Inputs
from ..model.case import Case
from .base import BackendContractError


def checked_output(o, q: torch.Tensor) -> torch.Tensor:
    """``o`` if it is what the contract asks (:mod:`.base`): one tensor with q's shape,
    dtype and device; else :class:`~.base.BackendContractError` saying what came back.
    Without it, a None became "'NoneType' object has no attribute 'to'", a complex output passed the
    check (its imaginary part dropped), and a float64 output for float32 inputs was an ``ok`` row."""
    if not isinstance(o, torch.Tensor):
        raise BackendContractError(f"the attention function returned {type(o).__name__}, not a tensor "
                                   f"(expected o with q's shape {tuple(q.shape)})")
    wrong = [f"{what} {got}, expected {want}" for what, got, want in (
        ("shape", tuple(o.shape), tuple(q.shape)), ("dtype", o.dtype, q.dtype), ("device", o.device, q.device))
        if got != want]
    if wrong:
        raise BackendContractError(f"the attention function returned o with {'; '.join(wrong)} (q's)")
    return o


def outputs_of(fn: Callable, inputs: Inputs, case: Case) -> dict[str, torch.Tensor]:
    """Run once and return what correctness compares: o, and dq, dk, dv with a backward. The output must
    be one tensor shaped like q (:func:`checked_output`)."""
    if not case.has_backward:
        with torch.no_grad():
            return {"o": checked_output(fn(*inputs.args), inputs.q)}
    o = checked_output(fn(*inputs.args), inputs.q)
    if not o.requires_grad:
            raise BackendContractError("the attention function returned o without a graph to q, k, v (detached, or computed "
                                   "with grad mode off): the backward cannot run")
    dq, dk, dv = torch.autograd.grad(o, inputs.differentiable(), inputs.do)
    return {"o": o.detach(), "dq": dq, "dk": dk, "dv": dv}


def bind(fn: Callable, inputs: Inputs, case: Case) -> Callable[[], object]:
    """The zero-argument call to time for this mode."""
    args, do, grads_of = inputs.args, inputs.do, inputs.differentiable()
    if case.mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(*args)
        return call
    if case.mode == "fwd_bwd":
        def call():
            o = fn(*args)
            return torch.autograd.grad(o, grads_of, do)
        return call
    o = fn(*args)  # bwd: the forward is outside the timed call

    def call():
        return torch.autograd.grad(o, grads_of, do, retain_graph=True)
    return call
