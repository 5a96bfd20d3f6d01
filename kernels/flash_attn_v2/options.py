"""``FA2Options``: how ``flash_attn_v2`` chooses and runs its kernels, one frozen value per call.

The defaults are what the package ships: autotuned configurations, the tile path chosen from the GPU
and the inputs, causal programs grouped across heads, the Gluon Hopper forward offered where it
runs.  The other values exist to measure one choice against another (a pinned configuration, one
tile path, another launch order) or to bound compile time in tests.  Every field is checked when
the object is made, so a bad option is a ValueError before any kernel runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from . import sm90
from .spaces import GLUON, WS

KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
PATHS = ("auto", "tma", "ptr")
BACKWARDS = ("auto", "sm90", "triton")
GLUON_STAGES = (2, 3)  # the ring depths the GPU tests cover (3 fill 224 KiB of shared memory at D128)
# (BLOCK_M, BLOCK_N, warps a consumer) of the Gluon forward's head dims: 128x128 at D64 and D128, 128x64 at D256,
# and the three-consumer 192x128 at D64
GLUON_TILES = tuple(sorted({(sm90.BLOCK, sm90.block_n(d), 4) for d in sm90.HEAD_DIMS}
                           | {(sm90.WIDE_BLOCK, sm90.block_n(sm90.WIDE_HEAD_DIM), 4)}, reverse=True))


@dataclass(frozen=True)
class FA2Options:
    """Options of one ``flash_attn_v2`` call.

    autotune: choose each kernel's configuration by timing the candidates of its space (once per
        shape class, cached); False runs the first entry of the space (compile once, time nothing).
    path: "auto" lets the GPU and the inputs decide (TMA on capability >= 9 with 16-byte aligned
        views, and then the path each kernel prefers); "tma" or "ptr" forces the tile path: "tma"
        raises ValueError where the inputs cannot take it.
    configs: pinned configurations by kernel ("fwd", "bwd_dkdv", "bwd_dq"), each
        ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``; the forward also takes
        ``(BLOCK_M, BLOCK_N, 4, 2, WS)`` (warp-specialised) and ``(128, BLOCK_N, 4, stages, GLUON)`` (the
        Gluon Hopper forward: ``BLOCK_N`` 128 at D64 and D128, 64 at D256 (``sm90.block_n``), ``stages``
        2 or 3, 2 only at D256; ``(192, 128, 4, stages, GLUON)``: three consumers, D64 dense without a
        window; checked against the head dim and the inputs when the call runs), with ``WS`` and
        ``GLUON`` from ``spaces``.  A pinned kernel is not tuned.
    causal_group_programs: launch order of programs whose work differs (causal calls, and every
        packed ``flash_attn_varlen`` call): heads are taken in groups spanning at least this many
        programs and each group's heaviest blocks start first; 0 launches each head's blocks
        heaviest first, head after head.
    sm90_forward: offer the Gluon Hopper forward to the forward's tuner where it supports the inputs.
    backward: which backward runs.  "auto": the Gluon Hopper backward (``sm90_bwd``: dK, dV and dQ in
        one kernel, dense or packed, causal windows included; at D256 ``sm90_bwd_d256``, dense or packed, causal
        windows included) wherever it takes the inputs (it measured faster than the Triton one at every shape timed)
        and no Triton backward configuration is pinned,
        else the Triton dK/dV and dQ kernels; "sm90": the Gluon one wherever it takes the inputs;
        "triton": the Triton kernels always.  "triton" is the deterministic path (flash-attn's
        ``deterministic=True``) and the lean one (gradients plus O(N) buffers): the Gluon backward sums
        dQ by fp32 reduce-adds whose order varies from run to run into an fp32 accumulator, so its dQ is
        not bit-reproducible (its dK and dV are).
    dq_chunk_waves: how much fp32 dQ accumulator the Gluon backward of a dense call holds: it runs its
        (batch, kv head) pairs in chunks of about this many waves of programs (``sm90_bwd.dq_chunk_pairs``),
        each into one chunk-sized accumulator, so the accumulator is bounded by the GPU, not the batch (8: about
        66 MiB at D128 on 132 SMs, or one pair's rows where those are more); below 4096 queries a program counts
        as its share of a 4096-query one, so short sequences take fewer, larger chunks (each chunk costs the host
        a launch and a conversion); 0 runs every pair in one launch, into an accumulator twice dQ's size.  8
        measured within 0.5% of one launch in the geometric mean of seven of the fa2 sweep's fwd_bwd shapes on an
        H100, within about 2% at each, before short sequences' chunks grew (kernels/DESIGN.md).  Packed batches
        always hold a whole one.
    """

    autotune: bool = True
    path: str = "auto"
    configs: Mapping[str, tuple] = field(default_factory=dict)
    causal_group_programs: int = 256
    sm90_forward: bool = True
    backward: str = "auto"
    dq_chunk_waves: int = 8

    def __post_init__(self):
        for name in ("autotune", "sm90_forward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FA2Options: {name} must be True or False, got {getattr(self, name)!r}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"FA2Options: backward must be one of {', '.join(map(repr, BACKWARDS))}, "
                             f"got {self.backward!r}")
        if self.path not in PATHS:
            raise ValueError(f"FA2Options: path must be one of {', '.join(map(repr, PATHS))}, got {self.path!r}")
        for name in ("causal_group_programs", "dq_chunk_waves"):
            n = getattr(self, name)
            if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
                raise ValueError(f"FA2Options: {name} must be an int >= 0, got {n!r}")
        if not isinstance(self.configs, Mapping):
            raise ValueError(f"FA2Options: configs must be a mapping of kernel name to configuration, "
                             f"got {type(self.configs).__name__}")
        configs = {name: _check_config(name, t) for name, t in self.configs.items()}
        object.__setattr__(self, "configs", MappingProxyType(configs))  # frozen all the way down

    def __hash__(self):  # the generated one would hash the configs mapping, which has no hash
        return hash((self.autotune, self.path, tuple(sorted(self.configs.items())), self.causal_group_programs,
                     self.sm90_forward, self.backward, self.dq_chunk_waves))


def _pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def _check_config(name, t) -> tuple:
    """``t`` as a tuple, or a ValueError saying what is wrong with configs[name]."""
    where = f"FA2Options: configs[{name!r}] = {t!r}"
    if name not in KERNELS:
        raise ValueError(f"FA2Options: configs has no kernel {name!r}; kernels: {', '.join(KERNELS)}")
    if not isinstance(t, (tuple, list)) or len(t) not in (4, 5):
        raise ValueError(f"{where}: expected (BLOCK_M, BLOCK_N, num_warps, num_stages[, tag])")
    t = tuple(t)
    bm, bn, warps, stages = t[:4]
    gluon_tile = len(t) == 5 and t[4] == GLUON and t[:3] in GLUON_TILES  # 192 rows: three 64-row consumers
    if not ((_pow2(bm) or gluon_tile) and _pow2(bn) and bm >= 16 and bn >= 16):
        raise ValueError(f"{where}: BLOCK_M and BLOCK_N must be powers of two >= 16")
    if not _pow2(warps):
        raise ValueError(f"{where}: num_warps must be a power of two")
    if not (isinstance(stages, int) and not isinstance(stages, bool) and stages >= 1):
        raise ValueError(f"{where}: num_stages must be an int >= 1")
    if len(t) == 5:
        if t[4] not in (WS, GLUON):
            raise ValueError(f"{where}: the tag must be {WS!r} (warp-specialised) or {GLUON!r} (Gluon)")
        if name != "fwd":
            raise ValueError(f"{where}: only the forward has warp-specialised and Gluon variants")
        if t[4] == WS and (warps, stages) != (4, 2):
            # Triton 3.6 specialises the loop only with 4 warps (with 8 it silently does not); every
            # 3-stage warp-specialised build wrote NaN rows on the H100
            raise ValueError(f"{where}: the warp-specialised forward runs with 4 warps and 2 stages only")
        if t[4] == GLUON and (t[:3] not in GLUON_TILES or stages not in GLUON_STAGES):
            # which of the tiles a head dim runs is checked at the call (sm90.config_reason)
            raise ValueError(f"{where}: the Gluon forward runs 128x128 blocks (128x64 at D256, 192x128 with "
                             f"three consumers at D64), 4 warps a consumer and "
                             f"{' or '.join(map(str, GLUON_STAGES))} stages")
    return t
