"""The one timing implementation (GPU and CPU), following triton's do_bench and nvbench.

GPU: CUDA events around every call; before every call the L2 cache is flushed by writing a
256 MB buffer (outside the events); warm-up by time, so compilation and autotuning stay out
of the samples. Samples are taken in batches (:mod:`flashbench.measure.sampling` decides how
many, stopping on the noise target or the time budget). By default each batch is enqueued
behind a kernel that holds the stream (:mod:`flashbench.measure.stream_hold`) and then released,
so the GPU runs the batch back to back and the events time the GPU alone, even when the host
enqueues a call more slowly than the GPU runs it. While the GPU is held, the host's own time to
enqueue each call is measured too (``host_ms``). NVML's energy counter is read around every
batch the GPU runs (:mod:`flashbench.measure.energy`), and its SM clock while the batch runs
(:mod:`flashbench.measure.sm_clock`).
CUDA-graph mode captures the call (fwd, bwd or fwd_bwd) and times graph replays the same way.
CPU: ``time.perf_counter`` around every call, the same warm-up, sampling rule and statistics. A
sample set no figure may come from (a 0 ms median, a negative or non-finite time) is refused
(:func:`flashbench.measure.stats.check_samples`).

``timing_method`` values (:data:`TIMING_METHODS`): ``<how>_<what>_<l2>`` where what is ``events``
(eager calls) or ``graph`` (graph replays) and l2 is ``l2_flush`` or ``warm_l2``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.config import Timing, gpu_timed
from .energy import EnergyMeter
from .sm_clock import ClockSampler
from .sampling import MAX_BATCH, Batch, CallSynchronises, HoldFailed, collect, extend_for_energy
from .stats import check_samples

L2_FLUSH_BYTES = 256 * 1024 * 1024

TIMING_METHODS = {
    "held_events_l2_flush": "eager calls, CUDA events per call, each batch enqueued behind a held stream "
                            "(GPU time only), L2 flushed before each call",
    "held_events_warm_l2": "the same with a warm L2 (flush_l2: false)",
    "held_graph_l2_flush": "CUDA-graph replays of the call, held batches, L2 flushed before each replay",
    "held_graph_warm_l2": "CUDA-graph replays, held batches, warm L2",
    "cuda_events_l2_flush": "eager calls, CUDA events per call, enqueued as they are timed (hold_stream: false): "
                            "a host slower than the GPU shows in the samples",
    "cuda_events_warm_l2": "the same with a warm L2",
    "cuda_graph_l2_flush": "CUDA-graph replays enqueued as they are timed, L2 flushed before each replay",
    "cuda_graph_warm_l2": "CUDA-graph replays enqueued as they are timed, warm L2",
    "cuda_events_l2_flush_call_syncs": "the call waits for the GPU inside (it synchronises), so it cannot be "
                                       "enqueued ahead: plain per-call events",
    "cuda_events_warm_l2_call_syncs": "the same with a warm L2",
    "cuda_events_l2_flush_unheld": "the stream could not be held (no Triton here, or held batches kept timing out: "
                                   "a very slow host): plain per-call events",
    "cuda_events_warm_l2_unheld": "the same with a warm L2",
    "cuda_graph_l2_flush_unheld": "graph replays whose held batches kept timing out: plain per-replay events",
    "cuda_graph_warm_l2_unheld": "the same with a warm L2",
    "cpu_perf_counter": "CPU runs: time.perf_counter around every call",
}


def timing_method(graph: bool, flush_l2: bool, how: str) -> str:
    """The label of a GPU timing: ``how`` is held, plain, call_syncs or unheld."""
    what = "graph" if graph else "events"
    l2 = "l2_flush" if flush_l2 else "warm_l2"
    if how == "held":
        return f"held_{what}_{l2}"
    if how not in ("plain", "call_syncs", "unheld"):
        raise ValueError(f"how: {how!r} is not one of held, plain, call_syncs, unheld")
    return f"cuda_{what}_{l2}" + ("" if how == "plain" else f"_{how}")


@dataclass
class TimingResult:
    samples_ms: list[float]
    method: str
    host_ms: float | None = None      # median host time to enqueue one call while the GPU was held
    avg_power_w: float | None = None  # board power while the timed batches ran (NVML), None if unknown
    hold_timeouts: int = 0            # held batches that timed out (a full launch queue, a stalled host)
    sm_clock_mhz: float | None = None  # median SM clock (NVML) while the timed batches ran, None if unknown


class _Windows:
    """What is read around each batch the GPU runs (a window: from a held batch's release, or an unheld
    batch's first call, until the batch is done; an unheld window's clock part opens once the batch is
    enqueued): the energy meter and the SM clock, either of which may be missing. The clock describes
    the samples only: :meth:`clock_of_samples` takes its figure and stops it before the energy pass."""

    def __init__(self, energy: EnergyMeter | None, clock: ClockSampler | None):
        self.energy, self._clock, self._clock_on = energy, clock, clock is not None

    def _open(self) -> list:
        return [w for w in (self.energy, self._clock if self._clock_on else None) if w is not None]

    def reset(self) -> None:
        self._clock_on = self._clock is not None
        for w in self._open():
            w.reset()

    def begin(self, clock: bool = True) -> None:
        """Open a window; ``clock`` False: the energy's only, the clock's later (:meth:`begin_clock`)."""
        for w in self._open():
            if clock or w is not self._clock:
                w.begin()

    def begin_clock(self) -> None:
        if self._clock_on:
            self._clock.begin()

    def end(self) -> None:
        for w in self._open():
            w.end()

    def discard(self) -> None:
        for w in self._open():
            w.discard()

    def clock_of_samples(self) -> float | None:
        if not self._clock_on:
            return None
        self._clock_on = False
        return self._clock.median_mhz


class GraphCaptureError(Exception):
    """The call could not be captured into a CUDA graph (the message says why)."""


class _L2Flusher:
    _buffers: dict = {}

    def __init__(self, device):
        key = str(device)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        self.buf = self._buffers[key]

    def __call__(self):
        self.buf.zero_()


def _nothing() -> None:
    return None


def _warm_up(call: Callable[[], object], before: Callable[[], object], s: Timing) -> tuple[float, float]:
    """(GPU time per call + ``before``, host time per call) from a few calls, then warm up for warmup_ms."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        before()
        call()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 3  # includes `before` (the flush): a conservative estimate
    host = []
    deadline = time.perf_counter() + s.warmup_ms / 1e3  # a host slower than the GPU stretches no warm-up
    for _ in range(max(1, int(s.warmup_ms / max(estimate, 1e-4)))):
        before()
        t0 = time.perf_counter()
        call()
        host.append((time.perf_counter() - t0) * 1e3)
        if t0 > deadline:
            break
    torch.cuda.synchronize()
    return estimate, statistics.median(host)


def _plain_batch(call, before, windows: _Windows) -> Callable[[int, float | None], Batch]:
    """Batches enqueued as they are timed: events per call, no hold."""
    def run(n: int, _timeout) -> Batch:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        # the clock's reads wait until the host has enqueued the batch: its thread would take the GIL from
        # the enqueueing, whose gaps these samples time
        windows.begin(clock=False)
        try:
            for i in range(n):
                before()
                starts[i].record()
                call()
                ends[i].record()
            windows.begin_clock()
            torch.cuda.synchronize()
        except BaseException:
            windows.discard()  # no window stays open (a clock read on and on) after a call or a fault that raised
            raise
        windows.end()
        return Batch([a.elapsed_time(b) for a, b in zip(starts, ends)])
    return run


def _held_batch(call, before, hold, windows: _Windows) -> Callable[[int, float | None], Batch]:
    """Batches enqueued whole behind a held stream, then released: the GPU runs them back to back."""
    clock = time.perf_counter

    def run(n: int, timeout_ms: float) -> Batch:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        host, walls = [], []
        try:
            hold.hold(timeout_ms)
        except Exception as e:  # noqa: BLE001 - no Triton, a launch failure: time without holding
            raise HoldFailed(f"the stream cannot be held ({type(e).__name__}: {e})") from e
        try:
            for i in range(n):
                t0 = clock()
                before()
                starts[i].record()
                t1 = clock()
                call()
                t2 = clock()
                ends[i].record()
                walls.append((clock() - t0) * 1e3)
                host.append((t2 - t1) * 1e3)
        except BaseException:
            hold.release()  # a call that raised: let the GPU go now, not at the timeout
            raise
        windows.begin()
        try:
            hold.release()
            torch.cuda.synchronize()  # a kernel's fault surfaces here
            timed_out = hold.timed_out()
        except BaseException:
            windows.discard()
            raise
        if timed_out:
            windows.discard()
            return Batch([], sample_wall_ms=walls, timed_out=True)
        windows.end()
        return Batch([a.elapsed_time(b) for a, b in zip(starts, ends)], host, walls)
    return run


def _stream_hold(device):
    try:
        from .stream_hold import StreamHold  # Triton: imported only where the GPU is held

        return StreamHold.for_device(device)
    except Exception as e:  # noqa: BLE001 - no Triton, no pinned memory: time without holding
        raise HoldFailed(f"the stream cannot be held ({type(e).__name__}: {e})") from e


def time_cuda(call: Callable[[], object], s: Timing, device="cuda", stream: torch.cuda.Stream | None = None,
              energy: EnergyMeter | None = None, clock: ClockSampler | None = None) -> TimingResult:
    """Time ``call`` on the GPU. ``stream``: where a CUDA graph is captured (the stream the call's
    own forward ran on, for a backward); ``energy``, ``clock``: a meter and a clock sampler to read
    around the batches."""
    if s.cuda_graph:
        call = capture_graph(call, device, stream)
    flush = _L2Flusher(device) if s.flush_l2 else _nothing
    call()  # the first call may compile or autotune: never part of an estimate
    torch.cuda.synchronize()
    if s.rest_ms > 0:
        # at the power limit the SM clock falls under load and recovers at idle: the first call's autotuning (or the
        # backend timed before) would otherwise leave this call's samples at a lower clock than a call that did not
        # tune starts at
        time.sleep(s.rest_ms / 1e3)
    estimate, host_estimate = _warm_up(call, flush, s)
    windows = _Windows(energy, clock)
    windows.reset()
    how = "plain"
    if s.hold_stream:
        try:
            hold = _stream_hold(device)
            batch = _held_batch(call, flush, hold, windows)
            got = collect(batch, s, estimate + host_estimate, host_estimate + 0.02)
            check_samples(got.samples_ms)
            sm_clock = windows.clock_of_samples()
            _energy_pass(batch, _plain_batch(call, flush, windows), energy, s, got, estimate, host_estimate + 0.02)
            return TimingResult(got.samples_ms, timing_method(s.cuda_graph, s.flush_l2, "held"),
                                host_ms=statistics.median(got.host_ms) if got.host_ms else None,
                                avg_power_w=energy.avg_power_w if energy else None, hold_timeouts=got.timeouts,
                                sm_clock_mhz=sm_clock)
        except CallSynchronises:
            how = "call_syncs"
        except HoldFailed:
            how = "unheld"
        windows.reset()
    batch = _plain_batch(call, flush, windows)
    got = collect(batch, s, estimate, None)
    check_samples(got.samples_ms)
    sm_clock = windows.clock_of_samples()
    _energy_pass(batch, batch, energy, s, got, estimate, None)
    return TimingResult(got.samples_ms, timing_method(s.cuda_graph, s.flush_l2, how),
                        avg_power_w=energy.avg_power_w if energy else None, sm_clock_mhz=sm_clock)


# plain batches for the energy pass when the host enqueues a sample in at most this share of its GPU time
ENERGY_PLAIN_HOST_SHARE = 0.5
MAX_ENERGY_BATCH = 20_000  # samples of one plain energy batch (its events are created up front)


def _energy_pass(batch, plain, energy: EnergyMeter | None, s: Timing, got, estimate: float,
                 host: float | None) -> None:
    """``timing.energy_ms``: more batches of the same call, outside the samples, until the energy
    windows are long enough to read (energy.py); the samples are already taken.

    A window is one batch, and a held batch is bounded by the launch queue: for a fast call it can last
    less than a step of the energy counter, and such windows need many steps to add up to a reading
    (energy.py). Where the host enqueues a sample in well under its GPU time, plain batches (``plain``)
    keep the GPU as busy without a hold, and one of them can span several steps."""
    if energy is None or s.energy_ms <= 0:
        return
    # a batch's GPU time per sample: the call and the flush before it (the warm-up's estimate)
    per_sample = max(estimate, sum(got.samples_ms) / len(got.samples_ms) if got.samples_ms else 0.0)
    max_batch = MAX_BATCH
    if host is None or host <= ENERGY_PLAIN_HOST_SHARE * per_sample:
        batch, host, max_batch = plain, None, MAX_ENERGY_BATCH
    try:
        extend_for_energy(batch, lambda: energy.short_ms, s.energy_ms, per_sample, host, max_batch=max_batch)
    except HoldFailed:  # the stream cannot be held now: the samples stand, the energy is what the windows read
        energy.discard()


def capture_graph(call: Callable[[], object], device="cuda",
                  stream: torch.cuda.Stream | None = None) -> Callable[[], object]:
    """Capture ``call`` into a CUDA graph and return its replay. Warm-up runs on a side stream, as
    capture requires; the inputs are the call's own tensors (static), and the graph's outputs
    (the gradients, for a backward) live in its memory pool. A call with a backward is captured
    whole: autograd runs each backward op on the stream its forward ran on, so the forward must run
    on the capture stream, inside the capture (fwd_bwd) or before it (bwd: the caller runs the
    forward on ``stream``). Raises :class:`GraphCaptureError` when the call cannot be captured."""
    try:
        side = stream if stream is not None else torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            for _ in range(3):
                call()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=side):
            outputs = call()
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any capture failure is a reason, not a crash
        try:
            torch.cuda.synchronize()  # let work the failed capture left behind finish
        except Exception:  # noqa: BLE001 - the capture's error is the one to report
            pass
        raise GraphCaptureError(f"CUDA-graph capture failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})") \
            from None

    def replay():
        graph.replay()
        return outputs
    return replay


def _cpu_batch(call: Callable[[], object]) -> Callable[[int, float | None], Batch]:
    """Batches on the CPU: ``time.perf_counter`` around every call."""
    def run(n: int, _timeout) -> Batch:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1e3)
        return Batch(samples)
    return run


def time_cpu(call: Callable[[], object], s: Timing) -> TimingResult:
    """The GPU timer's warm-up and sampling rule (:func:`~flashbench.measure.sampling.collect`: min/max
    samples, the noise target, the budget in wall time) with ``time.perf_counter`` around each call."""
    call()  # the first call may compile: never part of an estimate
    t0 = time.perf_counter()
    call()
    estimate = (time.perf_counter() - t0) * 1e3
    deadline = time.perf_counter() + s.warmup_ms / 1e3
    while time.perf_counter() < deadline:
        call()
    got = collect(_cpu_batch(call), s, estimate, None)
    check_samples(got.samples_ms)
    return TimingResult(got.samples_ms, "cpu_perf_counter")


def time_call(call: Callable[[], object], s: Timing, device: str, stream: torch.cuda.Stream | None = None,
              energy: EnergyMeter | None = None, clock: ClockSampler | None = None) -> TimingResult:
    if gpu_timed(device):
        return time_cuda(call, s, device, stream, energy, clock)
    return time_cpu(call, s)
