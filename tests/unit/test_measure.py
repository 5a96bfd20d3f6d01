"""Measuring one task on the CPU: statuses ok / skipped / oom / error / mismatch, and the records."""
import math

import pytest
import torch

from flashbench import backends
from flashbench.backends.base import Backend, Unsupported
from flashbench.backends.calling import outputs_of
from flashbench.model.case import Case, Task
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.attention.inputs import make_inputs
from flashbench.attention.reference import naive_attention, reference_attention
from flashbench.model.config import Timing
from attention_oracle import oracle_attention  # tests/support
from cases import case_maker, registered  # tests/support

FAST = MeasureSettings(timing=Timing(warmup_ms=1, budget_ms=5, min_samples=3, max_samples=20))


class Raising(Backend):
    name = "test_raises"
    devices = ("cpu", "cuda")

    def prepare(self, case, device):
        def fn(q, k, v):
            raise RuntimeError("kernel exploded")
        return fn


class OutOfMemory(Backend):
    name = "test_oom"
    devices = ("cpu", "cuda")

    def prepare(self, case, device):
        def fn(q, k, v):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return fn


class Wrong(Backend):
    name = "test_wrong"
    devices = ("cpu", "cuda")

    def prepare(self, case, device):
        return lambda q, k, v: naive_attention(q, k, v, case.causal) * 1.1


class RefusesAtPrepare(Backend):
    name = "test_refuses"
    devices = ("cpu", "cuda")

    def prepare(self, case, device):
        raise Unsupported("needs a head_dim of 7")


@pytest.fixture(autouse=True)
def fake_backends():
    with registered(Raising, OutOfMemory, Wrong, RefusesAtPrepare):
        yield


case = case_maker(batch=1, heads=4, kv_heads=2, seq_len_q=33, seq_len_kv=47, head_dim=16, dtype="float32",
                  causal=True, mode="fwd_bwd")


def backend_output(c, backend):
    """O of ``backend`` on the inputs the measurer gives case ``c`` (its seed), computed outside the measurer."""
    inp = make_inputs(c, "cpu", FAST.seed)
    return outputs_of(backends.get(backend).prepare(c, "cpu"), inp, c)["o"], inp


def test_ok_record_has_timing_correctness_and_throughput():
    """An ok row carries timing, correctness and throughput. The record's error is naive against the reference, and
    both mask through the same helper (reference.visible_mask), so the error alone cannot see a mask bug: naive's
    output on this Nq != Nkv causal GQA case is also checked against attention with a hand-built bottom-right mask."""
    c = case()
    r = Measurer(FAST, "cpu").measure(Task(c, "naive"))
    assert r.status == "ok", r.reason
    assert r.samples >= 3 and len(r.samples_ms) == r.samples
    assert r.p20_ms <= r.median_ms <= r.p80_ms and r.min_ms <= r.p20_ms
    assert r.timing_method == "cpu_perf_counter"
    assert r.max_abs_err < 1e-4 and r.rel_err < 1e-5 and r.tolerance_abs > 0
    assert r.tflops == pytest.approx(r.flops / (r.median_ms * 1e-3) / 1e12)
    assert r.peak_hbm_bytes is None  # no device memory on the CPU
    o, inp = backend_output(c, "naive")
    want = oracle_attention(inp.q, inp.k, inp.v, causal=True)
    assert (o.double() - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd"])
def test_sdpa_matches_reference_in_every_mode(mode):
    r = Measurer(FAST, "cpu").measure(Task(case(mode=mode, causal=False, kv_heads=4), "sdpa"))
    assert r.status == "ok", r.reason


def test_raising_backend_is_an_error_row():
    r = Measurer(FAST, "cpu").measure(Task(case(), "test_raises"))
    assert r.status == "error" and "RuntimeError: kernel exploded" in r.reason
    assert r.median_ms is None


def test_oom_backend_is_an_oom_row_and_the_next_task_still_runs():
    m = Measurer(FAST, "cpu")
    r = m.measure(Task(case(), "test_oom"))
    assert r.status == "oom" and "out of memory" in r.reason
    assert m.measure(Task(case(), "naive")).status == "ok"


def test_wrong_result_is_a_mismatch_row_but_still_timed():
    r = Measurer(FAST, "cpu").measure(Task(case(), "test_wrong"))
    assert r.status == "mismatch"
    assert "o: max abs err" in r.reason and "bound" in r.reason
    assert r.median_ms is not None and r.max_abs_err > r.tolerance_abs


def test_unsupported_at_prepare_is_a_skip():
    r = Measurer(FAST, "cpu").measure(Task(case(), "test_refuses"))
    assert r.status == "skipped" and r.reason == "needs a head_dim of 7"


def test_declared_limits_skip_with_a_reason():
    r = Measurer(FAST, "cpu").measure(Task(case(), "sdpa_flash"))
    assert r.status == "skipped" and "cpu" in r.reason


def test_half_precision_tolerance_uses_same_dtype_error():
    """The bound is factor x the error of PyTorch's float16 math against the float64 reference + atol
    (worked out here on the measurer's inputs); a bound of atol alone would also be >= atol."""
    c = case(dtype="float16", mode="fwd")
    r = Measurer(FAST, "cpu").measure(Task(c, "naive"))
    assert r.status == "ok", r.reason
    q, k, v = make_inputs(c, "cpu", FAST.seed).args
    same_dtype_err = (naive_attention(q, k, v, c.causal).double()
                      - reference_attention(q, k, v, c.causal, compute_dtype=torch.float64)).abs().max().item()
    tol = FAST.tolerances["float16"]
    assert same_dtype_err > 0
    assert r.tolerance_abs == pytest.approx(tol.factor * same_dtype_err + tol.atol, rel=1e-3)
    assert not math.isnan(r.rel_err)


def test_correctness_can_be_switched_off():
    s = MeasureSettings(timing=FAST.timing, correctness=False)
    r = Measurer(s, "cpu").measure(Task(case(), "test_wrong"))
    assert r.status == "ok" and r.max_abs_err is None


class TunesOnFirstCall(Backend):
    """Stands in for an autotuned kernel, whose first call also tunes (on a GPU: a tuner's 256 MiB L2 flush and its
    candidates' outputs); counts its calls in ``calls``."""
    name = "test_tunes"
    devices = ("cpu", "cuda")
    calls: list = []

    def prepare(self, case, device):
        def fn(q, k, v):
            self.calls.append(case)
            return naive_attention(q, k, v, case.causal)
        return fn


@pytest.mark.parametrize("check", [True, False])
def test_the_peak_memory_pass_never_holds_the_first_call(check, monkeypatch):
    """Compilation and autotuning happen in a task's first call, which precedes the peak-memory pass whether
    correctness is checked or not (a sweep's later rounds time in fresh workers without checking)."""
    import flashbench.measure.measurer as measurer

    calls_before_the_pass = []
    monkeypatch.setattr(measurer, "peak_memory",
                        lambda call, dev: calls_before_the_pass.append(len(TunesOnFirstCall.calls)) or (None, None))
    monkeypatch.setattr(TunesOnFirstCall, "calls", [])
    with registered(TunesOnFirstCall):
        r = Measurer(MeasureSettings(timing=FAST.timing, correctness=check), "cpu").measure(Task(case(mode="fwd"),
                                                                                                "test_tunes"))
    assert r.status == "ok" and (r.max_abs_err is not None) == check
    assert calls_before_the_pass == [1]  # the first call, and only it, before the pass


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd"])
def test_cuda_graph_setting_is_a_gpu_setting_and_the_cpu_timer_ignores_it(mode):
    s = MeasureSettings(timing=Timing(warmup_ms=1, budget_ms=5, min_samples=3, cuda_graph=True))
    r = Measurer(s, "cpu").measure(Task(case(mode=mode), "naive"))
    assert r.status == "ok", r.reason
    assert r.timing_method == "cpu_perf_counter"


def test_gpu_only_columns_are_empty_on_the_cpu_and_noise_is_measured():
    s = MeasureSettings(timing=Timing(warmup_ms=1, budget_ms=5, min_samples=8, max_samples=20))
    r = Measurer(s, "cpu").measure(Task(case(), "naive"))
    assert r.status == "ok", r.reason
    for col in ("host_ms", "launch_bound", "energy_j", "avg_power_w", "tflop_per_j", "pct_peak_flops", "pct_hbm",
                "sm_clock_mhz"):
        assert getattr(r, col) is None, col
    from flashbench.measure.stats import noise_pct
    assert r.noise_pct == pytest.approx(noise_pct(r.samples_ms)) and r.noise_pct >= 0


def test_pinned_sdpa_with_bottom_right_causal():
    """Nq > Nkv causal: math gets a tensor mask (correct result); flash/cudnn are skipped with the reason.

    The measurer's reference masks with the same helper as sdpa_math (reference.visible_mask), so its ok cannot tell
    bottom-right from top-left: the output is checked against the definition itself. Bottom-right, query i sees key j
    iff j <= i + (Nkv - Nq): the first Nq - Nkv = 16 rows see no key and are 0 (reference.py defines them so), row 16
    sees key 0 alone and is v[..., 0, :], and every row equals attention with a hand-built mask (fp64)."""
    c = case(causal=True, mode="fwd_bwd", seq_len_q=40, seq_len_kv=24)  # the first 16 query rows see no key
    m = Measurer(FAST, "cpu")
    r = m.measure(Task(c, "sdpa_math"))
    assert r.status == "ok", r.reason  # fully masked rows come out 0, as the reference defines them
    o, inp = backend_output(c, "sdpa_math")
    assert torch.equal(o[:, :, :16], torch.zeros_like(o[:, :, :16]))
    v_of_head = inp.v.detach().repeat_interleave(c.heads // c.kv_heads, dim=1)  # query head h reads kv head h // 2
    assert torch.allclose(o[:, :, 16], v_of_head[:, :, 0], atol=1e-6)
    assert (o.double() - oracle_attention(inp.q, inp.k, inp.v, causal=True)).abs().max().item() < 1e-4
    from flashbench.backends import get

    for name in ("sdpa_flash", "sdpa_cudnn"):
        why = get(name).extra_reason(c, "cuda")
        assert why and "bypasses sdpa_kernel pinning" in why
    assert get("sdpa_efficient").extra_reason(c, "cuda") is None


def test_pinned_sdpa_math_bottom_right_matches_reference():
    """Nq < Nkv causal through the pinned math kernel (a tensor mask) is bottom-right: query i sees keys
    j <= i + (Nkv - Nq). The measurer's reference builds its mask with the same helper as the backend, so besides the
    ok row the output is compared with fp64 attention under a hand-built mask (top-left would hide 16 keys a row)."""
    c = case(causal=True, mode="fwd_bwd", seq_len_q=24, seq_len_kv=40)
    r = Measurer(FAST, "cpu").measure(Task(c, "sdpa_math"))
    assert r.status == "ok", r.reason
    o, inp = backend_output(c, "sdpa_math")
    assert (o.double() - oracle_attention(inp.q, inp.k, inp.v, causal=True)).abs().max().item() < 1e-4


def test_triton_backend_reports_only_the_kernels_a_mode_ran(monkeypatch):
    from types import SimpleNamespace

    from flashbench.backends.triton_kernels import TritonKernelBackend

    b = TritonKernelBackend("t", "m", "f", "test")
    launched = {"fwd": "BLOCK_M=128", "bwd_preprocess": "BLOCK_M=64", "bwd_dq": "BLOCK_M=64"}

    def f(q, k, v, causal, launch_log):  # a kernel that logs its forward, and its backward when q needs grads
        launch_log.update(launched if q.requires_grad else {"fwd": launched["fwd"]})
        return q

    monkeypatch.setattr(b, "_module", lambda: SimpleNamespace(f=f))
    x = torch.randn(2)
    fwd_bwd = b.prepare(Case(1, 2, 2, 8, 8, 16, "float32", False, "fwd_bwd"), "cpu")
    fwd_bwd(x.requires_grad_(), x, x)
    assert "bwd_dq" in b.config_description()
    fwd = b.prepare(Case(1, 2, 2, 8, 8, 16, "float32", False, "fwd"), "cpu")
    assert b.config_description() == ""  # this prepared call has launched nothing yet
    fwd(x.detach(), x, x)
    assert b.config_description() == "fwd: BLOCK_M=128"
    fwd_bwd(x.requires_grad_(), x, x)  # an earlier prepared call logs into its own log
    assert b.config_description() == "fwd: BLOCK_M=128"


def test_a_graph_that_cannot_be_captured_is_a_skip_with_the_reason(monkeypatch):
    from flashbench.measure import measurer, timer

    def fail_capture(*a, **k):
        raise timer.GraphCaptureError("CUDA-graph capture failed (RuntimeError: operation not permitted when "
                                      "stream is capturing)")

    monkeypatch.setattr(measurer, "time_call", fail_capture)
    r = Measurer(FAST, "cpu").measure(Task(case(), "naive"))
    assert r.status == "skipped"
    assert "capture failed" in r.reason and "timing.cuda_graph: false" in r.reason
    assert r.max_abs_err is not None  # correctness was still checked


def test_launch_bound_is_host_time_over_gpu_time(monkeypatch):
    from flashbench.measure import measurer
    from flashbench.measure.timer import TimingResult

    for host, bound in ((0.5, True), (0.05, False)):
        monkeypatch.setattr(measurer, "time_call", lambda *a, host=host, **k: TimingResult(
            [0.1] * 10, "held_events_l2_flush", host_ms=host, avg_power_w=500.0, sm_clock_mhz=1_605.0))
        r = Measurer(FAST, "cpu").measure(Task(case(), "naive"))
        assert r.status == "ok" and r.host_ms == host and r.launch_bound is bound and r.sm_clock_mhz == 1_605.0
        assert r.energy_j == pytest.approx(500.0 * 0.1e-3) and r.tflop_per_j == pytest.approx(r.flops / r.energy_j / 1e12)
        assert r.noise_pct == 0.0


@pytest.mark.parametrize("dtype, has_pct", [("float32", False), ("float16", True)])
def test_percent_of_peak_only_for_dtypes_the_compute_roof_is_a_rate_of(dtype, has_pct):
    """The measurer's pct_peak_flops follows ``has_compute_roof``: a float32 row against the bf16 matmul roof
    had read as a fraction of a rate it can never run at.  pct_hbm stays for every dtype."""
    from flashbench.measure.ceilings_cache import Ceilings
    m = Measurer(FAST, "cpu")
    m.ceilings = Ceilings("gpu", "GPU-0", sustained_tflops=1e-6, burst_tflops=1e-6, read_gbps=1e-3, copy_gbps=1e-3)
    r = m.measure(Task(case(dtype=dtype, mode="fwd"), "naive"))
    assert r.status == "ok", r.reason
    assert (r.pct_peak_flops is not None) is has_pct
    assert r.pct_hbm == pytest.approx(100 * r.hbm_gbps / 1e-3)
