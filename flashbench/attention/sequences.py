"""Per-sequence views of a varlen or decode batch: how the reference and the naive backend see a
batch that is not dense, each sequence as its own dense (1, heads, length, D) problem."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.case import Case
from .inputs import offsets


@dataclass
class Sequence:
    """One sequence of a batch as dense (1, heads, length, D) tensors (views where the layout allows)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None = None


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    """(length, heads, D) -> (1, heads, length, D), a view."""
    return t.transpose(0, 1).unsqueeze(0)


def sequences(case: Case, args: tuple, do: torch.Tensor | None = None) -> list[Sequence]:
    """The sequences of a varlen or decode batch (``args`` in :data:`WORKLOAD_ARGS` order), each as a
    dense problem: a varlen sequence against itself, a decode sequence's new tokens against the first
    ``cache_seqlens[b]`` keys of its cache (gathered from its pages when paged)."""
    q_lens, kv_lens = case.sequence_lengths()
    if case.workload == "varlen":
        q, k, v = args[:3]
        starts = offsets(q_lens)
        return [Sequence(_bhsd(q[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]), None if do is None else _bhsd(do[a:b]))
                for a, b in zip(starts, starts[1:])]
    if case.workload != "decode":
        raise ValueError(f"sequences: a {case.workload} batch is already dense")
    q, k_cache, v_cache, _, table = args
    out = []
    for b, n in enumerate(kv_lens):
        if table is None:
            k, v = k_cache[b, :n], v_cache[b, :n]
        else:
            pages = table[b, :-(-n // case.page_size)].long()
            k = k_cache.index_select(0, pages).flatten(0, 1)[:n]
            v = v_cache.index_select(0, pages).flatten(0, 1)[:n]
        out.append(Sequence(_bhsd(q[b]), _bhsd(k), _bhsd(v)))
    return out


def assemble(case: Case, per_sequence: list[torch.Tensor]) -> torch.Tensor:
    """Per-sequence (1, heads, length, D) results -> the workload's layout: packed (T, heads, D) for
    varlen, (B, Nq, heads, D) for decode."""
    rows = [t[0].transpose(0, 1) for t in per_sequence]
    return torch.cat(rows) if case.workload == "varlen" else torch.stack(rows)
