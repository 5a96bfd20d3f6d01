"""Decode attention written from its definition, for the tests of ``flash_decode`` (CPU and GPU).

The reference follows the problem statement, not the kernel: every sequence's cache is gathered to
dense through its block table one logical position at a time, new token t of sequence b sits at
position ``seqlens[b] - Nq + t`` and sees keys ``j <= seqlens[b] - Nq + t`` (rows that see none are
0), and query head h reads kv head ``h // (H / H_kv)``.
"""
from __future__ import annotations

import math

import torch


def random_tensor(shape, dtype, generator) -> torch.Tensor:
    """Normal random values drawn on the generator's device (reproducible), in ``dtype``."""
    return torch.randn(*shape, generator=generator, device=generator.device, dtype=torch.float32).to(dtype)


def page_cache(k: torch.Tensor, v: torch.Tensor, seqlens: list[int], page_size: int, generator,
               spare_pages: int = 3, spare_columns: int = 1):
    """A paged copy of the dense caches k, v (B, N_max, H_kv, D) in shuffled pages.

    Returns (k_pages, v_pages, block_table) on k's device (the generator's device).  Pages come from
    a random permutation of a pool whose unused pages and rows hold noise; table entries a sequence
    does not use are -1, so a kernel that reads them reads out of bounds.
    """
    B, _, Hkv, D = k.shape
    need = [-(-n // page_size) for n in seqlens]
    num_blocks = sum(need) + spare_pages
    order = torch.randperm(num_blocks, generator=generator, device=generator.device).to(k.device)
    k_pages = random_tensor((num_blocks, page_size, Hkv, D), k.dtype, generator)
    v_pages = random_tensor((num_blocks, page_size, Hkv, D), v.dtype, generator)
    table = torch.full((B, max(need) + spare_columns), -1, dtype=torch.int32, device=k.device)
    start = 0
    for b, n in enumerate(seqlens):
        pages = order[start:start + need[b]]
        start += need[b]
        table[b, :need[b]] = pages.to(torch.int32)
        for dense, paged in ((k, k_pages), (v, v_pages)):
            rows = paged[pages].reshape(need[b] * page_size, Hkv, D)
            rows[:n] = dense[b, :n]
            paged[pages] = rows.reshape(need[b], page_size, Hkv, D)
    return k_pages, v_pages, table


def gather_pages(pages: torch.Tensor, table: torch.Tensor, seqlens: list[int]) -> list[torch.Tensor]:
    """Each sequence's (seqlen, H_kv, D) cache: position p read from page table[b, p // size], row p % size."""
    size = pages.shape[1]
    out = []
    for b, n in enumerate(seqlens):
        p = torch.arange(n, device=pages.device)
        out.append(pages[table[b, p // size].long(), p % size])
    return out


def decode_reference(q: torch.Tensor, k_seqs: list[torch.Tensor], v_seqs: list[torch.Tensor],
                     sm_scale: float | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Attention of q (B, Nq, H, D) against each sequence's cache (seqlen, H_kv, D), computed in ``dtype``.

    With ``dtype`` = the inputs' dtype this is PyTorch's same-dtype math of the tolerance rule.
    """
    B, Nq, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    out = torch.zeros(B, Nq, H, D, dtype=dtype, device=q.device)
    for b in range(B):
        k, v = k_seqs[b].to(dtype), v_seqs[b].to(dtype)
        n = k.shape[0]
        kv_head = torch.arange(H, device=q.device) // (H // k.shape[1])
        k, v = k[:, kv_head], v[:, kv_head]  # (n, H, D)
        s = torch.einsum("thd,jhd->htj", q[b].to(dtype), k) * scale
        position = n - Nq + torch.arange(Nq, device=q.device)
        visible = torch.arange(n, device=q.device)[None, :] <= position[:, None]  # (Nq, n)
        s = s.masked_fill(~visible[None], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row that sees no key is 0
        out[b] = torch.einsum("htj,jhd->thd", p, v)
    return out
