"""The configurations the FA2 launcher may run, per kernel and head-dim class, and why each is there.

A configuration is ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, optionally tagged ``WS`` (the
warp-specialised Triton forward) or ``GLUON`` (the Gluon Hopper forward of ``sm90.py``: 128x128
blocks, 128x64 at D256 (``sm90.block_n``), 192x128 with three consumers at D64, 4 warps per consumer,
``num_stages`` K/V ring slots).
Head dims fall into three classes: "small" (<= 64), "mid" (96, 128) and "large" (256).  The first
entry of each list is what runs when autotuning is off.  For the dK/dV kernel BLOCK_N is the number
of key rows a program owns and BLOCK_M the query rows per step; for the forward and dQ BLOCK_M is
the query rows a program owns.

Figures quoted below were measured in bf16 with 16k tokens a call (batch = 16384 / N, hidden 2048)
on the GPU named; DESIGN.md holds the tables.  Constants only: the tuning code is in ``tuning.py``.
"""
from __future__ import annotations

WS = "ws"
GLUON = "gluon_sm90"

FWD_SPACE = {
    "small": [
        # Leads at D64: 127 registers a thread and 64 KiB of shared memory, so two CTAs fit an SM and
        # one's softmax can run under the other's matmuls (read off the sm_90 build, not profiled).
        # H100, causal N = 4k: 389-393 TFLOP/s against 346-353 for 128x64 with 4 warps.
        (128, 64, 8, 3),
        # Needs 255 registers a thread (one CTA an SM); the D64 leader before the entry above.
        (128, 64, 4, 3),
        # The smallest tile: the only one the pruner keeps for sequences of 64 or fewer, a candidate
        # at every length, left out where it lost at long ones (FWD_SKIP).
        (64, 64, 4, 3),
        # The Gluon forward with three consumers of 64 rows (FlashAttention-3's D64 tile: each K/V block
        # serves 192 query rows; dense, no window), offered where it runs (SM90_OK, sm90.config_reason)
        # from Nq = GLUON_MIN_NQ up.
        (192, 128, 4, 2, GLUON),
        # Not here: the warp-specialised forward (128x128, 4 warps, 2 stages: 402-436 TFLOP/s on the
        # H100, level with the plain tiles); 128x128 with 8 warps (320-384, behind the leader); the
        # two-consumer Gluon forward (0.88-0.99x the Triton forward below N = 8k on the H200, 1.01-1.02x above).
    ],
    "mid": [
        # The fastest plain tile at D128 (H100, N = 4k non-causal, in the tuner's timings: 1.088 ms
        # against 1.137 for 128x64/8 warps, 1.179 for the same tile on the TMA path).
        (128, 128, 8, 3),
        # The smallest tile (the only one kept for sequences of 64 or fewer); not offered for causal
        # from Nq 4096 up (FWD_SKIP).
        (64, 64, 4, 3),
        # Warp-specialised (non-causal only, TMA path): about 10% over the entry above at D128 on the
        # H100 (532 TFLOP/s at N = 4k and 569 at 16k, 1.53x and 1.66x sdpa_flash).  Triton 3.6
        # specialises a loop only with 4 warps; every 3-stage warp-specialised configuration wrote
        # NaN rows on the H100, and 3 stages of 128x128 do not fit shared memory at D128 anyway.
        (128, 128, 4, 2, WS),
        # The Gluon forward, offered where it runs (SM90_OK) from Nq = GLUON_MIN_NQ up: on the H200
        # 1.09-1.17x the autotuned Triton forward non-causal and 1.17-1.31x causal at N = 1k-16k.
        # 3 stages measured within the round-to-round spread of 2 and fill 224 KiB of shared memory.
        (128, 128, 4, 2, GLUON),
        # Not here: 128x64 with 8 warps, 3-8% slower than 128x128/8 warps in every D128 cell it was
        # pinned in on the H100; 128x128 with 4 stages needs 296 KB of shared memory (227 KB allowed).
    ],
    "large": [
        # D256 needs small tiles to fit registers and shared memory; these three have not been
        # timed against each other on a GPU (the measured tables cover D64 and D128).
        (64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2),
        # The Gluon forward with 64-key blocks (sm90.block_n: Q + 2 stages of K and V fill 192 KiB;
        # 3 stages do not fit), offered where it runs (SM90_OK) from Nq = GLUON_MIN_NQ up, so the
        # tuner times it against the three above.  On the H200 (bf16, 16k tokens, 8 heads) the tuner
        # chose it in every forward cell of two sweeps, at 629-748 TFLOP/s non-causal and 460-775
        # causal (results/evidence/h200/gluon_fwd_d256/); the Triton tiles were not pinned against
        # it, nor GLUON_MIN_NQ (measured at D128) checked at D256.
        (128, 64, 4, 2, GLUON),
    ],
}

DKDV_SPACE = {
    # The D64 lists of both backward kernels have not been compared in pinned measurements: the tuner
    # chooses among them.
    "small": [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3)],
    # 64 query rows a step against 128 owned key rows was the fastest dK/dV tile at D128 on the H100,
    # with 3 stages in one run and 2 in another (2.169 ms at N = 4k, TMA), so both are offered.  128
    # query rows a step ran the D128 backward at N = 16k at 210 TFLOP/s against 305 for 64x128.
    "mid": [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3)],
    # D256, TMA: 64x64/8/2 was the fastest when each was pinned on the H200 (N = 4k, causal and not, beside
    # the same dQ), also against 64x64/8/1 (1.06-1.66x its time), 32x64/8/2 (1.11-1.20x), 16x64/4/2 and
    # 64x32/4/2 (3-15x).
    "large": [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 1)],
}

DQ_SPACE = {
    "small": [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)],
    # 128x64/8 warps: the fastest dQ configuration at D128 N = 4k (H100, 1.229 ms on the pointer path
    # against 1.480 with TMA); 128x128 with 2 stages, beside dK/dV 64x128, ran the D128 backward at
    # N = 16k at 387 TFLOP/s, the best of the fixed configurations tried there.
    "mid": [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 8, 2)],
    # D256 runs on the TMA path (PREFERRED_PATH): on the H200 at N = 4k (B4 H8, bf16, causal and not), each
    # configuration pinned beside the tuned dK/dV, 128x64/8/1 and 128x32/8/2 on TMA took 0.956-0.966 of the
    # fwd_bwd time of the tuner's pointer-path pick, 128x32/8/1 (results/evidence/h200/d256_backward_tiles/);
    # 64x32/4/2 and 64x64/8/2 took 1.00-1.12, 64x32/8/2 1.33.  Tuned among these, fwd_bwd took 0.938-0.960 of
    # the time with the space before on an H100, N 1k-16k (results/evidence/h100/d256_dq_tma_tuned/).
    "large": [(128, 64, 8, 1), (128, 32, 8, 2), (128, 32, 8, 1)],
}

# Forward entries not offered to the tuner from an Nq bucket up, per (class, causal).  The tuner
# times each candidate in short interleaved bursts and cannot separate candidates within ~5% on an
# H100 whose clock moves under load; it chose these tiles although they lost in pinned measurements:
#  - D128 causal, N >= 4k: 64x64 was 4-15% slower than 128x128/8 warps in 11 of 12 pinned
#    measurements (the twelfth on the TMA path), and was the tuner's pick in every such sweep cell;
#  - D64 non-causal, N >= 4k: 64x64 was 0.5-10% slower than 128x64/8 warps in 8 of 8 pinned
#    measurements, and was picked in 9 of 12 such sweep cells.
FWD_SKIP = {("mid", True, 4096): [(64, 64, 4, 3)], ("small", False, 4096): [(64, 64, 4, 3)]}

# The Gluon forward is offered from this Nq bucket up.  Its host path (four TMA descriptors built and
# encoded per call, then Triton's launcher) costs 130-250 us a call against 120-180 us for the Triton
# forward (H200).  At Nq = 512 (B32 H16, D128) its kernel takes about as long, so calls wait on the
# host: flashbench's samples split between 0.14 and 0.29-0.34 ms where a pinned Triton forward stays
# at 0.234 ms, and on the H100 it measured 16-17% slower non-causal and 2.9x slower causal in bf16.
# From Nq = 1024 it was 14-19% faster with tight samples in all four D128 forward cells of a default
# sweep on the H100, and 17-22% faster in an interleaved A/B on the H200.  The tuner ranks by the
# fast tail of each candidate's samples, which a host-bound candidate still has: hence a fixed bound.
GLUON_MIN_NQ = 1024

# Where both tile paths are allowed, each kernel tries only the path that won for it, per head-dim
# class (True: TMA): TMA for dK/dV (about 10% faster on the H100 at D128: it streams Q and dO through
# four matmuls a step), pointers for the forward and for dQ up to D128 (neutral to worse with TMA on
# the H100), TMA for dQ at D256 (DQ_SPACE).  Both paths and five entries a class took about 10 s of
# tuning a new shape in a sweep, most of it compiling 30 variants per (head dim, causal, dtype);
# three entries on one path compile 9.
PREFERRED_PATH = {
    "fwd": {"small": False, "mid": False, "large": False},
    "bwd_dkdv": {"small": True, "mid": True, "large": True},
    "bwd_dq": {"small": False, "mid": False, "large": True},
}

# One fixed small configuration a kernel under the CPU interpreter (BLOCK_M != BLOCK_N on purpose, to
# exercise the diagonal logic with blocks of both shapes), and the Delta preprocessing block.
INTERPRET_CONFIG = {"fwd": (32, 16, 1, 1), "bwd_dkdv": (16, 32, 1, 1), "bwd_dq": (32, 16, 1, 1)}
PREPROCESS_BLOCK_M = 64
INTERPRET_PREPROCESS_BLOCK_M = 32
