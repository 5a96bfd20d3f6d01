"""PyTorch's ``scaled_dot_product_attention``: its own dispatch (``sdpa``) and pinned kernels.

Pinned backends use ``torch.nn.attention.sdpa_kernel`` so that PyTorch cannot silently fall
back to another kernel. Whether a kernel accepts a case is decided by PyTorch itself: a small
probe call with the case's head dim, dtype, causal form and GQA shape runs in ``prepare``, and
PyTorch's own explanation (its warnings) becomes the skip reason.

Causal masking is bottom-right aligned everywhere in flashbench; ``is_causal=True`` is top-left,
which differs when Nq != Nkv. Then:

- ``sdpa`` passes ``torch.nn.attention.bias.causal_lower_right`` and lets PyTorch choose;
- ``sdpa_math`` and ``sdpa_efficient`` get the bottom-right mask as a boolean tensor, which both
  kernels accept;
- ``sdpa_flash`` and ``sdpa_cudnn`` are skipped. Their only bottom-right route is the
  ``causal_lower_right`` bias, whose dispatch calls the flash or efficient kernels directly,
  without consulting ``sdpa_kernel`` (torch/nn/attention/bias.py, ``CausalBias._dispatch``):
  the pinned kernel would silently not be the one measured.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from .base import Backend, Unsupported

PINNED = {
    "sdpa_flash": ("FLASH_ATTENTION", "FlashAttention-2 CUDA kernels inside PyTorch"),
    "sdpa_efficient": ("EFFICIENT_ATTENTION", "memory-efficient attention (xformers/CUTLASS) inside PyTorch"),
    "sdpa_cudnn": ("CUDNN_ATTENTION", "cuDNN fused attention"),
    "sdpa_math": ("MATH", "PyTorch's unfused math path (upcasts half inputs internally)"),
}


def _sdpa_call(causal: bool, n_q: int, n_kv: int, gqa: bool, pinned: bool, device):
    if causal and n_q != n_kv:
        if pinned:
            from ..measure.reference import causal_mask

            mask = causal_mask(n_q, n_kv, device)  # a tensor mask: the pinned kernel is honoured
        else:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(n_q, n_kv)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


class SdpaBackend(Backend):
    devices = ("cuda", "cpu")

    def __init__(self, name: str = "sdpa"):
        self.name = name
        self.kernel = PINNED[name][0] if name in PINNED else None
        self.description = PINNED[name][1] if name in PINNED else "PyTorch SDPA, PyTorch picks the kernel"
        if self.kernel in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            self.devices = ("cuda",)  # PyTorch has no CPU build of these kernels (its CPU flash is another)
        if self.kernel in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
            self.dtypes = ("float16", "bfloat16")

    def _context(self):
        if self.kernel is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, self.kernel)])

    def extra_reason(self, case, device):
        if self.kernel in ("FLASH_ATTENTION", "CUDNN_ATTENTION") and case.causal and case.seq_len_q != case.seq_len_kv:
            return (f"{self.name}: PyTorch offers bottom-right causal masking for Nq != Nkv only through "
                    "causal_lower_right, which bypasses sdpa_kernel pinning, so the pinned kernel cannot be guaranteed")
        return None

    def prepare(self, case, device):
        call = _sdpa_call(case.causal, case.seq_len_q, case.seq_len_kv, case.is_gqa, self.kernel is not None, device)
        self._probe(case, device, call)

        def fn(q, k, v):
            with self._context():
                return call(q, k, v)

        return fn

    def _probe(self, case, device, call):
        """Ask PyTorch, on a small tensor of the case's kind, whether the pinned kernel takes it."""
        if self.kernel is None:
            return
        ratio = case.heads // case.kv_heads
        n_q, n_kv = (64, 64) if case.seq_len_q == case.seq_len_kv else ((64, 96) if case.seq_len_q < case.seq_len_kv else (96, 64))
        dt = case.torch_dtype()
        grad = case.has_backward
        q = torch.randn(1, ratio, n_q, case.head_dim, device=device, dtype=dt, requires_grad=grad)
        k = torch.randn(1, 1, n_kv, case.head_dim, device=device, dtype=dt, requires_grad=grad)
        v = torch.randn(1, 1, n_kv, case.head_dim, device=device, dtype=dt, requires_grad=grad)
        probe = _sdpa_call(case.causal, n_q, n_kv, case.is_gqa, True, device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with self._context():
                    o = probe(q, k, v)
                    if grad:
                        o.sum().backward()
            except RuntimeError as e:
                why = "; ".join(str(w.message).strip() for w in caught if "not used because" in str(w.message) or "Expected" in str(w.message))
                raise Unsupported(f"PyTorch refuses {self.name} for this case: {why or str(e).splitlines()[0]}") from None
