"""The device's measured ceilings (roofs), as cached per GPU: what a % of roof is a percentage of.

:mod:`flashbench.profile.ceilings` measures them (``flashbench env --ceilings``); this module only
holds the record and its cache, so that the measurer can fill each row's ``pct_peak_flops`` and
``pct_hbm`` from the cache without measuring anything. The roofs:

- compute: the **sustained** bf16 matmul rate (after >= 2 s of continuous load), the rate a sweep
  runs at; the burst rate (from an idle GPU) is kept beside it with the SM clock and power of each;
- memory: the **read** bandwidth of a streaming-read kernel (bytes read once, a tiny result
  written), the most any kernel that reads its inputs once can reach; the copy bandwidth (read +
  written) is kept beside it.

The cache is JSON in ``$XDG_CACHE_HOME/flashbench`` (default ``~/.cache/flashbench``), one file per
GPU UUID; a file of another ``format`` is ignored (measured again).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

CEILINGS_FORMAT = 2
COMPUTE_ROOF = "sustained bf16 matmul"
MEMORY_ROOF = "streaming read"
# The dtypes the compute roof is a rate of: it is a bf16 Tensor Core matmul, and fp16 runs at the same
# rate on the GPUs flashbench knows.  A float32 case has no compute roof (TF32 runs at half that rate,
# IEEE fp32 at a fraction of it), so no % of peak FLOP/s; the memory roof holds for every dtype.
COMPUTE_ROOF_DTYPES = ("float16", "bfloat16")


def has_compute_roof(dtype: str) -> bool:
    """Whether a case of this dtype (``Case.dtype``: "float16", "bfloat16", "float32") has a compute roof."""
    return dtype in COMPUTE_ROOF_DTYPES


@dataclass
class Ceilings:
    gpu_name: str
    gpu_uuid: str
    sustained_tflops: float            # bf16 8192³ matmul after >= 2 s of load, median: the compute roof
    burst_tflops: float                # the same from an idle GPU, first ~200 ms, median
    read_gbps: float                   # streaming read, bytes read / median time (1e9): the memory roof
    copy_gbps: float                   # device-to-device copy, bytes read + written / median time
    sustained_ms: float = 0.0          # median time of one matmul, sustained
    burst_ms: float = 0.0
    read_ms: float = 0.0
    copy_ms: float = 0.0
    sustained_sm_clock_mhz: float | None = None  # NVML, median over the window
    sustained_power_w: float | None = None
    burst_sm_clock_mhz: float | None = None
    burst_power_w: float | None = None
    samples: dict = field(default_factory=dict)
    measured_utc: str = ""
    torch: str = ""
    method: str = ""
    format: int = CEILINGS_FORMAT

    @property
    def compute_tflops(self) -> float:
        """The compute roof every % of peak FLOP/s refers to."""
        return self.sustained_tflops

    @property
    def memory_gbps(self) -> float:
        """The memory roof every % of bandwidth refers to."""
        return self.read_gbps

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity where the two roofs meet."""
        return self.compute_tflops * 1e12 / (self.memory_gbps * 1e9)

    def attainable_tflops(self, intensity: float) -> float:
        return min(self.compute_tflops, intensity * self.memory_gbps * 1e9 / 1e12)

    def roofs_label(self) -> dict:
        """What the % columns of a record are percentages of (written to results.json)."""
        return {"pct_peak_flops": f"{COMPUTE_ROOF}, {self.compute_tflops:.0f} TFLOP/s",
                "pct_hbm": f"{MEMORY_ROOF}, {self.memory_gbps:.0f} GB/s",
                "measured_utc": self.measured_utc}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Ceilings":
        """Raises ValueError for a record of another format."""
        if d.get("format") != CEILINGS_FORMAT:
            raise ValueError(f"ceilings format {d.get('format')!r} is not {CEILINGS_FORMAT}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flashbench"


def cache_path(uuid: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", uuid) or "unknown"
    return cache_dir() / f"ceilings-{safe}.json"


def load_cached(uuid: str) -> Ceilings | None:
    """The cached ceilings of this GPU; None when absent, unreadable or of an older format."""
    if not uuid:
        return None
    try:
        return Ceilings.from_dict(json.loads(cache_path(uuid).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save(c: Ceilings) -> Path:
    """Write the cache file; OSError when it cannot be written."""
    path = cache_path(c.gpu_uuid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(c.to_dict(), indent=1))
    return path


def percent_of_roofs(tflops: float | None, hbm_gbps: float | None, c: Ceilings | None,
                     dtype: str) -> tuple[float | None, float | None]:
    """(``pct_peak_flops``, ``pct_hbm``) of a record of this dtype against the cached roofs; None without
    them, and no ``pct_peak_flops`` for a dtype without a compute roof (``has_compute_roof``)."""
    if c is None:
        return None, None
    flops = (100.0 * tflops / c.compute_tflops
             if tflops is not None and c.compute_tflops > 0 and has_compute_roof(dtype) else None)
    hbm = 100.0 * hbm_gbps / c.memory_gbps if hbm_gbps is not None and c.memory_gbps > 0 else None
    return flops, hbm
