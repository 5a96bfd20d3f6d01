"""Reference attention: the textbook formula in a chosen (high) precision.

Used for correctness checks by the runner and the kernel tests, so every comparison in the
project is made against the same definition:

    O = softmax(scale · Q Kᵀ + mask) V

- GQA/MQA: query head h reads key/value head h // (H / H_kv).
- causal is aligned to the bottom-right corner (FlashAttention ≥ 2.1 and
  ``torch.nn.attention.bias.causal_lower_right``): query i sees key j iff j ≤ i + (Nkv − Nq).
  When Nq > Nkv the first Nq − Nkv query rows see no key at all; their output (and every
  gradient flowing through them) is defined as 0.
- Work is split over (batch, head) chunks so the N×N score matrix of one chunk at a time is in
  memory, which keeps an fp32 reference at N = 16k within a few GiB.
"""
from __future__ import annotations

import math

import torch


def causal_mask(n_q: int, n_kv: int, device) -> torch.Tensor:
    """Boolean (Nq, Nkv) mask, True where the key is visible (bottom-right aligned)."""
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_kv, device=device)[None, :]
    return j <= i + (n_kv - n_q)


def _attention_chunk(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        visible = causal_mask(q.shape[-2], k.shape[-2], q.device)
        s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if causal and q.shape[-2] > k.shape[-2]:
        p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key: defined as 0
    return torch.matmul(p, v)


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H_kv, N, D) -> (B, H, N, D) by the GQA head mapping (a copy; fine for references)."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def reference_attention(q, k, v, causal: bool = False, sm_scale: float | None = None,
                        compute_dtype: torch.dtype = torch.float32,
                        chunk_elems: int = 1 << 28) -> torch.Tensor:
    """Attention computed in ``compute_dtype``; returns a tensor of that dtype.

    Differentiable: call it on leaf tensors with requires_grad for reference gradients.
    ``chunk_elems`` bounds the score-matrix elements held at once (default 2**28: 1 GiB fp32).
    """
    B, H, n_q, D = q.shape
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    kc, vc = expand_kv(kc, H), expand_kv(vc, H)
    per_head = n_q * k.shape[2]
    heads_per_chunk = max(1, chunk_elems // max(per_head, 1))
    qf, kf, vf = (t.reshape(B * H, t.shape[2], D) for t in (qc, kc, vc))
    outs = [
        _attention_chunk(qf[i:i + heads_per_chunk], kf[i:i + heads_per_chunk], vf[i:i + heads_per_chunk], causal, scale)
        for i in range(0, B * H, heads_per_chunk)
    ]
    return torch.cat(outs, dim=0).reshape(B, H, n_q, D)


def naive_attention(q, k, v, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """Textbook attention in the inputs' own dtype, materialising S and P for all heads at once.

    This is the ``naive`` backend and the "PyTorch same-dtype math" term of the tolerance rule.
    """
    B, H, n_q, D = q.shape
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    k, v = expand_kv(k, H), expand_kv(v, H)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(n_q, k.shape[2], q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)  # half inputs: PyTorch accumulates in fp32, stores in the input dtype
    if causal and n_q > k.shape[2]:
        p = torch.nan_to_num(p, nan=0.0)
    return torch.matmul(p, v)
