"""The SM clock of a row: read only while the GPU runs a timed batch, a discarded batch leaves nothing,
the energy pass after the samples does not count, and everything is None without NVML.

The timer's tests run on a simulated GPU (tests/support/simulated_gpu.py, no CUDA needed), whose clock reader
returns the idle clock while the stream is held (between held batches, while the host enqueues the next
one, the GPU waits behind the hold and its clock recovers) and the busy clock otherwise: a reading
taken between batches shows as idle, whatever the test machine's load.
"""
import threading
import time
import types

import pytest

from flashbench.measure import environment, sm_clock, timer
from flashbench.measure.energy import EnergyMeter
from flashbench.measure.sm_clock import ClockSampler, nvml_clock_reader, sampler_for
from flashbench.model.config import Timing

from simulated_gpu import now_ms, simulated_gpu, slow_host_call  # tests/support

BUSY_MHZ, IDLE_MHZ = 1_500, 1_980
SETTINGS = Timing(warmup_ms=5, budget_ms=60, min_samples=10, max_samples=200, max_noise_pct=1.0)


@pytest.fixture
def gpu(monkeypatch):
    return simulated_gpu(monkeypatch)


def gpu_clock(g):
    return lambda: IDLE_MHZ if g.held else BUSY_MHZ


def wait_for(condition, seconds=5.0):
    deadline = time.perf_counter() + seconds
    while not condition() and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert condition()


def test_readings_come_from_open_windows_only_and_the_closing_one_always_counts():
    value, by_thread = [1_000], []

    def read():
        if threading.current_thread().name == "flashbench-sm-clock":
            by_thread.append(value[0])
        return value[0]

    s = ClockSampler(read, interval_s=0.001)
    s.begin()
    wait_for(lambda: len(by_thread) >= 3)
    s.end()
    assert s.readings and set(s.readings) == {1_000}
    time.sleep(0.005)  # a reading under way as the window closed has returned
    read_while_open = len(by_thread)
    value[0] = 9_999
    time.sleep(0.02)  # between windows: the thread reads nothing at all
    assert len(by_thread) == read_while_open
    s.begin()  # a window far shorter than the interval still reads the clock as it closes
    s.end()
    assert s.readings[-1] == 9_999 and s.median_mhz == 1_000.0
    s.reset()
    assert s.readings == [] and s.median_mhz is None


def test_the_thread_reads_a_whole_interval_into_a_window_never_at_its_start():
    """Windows shorter than the interval, gaps shorter than it too: a thread that slept through one window's close
    and the next one's opening must not read at once (that reading is the clock of the idle gap)."""
    interval = 0.01
    opened, offsets = [0.0], []

    def read():
        if threading.current_thread().name == "flashbench-sm-clock":
            offsets.append(time.perf_counter() - opened[0])
        return 1_000

    s = ClockSampler(read, interval_s=interval)
    for _ in range(20):
        opened[0] = time.perf_counter()
        s.begin()
        time.sleep(0.003)
        s.end()
        time.sleep(0.0065)
    s.discard()
    assert all(x >= interval * 0.99 for x in offsets), offsets


def test_a_discarded_window_leaves_no_readings():
    s = ClockSampler(lambda: 1_200, interval_s=0.001)
    s.begin()
    time.sleep(0.02)
    s.discard()
    assert s.readings == [] and s.median_mhz is None
    s.end()  # closing a window that is no longer open adds nothing
    assert s.readings == []


def test_a_reading_that_returns_after_its_window_closed_is_dropped():
    entered, go = threading.Event(), threading.Event()
    slow = {"on": True}

    def read():
        if slow["on"] and threading.current_thread().name == "flashbench-sm-clock":
            entered.set()
            go.wait(2)
            return 7_777  # read in the first window, returned in the second
        return 1_000

    s = ClockSampler(read, interval_s=0.001)
    s.begin()
    assert entered.wait(2)
    s.end()       # the first window closes while the thread's reading is under way
    s.begin()     # and the next one opens
    slow["on"] = False
    go.set()
    time.sleep(0.02)
    s.end()
    assert 7_777 not in s.readings and set(s.readings) == {1_000}


def test_a_reader_that_fails_or_raises_costs_readings_never_the_timing():
    calls = []

    def read():
        calls.append(1)
        if len(calls) % 3 == 1:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        return None if len(calls) % 3 == 2 else 1_300

    s = ClockSampler(read, interval_s=0.001)
    s.begin()
    wait_for(lambda: len(calls) >= 7)  # the thread kept reading after the reader raised
    s.end()  # whatever this last reading does, closing the window never raises
    assert set(s.readings) == {1_300}


def test_the_timer_reports_the_clock_while_batches_ran_not_between_them(gpu):
    clock = ClockSampler(gpu_clock(gpu), interval_s=0.0005)
    r = timer.time_cuda(slow_host_call(gpu), SETTINGS, "cuda", clock=clock)
    assert r.method == "held_events_l2_flush"
    assert r.sm_clock_mhz == BUSY_MHZ
    assert clock.readings and set(clock.readings) == {BUSY_MHZ}


def test_plain_batches_read_the_clock_too(gpu):
    clock = ClockSampler(gpu_clock(gpu), interval_s=0.0005)

    def call():
        gpu.enqueue(1.0)  # the GPU is the bottleneck: it is busy from the first call of a batch

    r = timer.time_cuda(call, SETTINGS.model_copy(update={"hold_stream": False}), "cuda", clock=clock)
    assert r.method == "cuda_events_l2_flush" and r.sm_clock_mhz == BUSY_MHZ


def test_the_energy_pass_after_the_samples_is_not_in_the_clock(gpu, monkeypatch):
    phase = {"samples": True}
    real_collect = timer.collect

    def collect(*a, **k):
        got = real_collect(*a, **k)
        phase["samples"] = False  # from here on the timer runs the call for the energy counter only
        return got

    monkeypatch.setattr(timer, "collect", collect)
    clock = ClockSampler(lambda: BUSY_MHZ if phase["samples"] else 700, interval_s=0.0005)
    meter = EnergyMeter(lambda: int((now_ms() // 20.0) * 20.0 * 300.0), step_ms=20.0)
    short = Timing(warmup_ms=1, budget_ms=20, min_samples=5, max_samples=20, max_noise_pct=0, energy_ms=400)

    def call():
        gpu.enqueue(1.0)

    r = timer.time_cuda(call, short, "cuda", energy=meter, clock=clock)
    assert meter.window_ms > 100  # the energy pass ran well past the samples ...
    assert r.sm_clock_mhz == BUSY_MHZ and 700 not in clock.readings  # ... and left the clock alone


def test_a_call_that_raises_leaves_no_window_open(gpu):
    clock = ClockSampler(gpu_clock(gpu), interval_s=0.0005)
    calls = []

    def call():
        calls.append(1)
        if len(calls) > 10:  # past the warm-up (8 calls), inside the first batches
            raise RuntimeError("kernel exploded")
        gpu.enqueue(1.0)

    with pytest.raises(RuntimeError, match="exploded"):
        timer.time_cuda(call, SETTINGS.model_copy(update={"hold_stream": False}), "cuda", clock=clock)
    assert not clock._armed.is_set()


@pytest.mark.parametrize("hold", [True, False])
def test_a_fault_surfacing_at_the_synchronisation_leaves_no_window_open(gpu, monkeypatch, hold):
    """A kernel's fault is reported where the host waits for the GPU: inside the window, after the batch was
    released."""
    clock = ClockSampler(gpu_clock(gpu), interval_s=0.0005)
    real_collect = timer.collect

    def faulting(*_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def collect(*a, **k):  # the warm-up synchronised; the first batch's synchronisation faults
        monkeypatch.setattr(timer.torch.cuda, "synchronize", faulting)
        return real_collect(*a, **k)

    monkeypatch.setattr(timer, "collect", collect)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        timer.time_cuda(slow_host_call(gpu), SETTINGS.model_copy(update={"hold_stream": hold}), "cuda", clock=clock)
    assert not clock._armed.is_set()


def test_no_clock_sampler_means_no_clock(gpu):
    assert timer.time_cuda(slow_host_call(gpu), SETTINGS, "cuda").sm_clock_mhz is None


def fake_nvml(mhz=1_755):
    def clock_info(handle, which):
        assert which == "SM"
        return mhz

    return types.SimpleNamespace(nvmlDeviceGetHandleByUUID=lambda uuid: ("h", uuid), NVML_CLOCK_SM="SM",
                                 nvmlDeviceGetClockInfo=clock_info)


def test_the_nvml_reader_and_one_sampler_per_gpu(monkeypatch):
    monkeypatch.setattr(environment, "_nvml", lambda: fake_nvml())
    monkeypatch.setattr(sm_clock, "_SAMPLERS", {})
    assert nvml_clock_reader("GPU-1")() == 1_755
    a = sampler_for("GPU-1")
    assert a is not None and sampler_for("GPU-1") is a and sampler_for("GPU-2") is not a


def test_no_nvml_means_no_sampler(monkeypatch):  # the reader's other refusals: test_nvml_reader.py
    monkeypatch.setattr(sm_clock, "_SAMPLERS", {})
    monkeypatch.setattr(environment, "_nvml", lambda: None)
    assert sampler_for("GPU-1") is None
