"""Input validation shared by the FlashAttention launchers.

Every launcher calls :func:`check_inputs` (or :func:`check_varlen_inputs`), :func:`check_window`,
:func:`check_flag`, :func:`check_scale` and :func:`check_launch_log` before touching a kernel, so a bad call is
a ``ValueError`` that says what is wrong, never a wrong result.  ``flash_decode``'s checks (``flash_decode/checks.py``)
share :func:`check_tensor` and :func:`check_scale`.  Messages quote arguments through :func:`brief`, so none prints
a whole tensor or list.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import MutableMapping
from typing import NamedTuple

import torch

try:
    import numpy
    _NUMPY_BOOL = (numpy.bool_,)
except ImportError:  # torch runs without numpy
    _NUMPY_BOOL = ()

SUPPORTED_HEAD_DIMS = (32, 64, 96, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NO_WINDOW = (-1, -1)
# The kernels take the softmax scale as a float32 and multiply it by log2(e) (base-2 exponentials): both must be
# normal float32 numbers (outside that range Triton types the argument float64 under the interpreter, which its dots
# refuse, and a GPU would compute with inf or 0)
LOG2E = 1.4426950408889634
MIN_SCALE = 2.0 ** -126
MAX_SCALE = (2 - 2.0 ** -23) * 2.0 ** 127 / LOG2E
_BRIEF = 60  # characters of a value quoted in a message
# Query plus key rows of a dense call (total_q + total_k packed): the FA2 kernels' loop bounds (``programs.span``: a row
# index plus the shift Nkv - Nq plus a window reach of up to Nq + Nkv, the launcher's "unbounded", plus a block) are
# int32, about 2 (Nq + Nkv) + 256 at most; past 2**31 they wrapped and rows silently saw no key
MAX_TOKENS = 2 ** 30 - 256
# Batch x heads of a dense call: the kernels put them on the launch grid's second axis, which CUDA caps at 65535 (past it
# the launch fails with CUDA's bare "invalid argument")
MAX_BATCH_HEADS = 65535


def brief(value) -> str:
    """A value as a message quotes it: a tensor by its shape and dtype (printing one reads the device, and may be
    huge), anything else by its repr cut to a bounded length."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= _BRIEF else text[:_BRIEF - 3] + "..."


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def device_capability(index: int | None) -> tuple[int, int]:
    """(major, minor) of CUDA device ``index``, asked once a process: the launchers ask on every call,
    and the query walked the device properties each time (a few % of a short fwd_bwd call's host time
    on the H200, ``tools/host_path.py``)."""
    return torch.cuda.get_device_capability(index)


def sm_count(index: int | None) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (None: the current one), asked once a device and process
    (grids and chunk sizes are decided on the host path).  None is resolved first: cached as it is, it would
    answer for whichever device was current at the first call."""
    return _sm_count(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def check_device(device: torch.device, name: str) -> None:
    """The kernels run on CUDA tensors, or on CPU tensors under the interpreter; nothing else (a meta tensor has no
    data to read)."""
    if not (device.type == "cuda" or (device.type == "cpu" and interpreting())):
        raise ValueError(f"{name}: inputs must be CUDA tensors (got {device}); CPU runs only under TRITON_INTERPRET=1")


def check_tensor(t, n: str, name: str) -> None:
    """``t`` (argument ``n``) is a plain strided tensor whose memory holds its values: not a nested or sparse tensor,
    and not a lazily negated view (``x.conj().imag`` of a complex x is one), whose memory holds the negated values
    (the kernels read memory).  A lazily conjugated view is complex, which every caller's dtype check refuses."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: {n} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout is torch.strided and not (t.is_nested or t.is_neg()):  # the common case: three attribute reads
        return
    if t.is_nested:
        raise ValueError(f"{name}: {n} must be a dense tensor, got a nested tensor")
    if t.layout is not torch.strided:
        raise ValueError(f"{name}: {n} must have a contiguous last dimension (stride 1) in a dense tensor, "
                         f"got layout {t.layout}; call .to_dense()")
    raise ValueError(f"{name}: {n} is a lazily negated view, whose memory does not hold its values; "
                     f"call .resolve_neg()")


def check_flag(value, arg: str, name: str) -> bool:
    """A flag (``causal``, ``return_lse``): True or False (0 and 1, and numpy's bools, are taken too).  Anything
    else is refused, rather than read by its truth value ("False" is a true string; a CUDA tensor's truth value
    waits for the device)."""
    if isinstance(value, (bool, *_NUMPY_BOOL)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name}: {arg} must be True or False, got {brief(value)}")


def check_scale(head_dim: int, sm_scale, name: str) -> float:
    """The softmax scale as a float: 1/sqrt(D) for None, else a real number (not a bool, string or tensor) in
    [``MIN_SCALE``, ``MAX_SCALE``], so that it and scale * log2(e) are normal float32 numbers."""
    if sm_scale is not None and (isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real)):
        raise ValueError(f"{name}: sm_scale must be a float (or None for 1/sqrt(head_dim)), got {brief(sm_scale)}")
    try:
        scale = default_scale(head_dim, sm_scale)
    except OverflowError:  # an int too large for a float
        scale = math.inf
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"{name}: sm_scale must be a positive finite number, got {brief(sm_scale)}")
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"{name}: sm_scale must be a positive finite number in [{MIN_SCALE:.4g}, {MAX_SCALE:.4g}] "
                         f"(the kernels compute with sm_scale * log2(e) in float32), got {brief(sm_scale)}")
    return scale


def _check_qkv(q, k, v, name: str, dims: int, layout: str) -> None:
    """What the dense and the packed layouts share: ``dims``-D tensors with heads on axis 1 and the head
    dim last, one supported dtype, one device, H a multiple of H_kv, a contiguous last dimension."""
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        check_tensor(t, n, name)
        if t.dim() != dims:
            raise ValueError(f"{name}: {n} must be {dims}-D ({layout}), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{name}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: dtype {q.dtype} is not supported (float16, bfloat16, float32)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{name}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    check_device(q.device, name)
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    D, Dk = q.shape[-1], k.shape[-1]
    if Dk != D:
        raise ValueError(f"{name}: head_dim of q ({D}) and k/v ({Dk}) differ")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{name}: head_dim {D} is not supported; supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: query heads ({H}) must be a multiple of key/value heads ({Hkv}) for GQA/MQA")
    if q.numel() == 0 or k.numel() == 0:
        raise ValueError(f"{name}: empty input, shapes q={tuple(q.shape)} k={tuple(k.shape)}")
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: {n} must have a contiguous last dimension (stride 1), got strides {t.stride()}; call .contiguous()")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str) -> tuple[int, int, int, int, int, int]:
    """Validate SDPA-layout inputs; return (B, H, H_kv, Nq, Nkv, D).

    q is (B, H, Nq, D); k and v are (B, H_kv, Nkv, D) with H a multiple of H_kv.
    """
    _check_qkv(q, k, v, name, 4, "batch, heads, seq_len, head_dim")
    B, H, Nq, D = q.shape
    Bk, Hkv, Nkv, _ = k.shape
    if Bk != B:
        raise ValueError(f"{name}: batch of q ({B}) and k/v ({Bk}) differ")
    if Nq + Nkv > MAX_TOKENS:
        raise ValueError(f"{name}: seq_len of q ({Nq}) plus seq_len of k/v ({Nkv}) exceeds {MAX_TOKENS} (2**30 - 256): "
                         f"the kernels index rows in int32")
    if B * H > MAX_BATCH_HEADS:
        raise ValueError(f"{name}: batch x heads of q ({B} x {H} = {B * H}) exceeds {MAX_BATCH_HEADS}, CUDA's limit on "
                         f"the launch grid's axis that holds them; split the batch")
    return B, H, Hkv, Nq, Nkv, D


class PackedBatch(NamedTuple):
    """A packed (variable-length) batch whose metadata has been checked: the device offsets and the
    ``max_seqlen_*`` bounds.  No lengths on the host: everything built from the offsets is built on
    the device (``_schedule.SequenceBlocks``)."""
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, name: str,
                        check_values: bool = True) -> PackedBatch:
    """Validate packed inputs q (total_q, H, D), k and v (total_k, H_kv, D) and their sequence offsets.

    Always, from metadata (no device work): cu_seqlens_q / cu_seqlens_k are int32 (batch + 1,) tensors
    of one length on q's device; max_seqlen_q / max_seqlen_k are ints >= 0.  With ``check_values``
    the offsets are also read on the host (one device-to-host copy for both, the call's only
    synchronisation): starting at 0, non-decreasing, ending at total_q / total_k, and max_seqlen_* >=
    the longest sequence.  Without it the values are trusted (``flash_attn_varlen`` says what bad
    ones do).
    """
    _check_qkv(q, k, v, name, 3, "total_tokens, heads, head_dim")
    if q.shape[0] + k.shape[0] > MAX_TOKENS:
        raise ValueError(f"{name}: total_q ({q.shape[0]}) plus total_k ({k.shape[0]}) exceeds {MAX_TOKENS} "
                         f"(2**30 - 256): the kernels index rows in int32")
    if not isinstance(check_values, bool):
        raise ValueError(f"{name}: check_values must be True or False, got {brief(check_values)}")
    for t, n in ((cu_seqlens_q, "cu_seqlens_q"), (cu_seqlens_k, "cu_seqlens_k")):
        check_tensor(t, n, name)
        if t.dtype != torch.int32:
            raise ValueError(f"{name}: {n} must be int32, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] < 2:
            raise ValueError(f"{name}: {n} must be 1-D of batch + 1 >= 2 offsets, got shape {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name}: {n} must be on q's device {q.device}, got {t.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"{name}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), "
                         f"got {cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}")
    for max_seqlen, max_name in ((max_seqlen_q, "max_seqlen_q"), (max_seqlen_k, "max_seqlen_k")):
        if not (isinstance(max_seqlen, int) and not isinstance(max_seqlen, bool)) or max_seqlen < 0:
            raise ValueError(f"{name}: {max_name} must be an int >= the longest sequence, got {brief(max_seqlen)}")
    if check_values:
        _check_offsets(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k, name)
    # the kernels and the program tables read offset b at cu_seqlens + b: a strided view (or one of stride 0) is
    # copied into a contiguous one (a copy queued on the stream, no synchronisation; none when contiguous already)
    return PackedBatch(cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k)


def _check_offsets(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int, max_seqlen_q: int, max_seqlen_k: int,
                   name: str) -> None:
    """The values of checked offsets: one device-to-host copy of both tensors.  An offset past the
    end would read another sequence's rows (the kernels clamp offsets into the packed tensors, so
    not memory outside them), so ``check_values=True`` checks them rather than trusting them."""
    host = torch.cat([cu_seqlens_q, cu_seqlens_k]).cpu().tolist()  # the one sync
    batch = cu_seqlens_q.shape[0] - 1
    for n, offsets, total, max_seqlen, max_name in (
            ("cu_seqlens_q", host[:batch + 1], total_q, max_seqlen_q, "max_seqlen_q"),
            ("cu_seqlens_k", host[batch + 1:], total_k, max_seqlen_k, "max_seqlen_k")):
        if offsets[0] != 0:
            raise ValueError(f"{name}: {n} must start at 0, got {offsets[0]}")
        lengths = [b - a for a, b in zip(offsets, offsets[1:])]
        if min(lengths) < 0:
            i = next(i for i, n_i in enumerate(lengths) if n_i < 0)
            raise ValueError(f"{name}: {n} must be non-decreasing, got {n}[{i}] = {offsets[i]} > "
                             f"{n}[{i + 1}] = {offsets[i + 1]}")
        if offsets[-1] != total:
            raise ValueError(f"{name}: {n} must end at the packed length {total}, got {offsets[-1]}")
        if max_seqlen < max(lengths):
            raise ValueError(f"{name}: {max_name} must be an int >= the longest sequence ({max(lengths)}), "
                             f"got {max_seqlen!r}")


def check_window(window, causal: bool, name: str) -> tuple[int, int]:
    """A sliding window ``(left, right)``, ints >= -1 (-1 unbounded), as the bounds the kernels apply:
    query i sees key j iff i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right; causal caps right at 0."""
    if not (isinstance(window, (tuple, list)) and len(window) == 2
            and all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)):
        raise ValueError(f"{name}: window must be a pair of ints >= -1 (left, right), -1 unbounded, "
                         f"got {brief(window)}")
    left, right = window
    if causal:
        right = 0
    return left, right


def default_scale(head_dim: int, sm_scale: float | None) -> float:
    """Softmax scale: 1/sqrt(D) unless given, like scaled_dot_product_attention."""
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


def check_launch_log(launch_log, name: str) -> None:
    """``launch_log`` is None or a dict-like the launcher writes "kernel -> configuration" into."""
    if launch_log is not None and not isinstance(launch_log, MutableMapping):
        raise ValueError(f"{name}: launch_log must be a dict (or None), got {type(launch_log).__name__}")
