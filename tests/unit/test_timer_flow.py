"""The GPU timer's control flow on a simulated GPU (no CUDA needed): held batches time the GPU alone
and measure the host separately, plain events time the host's gaps too, a call that synchronises
falls back to plain events with its own label, and CUDA-graph capture failures are reasons.

The simulated GPU is tests/support/simulated_gpu.py.
"""
import time

import pytest

from flashbench.measure import energy as energy_mod
from flashbench.measure import timer
from flashbench.measure.energy import EnergyMeter
from flashbench.measure.stream_hold import StreamHold
from flashbench.model.config import Timing

from simulated_gpu import HOST_S, KERNEL_MS, now_ms, simulated_gpu, slow_host_call  # tests/support


@pytest.fixture
def gpu(monkeypatch):
    return simulated_gpu(monkeypatch)


SETTINGS = Timing(warmup_ms=5, budget_ms=60, min_samples=10, max_samples=200, max_noise_pct=1.0)


def test_held_batches_time_the_gpu_and_measure_the_host(gpu):
    r = timer.time_cuda(slow_host_call(gpu), SETTINGS, "cuda")
    assert r.method == "held_events_l2_flush" and gpu.hold.holds >= 2
    assert max(r.samples_ms) == pytest.approx(KERNEL_MS, abs=1e-6)  # the host's 2 ms are not in them
    assert HOST_S * 1e3 <= r.host_ms < 3 * HOST_S * 1e3


def test_plain_events_time_the_host_gaps(gpu):
    r = timer.time_cuda(slow_host_call(gpu), SETTINGS.model_copy(update={"hold_stream": False}), "cuda")
    assert r.method == "cuda_events_l2_flush" and gpu.hold.holds == 0
    assert min(r.samples_ms) >= HOST_S * 1e3  # the GPU waited for the host inside the events
    assert r.host_ms is None


def test_warm_l2_labels(gpu):
    s = SETTINGS.model_copy(update={"flush_l2": False})
    assert timer.time_cuda(slow_host_call(gpu), s, "cuda").method == "held_events_warm_l2"


def test_a_call_that_synchronises_falls_back_to_plain_events(gpu):
    def call():
        if gpu.held:  # a real call that synchronises blocks here until the hold times out
            time.sleep(gpu.hold.timeout_ms / 1e3)
            gpu.hold.expire()
        gpu.enqueue(KERNEL_MS)

    t0 = time.perf_counter()
    r = timer.time_cuda(call, SETTINGS, "cuda")
    assert r.method == "cuda_events_l2_flush_call_syncs" and r.host_ms is None
    assert len(r.samples_ms) >= SETTINGS.min_samples
    assert gpu.hold.holds == 1  # found out on the first (small) batch ...
    assert time.perf_counter() - t0 < 2.0  # ... at the cost of one short hold


def test_energy_is_read_around_the_batches_the_gpu_ran(gpu, monkeypatch):
    monkeypatch.setattr(energy_mod, "MIN_WINDOW_MS", 0.0)
    watts = 300.0
    meter = EnergyMeter(lambda: int(now_ms() * watts), step_ms=1e-6)  # mJ = W × ms

    def call():
        time.sleep(0.0005)
        gpu.enqueue(1.0)  # 1 ms of GPU time per call: windows long enough to read

    r = timer.time_cuda(call, SETTINGS, "cuda", energy=meter)
    assert r.avg_power_w == pytest.approx(watts, rel=0.2)
    assert meter.window_ms > 0


def test_graph_capture_failure_is_an_exception_with_the_reason():
    with pytest.raises(timer.GraphCaptureError, match="CUDA-graph capture failed"):
        timer.capture_graph(lambda: None, "cuda")  # no CUDA here: the capture cannot even start


@pytest.mark.parametrize("graph, l2, how, label", [
    (False, True, "held", "held_events_l2_flush"), (True, False, "held", "held_graph_warm_l2"),
    (True, True, "plain", "cuda_graph_l2_flush"), (False, False, "call_syncs", "cuda_events_warm_l2_call_syncs"),
    (True, True, "unheld", "cuda_graph_l2_flush_unheld")])
def test_every_label_is_documented(graph, l2, how, label):
    assert timer.timing_method(graph, l2, how) == label and label in timer.TIMING_METHODS
    with pytest.raises(ValueError, match="how"):
        timer.timing_method(graph, l2, "sometimes")


def test_a_call_that_raises_inside_a_held_batch_releases_the_stream(gpu):
    calls = []

    def call():
        calls.append(1)
        if gpu.held and len(calls) > 20:
            raise RuntimeError("kernel exploded")
        gpu.enqueue(KERNEL_MS)

    with pytest.raises(RuntimeError, match="exploded"):
        timer.time_cuda(call, SETTINGS, "cuda")
    assert not gpu.held  # released at once: the error path's synchronisation does not wait for the timeout


def test_a_stream_that_cannot_be_held_is_timed_unheld(gpu, monkeypatch):
    def no_triton(cls, device):
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(StreamHold, "for_device", classmethod(no_triton))
    r = timer.time_cuda(slow_host_call(gpu), SETTINGS, "cuda")
    assert r.method == "cuda_events_l2_flush_unheld" and r.host_ms is None
    monkeypatch.setattr(StreamHold, "for_device", classmethod(lambda cls, device: gpu.hold))
    monkeypatch.setattr(gpu.hold, "hold", lambda timeout_ms: (_ for _ in ()).throw(RuntimeError("launch failed")))
    assert timer.time_cuda(slow_host_call(gpu), SETTINGS, "cuda").method == "cuda_events_l2_flush_unheld"


def test_energy_ms_runs_the_call_until_the_counter_can_be_read(gpu):
    """A counter updated every 20 ms needs 100 ms of windows: far more than 20 samples of 1 ms."""
    watts = 300.0
    short = Timing(warmup_ms=1, budget_ms=20, min_samples=5, max_samples=20, max_noise_pct=0)

    def meter():
        return EnergyMeter(lambda: int((now_ms() // 20.0) * 20.0 * watts), step_ms=20.0)

    def call():
        gpu.enqueue(1.0)

    without = meter()
    r = timer.time_cuda(call, short, "cuda", energy=without)
    assert r.avg_power_w is None and without.short_ms > 0  # the samples alone cover too little
    samples = len(r.samples_ms)
    with_pass = meter()
    r = timer.time_cuda(call, short.model_copy(update={"energy_ms": 2000.0}), "cuda", energy=with_pass)
    assert with_pass.short_ms == 0 and with_pass.window_ms >= 100.0
    assert r.avg_power_w == pytest.approx(watts, rel=0.3)
    assert len(r.samples_ms) <= max(samples, short.max_samples)  # the extra calls are not samples


def test_energy_ms_is_a_cap(gpu):
    watts = 300.0
    stuck = EnergyMeter(lambda: int(watts), step_ms=1e6)  # would need 5000 s of windows
    short = Timing(warmup_ms=1, budget_ms=10, min_samples=5, max_samples=10, max_noise_pct=0, energy_ms=50)

    def call():
        gpu.enqueue(1.0)

    t0 = time.perf_counter()
    r = timer.time_cuda(call, short, "cuda", energy=stuck)
    assert r.avg_power_w is None
    assert time.perf_counter() - t0 < 1.0  # 50 ms of extension, one batch past it at most


def _first_call_then_gaps(gpu, rest_ms):
    """The host's time between the timer's first call and the next one (the first of the warm-up's estimate)."""
    starts = []

    def call():
        starts.append(time.perf_counter())
        gpu.enqueue(KERNEL_MS)

    timer.time_cuda(call, SETTINGS.model_copy(update={"rest_ms": rest_ms}), "cuda")
    return (starts[1] - starts[0]) * 1e3


def test_the_gpu_rests_between_the_first_call_and_the_warm_up(gpu):
    """rest_ms: the first call (which may autotune for a second) is followed by that much idle time, so the
    warm-up and the samples start from a GPU that has recovered its clock."""
    assert _first_call_then_gaps(gpu, 80.0) >= 80.0
    assert _first_call_then_gaps(gpu, 0.0) < 40.0  # 0: no rest (the next call follows at once)


def test_the_cpu_timer_does_not_rest():
    # a rest is about a GPU's clock; a CPU run's timings take none (a minute's rest would show here)
    t0 = time.perf_counter()
    timer.time_cpu(lambda: None, Timing(warmup_ms=1, budget_ms=5, min_samples=3, max_samples=10, rest_ms=60_000))
    assert time.perf_counter() - t0 < 5.0


def test_results_record_the_rest_a_device_takes():
    # results.json's `timing` is what was applied: the GPU timer rests, the CPU timer does not
    s = Timing(rest_ms=300)
    assert s.as_run("cuda")["rest_ms"] == 300.0 and s.as_run("cuda:1")["rest_ms"] == 300.0
    assert s.as_run("cpu")["rest_ms"] == 0.0 and s.as_run("cpu")["warmup_ms"] == s.warmup_ms
