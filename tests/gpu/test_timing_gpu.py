"""The timer on a real GPU: held batches time the GPU alone where plain events time the host, host
time per call, the fallback for a call that synchronises, a full launch queue, CUDA graphs of every
mode, energy, the SM clock, and the ceilings (the streaming read against torch.sum, burst and sustained roofs).

Run: python -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_timing_gpu.py   (add -m "gpu and not slow"
to leave out the slow ones)."""
import time

import pytest
import torch

from flashbench.backends.base import Backend
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.measure.stats import summarize
from flashbench.measure.timer import time_cuda
from flashbench.model.case import Task
from flashbench.model.config import Timing
from cases import case_maker, registered  # noqa: E402  (tests/support)

pytestmark = pytest.mark.gpu
SLEEP_S = 0.002
TIMING = Timing(warmup_ms=10, budget_ms=150, min_samples=20, max_samples=500, max_noise_pct=0)


def median(r) -> float:
    return summarize(r.samples_ms).median_ms


def two_tiny_kernels(sleep_s: float):
    x = torch.randn(4096, device="cuda")

    def call():
        x.mul_(1.0001)
        if sleep_s:
            time.sleep(sleep_s)  # the host is slower than the GPU: a Python launch path, exaggerated
        x.add_(1e-4)
    return call


def test_held_batches_time_the_gpu_plain_events_time_the_host():
    gpu_alone = median(time_cuda(two_tiny_kernels(0.0), TIMING))
    held = time_cuda(two_tiny_kernels(SLEEP_S), TIMING)
    plain = time_cuda(two_tiny_kernels(SLEEP_S), TIMING.model_copy(update={"hold_stream": False}))
    assert held.method == "held_events_l2_flush" and plain.method == "cuda_events_l2_flush"
    assert median(held) < 1.5 * gpu_alone + 0.01, (median(held), gpu_alone)
    assert median(held) < 0.25 * SLEEP_S * 1e3
    assert median(plain) > 0.8 * SLEEP_S * 1e3, median(plain)  # the events waited for the host
    assert SLEEP_S * 1e3 <= held.host_ms < 2 * SLEEP_S * 1e3 + 0.5, held.host_ms
    assert plain.host_ms is None


@pytest.mark.parametrize("sync", ["synchronize", "item"])
def test_a_call_that_synchronises_falls_back_to_plain_events_without_hanging(sync):
    x = torch.randn(4096, device="cuda")

    def call():
        x.add_(1e-4)
        if sync == "synchronize":
            torch.cuda.synchronize()
        else:
            x[0].item()

    t0 = time.perf_counter()
    r = time_cuda(call, TIMING)
    assert r.method == "cuda_events_l2_flush_call_syncs" and r.host_ms is None
    assert len(r.samples_ms) >= TIMING.min_samples
    assert time.perf_counter() - t0 < 10


@pytest.mark.slow
def test_a_call_that_fills_the_launch_queue_is_still_held():
    x = torch.randn(1024, device="cuda")

    def call():  # 600 launches: four samples of it do not fit in the launch queue
        for _ in range(600):
            x.add_(1e-6)

    r = time_cuda(call, TIMING.model_copy(update={"flush_l2": False, "budget_ms": 300}))
    assert r.method == "held_events_warm_l2", (r.method, r.hold_timeouts)
    assert len(r.samples_ms) >= TIMING.min_samples
    plain = time_cuda(call, TIMING.model_copy(update={"flush_l2": False, "hold_stream": False}))
    print(f"600 launches: held {median(r):.3f} ms ({r.hold_timeouts} timeouts), plain {median(plain):.3f} ms, "
          f"host {r.host_ms:.3f} ms")
    assert median(r) <= 1.05 * median(plain)


class Sleepy(Backend):
    """sdpa with a host pause in the call: launch-bound by construction."""

    name = "test_gpu_sleepy"

    def prepare(self, case, device):
        def fn(q, k, v):
            time.sleep(SLEEP_S)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
        return fn


class SyncsInside(Backend):
    """Reads a value back to the host inside the call: cannot be captured in a CUDA graph."""

    name = "test_gpu_syncs_inside"

    def prepare(self, case, device):
        def fn(q, k, v):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
            o[0, 0, 0, 0].item()
            return o
        return fn


@pytest.fixture
def test_backends():
    with registered(Sleepy, SyncsInside):
        yield


case = case_maker(batch=2, heads=8, kv_heads=8, seq_len_q=1024, seq_len_kv=1024, head_dim=128, dtype="bfloat16",
                  causal=True, mode="fwd")


def test_launch_bound_rows(test_backends):
    m = Measurer(MeasureSettings(timing=TIMING), "cuda")
    r = m.measure(Task(case(), "test_gpu_sleepy"))
    assert r.status == "ok", r.reason
    assert r.host_ms >= SLEEP_S * 1e3 and r.median_ms < SLEEP_S * 1e3 and r.launch_bound is True
    r = m.measure(Task(case(batch=16, seq_len_q=4096, seq_len_kv=4096), "sdpa_flash"))
    assert r.status == "ok" and r.launch_bound is False, (r.host_ms, r.median_ms)


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd"])
@pytest.mark.parametrize("backend", ["sdpa_flash", "triton_fa2"])
def test_graph_timing_of_every_mode_agrees_with_held_events(backend, mode):
    c = case(batch=4, heads=16, kv_heads=16, seq_len_q=2048, seq_len_kv=2048, mode=mode)
    events = Measurer(MeasureSettings(timing=TIMING), "cuda").measure(Task(c, backend))
    for flush, label in ((True, "held_graph_l2_flush"), (False, "held_graph_warm_l2")):
        s = TIMING.model_copy(update={"cuda_graph": True, "flush_l2": flush})
        graph = Measurer(MeasureSettings(timing=s), "cuda").measure(Task(c, backend))
        assert graph.status == "ok", graph.reason
        assert graph.timing_method == label and graph.max_abs_err is not None
        assert 0.6 < graph.median_ms / events.median_ms < 1.15, (graph.median_ms, events.median_ms)


def test_a_call_that_cannot_be_captured_is_a_skip(test_backends):
    s = TIMING.model_copy(update={"cuda_graph": True})
    r = Measurer(MeasureSettings(timing=s), "cuda").measure(Task(case(), "test_gpu_syncs_inside"))
    assert r.status == "skipped" and "capture failed" in r.reason, (r.status, r.reason)
    r = Measurer(MeasureSettings(timing=s), "cuda").measure(Task(case(), "sdpa_flash"))
    assert r.status == "ok", r.reason  # the GPU is usable after the failed capture


@pytest.mark.slow
def test_energy_of_a_long_enough_row():
    from flashbench.measure.energy import meter_for

    s = TIMING.model_copy(update={"budget_ms": 2000, "max_samples": 100_000})
    m = Measurer(MeasureSettings(timing=s), "cuda")
    if meter_for(m.identity["device_uuid"]) is None:
        pytest.skip("NVML cannot read this GPU's energy counter")
    r = m.measure(Task(case(batch=16, heads=16, kv_heads=16, seq_len_q=4096, seq_len_kv=4096), "sdpa_flash"))
    assert r.status == "ok", r.reason
    print(f"energy: {r.energy_j} J per call, {r.avg_power_w} W, {r.tflop_per_j} TFLOP/J, counter step "
          f"{m._energy.step_ms} ms")
    assert r.energy_j > 0 and 30 < r.avg_power_w < 1500
    assert r.tflop_per_j == pytest.approx(r.flops / r.energy_j / 1e12)


def test_energy_ms_gives_a_short_row_its_energy():
    """A row sampled for 40 ms (the bundled sweeps' budget: on the H200 such rows had no energy) gets
    its energy with energy_ms."""
    from flashbench.measure.energy import meter_for

    s = TIMING.model_copy(update={"budget_ms": 40, "min_samples": 8, "max_samples": 200})
    m = Measurer(MeasureSettings(timing=s), "cuda")
    if meter_for(m.identity["device_uuid"]) is None:
        pytest.skip("NVML cannot read this GPU's energy counter")
    task = Task(case(batch=4, heads=16, kv_heads=16, seq_len_q=2048, seq_len_kv=2048), "sdpa_flash")
    short = m.measure(task)
    assert short.status == "ok", short.reason
    print(f"40 ms of samples: energy {short.energy_j} J (counter step {m._energy.step_ms} ms)")
    m = Measurer(MeasureSettings(timing=s.model_copy(update={"energy_ms": 3000})), "cuda")
    r = m.measure(task)
    assert r.status == "ok" and r.energy_j is not None and 30 < r.avg_power_w < 1500
    assert r.samples <= s.max_samples


def test_a_rows_sm_clock_is_one_the_gpu_ran_at_during_the_row():
    """The row's clock (read only while its timed batches ran) lies within what NVML read, every 5 ms, over
    the whole task, and under the GPU's maximum."""
    from flashbench.measure.environment import gpu_state, nvml_index_of
    from flashbench.measure.sm_clock import sampler_for
    from flashbench.profile.ceilings import NvmlWindow

    m = Measurer(MeasureSettings(timing=TIMING, correctness=False), "cuda")
    if sampler_for(m.identity["device_uuid"]) is None:
        pytest.skip("NVML cannot read this GPU's SM clock")
    index = nvml_index_of(torch.cuda.current_device())
    task = Task(case(batch=16, heads=16, kv_heads=16, seq_len_q=4096, seq_len_kv=4096), "sdpa_flash")
    with NvmlWindow(index, interval_s=0.005) as window:
        r = m.measure(task)
    seen = [mhz for _, mhz, _ in window.samples if mhz]
    top = gpu_state(index).get("max_sm_clock_mhz")
    print(f"row clock {r.sm_clock_mhz} MHz, {len(m._clock.readings)} readings; over the task {min(seen)}–{max(seen)} "
          f"MHz ({len(seen)} readings), max {top}")
    assert r.status == "ok", r.reason
    assert r.sm_clock_mhz is not None and len(m._clock.readings) >= 3
    assert min(seen) <= r.sm_clock_mhz <= max(seen)
    assert top is None or r.sm_clock_mhz <= top


def test_read_ceiling_kernel_reads_at_least_as_fast_as_torch_sum():
    from flashbench.profile.read_bandwidth import CONFIGS, read_sum

    x = torch.randn(1 << 28, device="cuda")  # 1 GiB
    s = Timing(warmup_ms=50, budget_ms=300, min_samples=10, max_samples=200)
    nbytes = x.numel() * 4
    ours = 0.0
    for block, warps in CONFIGS:
        out = torch.full((x.numel() // block,), float("nan"), device="cuda")
        read_sum(x, out, block, warps)
        torch.testing.assert_close(out.sum(), x.sum(), rtol=1e-4, atol=1.0)
        ours = max(ours, nbytes / (median(time_cuda(lambda: read_sum(x, out, block, warps), s)) * 1e-3) / 1e9)
    theirs = nbytes / (median(time_cuda(lambda: torch.sum(x), s)) * 1e-3) / 1e9
    print(f"streaming read {ours:.0f} GB/s, torch.sum {theirs:.0f} GB/s")
    assert ours >= 0.98 * theirs


@pytest.mark.slow
def test_ceilings_burst_sustained_read_and_the_cache(tmp_path, monkeypatch):
    from flashbench.measure.ceilings_cache import load_cached
    from flashbench.profile.ceilings import get_ceilings
    from flashbench.profile.datasheet import datasheet_peak

    from flashbench.measure.gpu_monitor import compute_processes

    if (compute_processes(0) or 0) > 1:  # burst against sustained needs the GPU to itself
        pytest.skip("other processes use the GPU: a burst and a sustained roof cannot be told apart")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    c, path, cached = get_ceilings(refresh=True)
    print(c.to_dict())
    assert not cached and path.exists() and load_cached(c.gpu_uuid) == c
    assert c.burst_tflops >= 0.97 * c.sustained_tflops  # a rested GPU is not slower than a loaded one
    assert c.read_gbps >= 0.9 * c.copy_gbps
    peak = datasheet_peak(c.gpu_name)
    if peak is not None:
        assert c.sustained_tflops <= 1.02 * peak.bf16_tflops and c.read_gbps <= 1.02 * peak.hbm_gbps
    again, _, cached = get_ceilings()
    assert cached and again == c
