"""Input validation of ``flash_decode``: every bad argument is a ValueError naming it and the reason.

Shapes, dtypes, devices, strides and options are checked on the host from tensor metadata (no
device work).  The values of ``cache_seqlens`` and ``block_table`` live on the device: checking them
(``check_values``) costs one device-to-host synchronisation, which the caller may skip
(``check_values=False``) for tensors it has checked once already.
"""
from __future__ import annotations

import torch

from .._validate import (SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, brief, check_device, check_launch_log, check_scale,
                         check_tensor)
from .options import DecodeOptions
from .tuning import MAX_SPLITS

MAX_NEW_TOKENS = 16
PAGE_SIZES = (16, 32, 64, 128, 256)
_DEFAULT_OPTIONS = DecodeOptions()  # frozen: one shared value instead of one made per call


def fail(reason: str):
    raise ValueError(f"flash_decode: {reason}")


def check_tensors(q, k_cache, v_cache, cache_seqlens, block_table) -> None:
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens)]
    if block_table is not None:
        named.append(("block_table", block_table))
    for n, t in named:
        check_tensor(t, n, "flash_decode")  # a tensor, dense, no lazily negated view
    if q.dim() != 4:
        fail(f"q must be 4-D (batch, new_tokens, heads, head_dim), got shape {tuple(q.shape)}")
    layout = "(num_blocks, page_size, kv_heads, head_dim)" if block_table is not None else \
        "(batch, max_seqlen, kv_heads, head_dim)"
    for n, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 4:
            fail(f"{n} must be 4-D {layout}, got shape {tuple(t.shape)}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        fail(f"q, k_cache, v_cache must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        fail(f"dtype {q.dtype} is not supported (float16, bfloat16, float32)")
    for n, t in named[1:]:
        if t.device != q.device:
            fail(f"{n} is on {t.device} but q is on {q.device}; all inputs must be on one device")
    check_device(q.device, "flash_decode")  # CUDA, or the CPU under the interpreter (a meta tensor has no data)
    if torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad):
        fail("forward only (no autograd): an input requires grad; call it under torch.no_grad() or detach")
    for n, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            fail(f"{n} must have a contiguous last dimension (stride 1), got strides {t.stride()}")


def check_shapes(q, k_cache, v_cache, cache_seqlens, block_table) -> tuple[int, int]:
    """Shape checks; returns (capacity of a sequence, page size or 0 for a contiguous cache)."""
    B, Nq, H, D = q.shape
    Hkv = k_cache.shape[2]
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        fail(f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if min(q.shape) == 0 or min(k_cache.shape) == 0:
        fail(f"empty input: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}")
    if not 1 <= Nq <= MAX_NEW_TOKENS:
        fail(f"q has {Nq} new tokens (dim 1); 1 to {MAX_NEW_TOKENS} are supported")
    if k_cache.shape[3] != D:
        fail(f"head_dim of q ({D}) and of the caches ({k_cache.shape[3]}) differ")
    if D not in SUPPORTED_HEAD_DIMS:
        fail(f"head_dim {D} is not supported; supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if H % Hkv != 0:
        fail(f"query heads ({H}) must be a multiple of the caches' kv heads ({Hkv}) for GQA/MQA")
    if cache_seqlens.dtype != torch.int32:
        fail(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (B,):
        fail(f"cache_seqlens must have shape ({B},) (one length per sequence), got {tuple(cache_seqlens.shape)}")
    if block_table is None:
        if k_cache.shape[0] != B:
            fail(f"batch of q ({B}) and of the contiguous caches ({k_cache.shape[0]}) differ")
        return k_cache.shape[1], 0
    page = k_cache.shape[1]
    if page not in PAGE_SIZES:
        fail(f"page size (k_cache dim 1) {page} is not supported; supported: {', '.join(map(str, PAGE_SIZES))}")
    if block_table.dtype != torch.int32:
        fail(f"block_table must be int32, got {block_table.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.shape[1] == 0:
        fail(f"block_table must have shape ({B}, max_blocks) with max_blocks >= 1, got {tuple(block_table.shape)}")
    return block_table.shape[1] * page, page


def check_values(cache_seqlens, block_table, capacity: int, page: int, num_blocks: int) -> None:
    """Range checks of the lengths and of the table entries in use: one device-to-host synchronisation.

    Entry i of sequence b is in use when i * page_size < cache_seqlens[b]; unused entries (padding)
    are never read and not checked.
    """
    shortest, longest = torch.aminmax(cache_seqlens)
    stats = [shortest.long(), longest.long()]
    if block_table is not None:
        first_key = torch.arange(block_table.shape[1], device=block_table.device) * page
        used = first_key[None, :] < cache_seqlens[:, None]
        bad = used & ((block_table < 0) | (block_table >= num_blocks))
        stats.append(bad.sum())
    stats = torch.stack(stats).tolist()
    if stats[0] < 1:
        b = int(torch.argmin(cache_seqlens))
        fail(f"cache_seqlens[{b}] = {stats[0]}; every sequence needs at least 1 key in its cache")
    if stats[1] > capacity:
        b = int(torch.argmax(cache_seqlens))
        what = "max_blocks * page_size" if block_table is not None else "k_cache dim 1"
        fail(f"cache_seqlens[{b}] = {stats[1]} exceeds the cache capacity {capacity} ({what})")
    if block_table is not None and stats[2] > 0:
        b, i = (int(x) for x in bad.nonzero()[0])
        fail(f"block_table[{b}, {i}] = {int(block_table[b, i])} is outside [0, {num_blocks}) "
             f"(num_blocks = k_cache dim 0) and is used by sequence {b} of length {int(cache_seqlens[b])}")


def check_options(q, sm_scale, num_splits, launch_log, check_values, options) -> tuple[float, DecodeOptions]:
    """The softmax scale and the options in effect; a ValueError for a bad one."""
    scale = check_scale(q.shape[-1], sm_scale, "flash_decode")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 0 <= num_splits <= MAX_SPLITS:
        fail(f"num_splits must be an int in [0, {MAX_SPLITS}] (0 picks it from the shape), got {brief(num_splits)}")
    check_launch_log(launch_log, "flash_decode")
    if not isinstance(check_values, bool):
        fail(f"check_values must be True or False, got {brief(check_values)}")
    options = _DEFAULT_OPTIONS if options is None else options
    if not isinstance(options, DecodeOptions):
        fail(f"options must be a DecodeOptions, got {type(options).__name__}")
    return scale, options
