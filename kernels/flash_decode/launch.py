"""``flash_decode``: checks, the call's plan (tile rows, split count, tile), one launch, the launch log.

The hot path (``check_values=False``) reads only tensor metadata on the host: no device-to-host
copy, so calls queue on the stream like any kernel launch and can be captured in a CUDA graph once
the tuner has chosen for their class.
"""
from __future__ import annotations

from typing import MutableMapping

import torch

from .._tuner import _UNBUILDABLE
from .._validate import device_capability, interpreting, sm_count
from . import run, tuning
from .checks import check_options, check_shapes, check_tensors, check_values as check_lengths_and_table, fail
from .options import DecodeOptions, Tile

_MAX_ROWS = 128  # rows of one tile (64 at head dim 256): bounds the fp32 accumulator's registers
_INTERPRETER_SMS = 4


def num_sms(device: torch.device) -> int:
    """The GPU's streaming multiprocessors (a fixed 4 under the interpreter)."""
    if interpreting() or device.type != "cuda":
        return _INTERPRETER_SMS
    return sm_count(device.index)


def can_overlap_combine(device: torch.device) -> bool:
    """Programmatic dependent launch (the combine overlapping the split kernel's tail) needs sm_90 or later;
    the interpreter has no second launch to overlap."""
    return not interpreting() and device.type == "cuda" and device_capability(device.index)[0] >= 9


def prepare_call(q, k_cache, v_cache, cache_seqlens, block_table, scale: float, capacity: int,
                 page: int, overlap_combine: bool = True) -> run.DecodeCall:
    """The call's tile rows, row blocks, programs and output buffer (from shapes only); ``overlap_combine``
    (``DecodeOptions``) is honoured where the GPU can (``can_overlap_combine``)."""
    B, Nq, H, D = q.shape
    Hkv = k_cache.shape[2]
    group = H // Hkv
    block_d = max(16, run.next_pow2(D))
    block_m = min(max(16, run.next_pow2(group * Nq)), _MAX_ROWS if block_d <= 128 else _MAX_ROWS // 2)
    m_blocks = run.cdiv(group * Nq, block_m)
    out = run.new_buffer((B, Nq, H, D), q.dtype, q.device)
    return run.DecodeCall(q, k_cache, v_cache, cache_seqlens, block_table, out, scale * run.LOG2E, page,
                          capacity, k_cache.shape[0] if page else 0, group, block_m, m_blocks, block_d,
                          B * Hkv * m_blocks, overlap_combine and can_overlap_combine(q.device))


def _run_pinned(call: run.DecodeCall, tile: Tile, splits: int) -> None:
    """A pinned tile that cannot be built for this GPU is a ValueError naming the option."""
    try:
        run.run(call, tile, splits)
    except _UNBUILDABLE as e:
        fail(f"options.config = {tuple(tile)} cannot be built for these inputs on this GPU: {e}")


def _choose_and_run(call: run.DecodeCall, options: DecodeOptions, num_splits: int, heuristic: int) -> dict:
    """Run the call with the configuration the options and the class call for; returns what ran and why."""
    splits = num_splits or heuristic
    pinned = options.pinned
    tiles = tuning.candidates(call.block_d, call.block_m, call.page_size, call.capacity, call.q.element_size())
    vary = options.autotune and options.tune_splits and num_splits == 0 and heuristic > 1
    if interpreting() or not options.autotune or (pinned is not None and not vary):
        tile = pinned or (tuning.INTERPRET_TILE if interpreting() else tiles[0])
        if pinned is not None:
            _run_pinned(call, tile, splits)
        else:
            run.run(call, tile, splits)
        source = "pinned" if pinned is not None else ("interpreter" if interpreting() else "default")
        return dict(tile=tile, splits=splits, config_source=source, splits_source="given" if num_splits else "heuristic")
    try:
        tile, splits = tuning.tuned(tuning.TUNER, call, splits, vary, pinned, tiles)
    except RuntimeError:  # the tuner found no candidate that builds
        if pinned is not None:
            _run_pinned(call, pinned, splits)  # a ValueError naming the option when the pinned tile is why
        raise
    return dict(tile=tile, splits=splits, config_source="pinned" if pinned is not None else "tuned",
                splits_source="tuned" if vary else ("given" if num_splits else "heuristic"))


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                 block_table: torch.Tensor | None = None, sm_scale: float | None = None, num_splits: int = 0,
                 launch_log: MutableMapping | None = None, *, check_values: bool = True,
                 options: DecodeOptions | None = None) -> torch.Tensor:
    """Flash-Decoding: Nq (1..16) new tokens per sequence against a contiguous or paged KV cache.

    q (B, Nq, H, D); k_cache, v_cache (B, N_max, H_kv, D), or (num_blocks, page_size, H_kv, D) with
    block_table (B, max_blocks) int32; cache_seqlens (B,) int32 counts each sequence's keys, the new
    tokens' included (they are its last Nq positions), 1 <= cache_seqlens[b] <= capacity.  Returns
    (B, Nq, H, D) in q's dtype; rows of new tokens at negative positions (cache_seqlens[b] < Nq) are
    0.  Forward only.

    num_splits: 0 picks the split count from the shape, the capacity and the SM count (and, tuned,
        tries a quarter to four times that), else 1..128.
    launch_log: a dict that receives the launch's choices (num_splits, block_m, block_n, m_blocks,
        kv_gather, page_size, num_warps, num_stages, combine, overlap_combine, config_source,
        splits_source).
    check_values: True (default) checks cache_seqlens and the block-table entries in use on the host,
        one device-to-host synchronisation a call; False skips it for tensors the caller has checked
        (no synchronisation: the call only queues kernels).  Unchecked bad values never make the
        kernel read outside the caches: every output row of a sequence whose length is outside
        [1, capacity] or whose used table entries leave [0, num_blocks) is NaN.
    options: a ``DecodeOptions`` (default: tuned tile and split count; see there).
    """
    check_tensors(q, k_cache, v_cache, cache_seqlens, block_table)
    capacity, page = check_shapes(q, k_cache, v_cache, cache_seqlens, block_table)
    scale, options = check_options(q, sm_scale, num_splits, launch_log, check_values, options)
    if block_table is not None:
        block_table = block_table.contiguous()
    cache_seqlens = cache_seqlens.contiguous()
    if check_values:
        check_lengths_and_table(cache_seqlens, block_table, capacity, page, k_cache.shape[0])

    call = prepare_call(q, k_cache, v_cache, cache_seqlens, block_table, scale, capacity, page,
                        options.overlap_combine)
    heuristic = tuning.choose_num_splits(call.programs, capacity, num_sms(q.device))
    ran = _choose_and_run(call, options, num_splits, heuristic)
    if launch_log is not None:
        tile, splits = ran["tile"], ran["splits"]
        launch_log.update(num_splits=splits, block_m=call.block_m, block_n=tile.block_n, m_blocks=call.m_blocks,
                          kv_gather="contiguous" if not page else ("page" if page >= tile.block_n else "row"),
                          page_size=page, num_warps=tile.num_warps, num_stages=tile.num_stages,
                          combine=splits > 1, overlap_combine=splits > 1 and call.overlap_combine,
                          config_source=ran["config_source"],
                          splits_source=ran["splits_source"])
    return call.out
