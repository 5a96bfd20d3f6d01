"""Choose a kernel's configuration once per shape class, timing the candidates in interleaved rounds.

Triton's own autotuner times candidates one after another.  On the H100 the SM clock moves
within one tuning session (candidates slow by 3-12% over a second of tuning as the GPU settles
from its boost clock), so candidates timed at different moments are compared at different
clocks and the order of the candidates biases the choice; in one sweep it chose 64x64 tiles for
every D128 causal forward, 6-13% slower than 128x128 in a sustained benchmark (kernels/DESIGN.md).
Here every candidate is timed in each of ``ROUNDS`` rounds (A B C A B C ...), each time by the
10th percentile of ``ROUND_MS`` of calls (the fast tail, steadier than the median while the clock
moves), and ranked by the median over rounds: a clock change hits every candidate alike.  That
removes the order bias; it does not make short bursts rank candidates within a few percent of each
other as a sustained run does, which is why the forward's search space leaves out tiles that lose
at a shape (``spaces.FWD_SKIP``).  A candidate runs for about 60 ms (4 rounds of 15 ms), plus the
fixed calls of four ``do_bench`` rounds.

A round's figure comes from ``_bench`` (``do_bench``) by default, or from ``held_bench`` where the tuner
is made with it: GPU time only, for calls whose host path is longer than their kernels (``flash_decode``:
on the H200 do_bench's figures for its 20-50 us calls are the host's 0.13-0.22 ms of enqueueing, and a
tuner ranking by them chose tiles 10-25% slower than the best one; kernels/DESIGN.md).  The hold is a
``torch.cuda._sleep`` kernel, not flashbench's released spin kernel (``flashbench.measure.stream_hold``):
this package does not import flashbench.

What it does not do: keep choices across processes (each tuner object caches its choices for the life of
the process), separate candidates within about 5% of each other, or time under the CPU interpreter (the
launchers run a fixed configuration there).  A candidate that cannot be built for the GPU is dropped; when
none builds, ``choose`` raises RuntimeError.
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch
import triton
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

ROUNDS = 4
ROUND_MS = 15
WARMUP_MS = 2
# a candidate that cannot be built for this GPU is dropped from the ranking, as Triton's tuner does
_UNBUILDABLE = (OutOfResources, CompileTimeAssertionFailure, PTXASError)


def _bench(fn: Callable[[], None]) -> float:
    t = triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=ROUND_MS, quantiles=(0.1,))
    return t[0] if isinstance(t, (list, tuple)) else t


HELD_CALLS = 16  # calls a held round times (each after an L2 flush); the round's figure is their 10th percentile
_FLUSH_BYTES = 256 << 20  # as do_bench: more than any GPU's L2


@functools.lru_cache(maxsize=None)
def _sleep_cycles_per_ms(device: int) -> float:
    """What ``torch.cuda._sleep`` spins a millisecond on this device, measured once (at the clock of the moment:
    the holds below leave a factor of two for a faster clock later)."""
    with torch.cuda.device(device):
        torch.cuda._sleep(1000)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.cuda._sleep(10_000_000)
        b.record()
        torch.cuda.synchronize()
        return 10_000_000 / max(a.elapsed_time(b), 1e-3)


def held_bench(fn: Callable[[], None]) -> float:
    """One call's GPU time (ms) with a cold L2, the host's time to enqueue it excluded.

    ``do_bench`` times each call between events enqueued around it: when the host takes longer to enqueue a
    call than the GPU takes to run the L2 flush before it, the GPU waits on the host inside the timed span,
    and a call of tens of microseconds with a host path of a tenth of a millisecond (``flash_decode`` at small
    batches) measures the host, whatever the tile.  Here the stream is held by a sleep kernel, longer than
    twice the host's measured enqueue time for the whole round, while the round's ``HELD_CALLS`` flushes,
    calls and their events are enqueued; the GPU then runs them back to back and each pair of events spans
    that call alone.  The 10th percentile, as ``_bench``."""
    flush = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    t0 = time.perf_counter()
    flush.zero_()
    fn()
    host_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(HELD_CALLS)]
    torch.cuda._sleep(int(_sleep_cycles_per_ms(torch.cuda.current_device()) * (2 * host_ms * HELD_CALLS + 1)))
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 10]


class InterleavedTuner:
    """A JIT kernel with its candidate configurations, a pruner and a tuning key.

    ``choose(grid_fn, args, meta)`` returns the configuration chosen for the key of these arguments
    (choosing it first, on a miss: that launches the candidates); ``run(grid_fn, args, meta)`` also
    launches it; ``launch(cfg, grid_fn, args, meta)`` runs one given configuration.
    """

    def __init__(self, kernel, configs: list, prune: Callable, key: list[str], launch: Callable | None = None,
                 bench: Callable[[Callable[[], None]], float] = _bench):
        self.kernel = kernel
        # bench(call) -> ms, one round's figure for one candidate: ``_bench`` (do_bench's fast tail) or
        # ``held_bench`` (GPU time only, for calls whose host path is longer than their kernels)
        self.bench = bench
        self.configs = configs
        self.prune = prune
        self.key = key
        # launch(cfg, grid_fn, args, meta): by default the kernel with cfg's meta-parameters; a
        # custom one may send some configurations to another kernel taking the same arguments
        self.launch = launch or self._launch_kernel
        self.cache: dict[tuple, triton.Config] = {}
        self.timings: dict[triton.Config, list[float]] = {}  # the last choice's per-round times (ms)

    def _key(self, named: dict, meta: dict) -> tuple:
        vals = tuple(named[k] if k in named else meta[k] for k in self.key)
        return vals + tuple(str(a.dtype) for a in named.values() if hasattr(a, "dtype"))

    def _launch_kernel(self, cfg, grid_fn, args: tuple, meta: dict) -> None:
        self.kernel[grid_fn(cfg.kwargs)](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                                         num_stages=cfg.num_stages)

    def choose(self, grid_fn, args: tuple, meta: dict):
        named = dict(zip(self.kernel.arg_names, args))
        key = self._key(named, meta)
        cfg = self.cache.get(key)
        if cfg is None:
            cfg = self.cache[key] = self._choose(self.prune(self.configs, named, **meta), grid_fn, args, meta)
        return cfg

    def run(self, grid_fn, args: tuple, meta: dict):
        cfg = self.choose(grid_fn, args, meta)
        self.launch(cfg, grid_fn, args, meta)
        return cfg

    def _choose(self, candidates: list, grid_fn, args: tuple, meta: dict):
        if len(candidates) == 1:
            self.timings = {}
            return candidates[0]
        calls = {}
        for cfg in candidates:  # build (or load) and run each once before any timing
            call = (lambda c=cfg: self.launch(c, grid_fn, args, meta))
            try:
                call()
            except _UNBUILDABLE:
                continue
            calls[cfg] = call
        if not calls:
            raise RuntimeError(f"{self.kernel.__name__}: no candidate configuration builds for this GPU")
        times: dict = {cfg: [] for cfg in calls}
        for _ in range(ROUNDS):
            for cfg, call in calls.items():
                times[cfg].append(self.bench(call))
        self.timings = times
        return min(times, key=lambda c: statistics.median(times[c]))
