"""``DecodeOptions``: how ``flash_decode`` chooses its configuration, one frozen value per call.

The defaults are what the package ships: the tile (keys per chunk, warps, pipeline stages) and,
where the launch is split, the split count around the heuristic's are chosen on the device by timing
(``tuning.py``).  The other values exist to measure one choice against another or to bound compile
time.  Every field is checked when the object is made, so a bad option is a ValueError before any
kernel runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

BLOCK_N_RANGE = (16, 256)
WARPS = (1, 2, 4, 8, 16)
STAGES_RANGE = (1, 8)


class Tile(NamedTuple):
    """One configuration of the split kernel."""
    block_n: int  # keys per chunk
    num_warps: int
    num_stages: int  # software-pipeline depth of the K/V loads

    def label(self) -> str:
        return f"BLOCK_N={self.block_n},num_warps={self.num_warps},num_stages={self.num_stages}"


@dataclass(frozen=True)
class DecodeOptions:
    """Options of one ``flash_decode`` call.

    autotune: choose the tile by timing the candidates of the call's shape class (once per class,
        cached in the process); False runs the class's first candidate with the heuristic split count.
    config: a pinned tile ``(BLOCK_N, num_warps, num_stages)``: BLOCK_N a power of two in 16..256,
        num_warps in 1, 2, 4, 8, 16, num_stages (Triton's) in 1..8.  It is not tuned (the split count still may be).
    tune_splits: with ``num_splits=0`` and a split launch, also time a quarter, half, twice and four
        times the heuristic's split count (with autotune only).
    overlap_combine: on Hopper and later, launch a split call's combine kernel with programmatic
        dependent launch, so that its launch overlaps the split kernel's tail (it waits for the split
        kernel's writes before reading); False launches it after the split kernel, as on older GPUs.
    Under the CPU interpreter nothing is timed: a pinned tile runs, else one fixed small tile.
    """

    autotune: bool = True
    config: tuple | None = None
    tune_splits: bool = True
    overlap_combine: bool = True

    def __post_init__(self):
        for name in ("autotune", "tune_splits", "overlap_combine"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DecodeOptions: {name} must be True or False, got {getattr(self, name)!r}")
        if self.config is not None:
            object.__setattr__(self, "config", _check_tile(self.config))

    @property
    def pinned(self) -> Tile | None:
        return None if self.config is None else Tile(*self.config)


def _int(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _check_tile(t) -> tuple:
    where = f"DecodeOptions: config = {t!r}"
    if not isinstance(t, (tuple, list)) or len(t) != 3 or not all(_int(x) for x in t):
        raise ValueError(f"{where}: expected three ints (BLOCK_N, num_warps, num_stages)")
    block_n, warps, stages = t
    lo, hi = BLOCK_N_RANGE
    if not (lo <= block_n <= hi and block_n & (block_n - 1) == 0):
        raise ValueError(f"{where}: BLOCK_N must be a power of two in {lo}..{hi}")
    if warps not in WARPS:
        raise ValueError(f"{where}: num_warps must be one of {', '.join(map(str, WARPS))}")
    if not STAGES_RANGE[0] <= stages <= STAGES_RANGE[1]:
        raise ValueError(f"{where}: num_stages must be in {STAGES_RANGE[0]}..{STAGES_RANGE[1]}")
    return tuple(t)
