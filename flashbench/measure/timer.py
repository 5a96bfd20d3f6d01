"""The one timing implementation (GPU and CPU), following triton's do_bench and nvbench.

GPU: CUDA events around every call; before every call the L2 cache is flushed by writing a
256 MB buffer (outside the events); warm-up by time, so compilation and autotuning stay out
of the samples; the sample count comes from a time budget, bounded by a minimum and maximum.
Optional CUDA-graph mode times graph replays: no launch gaps, but a warm L2 (labelled so).
CPU: ``time.perf_counter`` around every call, same warm-up and statistics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.config import Timing

L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass
class TimingResult:
    samples_ms: list[float]
    method: str


def _sample_count(estimate_ms: float, s: Timing) -> int:
    n = int(s.budget_ms / max(estimate_ms, 1e-4))
    return max(s.min_samples, min(s.max_samples, n))


class _L2Flusher:
    _buffers: dict = {}

    def __init__(self, device):
        key = str(device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        self.buf = self._buffers[key]

    def __call__(self):
        self.buf.zero_()


def _event_samples(run: Callable[[], object], before: Callable[[], object], s: Timing) -> list[float]:
    """Estimate, warm up and sample ``run`` with CUDA events; ``before`` runs outside the events."""
    # estimate the per-call time on a few calls, then warm up for warmup_ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        before()
        run()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 3  # includes `before` (the flush): a conservative estimate
    for _ in range(max(1, int(s.warmup_ms / max(estimate, 1e-4)))):
        before()
        run()
    n = _sample_count(estimate, s)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        before()
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in zip(starts, ends)]


def _nothing() -> None:
    return None


def time_cuda(call: Callable[[], object], s: Timing, device="cuda") -> TimingResult:
    if s.cuda_graph:
        return _time_cuda_graph(call, s, device)
    flush = _L2Flusher(device) if s.flush_l2 else _nothing
    call()  # the first call may compile or autotune: never part of an estimate
    torch.cuda.synchronize()
    samples = _event_samples(call, flush, s)
    return TimingResult(samples, "cuda_events_l2_flush" if s.flush_l2 else "cuda_events_warm_l2")


def _time_cuda_graph(call, s: Timing, device) -> TimingResult:
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA-graph capture requires
        for _ in range(3):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    torch.cuda.synchronize()
    return TimingResult(_event_samples(graph.replay, _nothing, s), "cuda_graph_warm_l2")


def time_cpu(call: Callable[[], object], s: Timing) -> TimingResult:
    call()
    t0 = time.perf_counter()
    call()
    estimate = (time.perf_counter() - t0) * 1e3
    deadline = time.perf_counter() + s.warmup_ms / 1e3
    while time.perf_counter() < deadline:
        call()
    n = _sample_count(estimate, s)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return TimingResult(samples, "cpu_perf_counter")


def time_call(call: Callable[[], object], s: Timing, device: str) -> TimingResult:
    if str(device).startswith("cuda"):
        return time_cuda(call, s, device)
    return time_cpu(call, s)
