"""Every backend on each workload on a real GPU, each (backend, case) held to what the product says it does:
``ok`` (correct against the reference) where a backend's declared capabilities (``flashbench/backends/*.py``:
workloads, kv_layouts, supports_window, ...), README's "Which backend runs what" table or the H200 baselines
(``results/baselines/h200/*/results.csv``, their status column) say it runs the case, ``skipped`` only with the
reason the code gives for that exact case; the bundled configs expand and plan.

"ok or skipped" with any reason would pass a backend that wrongly declines every case. So an expectation here is
one outcome wherever the code (or a baseline row of the same dispatch) fixes it, and "ok, or skipped with PyTorch's
refusal" only where PyTorch decides at call time on a case no baseline measured. Outcomes that depend on the
PyTorch build (cuDNN, ``varlen_attn``'s keyword arguments, FlexAttention's paged-attention helper) are read off
this build and the skip must then name what is missing."""
import importlib.util
import inspect
import re
from dataclasses import dataclass

import pytest
import torch

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
BACKENDS = ["naive", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flex", "torch_varlen",
            "triton_fa2", "triton_fa1", "triton_decode"]


# --- what a correct GPU gives ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """The outcomes a correct GPU may give for one task: ``ok``; ``skipped`` with a reason matching ``skip`` (a regular
    expression; None: a skip fails); ``mismatch`` with a reason matching ``mismatch`` (None: a mismatch fails).
    ``why`` says where the expectation comes from."""

    ok: bool = False
    skip: str | None = None
    mismatch: str | None = None
    why: str = ""


def ok(why: str) -> Expect:
    return Expect(ok=True, why=why)


def skipped(reason: str, why: str) -> Expect:
    return Expect(skip=reason, why=why)


def ok_or_skipped(reason: str, why: str) -> Expect:
    return Expect(ok=True, skip=reason, why=why)


def exactly(reason: str) -> str:
    """A skip reason the code writes word for word."""
    return "^" + re.escape(reason) + "$"


def refused(backend: str) -> str:
    """The reason a case PyTorch refuses on the probe's miniature gets (flashbench/backends/probe.py)."""
    return "^" + re.escape(f"PyTorch refuses {backend} for this case: ")


def check_outcome(r, expect: Expect, what: str) -> None:
    """The record ``r`` is one of the outcomes ``expect`` allows; an ``ok`` row was checked against the reference."""
    if r.status == "ok" and expect.ok:
        assert r.max_abs_err is not None and r.hbm_gbps > 0, f"{what}: ok but not checked/measured ({r.reason})"
        return
    if r.status == "skipped" and expect.skip is not None:
        assert re.search(expect.skip, r.reason or ""), \
            f"{what}: skipped with {r.reason!r}, expected a reason matching {expect.skip!r} ({expect.why})"
        return
    if r.status == "mismatch" and expect.mismatch is not None:
        assert re.search(expect.mismatch, r.reason or ""), f"{what}: mismatch {r.reason!r} ({expect.why})"
        return
    allowed = " or ".join(s for s, on in (("ok", expect.ok), (f"skipped matching {expect.skip!r}", expect.skip),
                                          (f"mismatch matching {expect.mismatch!r}", expect.mismatch)) if on)
    pytest.fail(f"{what}: {r.status} ({r.reason}); expected {allowed}: {expect.why}")


def cudnn_in_build() -> bool:
    """Whether this PyTorch build has cuDNN: without it PyTorch refuses every ``sdpa_cudnn`` case."""
    return torch.backends.cudnn.is_available()


def with_cudnn(expect: Expect) -> Expect:
    """``sdpa_cudnn``'s expectation on a build with cuDNN; on one without, PyTorch's refusal, naming cuDNN (its
    "cuDNN attention kernel not used because" line)."""
    if cudnn_in_build():
        return expect
    return skipped(refused("sdpa_cudnn") + ".*cuDNN", "this PyTorch build has no cuDNN (build-dependent)")


def flex_paged_helper() -> bool:
    """Whether this PyTorch has the paged-attention helper FlexAttention's paged decode goes through."""
    try:
        from torch.nn.attention.experimental._paged_attention import PagedAttention  # noqa: F401
    except ImportError:
        return False
    return True


def torch_varlen_expectation(case: Case) -> Expect:
    """``torch_varlen`` reads its features off this build's ``varlen_attn`` signature (flashbench/backends/
    torch_varlen.py): a case needing one it lacks is skipped naming the argument; with all of them, the H200
    baseline's MHA packed batch is ``ok``, and the rest is PyTorch's call (no H200 row measured them)."""
    try:
        found = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return skipped(exactly("this torch has no torch.nn.attention.varlen (varlen_attn)"), "build-dependent")
    if case.workload == "dense":
        return skipped(exactly("torch_varlen does not run workload dense (runs: varlen, decode)"),
                       "TorchVarlenBackend.workloads = (varlen, decode)")
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return skipped(exactly("this torch has no torch.nn.attention.varlen.varlen_attn"), "build-dependent")
    takes = set(inspect.signature(varlen_attn).parameters)
    for argument, needed, what in (("window_size", case.has_window, "it has no sliding windows"),
                                   ("enable_gqa", case.is_gqa, "it has no GQA/MQA"),
                                   ("seqused_k", case.workload == "decode", "it cannot read a KV cache"),
                                   ("block_table", case.is_paged, "it cannot read a paged KV cache")):
        if needed and argument not in takes:
            return skipped(exactly(f"this torch's varlen_attn takes no {argument}: {what}"),
                           f"this build's varlen_attn has no {argument} (build-dependent)")
    if case.causal and "window_size" not in takes and "is_causal" not in takes:
        return skipped(exactly("this torch's varlen_attn has no causal form"), "build-dependent")
    if case.workload == "varlen" and not case.is_gqa:
        return ok("results/baselines/h200/varlen: torch_varlen ok on every MHA packed batch, fwd and fwd_bwd")
    return ok_or_skipped(refused("torch_varlen"), "README's table claims it, no H200 baseline row measured it: "
                                                  "PyTorch's kernel may refuse the case (e.g. its page size)")


def expectation(backend: str, name: str) -> Expect:
    case = CASES[name]
    if backend == "naive":
        return ok("naive runs every workload, layout and window (NaiveBackend, README's table); no refusal path")
    if backend == "triton_decode":
        if case.workload == "decode":
            return ok("TritonDecodeBackend: decode, contiguous and paged (pages 16-256); results/baselines/h200/decode")
        return skipped(exactly(f"triton_decode does not run workload {case.workload} (runs: decode)"),
                       "TritonDecodeBackend.workloads = (decode,)")
    if backend == "triton_fa1":
        if case.workload != "dense":
            return skipped(exactly(f"triton_fa1 does not run workload {case.workload} (runs: dense)"),
                           "triton_fa1 is registered with workloads=(dense,)")
        return skipped(exactly("triton_fa1 does not support sliding windows"),
                       "TritonKernelBackend: supports_window only with a varlen function (FA1 has none)")
    if backend == "torch_varlen":
        return torch_varlen_expectation(case)
    one_length = exactly("triton_fa2 runs decode as one dense call over the whole cache, so every cache must be "
                         "full (hold seq_len_kv keys; triton_decode reads caches of any length)")
    paged = exactly("triton_fa2 cannot read a paged KV cache (reads: contiguous)")
    varlen_baseline = "results/baselines/h200/varlen: ok on MHA and GQA packed batches, causal or not, fwd_bwd"
    window_baseline = "results/baselines/h200/window: ok on causal 4096-key windows, fwd_bwd"
    readme_decode = "README's table: decode on a contiguous cache and on a paged one (pages gathered)"
    no_mask = "a length or window mask: FlashAttention takes no attention mask (decode baseline: skipped so)"
    nested_maybe = ("nested jagged tensors: PyTorch says which kernels take the case (README's table); "
                    "no H200 baseline row of this backend")
    table = {
        "sdpa": {  # PyTorch picks the kernel; its math path takes any mask and GQA
            "decode_contiguous": ok(readme_decode),
            "decode_contiguous_varied_nq4": ok(readme_decode),
            "decode_paged16": ok(readme_decode),
            "decode_paged256_nq4": ok(readme_decode),
            "varlen_causal_gqa": ok_or_skipped(refused("sdpa"), nested_maybe),
            "varlen_mha": ok_or_skipped(refused("sdpa"), nested_maybe),
            "window_causal": ok("a dense boolean mask, no probe: only ok or an error is possible (README's table)"),
        },
        "sdpa_flash": {
            "decode_contiguous": ok("results/baselines/h200/decode: ok (one new token, equal caches, GQA 32/8)"),
            "decode_contiguous_varied_nq4": skipped(refused("sdpa_flash"), no_mask),
            "decode_paged16": skipped(refused("sdpa_flash"), no_mask),
            "decode_paged256_nq4": skipped(refused("sdpa_flash"), no_mask),
            "varlen_causal_gqa": skipped(refused("sdpa_flash"), "results/baselines/h200/varlen: nested tensors take no "
                                                                "GQA in training (skipped so)"),
            "varlen_mha": ok("results/baselines/h200/varlen: ok on MHA packed batches, fwd_bwd"),
            "window_causal": skipped(refused("sdpa_flash"), no_mask),
        },
        "sdpa_efficient": {  # PyTorch's efficient kernel takes no GQA and no nested-tensor training: PyTorch's call
            **{n: ok_or_skipped(refused("sdpa_efficient"), "GQA / nested tensors: PyTorch's call, no baseline row")
               for n in ("decode_contiguous", "decode_contiguous_varied_nq4", "decode_paged16", "decode_paged256_nq4",
                         "varlen_causal_gqa", "varlen_mha")},
            "window_causal": ok("README's window table (results/evidence/h200/window_triton_forward): ok with a mask"),
        },
        "sdpa_cudnn": {
            "decode_contiguous": with_cudnn(ok("results/baselines/h200/decode: ok (one new token, equal caches)")),
            "decode_contiguous_varied_nq4": with_cudnn(ok("results/baselines/h200/decode: ok, 4 new tokens, varied "
                                                          "lengths with a length mask (B32)")),
            "decode_paged16": with_cudnn(ok("results/baselines/h200/decode: ok, paged 16, varied lengths (B32)")),
            "decode_paged256_nq4": with_cudnn(ok("results/baselines/h200/decode: ok, paged 256, 4 new tokens, varied "
                                                 "lengths (B32)")),
            "varlen_causal_gqa": ok_or_skipped(refused("sdpa_cudnn"), "results/evidence/h200/varlen_host_sync: "
                                               "skipped (not implemented for jagged layout NT); build-dependent"),
            # measured on an H200 (torch 2.11): cuDNN's nested-tensor path gives gradients far outside the bound (dq
            # max error 1.5 against 0.06) where sdpa_flash, on the same inputs, passes: the forward is right, the
            # row says which gradients are not. That is what the harness is for (README, "Known limits").
            # (the row's reason may end with the timer's note: this call synchronises inside, "timed ...")
            "varlen_mha": Expect(ok=True, skip=refused("sdpa_cudnn"),
                                 mismatch=r"^d[qkv]: [^;]*(; d[qkv]: [^;]*)*(; timed [^;]*)?$",
                                 why="cuDNN's nested-tensor gradients (README known limit); build-dependent"),
            "window_causal": with_cudnn(ok("README's window table (results/evidence/h200/window_triton_forward): ok "
                                           "with a mask")),
        },
        "sdpa_math": {  # the unfused path: any mask, GQA, nested tensors without is_causal
            "decode_contiguous": ok(readme_decode),
            "decode_contiguous_varied_nq4": ok(readme_decode),
            "decode_paged16": ok(readme_decode),
            "decode_paged256_nq4": ok(readme_decode),
            "varlen_causal_gqa": skipped(refused("sdpa_math") + ".*is_causal",
                                         "nested tensors: PyTorch's math path refuses is_causal (its log says so; "
                                         "tests/unit/test_workload_backends.py checks the words on a CPU)"),
            "varlen_mha": ok("nested tensors without is_causal: the math path runs them (CPU: test_workload_backends)"),
            "window_causal": ok("README's table: a boolean mask"),
        },
        "flex": {
            "decode_contiguous": ok("README's table: a length mask; FlexBackend has no refusal for it"),
            "decode_contiguous_varied_nq4": ok("README's table: a length mask; FlexBackend has no refusal for it"),
            **{n: (ok("README's table: PyTorch's paged-attention helper") if flex_paged_helper() else
                   skipped("^" + re.escape("this torch has no paged-attention helper for FlexAttention"),
                           "this PyTorch build has no paged-attention helper (build-dependent)"))
               for n in ("decode_paged16", "decode_paged256_nq4")},
            "varlen_causal_gqa": ok(varlen_baseline),
            "varlen_mha": ok(varlen_baseline),
            "window_causal": ok(window_baseline),
        },
        "triton_fa2": {
            "decode_contiguous": ok("equal cache lengths: one dense flash_attn_v2 call (TritonKernelBackend)"),
            "decode_contiguous_varied_nq4": skipped(one_length, "TritonKernelBackend.extra_reason: varied lengths"),
            "decode_paged16": skipped(paged, "triton_fa2 declares kv_layouts=(contiguous,)"),
            "decode_paged256_nq4": skipped(paged, "triton_fa2 declares kv_layouts=(contiguous,)"),
            "varlen_causal_gqa": ok(varlen_baseline),
            "varlen_mha": ok(varlen_baseline),
            "window_causal": ok(window_baseline),
        },
    }
    return table[backend][name]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_runs_or_skips_each_workload(backend, name):
    """Each (backend, case) has one expectation (``expectation``): a backend declining a case it claims, or declining
    one it cannot run with a reason other than the code's for that case, fails."""
    expect = expectation(backend, name)
    r = Measurer(FAST, "cuda").measure(Task(CASES[name], backend))
    check_outcome(r, expect, f"{backend} on {name}")


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
