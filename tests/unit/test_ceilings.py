"""Ceilings without a GPU: the datasheet table, the cache and its format, what the % columns divide
by, the NVML window, and how `env --ceilings` and the roofline state which roof they use."""
import json
import time

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.measure import ceilings_cache
from flashbench.measure.ceilings_cache import CEILINGS_FORMAT, Ceilings, load_cached, percent_of_roofs, save
from flashbench.model.case import Case
from flashbench.model.schema import Record
from flashbench.profile.ceilings import NvmlWindow
from flashbench.profile.datasheet import datasheet_peak
from flashbench.profile.roofline import roofline_point


def ceilings(**kw):
    base = dict(gpu_name="NVIDIA H200", gpu_uuid="GPU-abc", sustained_tflops=667.0, burst_tflops=795.0,
                read_gbps=4500.0, copy_gbps=4246.0, sustained_sm_clock_mhz=1500.0, sustained_power_w=690.0,
                burst_sm_clock_mhz=1980.0, burst_power_w=600.0, measured_utc="2000-01-01T00:00:00+00:00")
    base.update(kw)
    return Ceilings(**base)


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"), ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"), ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"), ("NVIDIA L40S", "L40S")])
def test_datasheet_lookup_by_device_name(name, model):
    assert datasheet_peak(name).model == model


def test_datasheet_figures_and_unknown_models():
    h200 = datasheet_peak("NVIDIA H200")
    assert h200.bf16_tflops == 989.5 and h200.hbm_gbps == 4800.0 and "H200" in h200.source
    assert datasheet_peak("NVIDIA H100 80GB HBM3").hbm_gbps == 3350.0
    assert datasheet_peak("NVIDIA H100 NVL") is None  # not in the table: no figure rather than a wrong one
    assert datasheet_peak("cpu (x86_64)") is None and datasheet_peak("") is None


def test_roofs_are_sustained_compute_and_read_bandwidth():
    c = ceilings()
    assert c.compute_tflops == 667.0 and c.memory_gbps == 4500.0
    assert c.ridge_flop_per_byte == pytest.approx(667e12 / 4500e9)
    assert c.attainable_tflops(1.0) == pytest.approx(4.5) and c.attainable_tflops(1e6) == 667.0
    assert percent_of_roofs(600.0, 4000.0, c) == (pytest.approx(100 * 600 / 667), pytest.approx(100 * 4000 / 4500))
    assert percent_of_roofs(600.0, None, c) == (pytest.approx(100 * 600 / 667), None)
    assert percent_of_roofs(600.0, 4000.0, None) == (None, None)
    label = c.roofs_label()
    assert "sustained" in label["pct_peak_flops"] and "667" in label["pct_peak_flops"]
    assert "read" in label["pct_hbm"] and "4500" in label["pct_hbm"]


def test_cache_round_trip_and_older_formats_are_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    c = ceilings()
    path = save(c)
    assert path.parent == tmp_path / "flashbench" and load_cached("GPU-abc") == c
    old = {"gpu_name": "NVIDIA H200", "gpu_uuid": "GPU-abc", "matmul_tflops": 690.0, "copy_gbps": 4246.0}
    path.write_text(json.dumps(old))  # the first format: a copy roof, one matmul figure
    assert load_cached("GPU-abc") is None
    path.write_text("{not json")
    assert load_cached("GPU-abc") is None
    assert load_cached("") is None and load_cached("GPU-other") is None
    assert json.loads(json.dumps(c.to_dict()))["format"] == CEILINGS_FORMAT


def test_nvml_window_takes_medians_inside_the_span():
    readings = iter([{"sm_clock_mhz": 1980, "power_w": 500.0}, {"sm_clock_mhz": 1500, "power_w": 700.0},
                     {"sm_clock_mhz": 1400, "power_w": 690.0}, {"sm_clock_mhz": 1450, "power_w": None}])
    w = NvmlWindow(read_state=lambda i: next(readings, {}), interval_s=0.001)
    with w:
        time.sleep(0.05)
    times = [s[0] for s in w.samples]
    assert len(times) >= 4
    clock, power = w.between(times[1], times[3])
    assert clock == 1450 and power == pytest.approx(695.0)
    assert w.between(times[-1] + 1, times[-1] + 2) == (None, None)
    broken = NvmlWindow(read_state=lambda i: 1 / 0, interval_s=0.001)
    with broken:
        time.sleep(0.01)
    assert broken.between(0, time.perf_counter()) == (None, None)


def test_roofline_point_against_the_datasheet_too():
    rec = Record(backend="b", case=Case(1, 1, 1, 8, 8, 8, "float16", False, "fwd"), flops=1e12, tflops=600.0,
                 min_hbm_bytes=10 ** 9)
    p = roofline_point(rec, ceilings(), datasheet_peak("NVIDIA H200"))
    assert p.attainable_tflops == 667.0 and p.pct_of_roof == pytest.approx(100 * 600 / 667)
    assert p.datasheet_tflops == 989.5 and p.pct_of_datasheet == pytest.approx(100 * 600 / 989.5)
    assert roofline_point(rec, ceilings()).pct_of_datasheet is None


def test_env_ceilings_names_both_compute_roofs_the_read_roof_and_the_datasheet(monkeypatch, tmp_path):
    from flashbench.profile import ceilings as ceilings_mod

    monkeypatch.setattr(ceilings_mod, "get_ceilings", lambda refresh=False: (ceilings(), tmp_path / "c.json", True))
    runner = CliRunner()
    r = runner.invoke(app, ["env", "--ceilings"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for text in ("compute roof: sustained bf16 matmul", "667", "SM 1,500 MHz", "burst bf16 matmul", "795",
                 "memory roof: streaming read", "4,500", "device copy", "H200 SXM: 990 TFLOP/s", "67% of the datasheet",
                 "refers to the sustained compute roof"):
        assert text in r.output, text
    r = runner.invoke(app, ["env", "--ceilings", "--format", "json"], catch_exceptions=False)
    doc = json.loads(r.stdout)
    assert doc["sustained_tflops"] == 667.0 and doc["burst_tflops"] == 795.0 and doc["read_gbps"] == 4500.0
    assert doc["datasheet"]["model"] == "H200 SXM" and doc["from_cache"] is True


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ceilings_cache.cache_path("GPU-1/2").name == "ceilings-GPU-1_2.json"


def test_nvml_index_is_found_by_uuid(monkeypatch):
    import types

    from flashbench.measure import environment
    from flashbench.measure.environment import nvml_index

    uuids = [b"GPU-a", b"GPU-b", b"GPU-c"]
    nv = types.SimpleNamespace(nvmlDeviceGetCount=lambda: 3, nvmlDeviceGetHandleByIndex=lambda i: i,
                               nvmlDeviceGetUUID=lambda h: uuids[h])
    monkeypatch.setattr(environment, "_nvml", lambda: nv)
    assert nvml_index("GPU-c") == 2 and nvml_index("GPU-zzz") is None
    monkeypatch.setattr(environment, "_nvml", lambda: None)
    assert nvml_index("GPU-c") is None


def test_a_cuda_index_reads_its_own_gpu_under_cuda_visible_devices(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=2, CUDA's device 0 is NVML's GPU 2: its clocks, name and UUID are read from
    GPU 2, not from NVML's GPU 0 (a GPU the run never used)."""
    import types

    from flashbench.measure import environment

    uuids, names = [b"GPU-a", b"GPU-b", b"GPU-c"], [b"H200 #0", b"H200 #1", b"H200 #2"]
    nv = types.SimpleNamespace(nvmlDeviceGetCount=lambda: 3, nvmlDeviceGetHandleByIndex=lambda i: i,
                               nvmlDeviceGetUUID=lambda h: uuids[h], nvmlDeviceGetName=lambda h: names[h],
                               nvmlSystemGetDriverVersion=lambda: b"580",
                               nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=1 << 30))
    monkeypatch.setattr(environment, "_nvml", lambda: nv)
    monkeypatch.setattr(environment, "cuda_uuid", lambda i: {0: "GPU-c", 1: "GPU-a"}.get(i, ""))
    assert environment.nvml_index_of(0) == 2 and environment.nvml_index_of(1) == 0
    assert environment.nvml_index_of(5) == 5  # a UUID neither side knows: the CUDA index stands
    info = environment.gpu_identity(0)
    assert (info["gpu_name"], info["gpu_uuid"]) == ("H200 #2", "GPU-c")
