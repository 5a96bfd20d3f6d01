"""Attention written out from its definition, with masks built by hand, for checking the reference
backends (naive, sdpa, sdpa_math) without going through ``flashbench.attention.reference``.

The reference those backends are measured against builds its mask with the same helper as they do
(``reference.visible_mask``), so a bug there (a top-left causal diagonal, a hidden diagonal key)
would agree with itself and every correctness check would pass. This module shares no code with
flashbench's masks or reference: query i of Nq sees key j of Nkv iff

    i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right      (-1: unbounded; causal caps right at 0)

(FlashAttention's bottom-right alignment, as ``flashbench/attention/reference.py`` documents it), a row
that sees no key is 0, and query head h reads kv head h // (H / H_kv). Decode batches go through
:func:`decode_reference.decode_reference`, written from the decode problem statement.
"""
from __future__ import annotations

import math

import torch

from decode_reference import decode_reference, gather_pages


def hand_visible(n_q: int, n_kv: int, causal: bool, window: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """(Nq, Nkv) bool, True where query i sees key j, entry by entry from the definition above."""
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    shift = n_kv - n_q
    rows = [[(left < 0 or j >= i + shift - left) and (right < 0 or j <= i + shift + right) for j in range(n_kv)]
            for i in range(n_q)]
    return torch.tensor(rows, dtype=torch.bool).reshape(n_q, n_kv)


def oracle_attention(q, k, v, causal: bool, window: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """fp64 attention of dense q (B, H, Nq, D) against k, v (B, H_kv, Nkv, D), with :func:`hand_visible`."""
    B, H, n_q, D = q.shape
    h_kv, n_kv = k.shape[1], k.shape[2]
    kv_head = [h // (H // h_kv) for h in range(H)]
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    k, v = k[:, kv_head], v[:, kv_head]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~hand_visible(n_q, n_kv, causal, window).to(q.device), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row that sees no key is 0
    return p @ v


def oracle_output(case, inputs) -> torch.Tensor:
    """fp64 O of a case's inputs (``flashbench.attention.inputs.make_inputs``), in the workload's layout:
    dense (B, H, Nq, D); varlen (T, H, D), each sequence cut from the packed tensors at the inputs'
    cu_seqlens; decode (B, Nq, H, D), each cache read up to cache_seqlens (through the block table when paged)."""
    if case.workload == "dense":
        return oracle_attention(*inputs.args[:3], case.causal, case.window)
    if case.workload == "varlen":
        q, k, v, cu = inputs.args
        cu = cu.tolist()
        outs = []
        for a, b in zip(cu, cu[1:]):
            seq = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))  # (T, heads, D) -> (1, heads, n, D)
            outs.append(oracle_attention(*seq, case.causal, case.window)[0].transpose(0, 1))
        return torch.cat(outs)
    if case.workload == "decode":
        if not case.causal or case.has_window:
            raise ValueError("oracle_output: decode_reference defines causal decode without a window")
        q, k_cache, v_cache, lens, table = inputs.args
        lens = lens.tolist()
        if table is None:
            k_seqs, v_seqs = [k_cache[b, :n] for b, n in enumerate(lens)], [v_cache[b, :n] for b, n in enumerate(lens)]
        else:
            k_seqs, v_seqs = gather_pages(k_cache, table, lens), gather_pages(v_cache, table, lens)
        return decode_reference(q, k_seqs, v_seqs)
    raise ValueError(f"oracle_output: unknown workload {case.workload!r}")
