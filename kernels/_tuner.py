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
"""
from __future__ import annotations

import statistics
from typing import Callable

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


class InterleavedTuner:
    """A JIT kernel with its candidate configurations, a pruner and a tuning key.

    ``run(grid_fn, args, meta)`` launches the kernel with the configuration chosen for the key of
    these arguments (choosing it first, on a miss) and returns that ``triton.Config``;
    ``launch(cfg, grid_fn, args, meta)`` runs one given configuration.
    """

    def __init__(self, kernel, configs: list, prune: Callable, key: list[str], launch: Callable | None = None):
        self.kernel = kernel
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

    def run(self, grid_fn, args: tuple, meta: dict):
        named = dict(zip(self.kernel.arg_names, args))
        key = self._key(named, meta)
        cfg = self.cache.get(key)
        if cfg is None:
            cfg = self.cache[key] = self._choose(self.prune(self.configs, named, **meta), grid_fn, args, meta)
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
                times[cfg].append(_bench(call))
        self.timings = times
        return min(times, key=lambda c: statistics.median(times[c]))
