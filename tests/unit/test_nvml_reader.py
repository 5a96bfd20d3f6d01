"""The one NVML reader of a GPU figure by UUID (environment.nvml_reader), as the energy counter and the SM clock use
it: the figure read, None where NVML, the figure or the GPU (a CPU has no UUID) is missing, and a read that fails
later returns None instead of raising into the timer."""
import types

import pytest

from flashbench.measure import environment
from flashbench.measure.energy import nvml_energy_reader
from flashbench.measure.sm_clock import nvml_clock_reader

READERS = [(nvml_energy_reader, 123_456), (nvml_clock_reader, 1_755)]


def fake_nvml(missing=False, fail_after=None):
    calls = []

    def figure(value):
        def read(*args):
            calls.append(1)
            if missing or (fail_after is not None and len(calls) > fail_after):
                raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
            return value
        return read

    return types.SimpleNamespace(nvmlDeviceGetHandleByUUID=lambda uuid: ("h", uuid), NVML_CLOCK_SM="SM",
                                 nvmlDeviceGetTotalEnergyConsumption=figure(123_456),
                                 nvmlDeviceGetClockInfo=figure(1_755))


@pytest.mark.parametrize("reader, value", READERS)
def test_a_reader_reads_its_figure_and_a_later_failure_is_none(monkeypatch, reader, value):
    monkeypatch.setattr(environment, "_nvml", lambda: fake_nvml(fail_after=2))
    read = reader("GPU-1")  # the first read: tried when the reader is made
    assert read() == value
    assert read() is None


@pytest.mark.parametrize("reader, value", READERS)
def test_no_nvml_no_figure_or_no_uuid_means_no_reader(monkeypatch, reader, value):
    monkeypatch.setattr(environment, "_nvml", lambda: None)
    assert reader("GPU-1") is None
    monkeypatch.setattr(environment, "_nvml", lambda: fake_nvml(missing=True))
    assert reader("GPU-1") is None
    monkeypatch.setattr(environment, "_nvml", lambda: fake_nvml())
    assert reader("") is None  # a CPU has no UUID
    monkeypatch.setattr(environment, "_nvml", lambda: types.SimpleNamespace(
        nvmlDeviceGetHandleByUUID=lambda uuid: (_ for _ in ()).throw(RuntimeError("NVML_ERROR_NOT_FOUND"))))
    assert reader("GPU-9") is None  # a UUID NVML does not know
