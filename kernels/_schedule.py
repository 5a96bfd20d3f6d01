"""Launch order of the FlashAttention programs, shared by the Triton and Gluon kernels.

``block_and_head``: scalar program-id arithmetic only, so one ``@triton.jit`` function serves both
dialects (a Gluon kernel may call it: it touches no tensor layout).  ``SequenceBlocks``: the host-built
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
    forward and dQ kernels, keys for dK/dV), so the launch grid holds exactly the real blocks and
    sequences of every length share one launch.  Rows are ordered by the length of the span they
    visit on the other axis (``visible_span``), longest first, so that a launch ends on light programs
    (the same idea as ``block_and_head``'s causal order).  One int32 table per block size, built on
    the host from the lengths on first use and copied to the device once (the tuner tries several).
    """

    def __init__(self, own_lengths, other_lengths, reach_before: int, reach_after: int, block_param: str, device):
        self.own = torch.tensor(own_lengths, dtype=torch.int64)
        self.other = torch.tensor(other_lengths, dtype=torch.int64)
        self.reach = (reach_before, reach_after)
        self.block_param = block_param  # the configuration parameter that is this axis's block size
        self.device = device
        self._tables: dict[int, torch.Tensor] = {}

    def table(self, block: int) -> torch.Tensor:
        if block not in self._tables:
            n_blocks = (self.own + block - 1) // block
            seq = torch.repeat_interleave(torch.arange(len(self.own)), n_blocks)
            starts = torch.cumsum(n_blocks, 0) - n_blocks
            blk = torch.arange(len(seq)) - torch.repeat_interleave(starts, n_blocks)
            first = blk * block
            last = torch.minimum(first + block, self.own[seq]) - 1
            lo, hi = visible_span(first, last, self.other[seq], self.other[seq] - self.own[seq], *self.reach)
            order = torch.sort(hi - lo, descending=True, stable=True).indices
            rows = torch.stack([seq[order], blk[order]], dim=1).to(torch.int32)
            self._tables[block] = rows.to(self.device)
        return self._tables[block]

    def for_config(self, kwargs: dict) -> torch.Tensor:
        return self.table(kwargs[self.block_param])

    def count(self, kwargs: dict) -> int:
        """Programs along this axis for a configuration: the number of (sequence, block) rows."""
        return int(((self.own + kwargs[self.block_param] - 1) // kwargs[self.block_param]).sum())
