"""Reference attention: the textbook formula in a chosen (high) precision.

Used for correctness checks by the runner and the kernel tests, so every comparison in the
project is made against the same definition:

    O = softmax(scale · Q Kᵀ + mask) V

- GQA/MQA: query head h reads key/value head h // (H / H_kv).
- sliding windows ``(left, right)`` follow FlashAttention: query i sees key j iff
  i + (Nkv − Nq) − left ≤ j ≤ i + (Nkv − Nq) + right, −1 meaning unbounded (:func:`visible_mask`).
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


NO_WINDOW = (-1, -1)


def window_bounds(causal: bool, window: tuple[int, int] = NO_WINDOW) -> tuple[int, int]:
    """(left, right) reach of a query around its diagonal, -1 unbounded; causal caps right at 0."""
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def visible_mask(n_q: int, n_kv: int, causal: bool, window: tuple[int, int] = NO_WINDOW, device=None) -> torch.Tensor:
    """Boolean (Nq, Nkv) mask, True where key j is visible to query i (FlashAttention's convention,
    bottom-right aligned): i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right, a bound of -1
    being unbounded; causal is right = 0."""
    left, right = window_bounds(causal, window)
    diag = torch.arange(n_q, device=device)[:, None] + (n_kv - n_q)
    j = torch.arange(n_kv, device=device)[None, :]
    visible = torch.ones(n_q, n_kv, dtype=torch.bool, device=device)
    if right >= 0:
        visible &= j <= diag + right
    if left >= 0:
        visible &= j >= diag - left
    return visible


def causal_mask(n_q: int, n_kv: int, device) -> torch.Tensor:
    """Boolean (Nq, Nkv) mask, True where the key is visible (bottom-right aligned)."""
    return visible_mask(n_q, n_kv, True, device=device)


def _masked_attention(q, k, v, scale: float, causal: bool, window: tuple[int, int]) -> torch.Tensor:
    """softmax(scale q kᵀ + mask) v in the inputs' dtype; rows that see no key are defined as 0."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    masked = causal or tuple(window) != NO_WINDOW
    if masked:
        s = s.masked_fill(~visible_mask(q.shape[-2], k.shape[-2], causal, window, q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)  # half inputs: PyTorch accumulates in fp32, stores in the input dtype
    if masked and (q.shape[-2] > k.shape[-2] or tuple(window) != NO_WINDOW):  # a row may see no key
        p = torch.nan_to_num(p, nan=0.0)
    return torch.matmul(p, v)


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, H_kv, N, D) -> (B, H, N, D) by the GQA head mapping (a copy; fine for references)."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def reference_attention(q, k, v, causal: bool = False, sm_scale: float | None = None,
                        compute_dtype: torch.dtype = torch.float32,
                        chunk_elems: int = 1 << 28, window: tuple[int, int] = NO_WINDOW) -> torch.Tensor:
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
        _masked_attention(qf[i:i + heads_per_chunk], kf[i:i + heads_per_chunk], vf[i:i + heads_per_chunk], scale,
                          causal, window)
        for i in range(0, B * H, heads_per_chunk)
    ]
    return torch.cat(outs, dim=0).reshape(B, H, n_q, D)


def naive_attention(q, k, v, causal: bool = False, sm_scale: float | None = None,
                    window: tuple[int, int] = NO_WINDOW) -> torch.Tensor:
    """Textbook attention in the inputs' own dtype, materialising S and P for all heads at once.

    This is the ``naive`` backend and the "PyTorch same-dtype math" term of the tolerance rule.
    """
    H, D = q.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    return _masked_attention(q, expand_kv(k, H), expand_kv(v, H), scale, causal, window)
