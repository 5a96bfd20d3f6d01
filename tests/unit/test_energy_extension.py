"""extend_for_energy: the batches the timer adds, outside the samples, for ``timing.energy_ms``."""
from flashbench.measure.sampling import MAX_BATCH, Batch, extend_for_energy


class Clock:
    def __init__(self):
        self.s = 0.0

    def __call__(self):
        return self.s


def _runner(clock, missing, per_sample_ms, timed_out_after=None):
    sizes = []

    def run(n, timeout):
        sizes.append((n, timeout))
        clock.s += n * per_sample_ms / 1e3
        if timed_out_after is not None and len(sizes) > timed_out_after:
            return Batch([], timed_out=True)
        missing[0] = max(0.0, missing[0] - n * per_sample_ms)
        return Batch([per_sample_ms] * n)
    return run, sizes


def test_runs_until_the_meter_has_its_window():
    clock, missing = Clock(), [100.0]
    run, sizes = _runner(clock, missing, per_sample_ms=1.0)
    batches = extend_for_energy(run, lambda: missing[0], 5000.0, 1.0, 0.05, clock)
    assert missing[0] == 0 and batches == len(sizes)
    assert sizes[0][0] == 100 and sizes[0][1] is not None  # sized to the gap, held with a timeout


def test_batches_fit_the_launch_queue_and_stop_at_the_cap():
    clock, missing = Clock(), [1e9]
    run, sizes = _runner(clock, missing, per_sample_ms=0.01)
    extend_for_energy(run, lambda: missing[0], 100.0, 0.01, None, clock)
    assert all(n <= MAX_BATCH for n, _ in sizes) and all(t is None for _, t in sizes)  # unheld: no timeout
    assert clock.s * 1e3 <= 100.0 + MAX_BATCH * 0.01  # one batch past the cap at most


def test_nothing_to_do_and_a_timed_out_batch_end_it():
    clock, missing = Clock(), [0.0]
    run, sizes = _runner(clock, missing, per_sample_ms=1.0)
    assert extend_for_energy(run, lambda: missing[0], 1000.0, 1.0, 0.05, clock) == 0 and not sizes
    missing[0] = 500.0
    run, sizes = _runner(clock, missing, per_sample_ms=1.0, timed_out_after=1)
    assert extend_for_energy(run, lambda: missing[0], 1000.0, 1.0, 0.05, clock) == 2
    assert missing[0] > 0
