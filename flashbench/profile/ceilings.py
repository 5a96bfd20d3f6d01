"""The device's roofline ceilings, measured once per GPU and cached.

- compute: a bf16 8192×8192×8192 matmul (``torch.mm`` into a preallocated output) on standard
  normal data (never zeros: a GPU draws less power, and clocks higher, on zeros), 2·8192³ FLOPs;
- bandwidth: a 1 GiB device-to-device copy (``dst.copy_(src)`` on random bytes), counting the
  bytes read **and** written (2 GiB per copy), in GB/s (decimal).

Both are timed by :func:`flashbench.measure.timer.time_call` (CUDA events per call, L2 flushed before
each call, warm-up by time) and summarised by their median. The result is cached as JSON in
``$XDG_CACHE_HOME/flashbench`` (default ``~/.cache/flashbench``) as ``ceilings-<gpu-uuid>.json``;
``refresh=True`` (``flashbench env --ceilings --refresh``) measures again.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

MATMUL_N = 8192
COPY_BYTES = 1 << 30


class NoGpu(Exception):
    """Ceilings need a CUDA GPU."""


@dataclass
class Ceilings:
    gpu_name: str
    gpu_uuid: str
    matmul_tflops: float      # bf16 8192³ matmul, median
    copy_gbps: float          # device-to-device copy, bytes read + written, median, GB/s (1e9)
    matmul_ms: float
    copy_ms: float
    samples: dict
    measured_utc: str
    torch: str
    method: str = "bf16 8192^3 torch.mm, random normal data; 1 GiB copy_ counting read+written; flashbench.measure.timer (CUDA events, L2 flush), median"

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity where the two roofs meet."""
        return self.matmul_tflops * 1e12 / (self.copy_gbps * 1e9)

    def attainable_tflops(self, intensity: float) -> float:
        return min(self.matmul_tflops, intensity * self.copy_gbps * 1e9 / 1e12)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Ceilings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flashbench"


def gpu_uuid(index: int = 0) -> tuple[str, str]:
    """(name, uuid) of the GPU: NVML's UUID, else PyTorch's."""
    from ..measure.environment import gpu_identity
    from ..measure.measurer import device_identity

    info = gpu_identity(index)
    ident = device_identity("cuda")
    uuid = info.get("gpu_uuid") or ident.get("device_uuid") or "unknown"
    return str(info.get("gpu_name") or ident.get("device_name") or "gpu"), str(uuid)


def cache_path(uuid: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", uuid) or "unknown"
    return cache_dir() / f"ceilings-{safe}.json"


def measure_ceilings(device: str = "cuda") -> Ceilings:
    import torch

    from ..measure.stats import summarize
    from ..measure.timer import time_call
    from ..model.config import Timing

    if not torch.cuda.is_available():
        raise NoGpu("no GPU (CUDA is not available): ceilings are a GPU's matmul and copy limits")
    settings = Timing(warmup_ms=200.0, budget_ms=400.0, min_samples=10, max_samples=100, flush_l2=True)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16, generator=g)
    c = torch.empty(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16)
    mm = time_call(lambda: torch.mm(a, b, out=c), settings, device)
    mm_s = summarize(mm.samples_ms)
    del a, b, c
    src = torch.randint(0, 256, (COPY_BYTES,), device=device, dtype=torch.uint8, generator=g)
    dst = torch.empty_like(src)
    cp = time_call(lambda: dst.copy_(src), settings, device)
    cp_s = summarize(cp.samples_ms)
    del src, dst
    torch.cuda.empty_cache()
    name, uuid = gpu_uuid()
    return Ceilings(
        gpu_name=name, gpu_uuid=uuid,
        matmul_tflops=2.0 * MATMUL_N ** 3 / (mm_s.median_ms * 1e-3) / 1e12,
        copy_gbps=2.0 * COPY_BYTES / (cp_s.median_ms * 1e-3) / 1e9,
        matmul_ms=mm_s.median_ms, copy_ms=cp_s.median_ms,
        samples={"matmul": mm_s.samples, "copy": cp_s.samples, "timing_method": mm.method},
        measured_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
    )


def load_cached(uuid: str) -> Ceilings | None:
    p = cache_path(uuid)
    try:
        return Ceilings.from_dict(json.loads(p.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def get_ceilings(refresh: bool = False, device: str = "cuda") -> tuple[Ceilings, Path, bool]:
    """(ceilings, cache file, came from the cache). Raises NoGpu without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise NoGpu("no GPU (CUDA is not available): ceilings are a GPU's matmul and copy limits")
    _, uuid = gpu_uuid()
    path = cache_path(uuid)
    if not refresh:
        cached = load_cached(uuid)
        if cached is not None:
            return cached, path, True
    c = measure_ceilings(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(c.to_dict(), indent=1))
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return c, path, False
