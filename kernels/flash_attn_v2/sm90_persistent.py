"""FlashAttention forward for Hopper (sm_90) in Gluon, persistent: ``sm90``'s dense kernel, one program an SM.

What is implemented
-------------------
Exactly the dense forward of ``sm90`` (FA2 Algorithm 1 with FlashAttention-3's producer/consumer warp
specialisation and intra-warpgroup overlap; its partitions' per-tile code, ``_attend`` and the online
softmax, is shared, not copied), launched as FlashAttention-3's persistent kernel: the grid is min(tiles,
SMs) programs, and the tiles, taken in the launch order ``sm90.forward`` would give its programs
(``_schedule.block_and_head_at``: heaviest first across groups of heads when causal, the query blocks of one
head after another otherwise, so the tiles in flight share K/V in L2 as the launched programs do), go to
whichever program asks next (Scheduling, below).  Across a program's tiles:

  * the producer loads the next tile's Q as soon as every consumer is done with the Q tile (at D <= 128
    without a window, right after each consumer loaded its rows into registers; else after its last
    S product), and the K/V ring runs on across tiles, so the next tile's first loads overlap this
    tile's last products and epilogue instead of following the program's launch;
  * O leaves through a shared buffer of its own (not the Q tile), by a TMA store the consumer waits
    for only before it writes the buffer again, at its next tile's epilogue;
  * with three consumers (D64, 192 rows) a consumer stops at its causal diagonal as in ``sm90``, then
    releases the later blocks of the tile's ring slots unread (``_drain``), since the ring goes on.

Scheduling: each program's producer takes its next tile from an int32 counter by an atomic add (a
dynamic scheduler, FA3's for causal work), fetched when it starts the current tile so that the atomic's
latency hides under the loads, and hands the index to its consumers through shared memory behind the Q
barrier; the fetch that goes one past the last tile ends the program, and the last of those sets the
counter back to zero, so each stream keeps one counter (``tile_counter``) and no launch clears it.  Not a
static schedule (tile p + i grid for program p): heaviest-first order would hand each round's heaviest tile
to the same programs round after round (1.12-1.26 of one program a tile's time, causal N 2k-16k).

The launcher (``tuning.prepare_fwd``) runs it for a Gluon configuration where ``tuning.fwd_persistent``
says so, and the launch log then records the configuration with ``persistent=True``.

What it does not support (``reason`` says which; ``sm90.forward`` runs those): packed batches, head dim
256 and 3-stage rings at D128 (the O buffer does not fit beside them in 227 KiB), and what ``sm90`` does
not support.  The launcher runs it only up to ``MAX_KEYS`` keys: from 4k keys one program a tile measured
as fast or faster (a tile's prologue is a small share there, and the persistent build's tiles came out
1-9% slower at 16k; why was not profiled).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.runtime import driver

from .._prepared import PreparedLaunch
from .._schedule import block_and_head_at
from .._validate import sm_count
from . import sm90
from .sm90 import _attend, _drain, _load_kv, _load_q, dense_program, ring_barriers


def shared_bytes(head_dim: int, stages: int, block_rows: int) -> int:
    """Shared memory of the Q tile, the O buffer and the K and V rings (16-bit), barriers aside."""
    return sm90.shared_tile_bytes(head_dim, stages, block_rows) + 2 * head_dim * block_rows


# Keys up to which the persistent build runs dense calls: one launch against the other in one process on an H200
# (results/evidence/h200/gluon_fwd_persistent/, bf16, 16k tokens), it took 0.89-0.98 of the time at N 1k-2k
# (D128; D64 0.97-1.00), 1.00-1.04 at 4k and 1.01-1.09 at 16k, where a tile's prologue is a small share of it.
MAX_KEYS = 2048


def reason(head_dim: int, stages: int, block_rows: int, varlen: bool, n_kv: int = 0) -> str | None:
    """Why the persistent build does not run this configuration (None: it does), beyond ``sm90.config_reason``:
    it is not built (packed batches, 64-key blocks, no room for the O buffer), or ``n_kv`` keys exceed
    ``MAX_KEYS``, where one program a tile measured faster."""
    if n_kv > MAX_KEYS:
        return f"{n_kv} keys: one program a tile measured faster above {MAX_KEYS}"
    if varlen:
        return "packed batches run sm90.forward_varlen"
    if sm90.block_n(head_dim) != sm90.BLOCK:
        return f"head_dim {head_dim}: 64-key blocks are not built persistent"
    if shared_bytes(head_dim, stages, block_rows) + 1024 > sm90.SHARED_BYTES:
        return f"{stages} stages at head_dim {head_dim} leave no room for the O buffer"
    return None


@gluon.jit
def _next_tile(counter_ptr, n_tiles):
    """The next tile a program takes: grid + the tile counter's value before this fetch.  Each program fetches
    until it gets one past the last tile, so a launch makes exactly n_tiles fetches (grid of them past the
    end, with n_tiles >= grid); the last of them (value n_tiles - 1) sets the counter back to 0 for the next
    launch on the stream."""
    old = gl.atomic_add(counter_ptr, 1)
    if old == n_tiles - 1:
        gl.atomic_xchg(counter_ptr, 0)
    return gl.num_programs(0) + old


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
              v_empty, counter_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
              GROUP_PROGRAMS: gl.constexpr, CONSUMERS: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              Q_TILES: gl.constexpr):
    """Schedules the program's tiles (its own first, then one from the counter after another) and loads each:
    its index into tile_smem and its Q once the consumers are done with the last Q (both behind q_bar), then
    its K and V blocks into the ring.  One past the last tile, q_bar completes with no load: the end."""
    ROWS: gl.constexpr = 64
    BLOCK_M: gl.constexpr = ROWS * CONSUMERS
    index_layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    n_blk = gl.cdiv(N_Q, BLOCK_M)
    n_tiles = n_blk * N_BH
    t = gl.program_id(0)
    ring = 0
    it = 0
    while t < n_tiles:
        t_next = _next_tile(counter_ptr, n_tiles)  # fetched early: the atomic's latency hides under the loads
        pid_m, pid_bh = block_and_head_at(t, n_blk, N_BH, CAUSAL, GROUP_PROGRAMS)
        m0, diag, k0, n_blocks, n_left, q_row, kv_row0 = dense_program(
            pid_m, pid_bh, n_blk, H, GROUP, N_Q, N_KV, WIN_LEFT, CAUSAL, WINDOW, CONSUMERS, BLOCK_M, BLOCK_N, ROWS)
        mbarrier.wait(q_free, (it & 1) ^ 1)  # the barrier starts in phase 1 complete: the first tile does not wait
        tile_smem.store(gl.full([1], t, gl.int32, layout=index_layout))
        gl.thread_barrier()  # every lane's store before the elected lane's arrival on q_bar
        _load_q(q_desc, q_smem, q_bar, q_row, 0, Q_TILES)  # its arrival releases the index store to the consumers
        _load_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row0, 0, n_blocks, ring,
                 BLOCK_N, STAGES)
        ring += n_blocks
        it += 1
        t = t_next
    mbarrier.wait(q_free, (it & 1) ^ 1)
    tile_smem.store(gl.full([1], t, gl.int32, layout=index_layout))
    gl.thread_barrier()
    mbarrier.arrive(q_bar, count=1)


@gluon.jit
def _consumer(q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready, v_empty, o_desc,
              lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL: gl.constexpr, WINDOW: gl.constexpr,
              GROUP_PROGRAMS: gl.constexpr, CONSUMERS: gl.constexpr, ROW0: gl.constexpr, BLOCK_N: gl.constexpr,
              HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, Q_TILES: gl.constexpr, Q_IN_REGS: gl.constexpr):
    """Rows [ROW0, ROW0 + 64) of each of the program's tiles, in one warp group (as ``sm90._consumer`` for one)."""
    ROWS: gl.constexpr = 64
    BLOCK_M: gl.constexpr = ROWS * CONSUMERS
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    if Q_TILES == 1:
        my_q = q_smem.slice(ROW0, ROWS)
    else:
        my_q = q_smem.index(ROW0 // ROWS)
    my_o = o_smem.index(ROW0 // ROWS)
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    rows = gl.arange(0, ROWS, layout=row_layout)

    index_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    n_blk = gl.cdiv(N_Q, BLOCK_M)
    n_tiles = n_blk * N_BH
    ring = 0
    it = 0
    mbarrier.wait(q_bar, 0)
    t = gl.max(tile_smem.load(index_layout), 0)  # the producer's index, behind q_bar
    while t < n_tiles:
        pid_m, pid_bh = block_and_head_at(t, n_blk, N_BH, CAUSAL, GROUP_PROGRAMS)
        m0, diag, k0, n_blocks, n_left, q_row, kv_row0 = dense_program(
            pid_m, pid_bh, n_blk, H, GROUP, N_Q, N_KV, WIN_LEFT, CAUSAL, WINDOW, CONSUMERS, BLOCK_M, BLOCK_N, ROWS)
        m0 = m0 + ROW0
        q_row = q_row + ROW0
        if CONSUMERS == 3:
            # the first tile of a sequence may start before row 0 (sm90._three_consumers); causal: this
            # consumer's diagonal is one 128-key block, its last
            active = m0 >= 0
            if CAUSAL:
                mine = gl.where(active, (m0 + diag) // BLOCK_N + 1, 0)
            else:
                mine = gl.where(active, n_blocks, 0)
        else:
            active = True
            mine = n_blocks
        if active:
            m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_layout)
            l_i = gl.zeros([ROWS], gl.float32, layout=row_layout)
            acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
            acc, m_i, l_i = _attend(acc, m_i, l_i, zero_s, my_q, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready,
                                    v_empty, m0 + rows, k0, diag, WIN_LEFT, 0, mine, n_left, 0, qk_scale, CAUSAL,
                                    WINDOW, False, BLOCK_N, STAGES, s_layout, o_layout, p_layout, Q_IN_REGS, ring,
                                    it & 1, q_free, True)
            # deferred normalisation; every row saw at least one key (its diagonal one, with a window)
            o = acc / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)
            gl.store(lse_ptr + q_row + rows, m_i + gl.log2(l_i))
            tma.store_wait(0)  # the last tile's O has left my_o
            my_o.store(o.to(my_o.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [q_row, 0], my_o)
        else:
            # rows before the sequence: nothing to compute, but the tile's Q must have landed before this
            # consumer lets the producer load the next one over it
            mbarrier.wait(q_bar, it & 1)
            mbarrier.arrive(q_free, count=1)
        # the blocks this consumer does not read: released unread, for the ring goes on to the next tile
        _drain(k_ready, k_empty, v_ready, v_empty, mine, n_blocks, ring, STAGES)
        ring += n_blocks
        it += 1
        mbarrier.wait(q_bar, it & 1)  # the next tile's Q has landed, or the producer has said it is done
        t = gl.max(tile_smem.load(index_layout), 0)
    tma.store_wait(0)


@gluon.jit
def fwd_sm90_persistent_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, counter_ptr, qk_scale, H, GROUP, N_Q, N_KV,
                               WIN_LEFT, N_BH,
                               CAUSAL: gl.constexpr, WINDOW: gl.constexpr, GROUP_PROGRAMS: gl.constexpr,
                               STAGES: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                               CONSUMERS: gl.constexpr):
    """Grid (min(tiles, SMs),), tiles = cdiv(Nq, 64 * CONSUMERS) * N_BH (= B * H); descriptors as ``sm90``'s dense
    build (Q one 128-row tile with two consumers, three 64-row tiles with three; O 64-row tiles); counter_ptr
    one int32, 0 at the launch and left 0 (``tile_counter``)."""
    ROWS: gl.constexpr = 64
    BLOCK_M: gl.constexpr = ROWS * CONSUMERS
    Q_TILES: gl.constexpr = BLOCK_M // q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    gl.static_assert(BLOCK_N == 2 * ROWS, "128-key blocks only (D <= 128)")
    gl.static_assert((CONSUMERS == 2) or (CONSUMERS == 3 and not WINDOW), "three consumers: no window")
    gl.static_assert((Q_TILES == 1) or (Q_TILES == CONSUMERS), "Q is one tile or one a consumer")
    gl.static_assert(CAUSAL or not WINDOW, "windows with a right reach are not supported")

    if Q_TILES == 1:
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    else:
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [Q_TILES, ROWS, HEAD_DIM], q_desc.layout)
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [CONSUMERS, ROWS, HEAD_DIM], o_desc.layout)
    tile_smem = gl.allocate_shared_memory(gl.int32, [1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_free, count=CONSUMERS)
    k_ready, k_empty, v_ready, v_empty = ring_barriers(STAGES, CONSUMERS)
    # Q in registers where sm90's two-consumer build takes it so (D <= 128 without a window); the
    # three-consumer build keeps it in shared memory (ptxas serialises its wgmma otherwise)
    q_regs: gl.constexpr = CONSUMERS == 2 and not WINDOW
    # argument tuples spelled out: concatenating tuples in a Gluon kernel turns constexprs into plain ints
    if CONSUMERS == 3:
        gl.warp_specialize([
            (_consumer, (q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
                         v_empty, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 3, 0, BLOCK_N, HEAD_DIM, STAGES, Q_TILES, False)),
            (_consumer, (q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
                         v_empty, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 3, ROWS, BLOCK_N, HEAD_DIM, STAGES, Q_TILES, False)),
            (_consumer, (q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
                         v_empty, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 3, 2 * ROWS, BLOCK_N, HEAD_DIM, STAGES, Q_TILES, False)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty,
                         v_ready, v_empty, counter_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 3, BLOCK_N, STAGES, Q_TILES)),
        ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
                         v_empty, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 2, 0, BLOCK_N, HEAD_DIM, STAGES, Q_TILES, q_regs)),
            (_consumer, (q_smem, o_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty, v_ready,
                         v_empty, o_desc, lse_ptr, qk_scale, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 2, ROWS, BLOCK_N, HEAD_DIM, STAGES, Q_TILES, q_regs)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, tile_smem, k_bufs, v_bufs, q_bar, q_free, k_ready, k_empty,
                         v_ready, v_empty, counter_ptr, H, GROUP, N_Q, N_KV, WIN_LEFT, N_BH, CAUSAL, WINDOW,
                         GROUP_PROGRAMS, 2, BLOCK_N, STAGES, Q_TILES)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


_COUNTERS: dict = {}


def tile_counter(device: torch.device) -> torch.Tensor:
    """The int32 tile counter of the current stream on ``device``, zero and left zero by every launch (the last
    fetch resets it).  One a stream: launches on one stream run one after another, those on two streams
    may overlap.  Made on a stream's first launch (under CUDA graph capture, from the graph's pool; the
    graph's replays set it to zero again, which it already is)."""
    key = (device.index, driver.active.get_current_stream(device.index))  # the raw handle: no Stream object a call
    counter = _COUNTERS.get(key)
    if counter is None:
        counter = _COUNTERS[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def kernel_constexprs(causal: bool, group_programs: int, stages: int, window: bool, block_rows: int) -> dict:
    """The constexprs ``forward`` launches the kernel with: ``sm90``'s dense ones (the tools compile these)."""
    meta = sm90.kernel_constexprs(causal, group_programs, stages, window, block_rows=block_rows)
    del meta["VARLEN"]
    return meta


def forward(q, k, v, o, lse, causal: bool, sm_scale: float, group_programs: int, stages: int,
            window_left: int = -1, block_rows: int = sm90.BLOCK, programs: int | None = None) -> None:
    """``sm90.forward`` (same arguments and checks) in min(tiles, ``programs``) persistent programs; ``programs``
    defaults to the device's SM count (one program an SM: a program's warps take the whole register file)."""
    prepare_forward(tuple(q.shape), k.shape[1], k.shape[2], causal, sm_scale, group_programs, stages, window_left,
                    block_rows, q.device.index, programs)(q, k, v, o, lse)


def prepare_forward(q_shape: tuple, kv_heads: int, n_kv: int, causal: bool, sm_scale: float, group_programs: int,
                    stages: int, window_left: int, block_rows: int, device_index: int | None,
                    programs: int | None = None):
    """``forward``'s checks, grid and launch settings, once (as ``sm90.prepare_forward``), for CUDA device
    ``device_index``: the result, ``run(q, k, v, o, lse)``, builds the descriptors, takes the stream's tile counter
    and enqueues the kernel."""
    if window_left >= 0 and not causal:
        raise ValueError("sm90_persistent.forward: a window needs causal (a right reach is not supported)")
    B, H, Nq, D = q_shape
    why = (sm90.config_reason(D, sm90.block_n(D), stages, block_rows, window=window_left >= 0)
           or reason(D, stages, block_rows, varlen=False))
    if why is not None:
        raise ValueError(f"sm90_persistent.forward: {why}")
    tiles = triton.cdiv(Nq, block_rows) * B * H
    launch = PreparedLaunch(
        fwd_sm90_persistent_kernel, (min(tiles, programs or sm_count(device_index)),),
        (sm_scale * 1.4426950408889634, H, H // kv_heads, Nq, n_kv, max(window_left, 0), B * H),
        dict(kernel_constexprs(causal, group_programs, stages, window_left >= 0, block_rows), num_warps=4,
             maxnreg=sm90.launch_maxnreg(block_rows)))
    q_rows = sm90.q_tile_rows(block_rows)

    def run(q, k, v, o, lse):
        launch(sm90.descriptor(q, q_rows), sm90.descriptor(k, sm90.BLOCK), sm90.descriptor(v, sm90.BLOCK),
               sm90.descriptor(o, sm90.CONSUMER_ROWS), lse, tile_counter(q.device))

    return run
