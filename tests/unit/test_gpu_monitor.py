"""The GPU monitor samples state in a thread and turns dips, throttling and extra processes into warnings."""
import time

from flashbench.measure.gpu_monitor import GpuMonitor


def state(sm=1980, reasons=(), temp=40):
    return {"sm_clock_mhz": sm, "max_sm_clock_mhz": 1980, "temperature_c": temp, "throttle_reasons": list(reasons)}


def scripted(states, procs):
    it_s, it_p = iter(states), iter(procs)
    return GpuMonitor(0, read_state=lambda i: next(it_s, states[-1]), read_processes=lambda i: next(it_p, procs[-1]))


def test_a_quiet_sweep_warns_of_nothing():
    m = scripted([state(), state(temp=45)], [1, 1])
    m.sample(), m.sample()
    s = m.summary()
    assert (s["samples"], s["min_sm_clock_mhz"], s["max_temperature_c"], s["max_compute_processes"]) == (2, 1980, 45, 1)
    assert m.warnings(expected_processes=1) == [] and s["events"] == [] and not m.clock_fell()


def test_idle_clocks_are_not_dips_but_busy_ones_are():
    m = scripted([state(sm=345, reasons=["gpu_idle"]), state(sm=1500)], [1])
    m.sample()
    assert m.summary()["min_sm_clock_mhz"] is None and not m.clock_fell()
    m.sample()
    assert m.clock_fell()  # 1500 of 1980 MHz: below 90%
    assert m.summary()["min_sm_clock_mhz"] == 1500
    assert [e["kind"] for e in m.summary()["events"]] == ["clock_dip"]
    assert any("fell to 1500 MHz" in w for w in m.warnings(1))


def test_throttling_and_other_processes_are_reported_once():
    m = scripted([state(reasons=["hw_slowdown"]), state(reasons=["hw_slowdown", "sw_power_cap"])], [1, 3, 2])
    for _ in range(3):
        m.sample()
    kinds = [e["kind"] for e in m.summary()["events"]]
    assert kinds.count("throttle") == 1 and "processes" in kinds  # sw_power_cap is benign
    w = m.warnings(expected_processes=1)
    assert any("throttled during the sweep (hw_slowdown" in x for x in w)
    assert any("3 processes used GPU 0" in x for x in w)
    assert m.warnings(expected_processes=3)[1:] == []


def test_the_thread_samples_until_stopped_and_survives_errors():
    calls = []

    def read(i):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("NVML hiccup")
        return state()

    with GpuMonitor(0, interval_s=0.01, read_state=read, read_processes=lambda i: None) as m:
        time.sleep(0.2)
    n = len(calls)
    time.sleep(0.05)
    assert n >= 3 and len(calls) == n and m.summary()["samples"] == n - 1


def test_no_nvml_means_no_samples():
    m = GpuMonitor(0, read_state=lambda i: {}, read_processes=lambda i: None)
    m.sample()
    assert m.summary()["samples"] == 0 and m.warnings(1) == []
