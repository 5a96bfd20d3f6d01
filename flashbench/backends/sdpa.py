"""PyTorch's ``scaled_dot_product_attention``: its own dispatch (``sdpa``) and pinned kernels.

Pinned backends use ``torch.nn.attention.sdpa_kernel`` so that PyTorch cannot silently fall
back to another kernel. Whether a kernel accepts a case is decided by PyTorch itself: a probe
call on a miniature of the case (:mod:`flashbench.backends.probe`) runs in ``prepare``, and
PyTorch's own explanation (its warnings and log lines) becomes the skip reason.

Causal masking is bottom-right aligned everywhere in flashbench; ``is_causal=True`` is top-left,
which differs when Nq != Nkv. Then:

- ``sdpa`` passes ``torch.nn.attention.bias.causal_lower_right`` and lets PyTorch choose;
- ``sdpa_math`` and ``sdpa_efficient`` get the bottom-right mask as a boolean tensor, which both
  kernels accept;
- ``sdpa_flash`` and ``sdpa_cudnn`` are skipped. Their only bottom-right route is the
  ``causal_lower_right`` bias, whose dispatch calls the flash or efficient kernels directly,
  without consulting ``sdpa_kernel`` (torch/nn/attention/bias.py, ``CausalBias._dispatch``):
  the pinned kernel would silently not be the one measured.

Workloads, as users run them through SDPA:

- sliding windows: a boolean mask tensor (the kernels that take one);
- decode on a contiguous cache: the (B, capacity, H_kv, D) cache read through a transposed view
  (no copy); a single new token over full caches needs no mask; caches shorter than the capacity
  (of different lengths, or one drawn length) are a padded batch with a boolean mask of each sequence's
  keys, built in ``prepare``. SDPA cannot read a paged cache: the
  call gathers each sequence's pages into a contiguous cache first, as code that keeps a paged cache
  but attends with SDPA does; the copy is part of the timed call (and of its GB/s);
- varlen: the packed tensors viewed as nested jagged tensors (``torch.nested.nested_tensor_from_jagged``
  with ``cu_seqlens`` as offsets, no copy), the form whose SDPA path runs FlashAttention's and the
  efficient kernel's varlen code; nested tensors take no mask, so no windows there.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..attention.reference import causal_mask, visible_mask
from ..model.case import KV_LAYOUTS
from .base import Backend
from .probe import probe

PINNED = {
    "sdpa_flash": ("FLASH_ATTENTION", "FlashAttention-2 CUDA kernels inside PyTorch"),
    "sdpa_efficient": ("EFFICIENT_ATTENTION", "memory-efficient attention (xformers/CUTLASS) inside PyTorch"),
    "sdpa_cudnn": ("CUDNN_ATTENTION", "cuDNN fused attention"),
    "sdpa_math": ("MATH", "PyTorch's unfused math path (upcasts half inputs internally)"),
}


def _sdpa_call(causal: bool, n_q: int, n_kv: int, gqa: bool, pinned: bool, device):
    if causal and n_q != n_kv:
        if pinned:
            mask = causal_mask(n_q, n_kv, device)  # a tensor mask: the pinned kernel is honoured
        else:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(n_q, n_kv)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def needs_tensor_mask(case) -> bool:
    """A window, or decode caches not all full (of different lengths, or all shorter than the capacity): only a
    boolean mask tensor says which keys count."""
    return case.has_window or (case.workload == "decode" and not case.full_caches)


def dense_causal(case) -> bool:
    """Whether the dense call needs causal masking: a single new token sees its whole cache."""
    return case.causal and not (case.workload == "decode" and case.seq_len_q == 1)


def tensor_mask(case, device) -> torch.Tensor:
    """The boolean mask (True: visible) of a dense call: (Nq, Nkv), or (B, 1, Nq, capacity) for
    decode, each sequence's keys past its length hidden."""
    if case.workload != "decode":
        return visible_mask(case.seq_len_q, case.seq_len_kv, case.causal, case.window, device)
    masks = {n: F.pad(visible_mask(case.seq_len_q, n, case.causal, case.window, device), (0, case.seq_len_kv - n))
             for n in set(case.sequence_lengths()[1])}
    return torch.stack([masks[n] for n in case.sequence_lengths()[1]]).unsqueeze(1)


def _dense_call(case, pinned: bool, device):
    """``fn(q, k, v)`` on (B, H, N, D) tensors with the mask this case needs."""
    if needs_tensor_mask(case):
        mask, gqa = tensor_mask(case, device), case.is_gqa
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return _sdpa_call(dense_causal(case), case.seq_len_q, case.seq_len_kv, case.is_gqa, pinned, device)


def gather_pages(cache: torch.Tensor, block_table: torch.Tensor, capacity: int) -> torch.Tensor:
    """A pool of pages (pages, page_size, H_kv, D) -> the contiguous cache (B, capacity, H_kv, D) the
    table describes (a copy; table entries past a sequence's length gather keys its mask hides)."""
    pages = cache.index_select(0, block_table.flatten())
    return pages.view(block_table.shape[0], -1, *cache.shape[2:])[:, :capacity]


def _decode_call(case, pinned: bool, device):
    """``fn(q, k_cache, v_cache, cache_seqlens, block_table)``: the contiguous cache through views,
    a paged one gathered first."""
    dense, capacity = _dense_call(case, pinned, device), case.seq_len_kv

    def fn(q, k_cache, v_cache, cache_seqlens, block_table):
        if block_table is not None:
            k_cache, v_cache = gather_pages(k_cache, block_table, capacity), gather_pages(v_cache, block_table, capacity)
        return dense(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2)).transpose(1, 2)

    return fn


def _varlen_call(case):
    """``fn(q, k, v, cu_seqlens)`` through nested jagged tensors (views of the packed tensors)."""
    causal, gqa = case.causal, case.is_gqa
    lens = case.sequence_lengths()[0]

    def nested(t, offsets):  # the extreme lengths given, so that PyTorch need not read them off the device
        return torch.nested.nested_tensor_from_jagged(t, offsets=offsets, min_seqlen=min(lens),
                                                      max_seqlen=max(lens)).transpose(1, 2)

    def fn(q, k, v, cu_seqlens):
        o = F.scaled_dot_product_attention(nested(q, cu_seqlens), nested(k, cu_seqlens), nested(v, cu_seqlens),
                                           is_causal=causal, enable_gqa=gqa)
        return o.transpose(1, 2).values()

    return fn


class SdpaBackend(Backend):
    devices = ("cuda", "cpu")
    workloads = ("dense", "decode", "varlen")
    kv_layouts = KV_LAYOUTS
    supports_window = True

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
        lower_right = dense_causal(case) and case.seq_len_q != case.seq_len_kv and not needs_tensor_mask(case)
        if self.kernel in ("FLASH_ATTENTION", "CUDNN_ATTENTION") and lower_right and case.workload != "varlen":
            return (f"{self.name}: PyTorch offers bottom-right causal masking for Nq != Nkv only through "
                    "causal_lower_right, which bypasses sdpa_kernel pinning, so the pinned kernel cannot be guaranteed")
        if case.workload == "varlen" and case.has_window:
            return f"{self.name}: nested tensors take no attention mask, so SDPA cannot apply a window to a varlen batch"
        return None

    def _build(self, case, device):
        pinned = self.kernel is not None
        if case.workload == "varlen":
            call = _varlen_call(case)
        elif case.workload == "decode":
            call = _decode_call(case, pinned, device)
        else:
            call = _dense_call(case, pinned, device)

        def fn(*args):
            with self._context():
                return call(*args)

        return fn

    def prepare(self, case, device):
        if self.kernel is not None or case.workload != "dense":
            probe(self.name, lambda c: self._build(c, device), case, device)
        return self._build(case, device)
