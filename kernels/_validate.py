"""Input validation shared by the FlashAttention launchers.

Every launcher calls :func:`check_inputs` (and :func:`check_launch_log`) before touching a kernel,
so a bad call is a ``ValueError`` that says what is wrong, never a wrong result.
"""
from __future__ import annotations

import math
import os
from collections.abc import MutableMapping

import torch

SUPPORTED_HEAD_DIMS = (32, 64, 96, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str) -> tuple[int, int, int, int, int, int]:
    """Validate SDPA-layout inputs; return (B, H, H_kv, Nq, Nkv, D).

    q is (B, H, Nq, D); k and v are (B, H_kv, Nkv, D) with H a multiple of H_kv.
    """
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: {n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: {n} must be 4-D (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{name}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: dtype {q.dtype} is not supported (float16, bfloat16, float32)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{name}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"{name}: inputs must be CUDA tensors (got {q.device}); CPU runs only under TRITON_INTERPRET=1")
    B, H, Nq, D = q.shape
    Bk, Hkv, Nkv, Dk = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if Bk != B:
        raise ValueError(f"{name}: batch of q ({B}) and k/v ({Bk}) differ")
    if Dk != D:
        raise ValueError(f"{name}: head_dim of q ({D}) and k/v ({Dk}) differ")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name}: head_dim {D} is not supported; supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: query heads ({H}) must be a multiple of key/value heads ({Hkv}) for GQA/MQA")
    if min(B, H, Nq, Nkv) == 0:
        raise ValueError(f"{name}: empty input, shapes q={tuple(q.shape)} k={tuple(k.shape)}")
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: {n} must have a contiguous last dimension (stride 1), got strides {t.stride()}; call .contiguous()")
    return B, H, Hkv, Nq, Nkv, D


def default_scale(head_dim: int, sm_scale: float | None) -> float:
    """Softmax scale: 1/sqrt(D) unless given, like scaled_dot_product_attention."""
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


def check_launch_log(launch_log, name: str) -> None:
    """``launch_log`` is None or a dict-like the launcher writes "kernel -> configuration" into."""
    if launch_log is not None and not isinstance(launch_log, MutableMapping):
        raise ValueError(f"{name}: launch_log must be a dict (or None), got {type(launch_log).__name__}")
