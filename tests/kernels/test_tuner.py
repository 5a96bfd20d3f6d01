"""The FA2 launcher's tuner (kernels/_tuner.py), on a fake kernel and a fake, drifting GPU clock."""
from __future__ import annotations

import pytest
import triton
from triton.runtime.errors import OutOfResources

import flashbench_kernels._tuner as tuner_mod
from flashbench_kernels._tuner import InterleavedTuner


class FakeKernel:
    """Records the configuration of every launch; raises for the configurations in ``unbuildable``."""
    __name__ = "fake_kernel"
    arg_names = ["X", "N"]

    def __init__(self, unbuildable=()):
        self.launches = []
        self.unbuildable = set(unbuildable)

    def __getitem__(self, grid):
        def launch(*args, BLOCK, num_warps, num_stages, **meta):
            if BLOCK in self.unbuildable:
                raise OutOfResources(300000, 232448, "shared memory")
            self.launches.append(BLOCK)
        return launch


class FakeTensor:
    dtype = "bf16"


def _configs(*blocks):
    return [triton.Config({"BLOCK": b}, num_warps=4, num_stages=2) for b in blocks]


def _fake_gpu(monkeypatch, kernel, true_ms, drift=0.05):
    """do_bench that runs the call once to see which candidate it is and reports its true time
    times a clock factor that grows by ``drift`` per timing (a GPU slowing down under load)."""
    timed = []

    def do_bench(fn, warmup, rep, quantiles):
        fn()
        block = kernel.launches[-1]
        timed.append(block)
        return [true_ms[block] * (1 + drift * (len(timed) - 1))]

    monkeypatch.setattr(tuner_mod.triton.testing, "do_bench", do_bench)
    return timed


def _run(tuner, n=1024):
    return tuner.run(lambda meta: (1,), (FakeTensor(), n), {"CAUSAL": True})


def _tuner(kernel, configs):
    return InterleavedTuner(kernel, configs, lambda cfgs, named, **meta: list(cfgs), key=["N", "CAUSAL"])


def test_interleaved_rounds_pick_the_faster_candidate_on_a_drifting_clock(monkeypatch):
    kernel = FakeKernel()
    # 64 is 10% slower; timed all-64-then-all-128 on this clock, 64 would win
    timed = _fake_gpu(monkeypatch, kernel, {64: 1.1, 128: 1.0})
    cfg = _run(_tuner(kernel, _configs(64, 128)))
    assert cfg.kwargs["BLOCK"] == 128
    assert timed == [64, 128] * tuner_mod.ROUNDS
    # each candidate ran once before any timing (built or loaded), and the chosen one ran last
    assert kernel.launches[:2] == [64, 128] and kernel.launches[-1] == 128


def test_a_sequential_tuner_on_the_same_clock_picks_the_slower_one(monkeypatch):
    """The premise of the test above: the drift alone is enough to mislead one-after-another timing."""
    kernel = FakeKernel()
    _fake_gpu(monkeypatch, kernel, {64: 1.1, 128: 1.0})
    sequential = {}
    for cfg in _configs(64, 128):
        calls = [tuner_mod._bench(lambda c=cfg: kernel[(1,)](BLOCK=c.kwargs["BLOCK"], num_warps=4, num_stages=2))
                 for _ in range(tuner_mod.ROUNDS)]
        sequential[cfg.kwargs["BLOCK"]] = sorted(calls)[len(calls) // 2]
    assert min(sequential, key=sequential.get) == 64


def test_choice_is_cached_per_key_and_reported(monkeypatch):
    kernel = FakeKernel()
    timed = _fake_gpu(monkeypatch, kernel, {64: 1.1, 128: 1.0}, drift=0.0)
    tuner = _tuner(kernel, _configs(64, 128))
    _run(tuner)
    assert {c.kwargs["BLOCK"]: len(t) for c, t in tuner.timings.items()} == {64: tuner_mod.ROUNDS, 128: tuner_mod.ROUNDS}
    n_timed = len(timed)
    assert _run(tuner).kwargs["BLOCK"] == 128
    assert len(timed) == n_timed  # same key: no new timing
    _run(tuner, n=2048)
    assert len(timed) == 2 * n_timed  # new key: tuned again
    assert len(tuner.cache) == 2


def test_unbuildable_candidates_are_dropped_and_a_single_one_is_not_timed(monkeypatch):
    kernel = FakeKernel(unbuildable={256})
    timed = _fake_gpu(monkeypatch, kernel, {64: 1.1, 128: 1.0}, drift=0.0)
    assert _run(_tuner(kernel, _configs(256, 64, 128))).kwargs["BLOCK"] == 128
    assert 256 not in timed
    timed.clear()
    assert _run(_tuner(kernel, _configs(64))).kwargs["BLOCK"] == 64
    assert timed == []


def test_no_buildable_candidate_is_an_error(monkeypatch):
    kernel = FakeKernel(unbuildable={64, 128})
    _fake_gpu(monkeypatch, kernel, {}, drift=0.0)
    with pytest.raises(RuntimeError, match="no candidate configuration builds"):
        _run(_tuner(kernel, _configs(64, 128)))


def test_a_tuner_made_with_a_bench_ranks_by_it_and_never_calls_do_bench(monkeypatch):
    def no_do_bench(*a, **k):
        raise AssertionError("do_bench called although the tuner was given its own bench")

    monkeypatch.setattr(tuner_mod.triton.testing, "do_bench", no_do_bench)
    kernel = FakeKernel()
    true_ms = {32: 2.0, 64: 1.0, 128: 3.0}
    benched = []

    def bench(call):
        call()
        benched.append(kernel.launches[-1])
        return true_ms[kernel.launches[-1]]

    tuner = InterleavedTuner(kernel, _configs(32, 64, 128), lambda cfgs, named, **meta: list(cfgs),
                             key=["N", "CAUSAL"], bench=bench)
    assert _run(tuner).kwargs["BLOCK"] == 64
    assert sorted(set(benched)) == [32, 64, 128] and len(benched) == 3 * tuner_mod.ROUNDS


def test_the_decode_tuner_times_gpu_time_only():
    from flashbench_kernels.flash_decode import tuning as decode_tuning
    assert decode_tuning.make_tuner().bench is tuner_mod.held_bench
    assert decode_tuning.TUNER.bench is tuner_mod.held_bench
