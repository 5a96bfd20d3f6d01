"""The autograd wrapper shared by the FlashAttention launchers.

Each kernel module provides ``forward(q, k, v, causal, sm_scale, call) -> (o, lse)`` and
``backward(q, k, v, o, lse, do, causal, sm_scale, call) -> (dq, dk, dv)`` built from its own Triton
kernels; :func:`attention_function` turns the pair into a ``torch.autograd.Function`` that saves
q, k, v, o and the log-sum-exp for the backward. ``call`` is what the launcher passes per call (its
options and the caller's launch log), handed unchanged to the backward. The LSE is returned but not
differentiable.

Not supported: gradients with respect to the LSE (marked non-differentiable), second-order gradients (the
backward runs kernels, not differentiable operations), gradients for ``causal``, ``sm_scale`` or ``call``.
"""
from __future__ import annotations

import torch


def attention_function(name: str, forward, backward) -> type:
    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal, sm_scale, call):
            o, lse = forward(q, k, v, causal, sm_scale, call)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.causal, ctx.sm_scale, ctx.call = causal, sm_scale, call
            ctx.mark_non_differentiable(lse)
            return o, lse

        @staticmethod
        def backward(ctx, do, _dlse):
            q, k, v, o, lse = ctx.saved_tensors
            dq, dk, dv = backward(q, k, v, o, lse, do, ctx.causal, ctx.sm_scale, ctx.call)
            return dq, dk, dv, None, None, None

    _Fn.__name__ = _Fn.__qualname__ = name
    return _Fn
