"""Launch order of the FlashAttention programs, shared by the Triton and Gluon kernels.

``block_and_head``: scalar program-id arithmetic only, so one ``@triton.jit`` function serves both
dialects (a Gluon kernel may call it: it touches no tensor layout).  ``SequenceBlocks``: the device-built
table of (sequence, block) programs of a variable-length batch, longest first.
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
    if GROUP_PROGRAMS > 0:
        pid = tl.program_id(1) * n_blk + tl.program_id(0)  # launch order
        heads = tl.cdiv(GROUP_PROGRAMS, n_blk)
        g = pid // (heads * n_blk)
        in_group = tl.minimum(heads, n_bh - g * heads)
        r = pid - g * heads * n_blk
        rank = r // in_group  # 0 for the heaviest block of each head in the group
        bh = g * heads + r % in_group
    else:
        rank = tl.program_id(0)
        bh = tl.program_id(1)
    if HEAVY_LAST_BLOCK:
        blk = n_blk - 1 - rank
    else:
        blk = rank
    return blk, bh


def visible_span(first: torch.Tensor, last: torch.Tensor, n_other: torch.Tensor, shift: torch.Tensor,
                 reach_before: int, reach_after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[start, end) of the indices x in [0, n_other) that some own index y in [first, last] sees, where
    y sees x iff y + shift - reach_before <= x <= y + shift + reach_after (elementwise; end >= start).

    Queries seeing keys: shift = Nkv - Nq, reach (left, right); keys seen by queries: shift = Nq - Nkv,
    reach (right, left).  The kernels' loop bounds (``kernels._span``) are these, rounded to blocks.
    """
    start = (first + shift - reach_before).clamp(min=0)
    end = torch.minimum(n_other, last + shift + reach_after + 1)
    return start, torch.maximum(end, start)


class SequenceBlocks:
    """The programs of a packed (variable-length) batch along one axis, as a table for the kernels.

    One row (sequence, block) per block of ``block`` rows of each sequence's own axis (queries for the
    forward and dQ kernels, keys for dK/dV), so sequences of every length share one launch.  Rows are
    ordered by the length of the span they visit on the other axis (``visible_span``), longest first,
    stably, so that a launch ends on light programs (the same idea as ``block_and_head``'s causal order).

    Built on the device from ``cu_seqlens`` with torch operations that never wait for it (no
    ``nonzero``, boolean-mask indexing, ``repeat_interleave`` without ``output_size`` or reading a
    value back), so the host never learns the lengths: the table has a row count known from shapes
    alone, sum_b ceil(len_b / block) <= total // block + batch (``count``), and the rows past the
    real blocks are padding, stored as (-1, 0) after every real row; ``programs.locate`` makes them
    empty programs.  Row j belongs to sequence searchsorted(cumsum(blocks per sequence), j, right=True)
    (padding when that is ``batch``).  One int32 (count, 2) table per block size, built on first use
    and kept (the tuner tries several).  Offsets that are not a valid ``cu_seqlens`` (unchecked calls)
    give a table with too few or wrong rows, never a failure or a synchronisation.
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
            device = self.cu_own.device
            own = torch.diff(self.cu_own.long()).clamp(min=0)
            other = torch.diff(self.cu_other.long()).clamp(min=0)
            n_blocks = (own + block - 1) // block
            ends = torch.cumsum(n_blocks, 0)
            j = torch.arange(self.rows(block), device=device)
            seq = torch.searchsorted(ends, j, right=True)
            real = seq < self.batch
            seq = seq.clamp(max=self.batch - 1)  # padding rows index the last sequence, then are masked
            blk = j - (ends - n_blocks)[seq]
            own_b, other_b = own[seq], other[seq]
            first = blk * block
            last = torch.minimum(first + block, own_b) - 1
            lo, hi = visible_span(first, last, other_b, other_b - own_b, *self.reach)
            work = torch.where(real, hi - lo, -1)  # spans are >= 0: padding sorts last
            order = torch.sort(work, descending=True, stable=True).indices
            rows = torch.stack([torch.where(real, seq, -1), torch.where(real, blk, 0)], dim=1)
            self._tables[block] = rows[order].to(torch.int32)
        return self._tables[block]

    def for_config(self, kwargs: dict) -> torch.Tensor:
        return self.table(kwargs[self.block_param])

    def count(self, kwargs: dict) -> int:
        """Programs along this axis for a configuration: the table's rows (real blocks and padding)."""
        return self.rows(kwargs[self.block_param])
