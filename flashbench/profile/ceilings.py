"""The device's roofline ceilings, measured once per GPU and cached.

- compute, bf16 8192×8192×8192 matmuls (``torch.mm`` into a preallocated output) on standard normal
  data (never zeros: a GPU draws less power, and clocks higher, on zeros), 2·8192³ FLOPs each,
  CUDA events per call with no gap between calls, median:
  - **burst**: from an idle GPU (``IDLE_S`` of rest first), the first ``BURST_MS`` of matmuls;
  - **sustained**: after ``LOAD_S`` of continuous matmuls, the next ``SUSTAINED_MS``: the rate a
    sweep runs at, hence the compute roof (power-limited GPUs settle well below their burst);
  each with the SM clock and board power NVML reported during its window (medians);
- read bandwidth: :mod:`flashbench.profile.read_bandwidth`'s streaming read of a 4 GiB fp32
  buffer, bytes read over the median time, the best of its configurations: the memory roof;
- copy bandwidth: a 1 GiB device-to-device copy (``dst.copy_(src)`` on random bytes), counting the
  bytes read **and** written, in GB/s (decimal).

The bandwidths are timed by :func:`flashbench.measure.timer.time_call` (the timer of every row:
L2 flushed before each call, warm-up by time). The record and its cache (per GPU UUID, with a format
number: an older file is measured again) are :mod:`flashbench.measure.ceilings_cache`;
``refresh=True`` (``flashbench env --ceilings --refresh``) measures again. The datasheet peak of
the model is :mod:`flashbench.profile.datasheet`.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import time
from pathlib import Path

from ..measure.ceilings_cache import Ceilings, cache_path, load_cached, save  # noqa: F401  (re-exported)
from ..measure.environment import nvml_index
from ..measure.gpu_monitor import PeriodicSampler

MATMUL_N = 8192
COPY_BYTES = 1 << 30
READ_BYTES = 4 << 30  # long enough that launch and tail are ~1% of a call
IDLE_S = 1.5          # rest before the burst, so that it starts from an idle GPU
BURST_MS = 200.0
LOAD_S = 2.0          # continuous load before the sustained window
SUSTAINED_MS = 500.0
NVML_INTERVAL_S = 0.02
METHOD = ("bf16 8192^3 torch.mm on random normal data, events per call without gaps: burst = first 200 ms from an "
          "idle GPU, sustained = 500 ms after 2 s of load; read = streaming-read Triton kernel over 4 GiB fp32 "
          "(bytes read); copy = 1 GiB copy_ counting read + written; bandwidths timed by flashbench.measure.timer "
          "(L2 flushed), medians")


class NoGpu(Exception):
    """Ceilings need a CUDA GPU."""


def gpu_uuid() -> tuple[str, str]:
    """(name, uuid) of the GPU the ceilings are measured on, PyTorch's current device (which follows
    CUDA_VISIBLE_DEVICES, as the measurer does); NVML's first GPU when PyTorch gives no UUID."""
    from ..measure.environment import gpu_identity
    from ..measure.measurer import device_identity

    ident = device_identity("cuda")
    info = gpu_identity(0) if not ident.get("device_uuid") else {}
    uuid = ident.get("device_uuid") or info.get("gpu_uuid") or "unknown"
    return str(ident.get("device_name") or info.get("gpu_name") or "gpu"), str(uuid)


class NvmlWindow(PeriodicSampler):
    """Samples the SM clock and board power in a thread; :meth:`between` gives the medians of the
    samples taken inside a wall-clock span."""

    def __init__(self, index: int = 0, interval_s: float = NVML_INTERVAL_S, read_state=None):
        from ..measure.environment import gpu_state

        self.index, self.interval_s = index, interval_s
        self._read = read_state or gpu_state
        self.samples: list[tuple[float, float | None, float | None]] = []  # (time, SM MHz, W)

    def sample(self) -> None:
        st = self._read(self.index) or {}
        self.samples.append((time.perf_counter(), st.get("sm_clock_mhz"), st.get("power_w")))

    def between(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        clocks = [s[1] for s in inside if s[1] is not None]
        power = [s[2] for s in inside if s[2] is not None]
        return (statistics.median(clocks) if clocks else None, statistics.median(power) if power else None)


def back_to_back(fn, count: int) -> list:
    """Enqueue ``count`` calls with an event pair around each and no gap; the pairs (not yet synchronised)."""
    import torch

    pairs = []
    for _ in range(count):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
    return pairs


def event_window(pairs, t_done: float) -> tuple[list[float], float, float]:
    """(samples in ms, wall-clock start, end) of event pairs that the GPU finished at ``t_done``: the
    window is placed back from the synchronisation by the time its samples took."""
    samples = [a.elapsed_time(b) for a, b in pairs]
    span_s = pairs[0][0].elapsed_time(pairs[-1][1]) / 1e3
    return samples, t_done - span_s, t_done


def measure_compute(device: str = "cuda", nvml_index: int = 0) -> dict:
    """Burst and sustained bf16 matmul rates with the SM clock and power during each."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16, generator=g)
    c = torch.empty(MATMUL_N, MATMUL_N, device=device, dtype=torch.bfloat16)

    def mm():
        torch.mm(a, b, out=c)

    flop = 2.0 * MATMUL_N ** 3
    pairs = back_to_back(mm, 3)  # cuBLAS's handle and heuristics; a first estimate of one call
    torch.cuda.synchronize()
    est_ms = max(min(x.elapsed_time(y) for x, y in pairs[1:]), 1e-3)
    out: dict = {}
    with NvmlWindow(nvml_index) as nvml:
        time.sleep(IDLE_S)
        pairs = back_to_back(mm, max(10, round(BURST_MS / est_ms)))
        torch.cuda.synchronize()
        burst, t0, t1 = event_window(pairs, time.perf_counter())
        out["burst"] = (burst, *nvml.between(t0, t1))
        for _ in range(max(1, round(LOAD_S * 1e3 / est_ms))):  # continuous load; the host runs ahead
            mm()
        pairs = back_to_back(mm, max(10, round(SUSTAINED_MS / est_ms)))
        torch.cuda.synchronize()
        sustained, t0, t1 = event_window(pairs, time.perf_counter())
        out["sustained"] = (sustained, *nvml.between(t0, t1))
    del a, b, c
    result = {}
    for key, (samples, clock, power) in out.items():
        ms = statistics.median(samples)
        result[key] = {"tflops": flop / (ms * 1e-3) / 1e12, "ms": ms, "sm_clock_mhz": clock, "power_w": power,
                       "samples": len(samples)}
    return result


def _bandwidth_timing():
    from ..model.config import Timing

    # the whole budget (no early stop on noise): the median of a ceiling is worth 300 ms
    return Timing(warmup_ms=100.0, budget_ms=300.0, min_samples=10, max_samples=100, flush_l2=True, max_noise_pct=0)


def measure_read(device: str = "cuda") -> dict:
    """The streaming read's best configuration: GB/s of bytes read."""
    import torch

    from ..measure.stats import summarize
    from ..measure.timer import time_call
    from .read_bandwidth import CONFIGS, PERSISTENT_CONFIGS, read_sum, read_sum_persistent

    settings = _bandwidth_timing()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(READ_BYTES // 4, device=device, dtype=torch.float32, generator=g)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    candidates = [(dict(block=b, num_warps=w), torch.empty(x.numel() // b, device=device, dtype=torch.float32),
                   lambda out, b=b, w=w: read_sum(x, out, b, w)) for b, w in CONFIGS]
    candidates += [(dict(block=b, num_warps=w, programs=k * sms, stages=s),
                    torch.empty(k * sms, device=device, dtype=torch.float32),
                    lambda out, b=b, w=w, s=s: read_sum_persistent(x, out, b, w, s)) for b, w, k, s in PERSISTENT_CONFIGS]
    best: dict = {}
    for config, out, run in candidates:
        t = time_call(lambda: run(out), settings, device)
        ms = summarize(t.samples_ms).median_ms
        gbps = x.numel() * 4 / (ms * 1e-3) / 1e9
        if not best or gbps > best["gbps"]:
            best = {"gbps": gbps, "ms": ms, **config, "samples": len(t.samples_ms), "timing_method": t.method}
    del x
    return best


def measure_copy(device: str = "cuda") -> dict:
    import torch

    from ..measure.stats import summarize
    from ..measure.timer import time_call

    settings = _bandwidth_timing()
    g = torch.Generator(device=device).manual_seed(0)
    src = torch.randint(0, 256, (COPY_BYTES,), device=device, dtype=torch.uint8, generator=g)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), settings, device)
    ms = summarize(t.samples_ms).median_ms
    del src, dst
    return {"gbps": 2.0 * COPY_BYTES / (ms * 1e-3) / 1e9, "ms": ms, "samples": len(t.samples_ms)}


def measure_ceilings(device: str = "cuda") -> Ceilings:
    import torch

    if not torch.cuda.is_available():
        raise NoGpu("no GPU (CUDA is not available): ceilings are a GPU's matmul and bandwidth limits")
    name, uuid = gpu_uuid()
    found = nvml_index(uuid)
    compute = measure_compute(device, 0 if found is None else found)  # first, while the GPU is idle
    read = measure_read(device)
    copy = measure_copy(device)
    torch.cuda.empty_cache()
    burst, sustained = compute["burst"], compute["sustained"]
    return Ceilings(
        gpu_name=name, gpu_uuid=uuid,
        sustained_tflops=sustained["tflops"], burst_tflops=burst["tflops"],
        read_gbps=read["gbps"], copy_gbps=copy["gbps"],
        sustained_ms=sustained["ms"], burst_ms=burst["ms"], read_ms=read["ms"], copy_ms=copy["ms"],
        sustained_sm_clock_mhz=sustained["sm_clock_mhz"], sustained_power_w=sustained["power_w"],
        burst_sm_clock_mhz=burst["sm_clock_mhz"], burst_power_w=burst["power_w"],
        samples={"burst": burst["samples"], "sustained": sustained["samples"], "read": read, "copy": copy},
        measured_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, method=METHOD,
    )


def get_ceilings(refresh: bool = False, device: str = "cuda") -> tuple[Ceilings, Path, bool]:
    """(ceilings, cache file, came from the cache). Raises NoGpu without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise NoGpu("no GPU (CUDA is not available): ceilings are a GPU's matmul and bandwidth limits")
    _, uuid = gpu_uuid()
    path = cache_path(uuid)
    if not refresh:
        cached = load_cached(uuid)
        if cached is not None:
            return cached, path, True
    c = measure_ceilings(device)
    try:
        path = save(c)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return c, path, False
