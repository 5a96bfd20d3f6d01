"""A flashbench plugin that makes ``sdpa_flash`` about 10% slower, to check that the gate flags it.

    FLASHBENCH_PLUGINS=sdpa_flash_plus10 PYTHONPATH=tools flashbench run default --rounds 3 --out DIR

Importing this module registers a backend under the name ``sdpa_flash``, replacing the built-in one
in the driver and in every worker (plugins are imported in both). Its call runs PyTorch's
FlashAttention kernel on the case, then once more on a tenth of its (batch, kv head) pairs with their
query heads (rounded, at least one: 9.4–12.5% of the work at the default sweep's 16 to 512 batch ×
heads). The result is the case's attention, unchanged; a backward also runs the extra call's
backward (with a zero gradient), so every mode pays the extra tenth.
"""
from __future__ import annotations

import torch

from flashbench.backends import register
from flashbench.backends.sdpa import SdpaBackend


class _AlsoBackward(torch.autograd.Function):
    """``out`` unchanged; its backward also runs the backward of ``extra``, with a zero gradient."""

    @staticmethod
    def forward(ctx, out, extra):
        ctx.shape, ctx.dtype = extra.shape, extra.dtype
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.new_zeros(ctx.shape, dtype=ctx.dtype)


class Plus10(SdpaBackend):
    """An SDPA backend (``sdpa_flash`` unless told) that also attends over a tenth of the case."""

    def __init__(self, base: str = "sdpa_flash"):
        super().__init__(base)
        self.description = f"{base} plus about 10% extra work per call (tools/sdpa_flash_plus10.py)"

    def prepare(self, case, device):
        attention = super().prepare(case, device)
        group = case.heads // case.kv_heads

        def extra(q, k, v):
            # a tenth of the (batch, kv head) pairs, each with its query heads, as a batch of its own
            n = max(1, round(0.1 * case.batch * case.kv_heads))
            q = q.unflatten(1, (case.kv_heads, group)).flatten(0, 1)[:n]
            k, v = (t.flatten(0, 1)[:n].unsqueeze(1) for t in (k, v))
            return attention(q, k, v)

        def fn(q, k, v):
            return _AlsoBackward.apply(attention(q, k, v), extra(q, k, v))

        return fn


register(Plus10())
