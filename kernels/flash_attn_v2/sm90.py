"""FlashAttention forward for Hopper (sm_90) in Gluon: FA2's algorithm with FlashAttention-3's overlap.

What is implemented
-------------------
The forward of FA2 paper (Dao 2023) Algorithm 1, exactly as ``kernels.fwd_kernel`` computes
it (one program per (block of 128 query rows, or 192 at D64, batch*head), online softmax in base 2 with the scale
folded in, deferred normalisation, base-2 log-sum-exp stored for the backward; causal: unmasked
key blocks with no mask arithmetic, only the diagonal block masked, blocks above it never
visited; key blocks of ``block_n(D)`` keys: 128, or 64 at D256), written in Gluon, Triton's explicit
dialect, so that the two overlaps Triton 3.6's compiler cannot produce for a causal kernel are
spelled out (FlashAttention-3, Shah et al. 2024, section 3.1 "producer-consumer" and 3.2
"intra-warpgroup overlapping"):

  * warp specialisation: a 1-warp producer partition issues every TMA load (Q once, then K_j and
    V_j into ``STAGES``-deep rings, each slot guarded by a ready and an empty mbarrier) while two
    4-warp consumer partitions (one warp group each, 64 query rows each, sharing every K/V tile)
    only compute, each in its own instruction stream so that one's softmax overlaps the other's
    matmuls.  The producer gives its registers to the consumers (setmaxnreg: 24 and 240).
  * intra-warpgroup overlap: the consumer issues S_{j+1} = Q K_{j+1}^T and O += P_j V_j as
    asynchronous wgmma, waits for S_{j+1} only, and runs the softmax of S_{j+1} while P_j V_j is
    still on the tensor cores; O is rescaled after that wgmma retires.  (So the source and the PTX; in
    the SASS ptxas moves the wait for P_j V_j ahead of the exponentials, after the row max: DESIGN.md,
    "Known limits".)
  * Q as a register operand: at D <= 128 without a window, each consumer loads its Q rows once into
    registers in the wgmma operand layout (FA3), so S = Q K^T reads only K from shared memory.
  * causal: the key loop walks the fully visible blocks with the unmasked softmax; the diagonal
    block, always the last one, is a separate step that applies the mask.  Programs are launched
    heaviest first across groups of heads (``_schedule.block_and_head``, the same order as
    the Triton kernels).
  * head dim 256 (dense only): 64-key blocks (``block_n``; 128-key ones fit neither shared memory nor
    the consumers' 240 registers), Q + 2 stages of K and V in 192 KiB (3 stages do not fit).  A block
    is then one consumer's height, so each consumer's diagonal is still exactly one block: a causal
    program's last two blocks are the first consumer's diagonal and the second's.  The producer loads
    both; the second consumer walks them as an unmasked block and its masked diagonal, the first
    stops at its own diagonal and never waits on the last block, which only the second releases
    (nothing is loaded after it).  Causal windows work as at D128 (the blocks crossing the left edge,
    found for the program's 128 rows, masked for both consumers).
  * head dim 64, three consumers (``WIDE_BLOCK``, constexpr ``CONSUMERS = 3``; FlashAttention-3's D64
    tile): 192 query rows a program, Q as three 64-row TMA tiles, each K/V block shared by three 64-row
    consumers of 160 registers (setmaxnreg; the producer 24), so that more softmaxes run under the
    others' wgmma where a block's matmuls are short.  Nq is a multiple of 128, not always of 192: the
    programs end at row Nq and the first may start before row 0 (its TMA tiles read zeros or the
    previous head's rows); a consumer without rows only waits for and releases each ring slot.  Causal:
    each consumer's diagonal is one 128-key block, its last; the producer loads up to the last
    consumer's.  Dense inputs without a window only (``config_reason``).
  * causal sliding windows (FlashAttention's window (left, 0), ``WINDOW``: query i sees key j iff
    i + diag - left <= j <= i + diag): the producer starts at the block the program's first row
    starts seeing in, so blocks left of the window are never loaded and the work scales with the
    window; the blocks crossing the window's left edge (one or two of 128 keys, up to three of 64 at
    D256) are masked like the diagonal, the ones between run unmasked.
  * O is written through shared memory (the Q buffer, free by then) by a TMA store, the LSE by
    pointer.
  * one program a tile; ``sm90_persistent`` launches the same dense per-tile code as one program an SM
    walking tiles (dense calls of up to 2048 keys, where it measured faster).
  * packed variable-length batches (``forward_varlen``, constexpr ``VARLEN``; flash-attn's varlen
    layout, q (total_q, H, D), k, v (total_k, H_kv, D), ``cu_seqlens``): the grid is (rows of the
    device-built ``_schedule.SequenceBlocks`` table of 128-row query blocks, H), launched in the table's
    order across groups of heads like the Triton varlen forward; each program reads its (sequence,
    block) row and the sequence's offsets (clamped into the packed tensors as ``programs.locate`` does).
    The TMA descriptors span the packed (total, heads * D) views, a tile being 128 rows of one head's
    D columns (column h * D for q and o, (h // (H / H_kv)) * D for k and v), so a block running past
    its sequence reads the next sequence's rows (or TMA's zeros past the tensor's end): such keys are
    masked (-inf), such query rows are computed and never stored.  Key blocks follow ``programs.span``
    for the block's rows inside the sequence: [0, n_left) cross a causal window's left edge, then the
    blocks every row sees whole run unmasked, then the right edge is masked: with causal the one or
    two blocks the bottom-right diagonal crosses (Nkv_b - Nq_b any integer), without it the
    sequence's last, partial key block.  Rows that see no key (causal with Nq_b > Nkv_b, a sequence
    without keys) output 0 with LSE -inf, as the Triton forward writes them; a program none of whose
    rows sees a key, or a padding row of the table, loads nothing.  A consumer whose 64 rows lie
    inside the sequence stores O by TMA; one holding the sequence's last rows stores them by a masked
    pointer store (16 bytes a thread, from the shared tile), never over the next sequence's rows.  The
    LSE goes to the packed (H, total_q) buffer the Triton backward reads.  The dense builds compute
    what they did before (``VARLEN`` is a constexpr; the packed-only arguments are constexpr 0 there),
    but their PTX is not identical (instruction order moved; the same registers, spills and shared
    memory per ``tools/fa2_compile_report.py --gluon``), and their speed has not been re-measured.

What it does not support (``unsupported_reason`` says which, and ``flash_attn_v2`` or
``flash_attn_varlen`` then runs its Triton forward instead): GPUs other than capability 9.x; fp32 (the
reference path) and anything but fp16/bf16; head dims other than 64, 128 and 256; packed batches at
D256 (the 64-key blocks are built dense only); dense sequence lengths that are not multiples of 128
(no tail masking in the dense build: its K/V descriptors span every head, so a partial block would
read the next head's rows; with both multiples of 128 each consumer's causal diagonal is always
exactly one key block); dense causal with Nq > Nkv (rows that see no key; the packed build takes
both, per sequence); windows with a right reach (non-causal windows: the Triton forward masks them),
packed or not; inputs whose (batch, head, row) or (token, head) dims cannot be viewed as one (q, k, v
must be contiguous); 2**31 rows or more (TMA coordinates are 32-bit); the interpreter (Gluon has
none).  Nor 3 K/V stages at D256 (256 KiB of shared memory): ``config_reason`` says so, and a pinned
``(128, 64, 4, 3, GLUON)`` is a ValueError rather than a fallback; likewise the three-consumer tile
``(192, 128, 4, stages, GLUON)`` at head dims other than 64, with a window, or on packed batches.  Packed batches: a non-finite
value in the value rows that follow a sequence (the next sequence's) can reach that sequence's output
through its masked key tail (P = 0 times V = inf is NaN), where the Triton forward's per-sequence
descriptors read zeros (keys are masked by selection, so a non-finite key does not).  No explicit
ping-pong between the two consumers (FA3 3.1's schedule): the warp scheduler interleaves them as it
finds them ready (issuing in turn through two mbarriers measured no faster from N = 4k, DESIGN.md).  The backward is flash_attn_v2's (``kernels.py`` or ``sm90_bwd.py``).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .._descriptors import tma_descriptor
from .._prepared import PreparedLaunch
from .._schedule import block_and_head
from .._validate import device_capability, interpreting

BLOCK = 128  # query rows per program (two consumers of 64), and keys per block up to D128 (``block_n``)
CONSUMER_ROWS = 64  # query rows of one consumer warp group (a wgmma's M per warp group)
# The three-consumer build (FlashAttention-3's D64 tile): 192 query rows a program, D64 dense only
WIDE_BLOCK = 3 * CONSUMER_ROWS
WIDE_HEAD_DIM = 64
HEAD_DIMS = (64, 128, 256)
SHARED_BYTES = 227 * 1024  # the shared memory a block may use on sm_90
PRODUCER_REGS = 24  # the minimum setmaxnreg allows; the producer only computes addresses
CONSUMER_REGS = 240  # the worker consumer's registers (the default partition gets what is left: 240 too)
# 12 warps (two 4-warp consumers + the producer rounded up to a warp group) x 168 registers fill the
# 64 K register file; reallocation gives the producer 24 and each consumer 240.
MAXNREG = 168
# Three consumers: 16 warps x 128 registers; reallocation gives the producer 24 and the consumers 160
# each (FA3's split for its three-warp-group D64 tile): S (64x128 fp32) 64 a thread, O (64x64) 32, P 32.
WIDE_CONSUMER_REGS = 160
WIDE_MAXNREG = 128


def block_n(head_dim: int) -> int:
    """Keys per K/V block at ``head_dim``: 128 up to D128, 64 at D256.

    At D256 a 128-key block fits neither shared memory (Q 64 KiB + one stage of K and V 128 KiB; two
    stages 320 KiB) nor the consumers' registers (O 64x256 fp32 takes 128 a thread, S 64x128 64 more);
    64-key blocks take Q + 2 stages = 192 KiB and S 32 registers.  (FlashAttention-3 runs 128x80 tiles
    at D256; Gluon tiles are powers of two.)"""
    return BLOCK if head_dim <= 128 else BLOCK // 2


def consumers(block_rows: int) -> int:
    """Consumer warp groups of a program of ``block_rows`` query rows (``BLOCK``: 2, ``WIDE_BLOCK``: 3)."""
    return block_rows // CONSUMER_ROWS


def shared_tile_bytes(head_dim: int, stages: int, block_rows: int = BLOCK) -> int:
    """Shared memory of the Q tile and the two ``stages``-deep K and V rings (16-bit): the kernel's, less
    its mbarriers and alignment (under 1 KiB: ``tools/fa2_compile_report.py --gluon``)."""
    return 2 * head_dim * (block_rows + 2 * stages * block_n(head_dim))


def config_reason(head_dim: int, block_cols: int, stages: int, block_rows: int = BLOCK, window: bool = False,
                  varlen: bool = False) -> str | None:
    """Why a Gluon configuration tuple ``(block_rows, block_cols, 4, stages, GLUON)`` cannot run ``head_dim``
    (None: it can): BLOCK_M is ``BLOCK`` (two consumers), or ``WIDE_BLOCK`` (three) at D64 on dense inputs
    without a window; its BLOCK_N must be ``block_n(head_dim)`` and its rings must fit shared memory."""
    if block_rows not in (BLOCK, WIDE_BLOCK):
        return f"BLOCK_M={block_rows}: {BLOCK} (two consumers) or {WIDE_BLOCK} (three) only"
    if block_rows == WIDE_BLOCK:
        if head_dim != WIDE_HEAD_DIM:
            return f"BLOCK_M={WIDE_BLOCK} (three consumers) is built at head_dim {WIDE_HEAD_DIM} only"
        if window or varlen:
            return f"BLOCK_M={WIDE_BLOCK} (three consumers) is built for dense inputs without a window only"
    if block_cols != block_n(head_dim):
        return f"at head_dim {head_dim} it runs BLOCK_N={block_n(head_dim)}, not {block_cols}"
    need = shared_tile_bytes(head_dim, stages, block_rows)
    if need + 1024 > SHARED_BYTES:
        return (f"{stages} stages at head_dim {head_dim} need {need // 1024} KiB of "
                f"shared memory ({SHARED_BYTES // 1024} KiB allowed)")
    return None


def config_label(stages: int, block_cols: int = BLOCK, block_rows: int = BLOCK, persistent: bool = False) -> str:
    """What a launch log records for this kernel with ``stages`` K/V ring slots of ``block_cols`` keys
    (``block_n`` of the head dim) and ``block_rows`` query rows a program, or a tile of its persistent build
    (``sm90_persistent``)."""
    warps = "+".join(["4"] * consumers(block_rows) + ["1"])
    return (f"gluon_sm90,BLOCK_M={block_rows},BLOCK_N={block_cols},num_warps={warps},num_stages={stages},tma=True,"
            "warp_specialize=True" + (",persistent=True" if persistent else ""))


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       window: bool = False, varlen: bool = False) -> str | None:
    """Why this forward cannot run these (validated) inputs here, or None when it can.

    ``window``: the call has a sliding window beyond the causal mask (flash_attn_v2's WINDOW; with
    ``causal`` its right reach is 0).  ``varlen``: q, k, v are a packed batch, (total, heads, D)."""
    return device_reason(q) or input_reason(q, k, v, causal, window, varlen)


def device_reason(q: torch.Tensor) -> str | None:
    """Why no Gluon Hopper kernel (this forward, ``sm90_bwd``'s backwards) runs on q's device, or None."""
    if interpreting():
        return "Gluon kernels do not run under TRITON_INTERPRET"
    if not q.is_cuda or device_capability(q.device.index)[0] != 9:
        return "needs a Hopper GPU (capability 9.x)"
    return None


def input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: bool = False,
                 varlen: bool = False) -> str | None:
    """The part of ``unsupported_reason`` that depends on the inputs only, not on the GPU: the conditions the
    Gluon forward and backward share (``shared_input_reason``), then this forward's own: packed batches
    (``forward_varlen``) at D64 and D128 only (its D256 build's 64-key blocks are built dense only)."""
    reason = shared_input_reason(q, k, v, causal, window, varlen)
    if reason is None and varlen and block_n(q.shape[-1]) != BLOCK:
        return f"packed batches at head_dim {q.shape[-1]}: its {block_n(q.shape[-1])}-key blocks are built dense only"
    return reason


def shared_input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: bool = False,
                        varlen: bool = False) -> str | None:
    """The input conditions of both Gluon Hopper kernels (this forward and ``sm90_bwd``'s backwards), or None.

    ``window``: a window beyond the causal mask; with ``causal`` that is a left reach (window (w, 0)),
    which these kernels take, without it a right reach, which they do not.  ``varlen``: a packed batch,
    whose sequences may have any lengths: no multiple-of-128 condition."""
    if window and not causal:
        return "sliding windows with a right reach are not supported (the Triton forward runs them)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {q.dtype}: fp16 and bf16 only"
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        return f"head_dim {D}: 64, 128 and 256 only"
    if not varlen:
        Nq, Nkv = q.shape[2], k.shape[2]
        if Nq % BLOCK or Nkv % BLOCK:
            return f"Nq={Nq}, Nkv={Nkv}: both must be multiples of {BLOCK}"
        if causal and Nkv < Nq:  # Nkv >= Nq and both multiples of BLOCK: the diagonal is one key block
            return f"causal with Nq={Nq} > Nkv={Nkv}: rows that see no key are not handled"
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        return "q, k, v must be contiguous"
    if max(q.numel(), k.numel()) // D >= 2**31:
        return "2**31 rows or more: TMA coordinates are 32-bit"
    return None


@gluon.jit
def ring_barriers(STAGES: gl.constexpr, CONSUMERS: gl.constexpr):
    """The mbarriers of two STAGES-deep TMA rings (K and V here, Q and dO in ``sm90_bwd``), (ready, empty)
    for each: a slot is ready after the producer's one arrival with its bytes, and free once all
    CONSUMERS consumers have arrived on its empty barrier."""
    a_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    a_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    b_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    b_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(a_ready.index(i), count=1)
        mbarrier.init(a_empty.index(i), count=CONSUMERS)
        mbarrier.init(b_ready.index(i), count=1)
        mbarrier.init(b_empty.index(i), count=CONSUMERS)
    return a_ready, a_empty, b_ready, b_empty


@gluon.jit
def _load_q(q_desc, q_smem, q_bar, q_row, q_col, Q_TILES: gl.constexpr):
    """The program's Q: one tile of all its rows (Q_TILES = 1), or one per consumer into q_smem.index(c)."""
    if Q_TILES == 1:
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, q_col], q_bar, q_smem)
    else:
        mbarrier.expect(q_bar, Q_TILES * q_desc.block_type.nbytes)
        for i in gl.static_range(Q_TILES):
            tma.async_copy_global_to_shared(q_desc, [q_row + i * q_desc.block_type.shape[0], q_col], q_bar,
                                            q_smem.index(i))


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
              q_row, q_col, kv_row0, kv_col, n_blocks, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              VARLEN: gl.constexpr, Q_TILES: gl.constexpr):
    """Q once, then K_j and V_j for j < n_blocks from row kv_row0 on (columns: dense 0, packed the head's)."""
    if VARLEN:
        if n_blocks > 0:  # a program with no key block (a padding row, rows that see no key) loads nothing
            _load_q(q_desc, q_smem, q_bar, q_row, q_col, Q_TILES)
    else:
        # three consumers: a tile before the sequence's first row reads the previous head's rows, or TMA's
        # zeros before the tensor; its consumer only drains the rings (_drain)
        _load_q(q_desc, q_smem, q_bar, q_row, q_col, Q_TILES)
    _load_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row0, kv_col, n_blocks, 0,
             BLOCK_N, STAGES)


@gluon.jit
def _load_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row0, kv_col, n_blocks, ring,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """K_j and V_j for j < n_blocks from row kv_row0 into the rings, block j at ring position ring + j."""
    for j in range(n_blocks):
        slot = (ring + j) % STAGES
        # a slot's barriers start in phase 1 complete, so the first pass through the ring does not wait
        phase = (((ring + j) // STAGES) & 1) ^ 1
        row = kv_row0 + j * BLOCK_N
        mbarrier.wait(k_empty.index(slot), phase)
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row, kv_col], k_ready.index(slot), k_bufs.index(slot))
        mbarrier.wait(v_empty.index(slot), phase)
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row, kv_col], v_ready.index(slot), v_bufs.index(slot))


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, offs_m, n0, diag, win_left, n_kv, MASK: gl.constexpr, CAUSAL: gl.constexpr,
             WINDOW: gl.constexpr, VARLEN: gl.constexpr, BLOCK_N: gl.constexpr, s_layout: gl.constexpr):
    """Online-softmax update for one block of raw scores s: (P, rescale factor, new m, new l).

    MASK: the block crosses the diagonal (query i sees key j iff j <= i + diag) or, with WINDOW, the
    window's left edge (j >= i + diag - win_left) as well; in a packed non-causal program (VARLEN),
    the sequence's key tail (j < n_kv: the keys past it are the next sequence's, or TMA's zeros)."""
    if MASK:
        offs_n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        if VARLEN and not CAUSAL:
            visible = gl.expand_dims(offs_n < n_kv, 0)
        else:
            # causal: a row of the sequence sees no key past its own diagonal one, so none past n_kv
            visible = gl.expand_dims(offs_n, 0) <= gl.expand_dims(offs_m, 1) + diag
            if WINDOW:
                visible = visible & (gl.expand_dims(offs_n, 0) >= gl.expand_dims(offs_m, 1) + (diag - win_left))
        s = gl.where(visible, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        if WINDOW or VARLEN:
            # a row may see nothing of a masked block and nothing before it (a window's left edge; a
            # packed causal row i < Nq_b - Nkv_b sees no key at all): keep m = -inf and subtract 0
            # instead (-inf - -inf is NaN)
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(s - gl.expand_dims(m_safe, 1))
            alpha = gl.exp2(m_i - m_safe)
        else:
            # causal alone: every row sees key 0 (Nkv >= Nq), so m_new is finite
            p = gl.exp2(s - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, j, ring, zero_s,
          qk_scale, offs_m, k0, diag, win_left, n_kv, MASK: gl.constexpr, CAUSAL: gl.constexpr,
          WINDOW: gl.constexpr, VARLEN: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """Score block j (keys from k0 + j * BLOCK_N) while P_{j-1} V_{j-1} runs: issue both wgmma, softmax
    S_j under the PV, rescale O.  q_op: the consumer's Q, its shared tile or its registers (_attend).  ring:
    the ring position of the program's block 0 (a persistent program's blocks of earlier tiles; else 0)."""
    slot = (ring + j) % STAGES
    phase = ((ring + j) // STAGES) & 1
    prev = (ring + j - 1) % STAGES
    prev_phase = ((ring + j - 1) // STAGES) & 1
    mbarrier.wait(k_ready.index(slot), phase)
    s_tok = warpgroup_mma(q_op, k_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), prev_phase)
    o_tok = warpgroup_mma(p16, v_bufs.index(prev), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=[s_tok])  # wgmma groups retire in order: S_j is done, PV may run on
    mbarrier.arrive(k_empty.index(slot), count=1)
    p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, offs_m, k0 + j * BLOCK_N, diag, win_left, n_kv, MASK,
                                  CAUSAL, WINDOW, VARLEN, BLOCK_N, s_layout)
    acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])  # P_{j-1} stays in registers until its wgmma is done
    mbarrier.arrive(v_empty.index(prev), count=1)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
    p16 = gl.convert_layout(p.to(v_bufs.dtype), p_layout)
    return acc, p16, m_i, l_i


@gluon.jit
def _attend(acc, m_i, l_i, zero_s, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, offs_m, k0,
            diag, win_left, n_kv, n_blocks, n_left, n_mid, qk_scale, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
            VARLEN: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
            o_layout: gl.constexpr, p_layout: gl.constexpr, Q_IN_REGS: gl.constexpr, ring, q_phase, q_free,
            RELEASE_Q: gl.constexpr):
    """The key loop over n_blocks >= 1 blocks from key k0: (un-normalised O, m, l).

    ring: the K/V ring position of block 0, q_phase the phase of q_bar to wait for (a persistent program's
    tiles so far; else 0 and 0).  RELEASE_Q: arrive on q_free once this consumer no longer reads the Q tile
    (right after loading it into registers, else after the last S product), so that the producer may
    load the next tile's Q (persistent programs).

    Q_IN_REGS: S = Q K^T takes Q from registers, loaded once (FA3's register operand A), instead of
    reading its tile from shared memory at every block: 16 KiB (D128) less shared-memory traffic a block
    and consumer; else (the three-consumer D64 and the D256 builds) ptxas serialises the wgmma.

    Dense: the first ``n_left`` blocks cross the window's left edge (WINDOW), the last one is the
    diagonal (CAUSAL), the blocks between are seen whole.  Packed (VARLEN): blocks [0, n_left) cross the
    window's left edge, [n_left, n_mid) are seen whole by every row, [n_mid, n_blocks) are the right
    edge (causal: the one or two blocks the diagonal crosses, Nkv_b - Nq_b being any integer; non-causal:
    the sequence's last, partial block)."""
    # block 0: S_0 alone (nothing to overlap it with yet)
    mbarrier.wait(q_bar, q_phase)
    if Q_IN_REGS:
        q_op = q_smem.load(gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
        if RELEASE_Q:
            mbarrier.arrive(q_free, count=1)
    else:
        q_op = q_smem
    first = ring % STAGES
    mbarrier.wait(k_ready.index(first), (ring // STAGES) & 1)
    s_tok = warpgroup_mma(q_op, k_bufs.index(first).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    mbarrier.arrive(k_empty.index(first), count=1)
    if VARLEN:
        edge = n_mid == 0  # block 0 is on the right edge
        if WINDOW:
            edge = edge | (n_left > 0)  # or crosses the window's left edge
    elif WINDOW:
        edge = (n_blocks == 1) | (n_left > 0)  # block 0 is the diagonal or crosses the window's edge
    else:
        edge = n_blocks == 1  # block 0 is the diagonal
    if CAUSAL or VARLEN:
        if edge:
            p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, offs_m, k0, diag, win_left, n_kv, True, CAUSAL,
                                          WINDOW, VARLEN, BLOCK_N, s_layout)
        else:
            p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, offs_m, k0, diag, win_left, n_kv, False, CAUSAL,
                                          WINDOW, VARLEN, BLOCK_N, s_layout)
    else:
        p, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, offs_m, k0, diag, win_left, n_kv, False, CAUSAL,
                                      WINDOW, VARLEN, BLOCK_N, s_layout)
    p16 = gl.convert_layout(p.to(v_bufs.dtype), p_layout)

    if VARLEN:
        # blocks 1 .. n_left-1: the rest of the window's left edge; then the blocks seen whole; then
        # the right edge from n_mid on
        first_full = 1
        if WINDOW:
            first_full = gl.maximum(n_left, 1)
            for j in range(1, first_full):
                acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                           v_empty, j, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv, True,
                                           CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)
        first_edge = gl.maximum(n_mid, 1)
        for j in range(first_full, first_edge):
            acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                       v_empty, j, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv, False,
                                       CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)
        for j in range(first_edge, n_blocks):
            acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                       v_empty, j, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv, True,
                                       CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)
    else:
        # blocks 1 .. n-2: the rest of the window's left edge (masked), then the fully visible blocks;
        # block n-1: the diagonal when causal
        first_full = 1
        if WINDOW:
            first_full = gl.maximum(gl.minimum(n_left, n_blocks - 1), 1)
            for j in range(1, first_full):
                acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                           v_empty, j, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv, True,
                                           CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)
        for j in range(first_full, n_blocks - 1):
            acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                       v_empty, j, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv, False,
                                       CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)
        if n_blocks > 1:
            acc, p16, m_i, l_i = _step(acc, p16, m_i, l_i, q_op, k_bufs, v_bufs, k_ready, k_empty, v_ready,
                                       v_empty, n_blocks - 1, ring, zero_s, qk_scale, offs_m, k0, diag, win_left, n_kv,
                                       CAUSAL, CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout)

    # the last P V
    last = (ring + n_blocks - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((ring + n_blocks - 1) // STAGES) & 1)
    o_tok = warpgroup_mma(p16, v_bufs.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=[o_tok])
    mbarrier.arrive(v_empty.index(last), count=1)
    if RELEASE_Q and not Q_IN_REGS:
        mbarrier.arrive(q_free, count=1)  # every S product has retired
    return acc, m_i, l_i


@gluon.jit
def _drain(k_ready, k_empty, v_ready, v_empty, lo, hi, ring, STAGES: gl.constexpr):
    """Release the K and V slots of blocks [lo, hi) once loaded, as a computing consumer would, so that the
    producer's ring goes on (ring: the ring position of block 0).  A consumer with no row in the sequence
    (the three-consumer build's first program, when Nq is not a multiple of 192) drains every block; a
    persistent program's consumer also the blocks past its causal diagonal, which only a later consumer
    reads."""
    for j in range(lo, hi):
        slot = (ring + j) % STAGES
        phase = ((ring + j) // STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        mbarrier.arrive(k_empty.index(slot), count=1)
        mbarrier.wait(v_ready.index(slot), phase)
        mbarrier.arrive(v_empty.index(slot), count=1)


@gluon.jit
def _store_rows(o_ptr, tile, q_row, q_col, row_stride, n_rows, BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr,
                NUM_WARPS: gl.constexpr):
    """Rows [0, n_rows) of a BLOCK_M x HEAD_DIM shared tile to rows q_row.. of o (row_stride elements
    apart) at column q_col, by pointer, 16 bytes a thread, a warp covering whole rows (coalesced)."""
    layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[256 // HEAD_DIM, HEAD_DIM // 8],
                                            warps_per_cta=[NUM_WARPS, 1], order=[1, 0])
    rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    offs = (gl.expand_dims((q_row + rows).to(gl.int64) * row_stride, 1)
            + gl.expand_dims((q_col + cols).to(gl.int64), 0))
    mask = gl.expand_dims(rows < n_rows, 1) & gl.expand_dims(cols < HEAD_DIM, 0)
    gl.store(o_ptr + offs, tile.load(layout), mask=mask)


@gluon.jit
def _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, o_ptr,
              q_row, q_col, lse_row, row_stride, m0, n_q, k0, diag, win_left, n_kv, n_blocks, n_left, n_mid,
              qk_scale, active, CAUSAL: gl.constexpr, WINDOW: gl.constexpr, VARLEN: gl.constexpr,
              ROW0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
              STAGES: gl.constexpr, NUM_WARPS: gl.constexpr, Q_TILES: gl.constexpr, Q_IN_REGS: gl.constexpr):
    """Rows [ROW0, ROW0 + BLOCK_M) of the program's query block, in one warp group (NUM_WARPS = 4).

    Dense: the LSE row is q_row and the packed-only arguments (o_ptr, lse_row, row_stride, n_q, n_kv,
    n_mid) are constexpr 0; ``active`` (constexpr True but in the three-consumer build) says whether the
    rows lie in the sequence: if not, the consumer only releases the ring's slots.  Packed (VARLEN): the
    sequence has n_q query rows of which the block starts at m0; rows past n_q are computed but never
    stored, and a program with n_blocks = 0 stores zeros.  Q_TILES: 1, q_smem holds all the program's
    rows; else one BLOCK_M-row tile per consumer."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

    if Q_TILES == 1:
        q_smem = q_smem.slice(ROW0, BLOCK_M)  # this consumer's rows of Q
    else:
        q_smem = q_smem.index(ROW0 // BLOCK_M)
    m0 = m0 + ROW0
    q_row = q_row + ROW0
    offs_m = m0 + gl.arange(0, BLOCK_M, layout=row_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

    if VARLEN:
        if n_blocks > 0:  # else no row sees a key (or a padding program): O = 0, LSE = -inf
            acc, m_i, l_i = _attend(acc, m_i, l_i, zero_s, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready,
                                    v_empty, offs_m, k0, diag, win_left, n_kv, n_blocks, n_left, n_mid, qk_scale,
                                    CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout,
                                    Q_IN_REGS, 0, 0, q_bar, False)
        # rows that saw no key have l = 0: they output 0 with LSE -inf, as the Triton forward writes them
        # (its backward then gives them zero gradients)
        l_safe = gl.where(l_i == 0.0, 1.0, l_i)
        o = acc / gl.expand_dims(gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout)), 1)
        n_rows = n_q - m0  # rows of this consumer inside the sequence (<= 0: none)
        offs_r = gl.arange(0, BLOCK_M, layout=row_layout)
        gl.store(lse_ptr + lse_row + ROW0 + offs_r, m_i + gl.log2(l_i), mask=offs_r < n_rows)
        q_smem.store(o.to(q_smem.dtype))  # every wgmma reading Q has retired (or none was issued)
        if n_rows >= BLOCK_M:
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [q_row, q_col], q_smem)
            tma.store_wait(0)
        else:
            # the sequence's last rows: a TMA store of the tile would write over the next sequence's
            _store_rows(o_ptr, q_smem, q_row, q_col, row_stride, n_rows, BLOCK_M, HEAD_DIM, NUM_WARPS)
    elif active:
        acc, m_i, l_i = _attend(acc, m_i, l_i, zero_s, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready,
                                v_empty, offs_m, k0, diag, win_left, n_kv, n_blocks, n_left, n_mid, qk_scale,
                                CAUSAL, WINDOW, VARLEN, BLOCK_N, STAGES, s_layout, o_layout, p_layout, Q_IN_REGS,
                                0, 0, q_bar, False)
        # deferred normalisation; every row saw at least one key (its diagonal one, with a window)
        o = acc / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)
        gl.store(lse_ptr + q_row + gl.arange(0, BLOCK_M, layout=row_layout), m_i + gl.log2(l_i))
        q_smem.store(o.to(q_smem.dtype))  # every wgmma reading Q has retired
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
        tma.store_wait(0)
    else:
        _drain(k_ready, k_empty, v_ready, v_empty, 0, n_blocks, 0, STAGES)


@gluon.jit
def packed_program(table_ptr, entry, cu_q_ptr, cu_k_ptr, N_Q, N_KV, BLOCK: gl.constexpr):
    """Row ``entry`` of a packed batch's (sequence, block) program table, as ``programs.locate`` reads it:
    (real, the block's first row within its sequence, the sequence's first query row, its query count,
    first key row, key count), the offsets clamped into the packed tensors (a no-op for valid ones); a
    padding row (sequence -1) is not real and gets 0 queries and 0 keys.  Shared by the packed forward
    (query blocks) and the packed backward (key blocks)."""
    seq = gl.load(table_ptr + 2 * entry)
    real = seq >= 0
    b = gl.maximum(seq, 0)
    first = gl.where(real, gl.load(table_ptr + 2 * entry + 1), 0) * BLOCK
    q0 = gl.minimum(gl.maximum(gl.load(cu_q_ptr + b), 0), N_Q)
    n_q = gl.where(real, gl.minimum(gl.maximum(gl.load(cu_q_ptr + b + 1), q0), N_Q) - q0, 0)
    kv0 = gl.minimum(gl.maximum(gl.load(cu_k_ptr + b), 0), N_KV)
    n_kv = gl.where(real, gl.minimum(gl.maximum(gl.load(cu_k_ptr + b + 1), kv0), N_KV) - kv0, 0)
    return real, first, q0, n_q, kv0, n_kv


@gluon.jit
def dense_program(pid_m, pid_bh, n_blk, H, GROUP, N_Q, N_KV, WIN_LEFT, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
                  CONSUMERS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, ROWS: gl.constexpr):
    """Where dense query block pid_m (of n_blk) of batch*head pid_bh lies and which key blocks it visits:
    (m0 its first row, diag = Nkv - Nq, k0 the first key loaded, n_blocks, n_left the blocks crossing a
    window's left edge, q_row and kv_row0 the rows of the (B*H*N, D) views)."""
    b = pid_bh // H
    hk = (pid_bh % H) // GROUP
    if CONSUMERS == 2:
        m0 = pid_m * BLOCK_M
    else:
        # Nq is a multiple of 128, not always of 192: the programs end at row Nq, so that the partial one
        # (up to two consumers without rows) is the first, whose rows see the fewest keys when causal;
        # its m0 is negative
        m0 = pid_m * BLOCK_M - (n_blk * BLOCK_M - N_Q)
    diag = N_KV - N_Q  # query i sees key j iff j <= i + diag (causal); a multiple of 128 here
    if CAUSAL:
        if CONSUMERS == 2:
            # the last BLOCK_M / BLOCK_N blocks cross the diagonal (one, or one a consumer with 64-key blocks)
            n_end = (m0 + diag) // BLOCK_N + BLOCK_M // BLOCK_N
        else:
            # up to the diagonal block of the last consumer's rows
            n_end = (m0 + BLOCK_M - ROWS + diag) // BLOCK_N + 1
    else:
        n_end = N_KV // BLOCK_N
    if WINDOW:
        # query i also needs j >= i + diag - WIN_LEFT: blocks left of the block row m0 starts seeing in
        # are never loaded; those before the block from which the last row sees everything are masked
        lo = gl.maximum(m0 + diag - WIN_LEFT, 0) // BLOCK_N
        full_lo = gl.minimum(gl.cdiv(gl.maximum(m0 + BLOCK_M - 1 + diag - WIN_LEFT, 0), BLOCK_N), n_end)
        n_left = full_lo - lo
    else:
        lo = 0
        n_left = 0
    n_blocks = n_end - lo
    k0 = lo * BLOCK_N  # the first key the program loads
    q_row = pid_bh * N_Q + m0  # rows of the (B*H*Nq, D) view; TMA coordinates are int32
    kv_row0 = (b * (H // GROUP) + hk) * N_KV + k0
    return m0, diag, k0, n_blocks, n_left, q_row, kv_row0


@gluon.jit
def fwd_sm90_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT,
                     o_ptr, cu_q_ptr, cu_k_ptr, table_ptr,
                     CAUSAL: gl.constexpr, WINDOW: gl.constexpr, GROUP_PROGRAMS: gl.constexpr,
                     STAGES: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                     VARLEN: gl.constexpr, CONSUMERS: gl.constexpr):
    """Dense: grid (cdiv(Nq, 64 * CONSUMERS), B * H), descriptors over the (B*H*N, D) views, o_ptr, cu_q_ptr,
    cu_k_ptr and table_ptr None.  Packed (VARLEN): grid (rows of the (sequence, block) table for 128-row
    blocks, H), descriptors over the (total, heads * D) views, N_Q and N_KV the packed lengths total_q,
    total_k.  CONSUMERS: 2 (Q one 128-row tile), or 3 (dense, no window: Q three 64-row tiles, one a
    consumer; Nq is a multiple of 128 only, so the first program may start before row 0, and a consumer
    with no row in the sequence only drains the rings)."""
    ROWS: gl.constexpr = 64  # a consumer's query rows
    BLOCK_M: gl.constexpr = ROWS * CONSUMERS
    Q_TILES: gl.constexpr = BLOCK_M // q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    gl.static_assert((CONSUMERS == 2) or (CONSUMERS == 3 and BLOCK_N == 2 * ROWS and not VARLEN and not WINDOW),
                     "three consumers: 128-key blocks, dense, no window")
    gl.static_assert((Q_TILES == 1) or (Q_TILES == CONSUMERS), "Q is one tile or one a consumer")
    # each 64-row consumer's causal diagonal is exactly one key block: BLOCK_N = BLOCK_M (the program's
    # diagonal is its last block, shared by both consumers) or BLOCK_M / 2 (D256: the last two blocks, the
    # first consumer's diagonal and the second's); with three consumers, 128 (_three_consumers)
    gl.static_assert((BLOCK_N == BLOCK_M) or (2 * BLOCK_N == BLOCK_M) or (CONSUMERS == 3),
                     "BLOCK_N must be BLOCK_M or BLOCK_M / 2")
    gl.static_assert((BLOCK_N == BLOCK_M) or not VARLEN, "packed builds run BLOCK_N == BLOCK_M only")
    gl.static_assert(CAUSAL or not WINDOW, "windows with a right reach are not supported")

    if VARLEN:
        # the program's (sequence, block) row of the table, as programs.locate reads it: offsets clamped
        # into the packed tensors (a no-op for valid ones); a padding row (sequence -1) gets Nq = Nkv = 0
        entry, h = block_and_head(gl.num_programs(1), False, GROUP_PROGRAMS)  # the table is heaviest first
        real, m0, q0, n_q, kv0, n_kv = packed_program(table_ptr, entry, cu_q_ptr, cu_k_ptr, N_Q, N_KV, BLOCK_M)
        diag = n_kv - n_q  # bottom-right within the sequence: query i sees key j iff j <= i + diag (causal)
        # programs.span in blocks, for the block's rows inside the sequence [m0, last]: keys [lo, hi) are
        # seen by some row, [full_lo, full_hi) by every row whole
        last = gl.minimum(m0 + BLOCK_M, n_q) - 1
        if CAUSAL:
            hi = gl.maximum(gl.minimum(n_kv, last + diag + 1), 0)
            full_hi = (gl.maximum(gl.minimum(n_kv, m0 + diag + 1), 0) // BLOCK_N) * BLOCK_N
        else:
            hi = n_kv
            full_hi = (n_kv // BLOCK_N) * BLOCK_N
        if WINDOW:
            lo = gl.minimum((gl.maximum(m0 + diag - WIN_LEFT, 0) // BLOCK_N) * BLOCK_N, n_kv)
            hi = gl.maximum(hi, lo)
            full_lo = gl.minimum(gl.cdiv(gl.maximum(last + diag - WIN_LEFT, 0), BLOCK_N) * BLOCK_N, hi)
            full_hi = gl.maximum(full_hi, full_lo)
            n_left = gl.cdiv(full_lo - lo, BLOCK_N)
        else:
            lo = 0
            n_left = 0
        n_blocks = gl.where(m0 < n_q, gl.cdiv(hi - lo, BLOCK_N), 0)  # none for a padding row
        n_mid = gl.cdiv(full_hi - lo, BLOCK_N)
        k0 = lo
        q_row = q0 + m0  # rows of the (total_q, H * D) view; TMA coordinates are int32
        q_col = h * HEAD_DIM
        kv_row0 = kv0 + lo
        kv_col = (h // GROUP) * HEAD_DIM
        lse_row = h * N_Q + q0 + m0  # the (H, total_q) LSE
        row_stride = H * HEAD_DIM
        o_out = o_ptr
    else:
        pid_m, pid_bh = block_and_head(gl.num_programs(1), CAUSAL, GROUP_PROGRAMS)  # heaviest first if causal
        m0, diag, k0, n_blocks, n_left, q_row, kv_row0 = dense_program(
            pid_m, pid_bh, gl.num_programs(0), H, GROUP, N_Q, N_KV, WIN_LEFT, CAUSAL, WINDOW, CONSUMERS, BLOCK_M,
            BLOCK_N, ROWS)
        # the TMA columns and the packed-only arguments: constexpr 0 placeholders (a partition's argument
        # tuple takes no None), so the dense partitions capture what they did before
        q_col: gl.constexpr = 0
        kv_col: gl.constexpr = 0
        o_out: gl.constexpr = 0
        n_q: gl.constexpr = 0
        n_kv: gl.constexpr = 0
        n_mid: gl.constexpr = 0
        lse_row: gl.constexpr = 0
        row_stride: gl.constexpr = 0

    if Q_TILES == 1:
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    else:
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [Q_TILES, ROWS, HEAD_DIM], q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    k_ready, k_empty, v_ready, v_empty = ring_barriers(STAGES, CONSUMERS)
    if CONSUMERS == 3:
        _three_consumers(q_desc, k_desc, v_desc, o_desc, lse_ptr, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty,
                         v_ready, v_empty, q_row, kv_row0, m0, k0, diag, n_blocks, qk_scale, CAUSAL, BLOCK_N,
                         HEAD_DIM, STAGES, PRODUCER_REGS, CONSUMER_REGS)
    else:
        _two_consumers(q_desc, k_desc, v_desc, o_desc, lse_ptr, o_out, q_smem, k_bufs, v_bufs, q_bar, k_ready,
                       k_empty, v_ready, v_empty, q_row, q_col, lse_row, row_stride, m0, n_q, k0, diag, WIN_LEFT,
                       n_kv, n_blocks, n_left, n_mid, kv_row0, kv_col, qk_scale, CAUSAL, WINDOW, VARLEN, BLOCK_M,
                       BLOCK_N, HEAD_DIM, STAGES, PRODUCER_REGS, CONSUMER_REGS)


@gluon.jit
def _two_consumers(q_desc, k_desc, v_desc, o_desc, lse_ptr, o_out, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty,
                   v_ready, v_empty, q_row, q_col, lse_row, row_stride, m0, n_q, k0, diag, WIN_LEFT, n_kv, n_blocks,
                   n_left, n_mid, kv_row0, kv_col, qk_scale, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
                   VARLEN: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                   STAGES: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    """The partitions of the 128-row program: two consumers of 64 rows and the producer."""

    rows: gl.constexpr = BLOCK_M // 2
    # causal with 64-key blocks (BLOCK_N = rows): the first consumer's diagonal is the program's last block
    # but one, and it sees no key of the last block, which it skips (only the second consumer releases that
    # slot; the producer loads nothing after it)
    n_first = n_blocks
    if CAUSAL and BLOCK_N < BLOCK_M:
        n_first = n_blocks - 1
    # two 4-warp consumers of 64 query rows, each its own warp group and instruction stream (FA3):
    # one's softmax runs while the other's wgmma occupy the tensor cores.  (One 8-warp consumer,
    # whose two warp groups meet at a partition-wide barrier before every mbarrier arrive, was
    # 5-20% slower at D128 on the H100.)  Argument tuples are spelled out: concatenating tuples
    # in a Gluon kernel turns constexprs into plain ints, which a worker partition cannot take.
    active: gl.constexpr = True  # both consumers' rows lie in the sequence (dense: Nq is a multiple of 128)
    # Q as S = Q K^T's register operand where ptxas keeps the wgmma asynchronous and spills no more:
    # D <= 128 without a window (D256's Q takes 128 registers a thread; the window's masks spill more)
    q_regs: gl.constexpr = HEAD_DIM <= 128 and not WINDOW
    gl.warp_specialize([
        (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, o_out,
                     q_row, q_col, lse_row, row_stride, m0, n_q, k0, diag, WIN_LEFT, n_kv, n_first, n_left,
                     n_mid, qk_scale, active, CAUSAL, WINDOW, VARLEN, 0, rows, BLOCK_N, HEAD_DIM, STAGES, 4, 1,
                     q_regs)),
        (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, o_out,
                     q_row, q_col, lse_row, row_stride, m0, n_q, k0, diag, WIN_LEFT, n_kv, n_blocks, n_left,
                     n_mid, qk_scale, active, CAUSAL, WINDOW, VARLEN, rows, rows, BLOCK_N, HEAD_DIM, STAGES, 4, 1,
                     q_regs)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready,
                     v_empty, q_row, q_col, kv_row0, kv_col, n_blocks, BLOCK_N, STAGES, VARLEN, 1)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


@gluon.jit
def _three_consumers(q_desc, k_desc, v_desc, o_desc, lse_ptr, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty,
                     v_ready, v_empty, q_row, kv_row0, m0, k0, diag, n_blocks, qk_scale, CAUSAL: gl.constexpr,
                     BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                     PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    """The partitions of the 192-row program (dense, no window, 128-key blocks): three consumers of 64 rows
    and the producer (FlashAttention-3's D64 tile: each K/V block loaded serves 192 query rows, and
    three instruction streams interleave their softmaxes with the others' wgmma).

    Causal: consumer c's rows [m0 + 64c, m0 + 64c + 64) lie in one 128-key block row, so its diagonal is
    one block, its last, and it stops there; the producer loads up to the last consumer's diagonal.  The
    consumers' counts differ by at most one block, at the end of the ring: a slot that fewer than three
    consumers release is never loaded again.  A consumer with no row in the sequence (the first program's
    leading ones when Nq is not a multiple of 192: m0 < 0) drains all n_blocks slots."""
    ROWS: gl.constexpr = 64
    # Q stays in shared memory: from registers, ptxas serialises this build's wgmma
    # packed/window-only arguments of _consumer: constexpr placeholders (a partition takes no None)
    zero: gl.constexpr = 0
    active0 = m0 >= 0
    active1 = m0 + ROWS >= 0
    last: gl.constexpr = True  # the last consumer's rows always lie in the sequence
    if CAUSAL:
        # each consumer up to its diagonal block; one without rows drains all the producer loads
        n0 = gl.where(active0, (m0 + diag) // BLOCK_N + 1, n_blocks)
        n1 = gl.where(active1, (m0 + ROWS + diag) // BLOCK_N + 1, n_blocks)
        n2 = n_blocks
    else:
        n0 = n_blocks
        n1 = n_blocks
        n2 = n_blocks
    gl.warp_specialize([
        (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, zero,
                     q_row, zero, zero, zero, m0, zero, k0, diag, zero, zero, n0, zero, zero, qk_scale, active0,
                     CAUSAL, False, False, 0, ROWS, BLOCK_N, HEAD_DIM, STAGES, 4, 3, False)),
        (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, zero,
                     q_row, zero, zero, zero, m0, zero, k0, diag, zero, zero, n1, zero, zero, qk_scale, active1,
                     CAUSAL, False, False, ROWS, ROWS, BLOCK_N, HEAD_DIM, STAGES, 4, 3, False)),
        (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, lse_ptr, zero,
                     q_row, zero, zero, zero, m0, zero, k0, diag, zero, zero, n2, zero, zero, qk_scale, last,
                     CAUSAL, False, False, 2 * ROWS, ROWS, BLOCK_N, HEAD_DIM, STAGES, 4, 3, False)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready,
                     v_empty, q_row, zero, kv_row0, zero, n_blocks, BLOCK_N, STAGES, False, 3)),
    ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}


@functools.lru_cache(maxsize=None)
def _smem_layout(block_rows: int, head_dim: int, dtype: torch.dtype):
    """The swizzled shared-memory layout of a tile (built once: the launch is on every call's host path)."""
    return gl.NVMMASharedLayout.get_default_for([block_rows, head_dim], _GL_DTYPES[dtype])


def descriptor(t: torch.Tensor, block_rows: int) -> TensorDescriptor:
    """A 2-D TMA descriptor over the (batch*heads*rows, D) view of a contiguous (..., D) tensor (bf16, fp16,
    or fp32 for ``sm90_bwd``'s dQ accumulator).  Its base is ``t`` itself: the launcher reads only the base's
    address and dtype, and the descriptor's own shape and strides are the view's (no view made a call)."""
    D = t.shape[-1]
    return tma_descriptor(t, [t.numel() // D, D], [D, 1], [block_rows, D], _smem_layout(block_rows, D, t.dtype))


def packed_descriptor(t: torch.Tensor, block_rows: int) -> TensorDescriptor:
    """A 2-D TMA descriptor over the (total, heads*D) view of a contiguous packed (total, heads, D) tensor,
    a tile being ``block_rows`` rows of one head's D columns (the kernel gives the column, head * D)."""
    total, heads, D = t.shape
    return tma_descriptor(t, [total, heads * D], [heads * D, 1], [block_rows, D], _smem_layout(block_rows, D, t.dtype))


def kernel_constexprs(causal: bool, group_programs: int, stages: int, window: bool = False,
                      varlen: bool = False, block_rows: int = BLOCK) -> dict:
    """The constexprs ``forward`` and ``forward_varlen`` launch ``fwd_sm90_kernel`` with (the tools
    compile these).  Packed programs differ in work whether causal or not: they are grouped either way."""
    wide = block_rows == WIDE_BLOCK
    return dict(CAUSAL=bool(causal), WINDOW=bool(window), GROUP_PROGRAMS=group_programs if (causal or varlen) else 0,
                STAGES=stages, PRODUCER_REGS=PRODUCER_REGS,
                CONSUMER_REGS=WIDE_CONSUMER_REGS if wide else CONSUMER_REGS, VARLEN=bool(varlen),
                CONSUMERS=consumers(block_rows))


def launch_maxnreg(block_rows: int = BLOCK) -> int:
    """The registers a thread the kernel is launched with before reallocation (``MAXNREG``, ``WIDE_MAXNREG``)."""
    return WIDE_MAXNREG if block_rows == WIDE_BLOCK else MAXNREG


def q_tile_rows(block_rows: int = BLOCK) -> int:
    """Rows of the Q descriptor's tile: the whole program's 128, or one consumer's 64 with three consumers."""
    return CONSUMER_ROWS if block_rows == WIDE_BLOCK else block_rows


def forward(q, k, v, o, lse, causal: bool, sm_scale: float, group_programs: int, stages: int,
            window_left: int = -1, block_rows: int = BLOCK) -> None:
    """Write softmax(sm_scale q k^T) v into o and the base-2 LSE into lse (both preallocated).

    The caller checks ``unsupported_reason`` first; ``group_programs`` is the causal launch-order
    group size (``FA2Options.causal_group_programs``), ``stages`` the depth of the K and V rings:
    a 128 x D tile of Q + stages x (K, V) tiles of ``block_n(D)`` x D in shared memory (D128: 2 stages
    160 KiB, 3 stages 224 KiB of the 227 KiB a block may use; D256, 64-key blocks: 2 stages 192 KiB,
    3 do not fit: ``config_reason``).  ``window_left`` >= 0 (with ``causal``): each query also sees
    only the ``window_left`` keys before its diagonal one (FlashAttention's window (left, 0)); -1: none.
    ``block_rows``: query rows a program, ``BLOCK`` (two consumers) or ``WIDE_BLOCK`` (three: D64, no
    window; Q 192 x 64 + stages x (K, V) 128 x 64, 2 stages 88 KiB).
    """
    prepare_forward(tuple(q.shape), k.shape[1], k.shape[2], causal, sm_scale, group_programs, stages, window_left,
                    block_rows)(q, k, v, o, lse)


def prepare_forward(q_shape: tuple, kv_heads: int, n_kv: int, causal: bool, sm_scale: float, group_programs: int,
                    stages: int, window_left: int = -1, block_rows: int = BLOCK):
    """``forward``'s checks, grid and launch settings for q of ``q_shape`` (B, H, Nq, D) and k, v of ``kv_heads``
    heads and ``n_kv`` keys, once: the result, ``run(q, k, v, o, lse)``, builds the four descriptors and
    enqueues the kernel (``_prepared.PreparedLaunch``), and is what ``flash_attn_v2`` keeps for its calls."""
    if window_left >= 0 and not causal:
        raise ValueError("sm90.forward: a window needs causal (a right reach is not supported)")
    B, H, Nq, D = q_shape
    bn = block_n(D)
    why = config_reason(D, bn, stages, block_rows, window=window_left >= 0)
    if why is not None:
        raise ValueError(f"sm90.forward: {why}")
    launch = PreparedLaunch(
        fwd_sm90_kernel, (triton.cdiv(Nq, block_rows), B * H),
        (sm_scale * 1.4426950408889634, H, H // kv_heads, Nq, n_kv, max(window_left, 0), None, None, None, None),
        dict(kernel_constexprs(causal, group_programs, stages, window_left >= 0, block_rows=block_rows), num_warps=4,
             maxnreg=launch_maxnreg(block_rows)))
    q_rows = q_tile_rows(block_rows)

    def run(q, k, v, o, lse):
        launch(descriptor(q, q_rows), descriptor(k, bn), descriptor(v, bn), descriptor(o, CONSUMER_ROWS), lse)

    return run


def forward_varlen(q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, table, causal: bool, sm_scale: float,
                   group_programs: int, stages: int, window_left: int = -1) -> None:
    """``forward`` for a packed batch: q, o (total_q, H, D), k, v (total_k, H_kv, D), lse (H, total_q).

    ``table``: the int32 (rows, 2) (sequence, block) program table for 128-row query blocks
    (``_schedule.SequenceBlocks.table(BLOCK)``, built on the device, padding rows (-1, 0) last); the
    grid is (rows, H), so nothing here reads the device.  ``group_programs`` orders the programs across
    groups of heads as the Triton varlen forward does; the rest as ``forward``."""
    if window_left >= 0 and not causal:
        raise ValueError("sm90.forward_varlen: a window needs causal (a right reach is not supported)")
    total_q, H, D = q.shape
    if block_n(D) != BLOCK:
        raise ValueError(f"sm90.forward_varlen: head_dim {D} is built dense only")
    total_k, Hkv = k.shape[0], k.shape[1]
    grid = (table.shape[0], H)
    fwd_sm90_kernel[grid](
        packed_descriptor(q, BLOCK), packed_descriptor(k, BLOCK), packed_descriptor(v, BLOCK),
        packed_descriptor(o, BLOCK // 2), lse, sm_scale * 1.4426950408889634, H, H // Hkv, total_q, total_k,
        max(window_left, 0), o, cu_seqlens_q, cu_seqlens_k, table,
        **kernel_constexprs(causal, group_programs, stages, window_left >= 0, varlen=True), num_warps=4,
        maxnreg=MAXNREG)
