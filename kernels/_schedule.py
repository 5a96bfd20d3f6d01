"""Launch order of the FlashAttention programs, shared by the Triton and Gluon kernels.

Scalar program-id arithmetic only, so one ``@triton.jit`` function serves both dialects (a Gluon
kernel may call it: it touches no tensor layout).
"""
from __future__ import annotations

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
