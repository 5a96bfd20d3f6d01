"""How many samples, in which batches, and what a batch that timed out means. No GPU here.

The timer takes samples in batches: a batch is enqueued whole (behind a held stream, see
:mod:`flashbench.measure.stream_hold`), run, synchronised; then the rule below decides whether to
stop:

- never before ``min_samples``, never past ``max_samples``;
- once the median's 95% confidence interval is within ± ``max_noise_pct`` of it (nvbench's
  ``--max-noise``; :func:`flashbench.measure.stats.noise_pct`);
- once ``budget_ms`` of wall time went into sampling, whatever the noise.

Batch sizes: the first is small (``FIRST_BATCH``: a mistaken batch costs little), each next one at
most doubles the samples so far (the interval is checked often enough not to overshoot the noise
target by much), and none is larger than what the remaining budget pays for, than the CUDA launch
queue holds, or than a hold of at most ``HOLD_MAX_MS`` lets the host enqueue (:func:`hold_fits`).
A held batch must fit in the queue: the host cannot enqueue more than about
``LAUNCH_QUEUE`` launches while the GPU runs none of them, and a sample is a flush, two event records
and the call's kernels (a fwd_bwd call launches about five), so at most ``LAUNCH_QUEUE // 8`` samples.
A call that launches more kernels shows itself: the host stalls inside the batch until the hold times out; the sample it stalled in
tells how many samples the queue took, and the next batches are cut to half of that. A stall in the
first sample of a batch cannot be the queue: the call waits for the GPU (it synchronises), so it
cannot be pre-enqueued, and the timer falls back to plain per-call events.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from ..model.config import Timing
from .stats import noise_pct

LAUNCH_QUEUE = 1024                 # pending launches the CUDA launch queue holds, about
MAX_BATCH = LAUNCH_QUEUE // 8       # a flush, two event records and up to five kernels per sample
FIRST_BATCH = 4
MAX_TIMEOUTS = 3                    # held batches that may time out before the timer gives up holding
HOLD_MARGIN = 4.0                   # the hold lasts this many times the expected enqueue time ...
HOLD_SLACK_MS = 50.0                # ... plus this (a host hiccup, a collection of the garbage collector)
HOLD_MIN_MS, HOLD_MAX_MS = 100.0, 10_000.0
STALL_FRACTION = 0.5                # one sample's enqueue taking this share of the hold is a stall


class CallSynchronises(Exception):
    """The host stalled in the first sample of a held batch: the call waits for the GPU."""


class HoldFailed(Exception):
    """Held batches kept timing out without a stall to blame: the host is too slow to hold for."""


def stop_reason(done: int, elapsed_ms: float, noise: float | None, s: Timing) -> str | None:
    """Why sampling stops now ("max_samples", "budget", "noise"), or None to go on."""
    if done >= s.max_samples:
        return "max_samples"
    if done < s.min_samples:
        return None
    if elapsed_ms >= s.budget_ms:
        return "budget"
    if s.max_noise_pct > 0 and noise is not None and noise <= s.max_noise_pct:
        return "noise"
    return None


def next_batch_size(done: int, elapsed_ms: float, per_sample_ms: float, s: Timing, cap: int = MAX_BATCH) -> int:
    """Samples in the next batch (at least 1)."""
    if cap < 1:
        raise ValueError(f"cap: must be >= 1, got {cap}")
    by_budget = math.ceil(max(s.budget_ms - elapsed_ms, 0.0) / max(per_sample_ms, 1e-4))
    growth = max(FIRST_BATCH, done) if s.max_noise_pct > 0 else by_budget
    n = max(s.min_samples - done, min(by_budget, growth), 1)
    return max(1, min(n, s.max_samples - done, cap))


def hold_timeout_ms(n: int, host_per_sample_ms: float) -> float:
    """How long a hold may last for a batch of ``n`` samples whose enqueue costs about
    ``host_per_sample_ms`` each."""
    return min(HOLD_MAX_MS, max(HOLD_MIN_MS, HOLD_MARGIN * n * max(host_per_sample_ms, 0.0) + HOLD_SLACK_MS))


def hold_fits(host_per_sample_ms: float) -> int:
    """The most samples a held batch may have: its hold must last ``HOLD_MARGIN`` times their enqueue
    within ``HOLD_MAX_MS``, else a host that enqueues slowly (but steadily) times out batch after batch."""
    return max(1, int((HOLD_MAX_MS - HOLD_SLACK_MS) / (HOLD_MARGIN * max(host_per_sample_ms, 1e-9))))


def stalled_at(sample_wall_ms: list[float], timeout_ms: float) -> int | None:
    """The sample the host stalled in while the stream was held: the first whose enqueue took at
    least ``STALL_FRACTION`` of the hold; None when the time was spread over the batch."""
    for i, w in enumerate(sample_wall_ms):
        if w >= STALL_FRACTION * timeout_ms:
            return i
    return None


@dataclass
class Batch:
    """One batch's outcome."""

    samples_ms: list[float]                 # GPU time per call (events); empty when timed out
    host_ms: list[float] = field(default_factory=list)        # enqueue time of each call alone (held)
    sample_wall_ms: list[float] = field(default_factory=list)  # enqueue time of each whole sample
    timed_out: bool = False


@dataclass
class Collected:
    samples_ms: list[float]
    host_ms: list[float]
    batches: int
    timeouts: int
    stopped_by: str


RunBatch = Callable[[int, "float | None"], Batch]  # (samples, hold timeout or None) -> Batch


def collect(run_batch: RunBatch, s: Timing, per_sample_ms: float, host_per_sample_ms: float | None,
            clock: Callable[[], float] = time.perf_counter) -> Collected:
    """Run batches until :func:`stop_reason` says stop. ``host_per_sample_ms`` None: batches are not
    held (no timeouts). Raises :class:`CallSynchronises` or :class:`HoldFailed` for the caller to
    fall back to unheld batches."""
    held = host_per_sample_ms is not None
    samples: list[float] = []
    host: list[float] = []
    cap, batches, timeouts, ok_ms = MAX_BATCH, 0, 0, 0.0
    t0 = clock()
    while True:
        elapsed = (clock() - t0) * 1e3
        reason = stop_reason(len(samples), elapsed, noise_pct(samples) if s.max_noise_pct > 0 else None, s)
        if reason:
            return Collected(samples, host, batches, timeouts, reason)
        limit = cap if samples else min(cap, FIRST_BATCH)
        if held:
            limit = min(limit, hold_fits(host_per_sample_ms))
        n = next_batch_size(len(samples), elapsed, per_sample_ms, s, limit)
        timeout = hold_timeout_ms(n, host_per_sample_ms) if held else None
        t_batch = clock()
        b = run_batch(n, timeout)
        batches += 1
        if b.timed_out:
            timeouts += 1
            where = stalled_at(b.sample_wall_ms, timeout)
            if where == 0:
                raise CallSynchronises("the host stalled in the first call of a held batch: the call waits for the GPU")
            if timeouts >= MAX_TIMEOUTS:
                raise HoldFailed(f"{timeouts} held batches timed out")
            if where is not None:
                cap = max(1, where // 2)  # the launch queue took `where` samples
            elif b.sample_wall_ms:  # no stall: the host enqueued more slowly than expected
                host_per_sample_ms = max(host_per_sample_ms, sum(b.sample_wall_ms) / len(b.sample_wall_ms))
            continue
        samples += b.samples_ms
        host += b.host_ms
        ok_ms += (clock() - t_batch) * 1e3
        per_sample_ms = max(ok_ms / max(len(samples), 1), 1e-4)


def extend_for_energy(run_batch: RunBatch, short_ms: Callable[[], float], cap_ms: float, per_sample_ms: float,
                      host_per_sample_ms: float | None, clock: Callable[[], float] = time.perf_counter,
                      max_batch: int = MAX_BATCH) -> int:
    """Run more batches of the call, their samples dropped, while the energy meter is ``short_ms()``
    of window time, for at most ``cap_ms`` of wall time (``timing.energy_ms``). Batches are sized
    like the sampling ones (no larger than the launch queue holds); a batch that times out ends the
    extension (the samples were taken; the energy stays unknown). ``max_batch``: the most samples a
    batch has (``MAX_BATCH`` for held ones; unheld ones are not bounded by the launch queue). Returns the
    batches run."""
    t0, batches = clock(), 0
    while short_ms() > 0 and (clock() - t0) * 1e3 < cap_ms:
        want = min(short_ms(), cap_ms - (clock() - t0) * 1e3)
        n = max(1, min(max_batch, math.ceil(want / max(per_sample_ms, 1e-4))))
        if host_per_sample_ms is not None:
            n = min(n, hold_fits(host_per_sample_ms))
        timeout = hold_timeout_ms(n, host_per_sample_ms) if host_per_sample_ms is not None else None
        b = run_batch(n, timeout)
        batches += 1
        if b.timed_out:
            break
    return batches
