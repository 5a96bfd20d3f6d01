"""Every backend on each workload on a real GPU: ok (correct against the reference) or skipped with a
reason, never an error; the bundled configs expand and plan."""
import pytest

from flashbench import backends
from flashbench.execute.plan import plan
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.model.case import Case, Task
from flashbench.model.config import Timing, load_config

pytestmark = pytest.mark.gpu
FAST = MeasureSettings(timing=Timing(warmup_ms=5, budget_ms=20, min_samples=5, max_samples=50))


def decode(**kw):
    return Case(4, 32, 8, kw.pop("n_q", 1), 4096, 128, "bfloat16", True, "fwd", workload="decode", **kw)


CASES = {
    "decode_contiguous": decode(),
    "decode_contiguous_varied_nq4": decode(n_q=4, lengths="uniform(1024..4096,seed=0)"),
    "decode_paged16": decode(kv_layout="paged", page_size=16, lengths="uniform(1024..4096,seed=0)"),
    "decode_paged256_nq4": decode(n_q=4, kv_layout="paged", page_size=256, lengths="uniform(1024..4096,seed=0)"),
    "varlen_causal_gqa": Case(4, 16, 4, 2048, 2048, 128, "bfloat16", True, "fwd_bwd", workload="varlen",
                              lengths="uniform(128..2048,seed=0)", total_tokens=4096),
    "varlen_mha": Case(4, 16, 16, 2048, 2048, 128, "bfloat16", False, "fwd_bwd", workload="varlen",
                       lengths="lognormal(128..2048,seed=0)", total_tokens=4096),
    "window_causal": Case(1, 16, 16, 8192, 8192, 128, "bfloat16", True, "fwd_bwd", window_left=1024, window_right=0),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", ["naive", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math",
                                     "flex", "torch_varlen", "triton_fa2", "triton_fa1", "triton_decode"])
def test_every_backend_runs_or_skips_each_workload(backend, name):
    r = Measurer(FAST, "cuda").measure(Task(CASES[name], backend))
    if (backend, name) == ("sdpa_cudnn", "varlen_mha") and r.status == "mismatch":
        # measured on an H200 (torch 2.11): cuDNN's nested-tensor path gives gradients far outside the
        # bound (dq max error 1.5 against 0.06) where sdpa_flash, on the same inputs, passes. The row says
        # so; that is what the harness is for.
        assert "dq" in r.reason or "dk" in r.reason
        return
    assert r.status in ("ok", "skipped"), f"{r.status}: {r.reason}"
    if r.status == "skipped":
        assert r.reason
    else:
        assert r.max_abs_err is not None and r.hbm_gbps > 0


@pytest.mark.parametrize("name", ["decode_contiguous", "decode_paged16", "varlen_mha", "window_causal"])
def test_the_reference_paths_run_each_workload(name):
    case = CASES[name]
    if case.has_backward:
        case = Case(**{**case.as_dict(), "mode": "fwd"})
    for backend in ("naive", "sdpa"):
        r = Measurer(FAST, "cuda").measure(Task(case, backend))
        assert r.status == "ok", f"{backend}: {r.reason}"


def test_triton_decode_runs_every_decode_case():
    for name in ("decode_contiguous", "decode_contiguous_varied_nq4", "decode_paged16", "decode_paged256_nq4"):
        r = Measurer(FAST, "cuda").measure(Task(CASES[name], "triton_decode"))
        assert r.status == "ok", f"{name}: {r.reason}"


@pytest.mark.parametrize("config", ["decode", "varlen", "window"])
def test_bundled_workload_configs_plan(config):
    p = plan(load_config(config), device="cuda")
    assert p.runnable and all(t.backend in backends.REGISTRY for t in p.runnable)
