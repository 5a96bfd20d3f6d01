"""``triton_decode``: the bundled Triton Flash-Decoding kernel (``kernels/flash_decode/``).

Decode only: 1..16 new tokens per sequence against a contiguous or paged KV cache, split over the
keys; forward only, no sliding windows (the kernel's docstring lists what it does not support).
Without a GPU it runs only under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter).
"""
from __future__ import annotations

from ..model.case import KV_LAYOUTS
from .triton_kernels import TritonBackend


class TritonDecodeBackend(TritonBackend):
    name = "triton_decode"
    description = "bundled Triton Flash-Decoding: split-KV, GQA-packed, contiguous or paged cache (kernels/flash_decode/)"
    module = "flashbench_kernels.flash_decode"
    modes = ("fwd",)
    workloads = ("decode",)
    kv_layouts = KV_LAYOUTS

    def extra_reason(self, case, device):
        why = super().extra_reason(case, device)
        if why:
            return why
        sizes = self._module().PAGE_SIZES
        if case.is_paged and case.page_size not in sizes:
            return f"{self.name} takes pages of {', '.join(map(str, sizes))} tokens (got {case.page_size})"
        return None

    def prepare(self, case, device):
        decode = self._module().flash_decode
        log = self.new_launch_log()
        checked: set[tuple[int, int]] = set()

        def fn(q, k_cache, v_cache, cache_seqlens, block_table):
            # The kernel checks lengths and page tables on the host (one device sync) unless told
            # not to: the first call on given tensors checks them, the timed calls that reuse those
            # tensors do not, so a sync never lands inside a timed call.
            key = (id(cache_seqlens), id(block_table))
            check = key not in checked
            out = decode(q, k_cache, v_cache, cache_seqlens, block_table, launch_log=log, check_values=check)
            checked.add(key)
            return out

        return fn

    def compile_key(self, case):
        """Constexprs of the split kernel: dtype, head dim, the rows of a tile (query heads per kv head ×
        new tokens), the layout and page size."""
        from flashbench_kernels._validate import interpreting

        if interpreting():
            return None
        return (case.dtype, case.head_dim, case.heads // case.kv_heads * case.seq_len_q, case.kv_layout, case.page_size)
