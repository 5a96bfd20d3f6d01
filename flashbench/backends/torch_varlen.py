"""``torch_varlen``: ``torch.nn.attention.varlen.varlen_attn``, PyTorch's FlashAttention varlen API.

Packed batches as FlashAttention's ``flash_attn_varlen_func`` takes them (``cu_seqlens`` offsets,
the longest length given from the case, no padding, no nested tensors), and decode through the same
kernel: the new tokens as a packed batch of Nq-token sequences, the cache as key sequences of
``capacity`` slots of which ``seqused_k`` are in use, or a pool of pages with ``block_table``.

What a PyTorch build's ``varlen_attn`` accepts differs between releases (windows, GQA, a KV cache,
paged caches came one by one), so the features are read off its signature; a case needing one it
lacks is skipped with the reason, and PyTorch's own refusals (a probe on a miniature of the case)
become skip reasons too. CUDA only.
"""
from __future__ import annotations

import importlib.util
import inspect

from ..attention.reference import window_bounds
from ..model.case import KV_LAYOUTS
from .base import Backend
from .probe import probe


def varlen_attn():
    """PyTorch's varlen_attn, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn as fn
    except ImportError:
        return None
    return fn


def _parameters() -> set[str]:
    fn = varlen_attn()
    return set(inspect.signature(fn).parameters) if fn is not None else set()


class TorchVarlenBackend(Backend):
    name = "torch_varlen"
    description = "torch.nn.attention.varlen.varlen_attn: FlashAttention-2 varlen kernels inside PyTorch"
    devices = ("cuda",)
    dtypes = ("float16", "bfloat16")
    workloads = ("varlen", "decode")
    kv_layouts = KV_LAYOUTS
    supports_window = True

    def availability(self):
        # found, not imported: the module imports Triton, a second that `list` and the plan need not pay
        # (a torch whose module lacks varlen_attn gives the task's error row at prepare)
        try:
            found = importlib.util.find_spec("torch.nn.attention.varlen") is not None
        except (ImportError, ValueError):
            found = False
        return None if found else "this torch has no torch.nn.attention.varlen (varlen_attn)"

    def extra_reason(self, case, device):
        if varlen_attn() is None:
            return "this torch has no torch.nn.attention.varlen.varlen_attn"
        takes = _parameters()
        needs = [("window_size", case.has_window, "it has no sliding windows"),
                 ("enable_gqa", case.is_gqa, "it has no GQA/MQA"),
                 ("seqused_k", case.workload == "decode", "it cannot read a KV cache"),
                 ("block_table", case.is_paged, "it cannot read a paged KV cache")]
        for argument, needed, what in needs:
            if needed and argument not in takes:
                return f"this torch's varlen_attn takes no {argument}: {what}"
        if case.causal and "window_size" not in takes and "is_causal" not in takes:
            return "this torch's varlen_attn has no causal form"
        return None

    def _build(self, case, device):
        import torch

        fn, takes = varlen_attn(), _parameters()
        left, right = window_bounds(case.causal and not (case.workload == "decode" and case.seq_len_q == 1),
                                    case.window)
        kw = {}
        if "window_size" in takes:  # (-1, 0) is causal in this form
            kw["window_size"] = (left, right)
        elif case.causal:
            kw["is_causal"] = True
        if case.is_gqa:
            kw["enable_gqa"] = True
        if case.workload == "varlen":
            longest = max(case.sequence_lengths()[0])
            return lambda q, k, v, cu: fn(q, k, v, cu, cu, longest, longest, **kw)
        B, n_q, capacity = case.batch, case.seq_len_q, case.seq_len_kv
        if case.is_paged:
            capacity = -(-capacity // case.page_size) * case.page_size
        cu_q = torch.arange(0, (B + 1) * n_q, n_q, dtype=torch.int32, device=device)
        cu_k = torch.arange(0, (B + 1) * capacity, capacity, dtype=torch.int32, device=device)

        def decode(q, k_cache, v_cache, cache_seqlens, block_table):
            paged = {} if block_table is None else {"block_table": block_table}
            if block_table is None:  # (B, capacity, H_kv, D) -> B key sequences of capacity slots
                k_cache, v_cache = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
            o = fn(q.flatten(0, 1), k_cache, v_cache, cu_q, cu_k, n_q, capacity, seqused_k=cache_seqlens,
                   **paged, **kw)
            return o.unflatten(0, (B, n_q))

        return decode

    def prepare(self, case, device):
        probe(self.name, lambda c: self._build(c, device), case, device)
        return self._build(case, device)
