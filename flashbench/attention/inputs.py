"""A case's inputs: fresh random tensors in the layout of its workload, the same for every backend.

A backend's attention function takes the workload's tensors (:data:`WORKLOAD_ARGS`), the layouts
of FlashAttention's APIs (``flash_attn_func``, ``flash_attn_varlen_func``, ``flash_attn_with_kvcache``):

- dense: ``fn(q, k, v)``, q (B, H, Nq, D), k and v (B, H_kv, Nkv, D); returns (B, H, Nq, D);
- varlen: ``fn(q, k, v, cu_seqlens)``, the sequences packed: q (T, H, D), k and v (T, H_kv, D),
  ``cu_seqlens`` (B + 1,) int32 offsets; returns (T, H, D);
- decode: ``fn(q, k_cache, v_cache, cache_seqlens, block_table)``, q (B, Nq, H, D); a contiguous
  cache (B, capacity, H_kv, D) with ``block_table`` None, or a pool of pages
  (num_pages, page_size, H_kv, D) with ``block_table`` (B, pages per sequence) int32 mapping a
  sequence's logical page to its page in the pool (shuffled, as a serving engine leaves them);
  ``cache_seqlens`` (B,) int32; returns (B, Nq, H, D).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..model.case import Case

WORKLOAD_ARGS = {
    "dense": ("q", "k", "v"),
    "varlen": ("q", "k", "v", "cu_seqlens"),
    "decode": ("q", "k_cache", "v_cache", "cache_seqlens", "block_table"),
}


@dataclass
class Inputs:
    args: tuple                 # what the attention function receives, in WORKLOAD_ARGS order
    do: torch.Tensor | None     # upstream gradient, for modes with a backward

    @property
    def q(self) -> torch.Tensor:
        return self.args[0]

    @property
    def k(self) -> torch.Tensor:
        return self.args[1]

    @property
    def v(self) -> torch.Tensor:
        return self.args[2]

    def differentiable(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tensors a backward differentiates: q, k, v."""
        return self.args[0], self.args[1], self.args[2]


def case_seed(case: Case, seed: int) -> int:
    """A seed per case, so every backend of one case sees the same inputs, and cases differ."""
    digest = hashlib.sha256(f"{seed}:{case.label()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def offsets(lengths) -> list[int]:
    """[0, l0, l0 + l1, ...]: where each packed sequence starts (and the total at the end)."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return out


def pages_of(case: Case) -> list[int]:
    """Pages each sequence of a paged decode case uses."""
    return [-(-n // case.page_size) for n in case.sequence_lengths()[1]]


def make_inputs(case: Case, device: str, seed: int) -> Inputs:
    """Fresh standard-normal inputs (never zeros), reproducible from the case and the seed."""
    g = torch.Generator(device=device).manual_seed(case_seed(case, seed))
    dt = case.torch_dtype()

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    H, Hkv, D = case.heads, case.kv_heads, case.head_dim
    q_lens, kv_lens = case.sequence_lengths()
    if case.workload == "decode":
        q = randn(case.batch, case.seq_len_q, H, D)
        lens = torch.tensor(kv_lens, dtype=torch.int32, device=device)
        if not case.is_paged:
            k, v = randn(case.batch, case.seq_len_kv, Hkv, D), randn(case.batch, case.seq_len_kv, Hkv, D)
            return Inputs((q, k, v, lens, None), None)
        used = pages_of(case)
        k, v = randn(sum(used), case.page_size, Hkv, D), randn(sum(used), case.page_size, Hkv, D)
        pool = torch.randperm(sum(used), generator=g, device=device).to(torch.int32)
        table = torch.zeros(case.batch, -(-case.seq_len_kv // case.page_size), dtype=torch.int32, device=device)
        starts = offsets(used)
        for b, n in enumerate(used):
            table[b, :n] = pool[starts[b]:starts[b] + n]
        return Inputs((q, k, v, lens, table), None)
    if case.workload == "varlen":
        T = sum(q_lens)
        q, k, v = randn(T, H, D), randn(T, Hkv, D), randn(T, Hkv, D)
        do = randn(T, H, D) if case.has_backward else None
        extra = (torch.tensor(offsets(q_lens), dtype=torch.int32, device=device),)
    else:
        q = randn(case.batch, H, case.seq_len_q, D)
        k = randn(case.batch, Hkv, case.seq_len_kv, D)
        v = randn(case.batch, Hkv, case.seq_len_kv, D)
        do = randn(case.batch, H, case.seq_len_q, D) if case.has_backward else None
        extra = ()
    if case.has_backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    return Inputs((q, k, v, *extra), do)
