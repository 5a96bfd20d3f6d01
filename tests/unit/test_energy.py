"""Energy arithmetic from NVML's energy counter, with a fake NVML (flashbench.measure.energy)."""
import types

import pytest

from flashbench.measure import energy
from flashbench.measure.energy import (EnergyMeter, counter_step_ms, energy_per_call_j, meter_for, nvml_energy_reader,
                                       tflop_per_j)


class Counter:
    """A counter that moves by whole steps: ``watts`` integrated over time, updated every ``step_ms``."""

    def __init__(self, watts=400.0, step_ms=20.0):
        self.t_ms, self.watts, self.step_ms = 0.0, watts, step_ms
        self.broken = False

    def clock(self):
        return self.t_ms / 1e3

    def advance(self, ms):
        self.t_ms += ms

    def read(self):
        if self.broken:
            return None
        updated_at = (self.t_ms // self.step_ms) * self.step_ms
        return int(self.watts * updated_at)  # mJ = W × ms


def test_per_call_energy_and_tflop_per_joule():
    assert energy_per_call_j(500.0, 2.0) == pytest.approx(1.0)        # 500 W for 2 ms
    assert tflop_per_j(3e12, 1.0) == pytest.approx(3.0)
    assert energy_per_call_j(None, 2.0) is None and energy_per_call_j(500.0, None) is None
    assert energy_per_call_j(0.0, 2.0) is None and tflop_per_j(3e12, None) is None and tflop_per_j(None, 1.0) is None


def test_windows_add_up_to_the_average_power():
    c = Counter(watts=400.0, step_ms=1.0)
    m = EnergyMeter(c.read, step_ms=1.0, clock=c.clock)
    for busy in (30.0, 50.0):
        m.begin()
        c.advance(busy)
        m.end()
        c.advance(1000.0)  # the host enqueues between batches: outside every window
    assert m.window_ms == pytest.approx(80.0)
    assert m.avg_power_w == pytest.approx(400.0, rel=0.05)


def test_windows_shorter_than_the_counter_steps_report_nothing():
    c = Counter(watts=400.0, step_ms=100.0)  # a slowly updated counter
    m = EnergyMeter(c.read, step_ms=100.0, clock=c.clock)
    m.begin()
    c.advance(150.0)
    m.end()
    assert m.avg_power_w is None  # 150 ms < 5 steps: a step more or less is a third of the value
    m.begin()
    c.advance(400.0)
    m.end()
    assert m.window_ms >= energy.MIN_STEPS * 100.0
    assert m.avg_power_w == pytest.approx(400.0, rel=0.25)


def test_a_failed_read_or_a_counter_going_back_voids_the_row():
    c = Counter(step_ms=1.0)
    m = EnergyMeter(c.read, step_ms=1.0, clock=c.clock)
    m.begin()
    c.advance(100.0)
    c.broken = True
    m.end()
    assert m.avg_power_w is None and m.failed
    m.reset()
    c.broken = False
    m.begin()
    c.t_ms -= 50.0  # a counter reset (driver reload): never a negative energy
    m.end()
    assert m.avg_power_w is None
    m.reset()
    m.begin()
    m.discard()  # a batch that timed out: its window does not count
    m.end()
    assert m.window_ms == 0.0


def test_the_counter_step_is_measured_from_its_updates():
    c = Counter(step_ms=20.0)
    assert counter_step_ms(c.read, clock=c.clock, sleep=lambda s: c.advance(s * 1e3)) == pytest.approx(20.0, abs=1.0)
    frozen = Counter(watts=0.0)
    assert counter_step_ms(frozen.read, clock=frozen.clock, sleep=lambda s: frozen.advance(s * 1e3),
                           probe_ms=50.0) == 50.0  # never moved: the whole probe, a conservative step
    broken = Counter()
    broken.broken = True
    assert counter_step_ms(broken.read, clock=broken.clock, sleep=lambda s: None) is None


def fake_nvml(value_mj=123_456):
    def total(handle):
        return value_mj

    return types.SimpleNamespace(nvmlDeviceGetHandleByUUID=lambda uuid: ("h", uuid),
                                 nvmlDeviceGetTotalEnergyConsumption=total)


def test_nvml_reader_and_meter(monkeypatch):
    from flashbench.measure import environment

    monkeypatch.setattr(environment, "_nvml", lambda: fake_nvml())
    read = nvml_energy_reader("GPU-1")
    assert read() == 123_456
    monkeypatch.setattr(energy, "counter_step_ms", lambda read: 7.0)
    monkeypatch.setattr(energy, "_STEPS", {})
    m = meter_for("GPU-1")
    assert m is not None and m.step_ms == 7.0 and m.min_window_ms == pytest.approx(energy.MIN_STEPS * 7.0)


def test_no_nvml_means_no_meter(monkeypatch):  # the reader's other refusals: test_nvml_reader.py
    from flashbench.measure import environment

    monkeypatch.setattr(environment, "_nvml", lambda: None)
    assert meter_for("GPU-1") is None


def test_short_ms_says_how_much_window_is_missing_and_nothing_when_no_window_helps():
    c = Counter(watts=400.0, step_ms=20.0)
    m = EnergyMeter(c.read, step_ms=20.0, clock=c.clock)
    assert m.short_ms == pytest.approx(energy.MIN_STEPS * 20.0)
    m.begin()
    c.advance(60.0)
    m.end()
    assert m.short_ms == pytest.approx(energy.MIN_STEPS * 20.0 - 60.0)
    c.advance(1.0)
    m.begin()
    c.advance(60.0)
    m.end()
    assert m.short_ms == 0 and m.avg_power_w is not None
    assert EnergyMeter(c.read, step_ms=None).short_ms == 0  # the counter never moved: no window helps
    c.broken = True
    m.begin()
    assert m.failed and m.short_ms == 0
