"""How ``flash_decode`` chooses its split count and tile: the heuristic, the candidates, the tuner.

Split count (``choose_num_splits``): from the launch's programs before splitting and the cache's
capacity, never from the lengths (reading them would wait for the device).  Tile: one of a few
candidates per head-dim class (``SPACE``), chosen on the device by timing every candidate of the
call's shape class in interleaved rounds (``_tuner.InterleavedTuner``); where the launch is split,
the same timing also tries a quarter, half, twice and four times the heuristic's split count.  The shape class (``KEY``)
holds every launch argument that changes which candidates are offered or how fast they run.
The timing is ``held_bench`` (GPU time only, L2 flushed), not ``do_bench``, which at small batches times the
host's enqueueing (0.13-0.22 ms) rather than the 15-50 us kernels and so ranks tiles by noise.  The candidates span the choices (keys per chunk, warps, pipeline depth)
that the timing is there to settle.
"""
from __future__ import annotations

import functools

import triton

from .._tuner import InterleavedTuner, held_bench
from . import run
from .options import Tile

MAX_SPLITS = 128

# Split heuristic (``choose_num_splits``); constants, not knobs.
_FULL_PROGRAMS_PER_SM = 2  # at or above this many programs per SM the launch is not split
_TARGET_PROGRAMS_PER_SM = 4  # a split launch aims at this many: several waves, so a short last wave costs little
# A split of fewer keys is mostly prologue and combine traffic.  Not more than 256: at B1 4k, 64-key
# chunks ran fastest with 16 splits and one-page chunks of a 16-key paged cache with 32-64
# (results/evidence/h200/decode_splits/), counts the tuner reaches from this cap's 16.
MIN_SPLIT_KEYS = 256


def choose_num_splits(programs: int, capacity: int, num_sms: int) -> int:
    """Splits of the key range for ``num_splits=0``.

    programs: programs of the launch before splitting (B * H_kv * row blocks); capacity: keys a
    sequence can hold (N_max, or max_blocks * page_size); num_sms: the GPU's multiprocessors.  No
    split when the launch already has two programs per SM; otherwise enough splits for about four
    per SM, but no more than leave MIN_SPLIT_KEYS keys of capacity per split, and at most MAX_SPLITS.
    """
    if programs >= _FULL_PROGRAMS_PER_SM * num_sms:
        return 1
    wanted = -(-_TARGET_PROGRAMS_PER_SM * num_sms // programs)
    return max(1, min(wanted, capacity // MIN_SPLIT_KEYS, MAX_SPLITS))


# Tile candidates per head-dim class: (BLOCK_N, num_warps, depth), depth being the K/V chunks the
# software pipeline keeps in flight (``pipeline_stages`` turns it into Triton's num_stages).  The first
# of a class runs when autotuning is off.  The loop is bound by HBM, and every candidate keeps at least
# 128 KB of K/V in flight per SM on sm_90 (registers and shared memory of the compiled kernels, read
# off Triton 3.6's sm_90 builds): they differ in what one iteration's fixed costs are spread over and how
# many programs share an SM.  Timed pinned at D128 on the H200 (results/evidence/h200/decode_tuner_held/),
# the best differed by shape and between two runs: 64/4 at B1 N4k and N128k, 16/1 at B1 N32k, and 64/4,
# 64/8, 32/2 or 16/1 at B8 N4k, B8 N32k and B64 N4k, so none is dropped.  With 16-row tiles (GQA 4-8 x 1-4 new tokens) the
# dots are MMAv2 with the warps side by side along the keys, so each iteration's two row reductions
# and P's layout change cross warps through shared memory (9 barriers an iteration with 4 warps, 2
# with one warp).  At D 128, bf16, 16 rows:
#   64 keys/4 warps/2 deep: 136 registers, 70 KB, 3 programs an SM   64/8/2: 76 registers, 70 KB, 3
#   128/8/2: 176 registers, 136 KB, 1 an SM                            256/8/1: 190 registers, 140 KB, 1
#   32/2/2: 168 registers, 37 KB, 6 an SM                              16/1/3: 168 registers, 28 KB, 7
# (128 keys with 4 warps and 2 chunks needs 255 registers; it is not offered.)
SPACE = {
    "small": [(128, 4, 2), (64, 4, 2), (128, 8, 2), (256, 8, 2), (64, 2, 2), (32, 1, 3)],  # head dims 32, 64
    "mid": [(64, 4, 2), (64, 8, 2), (128, 8, 2), (256, 8, 1), (32, 2, 2), (16, 1, 3)],  # 96, 128
    "large": [(32, 4, 2), (32, 8, 2), (64, 4, 1), (64, 8, 2), (16, 4, 3)],  # 256
}
# With pages of 16 or 32 keys a chunk of one page is one table lookup and one contiguous block (larger
# chunks gather their rows page by page): a class without an entry of that BLOCK_N is offered this one.
SMALL_PAGE = 32
_SMALL_PAGE_WARPS, _SMALL_PAGE_DEPTH = 4, 3
# Under the CPU interpreter (nothing to tune): 32 keys a chunk, so that its tests take both paged
# gathers (pages of 16 gather rows, pages of 32 and up one page a chunk).
INTERPRET_TILE = Tile(32, 4, 1)
# K/V pipeline buffers (depth x 2 x BLOCK_N x BLOCK_D x element size, plus the Q tile that wide
# tiles stage in shared memory) allowed a candidate: Hopper gives a block 227 KB and the reductions
# and P's layout change need some.  Larger ones (fp32 inputs) are not offered; one that still does
# not fit is dropped by the tuner when it fails to build.
SMEM_BUDGET = 200 * 1024
_ACC_VALUES_PER_WARP = 32 * 64  # accumulator values a warp holds at most (64 a thread)


def pipeline_stages(depth: int, paged: bool) -> int:
    """Triton's num_stages that keeps ``depth`` K/V chunks in flight.

    Triton 3.6 pipelines a load whose address comes from another load of the loop (the page index)
    over half the remaining stages: paged kernels got one K/V buffer at 3 and 4 stages, two at 5 and
    6 (sm_90 compiles), where a contiguous cache gets ``num_stages - 1``.
    """
    return 2 * depth + 1 if paged else depth + 1


def head_dim_class(block_d: int) -> str:
    return "small" if block_d <= 64 else ("mid" if block_d <= 128 else "large")


def min_warps(block_m: int, block_d: int) -> int:
    """Enough warps that the fp32 accumulator takes at most 64 registers a thread (8 at 128 x 128)."""
    return max(1, run.next_pow2(block_m * block_d // _ACC_VALUES_PER_WARP))


@functools.lru_cache(maxsize=1024)  # called on every launch: its arguments are a handful of ints
def candidates(block_d: int, block_m: int, page_size: int, capacity: int, element_size: int) -> tuple[Tile, ...]:
    """The tiles offered for a call of this class, in order (the first runs when autotuning is off).

    The class's list, plus a chunk of one page for pages of up to SMALL_PAGE keys where the class has
    none of that size; entries over the
    shared-memory budget dropped (the smallest kept if none fits), depths turned into num_stages for
    the layout, no chunk longer than the capacity rounded up to a power of two (the shortest kept if
    none), and warps raised to ``min_warps``.
    """
    entries = list(SPACE[head_dim_class(block_d)])
    if 0 < page_size <= SMALL_PAGE and all(n != page_size for n, _, _ in entries):
        entries.append((page_size, _SMALL_PAGE_WARPS, _SMALL_PAGE_DEPTH))
    q_tile = block_m * block_d * element_size if block_m >= 64 else 0
    smem = {e: e[2] * 2 * e[0] * block_d * element_size + q_tile for e in entries}
    fit = [e for e in entries if smem[e] <= SMEM_BUDGET] or [min(entries, key=smem.get)]
    tiles = [Tile(n, w, pipeline_stages(depth, page_size > 0)) for n, w, depth in fit]
    short = [t for t in tiles if t.block_n <= max(16, run.next_pow2(capacity))] or [min(tiles, key=lambda t: t.block_n)]
    warps = min_warps(block_m, block_d)
    out = []
    for t in short:
        t = t._replace(num_warps=max(t.num_warps, warps))
        if t not in out:
            out.append(t)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# The tuner: one choice of (tile, split count) per shape class
# ----------------------------------------------------------------------------------------------
# the shape class: head dim, tile rows, page size (0: contiguous), dtype, split count, capacity and the
# launch's programs before splitting (batch x kv heads x row blocks) rounded up to powers of two, whether
# split counts are tried, a pinned tile (None: tiles are tried), whether the combine overlaps the split
# kernel (it changes what a split costs).  The programs are there because the best choice follows the
# batch: B1 and B8 at 4k keys fall in one split bucket (16 and 9 splits), and B1's choice ran B8 at
# 2,540 GB/s where B8's own, 2 splits, ran at 2,820 (results/evidence/h200/decode_tuner_classes/).
KEY = ["HEAD_DIM", "BLOCK_M", "PAGE_SIZE", "DTYPE", "SPLITS", "CAPACITY", "PROGRAMS", "VARY_SPLITS", "PINNED",
       "OVERLAP"]
# the split count in effect, half, twice, a quarter and four times it: at B1 4k the best count was 16
# for 64-key chunks and 64 for 16-key chunks of one page (results/evidence/h200/decode_splits/)
_SHIFTS = (0, -1, 1, -2, 2)


def shifted_splits(splits: int, shift: int, max_splits: int) -> int | None:
    """The split count a shift stands for, ``splits`` times 2**shift: divided (at least 2) or multiplied
    (at most ``max_splits``), or None where that is no other count.

    Never down to an unsplit launch: the class holds the capacity, not the lengths, so a choice made on
    equal lengths also serves varied ones, where one program per sequence waits on the longest (measured:
    unsplit made B32 equal 4k caches 1.05x faster and uniform 1k-32k lengths 1.14-1.43x slower;
    results/evidence/h200/decode_unsplit_rejected/)."""
    if shift == 0:
        return splits
    n = splits >> -shift if shift < 0 else min(splits << shift, max_splits)
    return n if n >= 2 and n != splits else None


class _DecodeLaunch:
    """What the tuner calls the kernel: one argument, the prepared call (``run.DecodeCall``)."""
    __name__ = "flash_decode"
    arg_names = ["call"]


@functools.lru_cache(maxsize=None)
def _config(tile: Tile, shift: int) -> triton.Config:
    """One candidate as a ``triton.Config`` (made once, so the tuner's choices compare by identity too)."""
    return triton.Config({"TILE": tile, "SPLIT_SHIFT": shift}, num_warps=tile.num_warps, num_stages=tile.num_stages)


def max_splits(call: run.DecodeCall, tile: Tile) -> int:
    """No more splits than chunks of capacity, nor than MAX_SPLITS."""
    return min(MAX_SPLITS, max(1, run.cdiv(call.capacity, tile.block_n)))


def _splits_of(cfg: triton.Config, call: run.DecodeCall, splits: int) -> int:
    tile = cfg.kwargs["TILE"]
    return shifted_splits(splits, cfg.kwargs["SPLIT_SHIFT"], max_splits(call, tile)) or splits


def _prune(configs, named: dict, **meta) -> list:
    call, splits = named["call"], meta["SPLITS_NOW"]
    tiles = [meta["PINNED"]] if meta["PINNED"] else meta["CANDIDATES"]
    shifts = _SHIFTS if meta["VARY_SPLITS"] else (0,)
    out, seen = [], set()
    for shift in shifts:  # the split count in effect first, with every tile
        for tile in tiles:
            n = shifted_splits(splits, shift, max_splits(call, tile))
            if n is not None and (tile, n) not in seen:
                seen.add((tile, n))
                out.append(_config(tile, shift))
    return out


def _launch(cfg: triton.Config, grid_fn, args: tuple, meta: dict) -> None:
    call = args[0]
    run.run(call, cfg.kwargs["TILE"], _splits_of(cfg, call, meta["SPLITS_NOW"]))


def make_tuner() -> InterleavedTuner:
    """A tuner with an empty cache (the package holds one, ``TUNER``; tests make their own)."""
    # timed by GPU time only: a decode call's host path (0.13-0.22 ms) is longer than its kernels at small batches
    return InterleavedTuner(_DecodeLaunch(), [], _prune, KEY, launch=_launch, bench=held_bench)


TUNER = make_tuner()  # holds the choices made in this process


def tuned(tuner: InterleavedTuner, call: run.DecodeCall, splits: int, vary_splits: bool,
          pinned: Tile | None, tiles: tuple[Tile, ...]) -> tuple[Tile, int]:
    """Run ``call`` with the configuration ``tuner`` chose for its class (choosing it first on a miss).

    ``splits``: the split count in effect (given, or the heuristic's); with ``vary_splits`` a quarter,
    half, twice and four times that count are tried too.  ``pinned``: the only tile tried; else ``tiles``.  Returns what ran.
    """
    q = call.q
    meta = dict(HEAD_DIM=q.shape[-1], BLOCK_M=call.block_m, PAGE_SIZE=call.page_size, DTYPE=str(q.dtype),
                SPLITS=run.next_pow2(splits), CAPACITY=run.next_pow2(call.capacity),
                PROGRAMS=run.next_pow2(call.programs), VARY_SPLITS=vary_splits,
                PINNED=pinned, OVERLAP=call.overlap_combine, SPLITS_NOW=splits, CANDIDATES=tiles)
    cfg = tuner.run(None, (call,), meta)
    return cfg.kwargs["TILE"], _splits_of(cfg, call, splits)
