"""Noise-aware sampling without a GPU: the median's confidence interval, the stopping rule, batch
sizes, hold timeouts and what a batch that timed out leads to (flashbench.measure.sampling)."""
import math
import random

import pytest

from flashbench.measure import sampling
from flashbench.measure.sampling import (FIRST_BATCH, MAX_BATCH, MAX_TIMEOUTS, Batch, CallSynchronises, HoldFailed,
                                         collect, hold_timeout_ms, next_batch_size, stalled_at, stop_reason)
from flashbench.measure.stats import median_ci, median_ci_ranks, noise_pct
from flashbench.model.config import Timing


# --- the confidence interval of the median ------------------------------------------------------

def _miss_probability(n: int, k: int) -> float:
    """2·P(Binomial(n, 1/2) <= k - 1), computed independently of the code under test."""
    return 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n


@pytest.mark.parametrize("n, ranks", [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (100, (40, 61))])
def test_median_interval_ranks_match_the_binomial_table(n, ranks):
    assert median_ci_ranks(n) == ranks


@pytest.mark.parametrize("n", [6, 7, 13, 50, 257, 1000])
def test_median_interval_is_the_narrowest_with_95_percent_coverage(n):
    k, upper = median_ci_ranks(n)
    assert upper == n + 1 - k
    assert _miss_probability(n, k) <= 0.05 < _miss_probability(n, k + 1)


def test_too_few_samples_have_no_interval():
    assert median_ci_ranks(5) is None and median_ci([1.0] * 5) is None and noise_pct([1.0] * 5) is None
    assert median_ci_ranks(0) is None
    with pytest.raises(ValueError, match="confidence"):
        median_ci_ranks(10, confidence=1.0)


def test_large_counts_use_the_normal_approximation_consistently():
    k_exact, _ = median_ci_ranks(4000)
    k_normal, _ = median_ci_ranks(4001)
    assert abs(k_exact - k_normal) <= 1


def test_noise_is_half_the_interval_over_the_median():
    samples = [float(x) for x in range(1, 21)]  # sorted 1..20: interval [x_6, x_15] = [6, 15], median 10.5
    assert median_ci(samples) == (6.0, 15.0)
    assert noise_pct(samples) == pytest.approx(100 * 4.5 / 10.5)
    assert noise_pct([2.0] * 30) == 0.0
    assert noise_pct(list(reversed(samples))) == noise_pct(samples)  # order does not matter


# --- the stopping rule ---------------------------------------------------------------------------

def test_stop_rule_order():
    s = Timing(min_samples=10, max_samples=100, budget_ms=50, max_noise_pct=1.0)
    assert stop_reason(9, 1e9, 0.0, s) is None                 # min_samples first, whatever the budget
    assert stop_reason(100, 0.0, 50.0, s) == "max_samples"
    assert stop_reason(10, 50.0, 50.0, s) == "budget"
    assert stop_reason(10, 1.0, 0.9, s) == "noise"
    assert stop_reason(10, 1.0, 1.1, s) is None
    assert stop_reason(10, 1.0, None, s) is None               # too few samples for an interval: go on
    off = Timing(min_samples=10, max_samples=100, budget_ms=50, max_noise_pct=0)
    assert stop_reason(10, 1.0, 0.0, off) is None              # 0: sample the whole budget


def test_batch_sizes_double_at_most_and_respect_budget_bounds_and_cap():
    s = Timing(min_samples=10, max_samples=300, budget_ms=100, max_noise_pct=1.0)
    assert next_batch_size(0, 0.0, 0.01, s) == 10              # min_samples come first
    assert next_batch_size(40, 10.0, 0.01, s) == 40            # at most doubles the samples so far
    assert next_batch_size(40, 99.0, 0.5, s) == 2              # what the remaining budget pays for
    assert next_batch_size(290, 0.0, 0.01, s) == 10            # never past max_samples
    assert next_batch_size(100, 0.0, 0.01, s, cap=7) == 7      # the launch queue's cap
    assert next_batch_size(10, 200.0, 0.01, s) == 1            # over budget (the rule stops it anyway)
    off = Timing(min_samples=10, max_samples=1000, budget_ms=100, max_noise_pct=0)
    assert next_batch_size(10, 0.0, 1.0, off) == 100           # no noise target: the budget in one go
    with pytest.raises(ValueError, match="cap"):
        next_batch_size(0, 0.0, 1.0, s, cap=0)


def test_hold_timeout_grows_with_the_batch_and_is_bounded():
    assert hold_timeout_ms(1, 0.01) == sampling.HOLD_MIN_MS
    assert hold_timeout_ms(100, 1.0) == pytest.approx(sampling.HOLD_MARGIN * 100 + sampling.HOLD_SLACK_MS)
    assert hold_timeout_ms(10_000, 100.0) == sampling.HOLD_MAX_MS


def test_a_stall_is_one_sample_taking_much_of_the_hold():
    assert stalled_at([0.1, 0.1, 80.0, 0.1], 100.0) == 2
    assert stalled_at([90.0], 100.0) == 0
    assert stalled_at([20.0] * 6, 100.0) is None  # slow everywhere: no single stall


# --- collect: batches, stopping, timeouts ------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def fake_gpu(clock, draw, per_sample_ms=0.1, max_queue=None, stall_first=False, slow_host=False):
    """A run_batch whose samples come from ``draw()``; each sample costs ``per_sample_ms`` of wall
    time. ``max_queue``: held batches larger than this stall at that sample and time out;
    ``stall_first``: every held batch stalls in its first call; ``slow_host``: every held batch
    times out with the time spread evenly."""
    log = []

    def run(n, timeout):
        log.append((n, timeout))
        clock.t += n * per_sample_ms / 1e3
        if timeout is not None:
            if stall_first:
                return Batch([], sample_wall_ms=[timeout] + [0.01] * (n - 1), timed_out=True)
            if max_queue is not None and n > max_queue:
                walls = [0.01] * n
                walls[max_queue] = 0.9 * timeout
                return Batch([], sample_wall_ms=walls, timed_out=True)
            if slow_host:
                return Batch([], sample_wall_ms=[1.5 * timeout / n] * n, timed_out=True)
        return Batch([draw() for _ in range(n)], host_ms=[0.2] * n if timeout is not None else [],
                     sample_wall_ms=[0.3] * n)
    return run, log


def test_quiet_samples_stop_on_the_noise_target_early():
    clock, rng = FakeClock(), random.Random(0)
    run, log = fake_gpu(clock, lambda: 1.0 + rng.uniform(-0.001, 0.001))
    s = Timing(min_samples=10, max_samples=1000, budget_ms=1000, max_noise_pct=1.0)
    got = collect(run, s, per_sample_ms=0.1, host_per_sample_ms=None, clock=clock)
    assert got.stopped_by == "noise" and 10 <= len(got.samples_ms) < 40
    assert noise_pct(got.samples_ms) <= 1.0
    assert log[0][0] == FIRST_BATCH and all(t is None for _, t in log)  # unheld: no timeouts


def test_noisy_samples_use_the_whole_budget_and_report_the_noise_reached():
    clock, rng = FakeClock(), random.Random(1)
    run, _ = fake_gpu(clock, lambda: rng.lognormvariate(0, 0.5), per_sample_ms=1.0)
    s = Timing(min_samples=10, max_samples=10_000, budget_ms=200, max_noise_pct=0.5)
    got = collect(run, s, per_sample_ms=1.0, host_per_sample_ms=None, clock=clock)
    assert got.stopped_by == "budget"
    assert 150 <= len(got.samples_ms) <= 400  # about budget / per-sample cost, never runaway batches
    assert noise_pct(got.samples_ms) > 0.5


def test_max_samples_bounds_everything():
    clock, rng = FakeClock(), random.Random(2)
    run, _ = fake_gpu(clock, lambda: rng.lognormvariate(0, 0.5), per_sample_ms=0.001)
    s = Timing(min_samples=10, max_samples=50, budget_ms=60_000, max_noise_pct=0.01)
    got = collect(run, s, per_sample_ms=0.001, host_per_sample_ms=None, clock=clock)
    assert got.stopped_by == "max_samples" and len(got.samples_ms) == 50


def test_held_batches_keep_host_times_and_carry_a_timeout():
    clock, rng = FakeClock(), random.Random(3)
    run, log = fake_gpu(clock, lambda: 1.0 + rng.uniform(-0.001, 0.001))
    s = Timing(min_samples=10, max_samples=100, budget_ms=100, max_noise_pct=1.0)
    got = collect(run, s, per_sample_ms=0.3, host_per_sample_ms=0.2, clock=clock)
    assert len(got.host_ms) == len(got.samples_ms) and got.timeouts == 0
    assert all(t == hold_timeout_ms(n, 0.2) for n, t in log)


def test_a_call_that_stalls_in_the_first_sample_synchronises():
    clock = FakeClock()
    run, log = fake_gpu(clock, lambda: 1.0, stall_first=True)
    with pytest.raises(CallSynchronises):
        collect(run, Timing(min_samples=10), per_sample_ms=0.3, host_per_sample_ms=0.2, clock=clock)
    assert len(log) == 1 and log[0][0] == FIRST_BATCH  # found out on one small batch


def test_a_full_launch_queue_cuts_the_batches_and_sampling_goes_on():
    clock, rng = FakeClock(), random.Random(4)
    run, log = fake_gpu(clock, lambda: 1.0 + rng.uniform(-0.2, 0.2), max_queue=12)
    s = Timing(min_samples=10, max_samples=200, budget_ms=60_000, max_noise_pct=0.5)
    got = collect(run, s, per_sample_ms=0.3, host_per_sample_ms=0.2, clock=clock)
    assert got.timeouts == 1 and got.stopped_by in ("noise", "max_samples")
    first_too_big = next(i for i, (n, _) in enumerate(log) if n > 12)
    assert all(n <= 6 for n, _ in log[first_too_big + 1:])  # half of what the queue took
    assert len(got.samples_ms) >= 10


def test_repeated_timeouts_without_a_stall_give_up_holding():
    clock = FakeClock()
    run, log = fake_gpu(clock, lambda: 1.0, slow_host=True)
    with pytest.raises(HoldFailed):
        collect(run, Timing(min_samples=10), per_sample_ms=0.3, host_per_sample_ms=0.2, clock=clock)
    assert len(log) == MAX_TIMEOUTS
    assert log[1][1] > log[0][1]  # the host was slower than assumed: the next hold lasts longer


def test_the_default_cap_holds_a_flush_two_events_and_five_kernels_per_sample():
    assert MAX_BATCH * (1 + 2 + 5) <= sampling.LAUNCH_QUEUE
