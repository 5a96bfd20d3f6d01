"""The harness on a real GPU: held events timing, peak memory above the inputs, a real OOM, CUDA graphs, and
what each backend gives on a causal GQA backward."""
import re

import pytest
import torch

from flashbench import backends
from flashbench.backends.base import Backend
from flashbench.model.case import Task
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.model.config import Timing
from cases import case_maker  # tests/support

pytestmark = pytest.mark.gpu
FAST = Timing(warmup_ms=5, budget_ms=20, min_samples=5, max_samples=50)


class Huge(Backend):
    """Allocates 1 PiB: a genuine CUDA out-of-memory error."""

    name = "test_gpu_huge"

    def prepare(self, case, device):
        return lambda q, k, v: torch.empty(1 << 50, dtype=torch.uint8, device=q.device)


@pytest.fixture
def huge():
    backends.register(Huge())
    yield
    backends.REGISTRY.pop("test_gpu_huge")


case = case_maker(batch=2, heads=8, kv_heads=8, seq_len_q=1024, seq_len_kv=1024, head_dim=128, dtype="bfloat16",
                  causal=False, mode="fwd")


def test_sdpa_flash_ok_with_events_and_peak_memory_of_output_plus_lse():
    r = Measurer(MeasureSettings(timing=FAST), "cuda").measure(Task(case(), "sdpa_flash"))
    assert r.status == "ok", r.reason
    assert r.timing_method == "held_events_l2_flush" and r.samples >= 5
    out_bytes = 2 * 8 * 1024 * 128 * 2
    lse_bytes = 2 * 8 * 1024 * 4
    assert out_bytes <= r.peak_hbm_bytes <= 1.05 * (out_bytes + lse_bytes) + (2 << 20)
    assert r.peak_hbm_abs_bytes > r.peak_hbm_bytes  # the inputs count in the absolute peak only
    assert r.device_name and r.device_uuid.startswith("GPU-")


def test_naive_memory_grows_with_n_squared():
    m = Measurer(MeasureSettings(timing=FAST, correctness=False), "cuda")
    # a process's first matmul allocates cuBLAS's workspace through the caching allocator, inside
    # the measured peak: measure once first so that neither measurement below includes it (when
    # this test ran first in its process, small came out 40 MiB high and the ratio 2.6)
    m.measure(Task(case(seq_len_q=256, seq_len_kv=256), "naive"))
    small = m.measure(Task(case(seq_len_q=1024, seq_len_kv=1024), "naive")).peak_hbm_bytes
    big = m.measure(Task(case(seq_len_q=2048, seq_len_kv=2048), "naive")).peak_hbm_bytes
    assert 3.5 < big / small < 4.5


def test_real_oom_is_a_row_and_the_gpu_is_usable_after(huge):
    m = Measurer(MeasureSettings(timing=FAST), "cuda")
    r = m.measure(Task(case(), "test_gpu_huge"))
    assert r.status == "oom", r.reason
    assert m.measure(Task(case(), "sdpa_flash")).status == "ok"


def test_cuda_graph_mode_is_labelled_and_covers_backward_modes():
    s = MeasureSettings(timing=Timing(warmup_ms=5, budget_ms=20, min_samples=5, cuda_graph=True))
    r = Measurer(s, "cuda").measure(Task(case(), "sdpa_flash"))
    assert r.status == "ok", r.reason
    assert r.timing_method == "held_graph_l2_flush"
    r = Measurer(s, "cuda").measure(Task(case(mode="fwd_bwd"), "sdpa_flash"))
    assert r.status == "ok" and r.timing_method == "held_graph_l2_flush", r.reason


def _lower_right(name: str) -> str:
    """``SdpaBackend.extra_reason`` for a pinned flash or cuDNN kernel on a causal Nq != Nkv case, word for word."""
    return (f"{name}: PyTorch offers bottom-right causal masking for Nq != Nkv only through causal_lower_right, "
            "which bypasses sdpa_kernel pinning, so the pinned kernel cannot be guaranteed")


# What each backend gives on the causal GQA backward below (B2 H8/2 Nq512 Nkv768 D128 bf16), as (ok allowed, the skip
# reason allowed: a regular expression, None for none): "ok" wherever the backend declares dense causal GQA with a
# backward and nothing refuses it, a skip only with the reason the code gives for this case.
OK_ONLY = (True, None)
CAUSAL_GQA_BACKWARD = {
    "naive": OK_ONLY,  # the reference math, no refusal path
    "sdpa": OK_ONLY,  # causal_lower_right, PyTorch picks the kernel; a dense sdpa call is never probed: never skipped
    "sdpa_math": OK_ONLY,  # a boolean bottom-right mask and enable_gqa: the unfused path takes both
    "flex": OK_ONLY,  # a block mask, enable_gqa
    "triton_fa2": OK_ONLY,  # GQA, Nq != Nkv, bottom-right causal (flash_attn_v2's docstring)
    "triton_fa1": OK_ONLY,  # the same semantics (flash_attn_v1's docstring)
    # pinned kernels whose only bottom-right route bypasses the pinning: skipped before PyTorch is asked
    "sdpa_flash": (False, "^" + re.escape(_lower_right("sdpa_flash")) + "$"),
    "sdpa_cudnn": (False, "^" + re.escape(_lower_right("sdpa_cudnn")) + "$"),
    # PyTorch's memory-efficient kernel takes the mask but, in the PyTorch sources read (up to 2.13), not GQA: PyTorch's
    # own refusal (the probe, flashbench/backends/probe.py), or ok on a build that takes it
    "sdpa_efficient": (True, "^" + re.escape("PyTorch refuses sdpa_efficient for this case: ")),
}


@pytest.mark.parametrize("backend", list(CAUSAL_GQA_BACKWARD))
def test_every_backend_runs_causal_gqa_backward(backend):
    """Each backend's outcome on one causal GQA backward with Nq != Nkv is the one it claims: ok (checked against the
    reference) where it runs such a case, skipped only with the code's reason for this case. "ok or skipped with any
    reason" would pass a backend that declines everything."""
    c = case(heads=8, kv_heads=2, seq_len_q=512, seq_len_kv=768, causal=True, mode="fwd_bwd")
    r = Measurer(MeasureSettings(timing=FAST), "cuda").measure(Task(c, backend))
    ok_allowed, skip_reason = CAUSAL_GQA_BACKWARD[backend]
    if r.status == "ok" and ok_allowed:
        assert r.max_abs_err is not None and r.hbm_gbps > 0, r.reason  # checked against the reference, measured
    else:
        allowed = " or ".join(w for w, on in (("ok", ok_allowed), (f"skipped matching {skip_reason!r}", skip_reason))
                              if on)
        assert r.status == "skipped" and skip_reason is not None and re.search(skip_reason, r.reason or ""), \
            f"{backend}: {r.status} ({r.reason}); expected {allowed}"
