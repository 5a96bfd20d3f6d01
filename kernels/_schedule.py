"""Launch order of the FlashAttention programs, shared by the Triton and Gluon kernels.

``block_and_head`` (and ``block_and_head_at`` for a persistent program's tiles): scalar program-id arithmetic
only, so one ``@triton.jit`` function serves both dialects (a Gluon kernel may call it: it touches no tensor
layout).  ``SequenceBlocks``: the device-built
table of (sequence, block) programs of a variable-length batch, longest first, made by two Triton
launches (``_sequence_rows``, ``_sorted_rows``) that the host never waits for.

Not done: a real sort.  ``_sorted_rows`` ranks each row by counting the larger keys, O(R^2) comparisons for
R rows, which a sort would beat at some R (R stays at or below total / 64 + batch with the shipped blocks of
64 rows or more); the order is a heuristic (longest span first), not a schedule computed for the GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def block_and_head(n_bh, HEAVY_LAST_BLOCK: tl.constexpr, GROUP_PROGRAMS: tl.constexpr):
    """(block index, batch*head index) of this program in a grid (n_blocks, n_bh).

    Non-causal kernels pass GROUP_PROGRAMS = 0 and HEAVY_LAST_BLOCK = False: the program ids as
    they are.

    Causal programs differ in work (a query block's work grows with its index; a key block's
    shrinks) and the GPU starts programs in launch order, x fastest.  With GROUP_PROGRAMS = 0 each
    head's blocks are launched heaviest first, head after head: the last head's heaviest
    blocks start near the end and run on while other SMs idle.  Otherwise heads are taken in
    groups spanning >= GROUP_PROGRAMS programs, and within a group every head's heaviest block
    is launched, then every head's next heaviest, and so on (kernels/DESIGN.md for the measurements).
    """
    n_blk = tl.num_programs(0)
    if GROUP_PROGRAMS > 0:  # launch order
        blk, bh = block_and_head_at(tl.program_id(1) * n_blk + tl.program_id(0), n_blk, n_bh, HEAVY_LAST_BLOCK,
                                    GROUP_PROGRAMS)
    else:
        bh = tl.program_id(1)
        if HEAVY_LAST_BLOCK:
            blk = n_blk - 1 - tl.program_id(0)
        else:
            blk = tl.program_id(0)
    return blk, bh


@triton.jit
def block_and_head_at(pid, n_blk, n_bh, HEAVY_LAST_BLOCK: tl.constexpr, GROUP_PROGRAMS: tl.constexpr):
    """:func:`block_and_head` of the program at position ``pid`` of the launch order (x fastest) in a grid
    (n_blk, n_bh): a persistent program's tiles, taken in that order, are the programs a launch would run."""
    if GROUP_PROGRAMS > 0:
        heads = tl.cdiv(GROUP_PROGRAMS, n_blk)
        g = pid // (heads * n_blk)
        in_group = tl.minimum(heads, n_bh - g * heads)
        r = pid - g * heads * n_blk
        rank = r // in_group  # 0 for the heaviest block of each head in the group
        bh = g * heads + r % in_group
    else:
        rank = pid % n_blk
        bh = pid // n_blk
    if HEAVY_LAST_BLOCK:
        blk = n_blk - 1 - rank
    else:
        blk = rank
    return blk, bh


@triton.jit
def visible_span(first, last, n_other, shift, reach_before, reach_after):
    """[start, end) of the indices x in [0, n_other) that some own index y in [first, last] sees, where
    y sees x iff y + shift - reach_before <= x <= y + shift + reach_after (elementwise; end >= start).

    Queries seeing keys: shift = Nkv - Nq, reach (left, right); keys seen by queries: shift = Nq - Nkv,
    reach (right, left).  The kernels' loop bounds (``programs.span``) are these, rounded to blocks;
    ``SequenceBlocks`` orders a packed batch's programs by them.
    """
    start = tl.maximum(first + shift - reach_before, 0)
    end = tl.minimum(n_other, last + shift + reach_after + 1)
    return start, tl.maximum(end, start)


# Rows of a table handled by one program, and the tile of the batch (first kernel) or of the other rows
# (second kernel) it compares them with.  Few rows a program and wide tiles: tables of a few thousand rows
# are latency-bound (a program's loop over the tiles runs in sequence), so more programs and fewer steps;
# 16 x 256 int64 tiles keep 4 warps within their registers.  The interpreter runs the same sizes.
_TABLE_ROWS = 16
_TABLE_TILE = 256


@triton.jit
def _sequence_rows(cu_own, cu_other, key_ptr, rows_ptr, n_rows, batch, reach_before, reach_after,
                   BLOCK: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr):
    """Row j in sequence order: its (sequence, block), or (-1, 0) for padding, into rows_ptr (int32
    (n_rows, 2)), and its sort key into key_ptr: (work + 1) * n_rows + n_rows - 1 - j, work the length
    of its visible span, -1 for padding.  Keys are distinct and order rows as a stable sort by work,
    heaviest first, would; int64 holds them for every int32 offset (work < 2^32) and n_rows < 2^31.

    Every program runs over the whole batch, TILE sequences at a time, carrying the running count of
    blocks: sequence b owns rows [start_b, end_b) with end_b its inclusive block-count sum.  A row lies in
    at most one such range (the counts are >= 0, so the ranges are ordered and disjoint); in none for
    padding.  Lengths are int64 differences clamped at 0, whatever the offsets hold: no value can fail.
    """
    j = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    seq = tl.full([ROWS], -1, tl.int64)
    start = tl.zeros([ROWS], tl.int64)
    own = tl.zeros([ROWS], tl.int64)
    other = tl.zeros([ROWS], tl.int64)
    blocks_before = tl.zeros([], tl.int64)  # blocks of the sequences of the previous tiles
    for b0 in range(0, batch, TILE):
        b = b0 + tl.arange(0, TILE)
        in_batch = b < batch
        own_b = (tl.load(cu_own + b + 1, mask=in_batch, other=0).to(tl.int64)
                 - tl.load(cu_own + b, mask=in_batch, other=0).to(tl.int64))
        other_b = (tl.load(cu_other + b + 1, mask=in_batch, other=0).to(tl.int64)
                   - tl.load(cu_other + b, mask=in_batch, other=0).to(tl.int64))
        own_b = tl.maximum(own_b, 0)
        other_b = tl.maximum(other_b, 0)
        n_b = (own_b + BLOCK - 1) // BLOCK
        end_b = blocks_before + tl.cumsum(n_b, 0)
        start_b = end_b - n_b
        blocks_before += tl.sum(n_b, 0)
        hit = (start_b[None, :] <= j[:, None]) & (j[:, None] < end_b[None, :])
        seq = tl.maximum(seq, tl.max(tl.where(hit, b[None, :].to(tl.int64), -1), 1))
        start = tl.maximum(start, tl.max(tl.where(hit, start_b[None, :], 0), 1))
        own = tl.maximum(own, tl.max(tl.where(hit, own_b[None, :], 0), 1))
        other = tl.maximum(other, tl.max(tl.where(hit, other_b[None, :], 0), 1))
    real = seq >= 0
    blk = j - start
    first = blk * BLOCK
    lo, hi = visible_span(first, tl.minimum(first + BLOCK, own) - 1, other, other - own, reach_before, reach_after)
    in_table = j < n_rows
    work = tl.where(real, hi - lo, -1)
    tl.store(key_ptr + j, (work + 1) * n_rows + (n_rows - 1 - j), mask=in_table)
    tl.store(rows_ptr + 2 * j, tl.where(real, seq, -1).to(tl.int32), mask=in_table)
    tl.store(rows_ptr + 2 * j + 1, tl.where(real, blk, 0).to(tl.int32), mask=in_table)


@triton.jit
def _sorted_rows(key_ptr, rows_ptr, table_ptr, n_rows, ROWS: tl.constexpr, TILE: tl.constexpr):
    """Row j of rows_ptr to its place in the table: the number of rows with a larger key.  The keys
    are distinct, so the places are a permutation of [0, n_rows) and every row of table_ptr is written.
    Every program compares its rows with all rows: n_rows^2 comparisons in all, n_rows * ROWS a program.
    """
    j = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    in_table = j < n_rows
    key_j = tl.load(key_ptr + j, mask=in_table, other=-1)
    ahead = tl.zeros([ROWS, TILE], tl.int32)  # summed once after the loop: no reduction a step
    for i0 in range(0, n_rows, TILE):
        i = i0 + tl.arange(0, TILE)
        key_i = tl.load(key_ptr + i, mask=i < n_rows, other=-1)  # keys are >= 0: a row past the end is never ahead
        ahead += (key_i[None, :] > key_j[:, None]).to(tl.int32)
    rank = tl.sum(ahead, 1)
    seq = tl.load(rows_ptr + 2 * j, mask=in_table)
    blk = tl.load(rows_ptr + 2 * j + 1, mask=in_table)
    tl.store(table_ptr + 2 * rank, seq, mask=in_table)
    tl.store(table_ptr + 2 * rank + 1, blk, mask=in_table)


class SequenceBlocks:
    """The programs of a packed (variable-length) batch along one axis, as a table for the kernels.

    One row (sequence, block) per block of ``block`` rows of each sequence's own axis (queries for the
    forward and dQ kernels, keys for dK/dV), so sequences of every length share one launch.  Rows are
    ordered by the length of the span they visit on the other axis (``visible_span``), longest first,
    stably, so that a launch ends on light programs (the same idea as ``block_and_head``'s causal order).

    Built on the device from ``cu_seqlens`` by two Triton launches that read nothing back, so the host
    never learns the lengths: the table has a row count R known from shapes alone, sum_b ceil(len_b /
    block) <= total // block + batch (``count``), and the rows past the real blocks are padding, stored
    as (-1, 0) after every real row; ``programs.locate`` makes them empty programs.  Row j in sequence
    order belongs to sequence searchsorted(cumsum(blocks per sequence), j, right=True) (padding when
    that is ``batch``).  ``_sequence_rows`` finds each row's sequence, block and span, O(R * batch) work
    over cdiv(R, 16) programs; ``_sorted_rows`` places each row by counting the rows heavier than it (a
    stable descending sort), O(R^2) comparisons over the same programs, R * 16 each: quadratic, so a sort
    would win at some R; the shipped GPU configurations use blocks of 64 rows or more, R <= total / 64 +
    batch (16k rows for 1M tokens).  Three allocations (two of scratch) and no torch kernel besides.  One int32 (R, 2) table per block size,
    built on first use and kept (the tuner tries several).  Offsets that are not a valid
    ``cu_seqlens`` (unchecked calls) give a table with too few or wrong rows, never a failure or a
    synchronisation.
    """

    def __init__(self, cu_own: torch.Tensor, cu_other: torch.Tensor, total_own: int, reach_before: int,
                 reach_after: int, block_param: str):
        self.cu_own, self.cu_other = cu_own, cu_other
        self.total = int(total_own)  # rows of the packed tensor along this axis (a shape)
        self.batch = cu_own.shape[0] - 1
        self.reach = (reach_before, reach_after)
        self.block_param = block_param  # the configuration parameter that is this axis's block size
        self._tables: dict[int, torch.Tensor] = {}

    def rows(self, block: int) -> int:
        """The table's row count for a block size: an upper bound of the real blocks, from shapes."""
        return self.total // block + self.batch

    def table(self, block: int) -> torch.Tensor:
        if block not in self._tables:
            n_rows = self.rows(block)
            device = self.cu_own.device
            keys = torch.empty(n_rows, dtype=torch.int64, device=device)
            rows = torch.empty((n_rows, 2), dtype=torch.int32, device=device)
            table = torch.empty((n_rows, 2), dtype=torch.int32, device=device)
            if n_rows > 0:
                grid = (triton.cdiv(n_rows, _TABLE_ROWS),)
                _sequence_rows[grid](self.cu_own, self.cu_other, keys, rows, n_rows, self.batch, *self.reach,
                                     BLOCK=block, ROWS=_TABLE_ROWS, TILE=_TABLE_TILE)
                _sorted_rows[grid](keys, rows, table, n_rows, ROWS=_TABLE_ROWS, TILE=_TABLE_TILE)
            self._tables[block] = table
        return self._tables[block]

    def for_config(self, kwargs: dict) -> torch.Tensor:
        return self.table(kwargs[self.block_param])

    def count(self, kwargs: dict) -> int:
        """Programs along this axis for a configuration: the table's rows (real blocks and padding)."""
        return self.rows(kwargs[self.block_param])
