"""Inputs, the per-sequence reference and every backend on the decode, varlen and window workloads
(on a CPU: PyTorch's CPU paths, eager FlexAttention, the Triton interpreter, fakes of kernel APIs)."""
import math
from types import SimpleNamespace

import pytest
import torch

from flashbench import backends
from flashbench.backends.base import Backend
from flashbench.backends.flex import FlexBackend
from flashbench.backends.probe import miniature
from flashbench.backends.sdpa import dense_causal, needs_tensor_mask
from flashbench.execute.plan import split_runnable
from flashbench.attention.inputs import make_inputs
from flashbench.attention.sequences import sequences
from flashbench.backends.calling import outputs_of
from flashbench.measure.correctness import check, compute_reference, reference_outputs
from flashbench.measure.measurer import MeasureSettings, Measurer
from flashbench.attention.reference import naive_attention, reference_attention, visible_mask
from flashbench.model.case import Case, Task
from flashbench.model.config import Timing
from attention_oracle import oracle_output  # tests/support

FAST = MeasureSettings(timing=Timing(warmup_ms=1, budget_ms=3, min_samples=2, max_samples=5))

DECODE = Case(3, 4, 2, 2, 100, 32, "float32", True, "fwd", workload="decode", lengths="uniform(20..100,seed=0)")
PAGED = Case(3, 4, 2, 2, 100, 32, "float32", True, "fwd", workload="decode", kv_layout="paged", page_size=16,
             lengths="uniform(20..100,seed=0)")
EQUAL = Case(2, 4, 2, 1, 64, 32, "float32", True, "fwd", workload="decode")
VARLEN = Case(4, 4, 2, 64, 64, 32, "float32", False, "fwd_bwd", workload="varlen", lengths="uniform(8..64,seed=1)",
              total_tokens=150)
VARLEN_MHA = Case(4, 2, 2, 64, 64, 32, "float32", False, "fwd_bwd", workload="varlen", lengths="uniform(8..64,seed=1)",
                  total_tokens=150)
WINDOW = Case(2, 4, 2, 48, 48, 32, "float32", True, "fwd_bwd", window_left=9, window_right=0)
VARLEN_CAUSAL = Case(4, 4, 2, 64, 64, 32, "float32", True, "fwd", workload="varlen", lengths="uniform(8..64,seed=1)",
                     total_tokens=150)


# --- inputs -----------------------------------------------------------------------------------

def test_paged_inputs_are_a_shuffled_pool_that_the_table_describes():
    inp = make_inputs(PAGED, "cpu", 0)
    q, k_pool, v_pool, lens, table = inp.args
    assert q.shape == (3, 2, 4, 32) and k_pool.shape[1:] == (16, 2, 32) and lens.dtype == table.dtype == torch.int32
    assert lens.tolist() == list(PAGED.sequence_lengths()[1])
    used = [-(-n // 16) for n in lens.tolist()]
    assert k_pool.shape[0] == sum(used) and table.shape == (3, math.ceil(100 / 16))
    pages = torch.cat([table[b, :n] for b, n in enumerate(used)])
    assert sorted(pages.tolist()) == list(range(sum(used)))  # every page once
    assert pages.tolist() != sorted(pages.tolist())  # shuffled, as a serving engine leaves them
    assert all(t.abs().sum() > 0 for t in (q, k_pool, v_pool))  # never zeros
    # the sequences' keys, gathered page by page by hand
    for b, s in enumerate(sequences(PAGED, inp.args)):
        rows = [k_pool[table[b, i // 16], i % 16] for i in range(lens[b])]
        assert torch.equal(s.k[0].transpose(0, 1), torch.stack(rows))


def test_varlen_and_dense_inputs():
    inp = make_inputs(VARLEN, "cpu", 0)
    q, k, v, cu = inp.args
    lens = VARLEN.sequence_lengths()[0]
    assert q.shape == (150, 4, 32) and k.shape == (150, 2, 32) and inp.do.shape == q.shape
    assert cu.tolist() == [0, *torch.tensor(lens).cumsum(0).tolist()] and q.requires_grad
    again = make_inputs(VARLEN, "cpu", 0)
    assert torch.equal(again.q, q) and not torch.equal(make_inputs(VARLEN, "cpu", 1).q, q)
    dense = make_inputs(WINDOW, "cpu", 0)
    assert dense.q.shape == (2, 4, 48, 32) and len(dense.args) == 3


# --- the reference, per sequence ----------------------------------------------------------------

def test_varlen_reference_equals_block_diagonal_attention():
    """One (T x T) attention whose mask is block-diagonal (causal within each sequence): a different
    road to the same numbers."""
    case = Case(3, 4, 2, 33, 33, 32, "float32", True, "fwd", workload="varlen", lengths="list(20,7,33)",
                total_tokens=60)
    inp = make_inputs(case, "cpu", 0)
    got = reference_outputs(inp, case, torch.float64)["o"]
    mask = torch.zeros(60, 60, dtype=torch.bool)
    start = 0
    for n in (20, 7, 33):
        mask[start:start + n, start:start + n] = visible_mask(n, n, True)
        start += n
    q, k, v = (t.double().transpose(0, 1) for t in inp.args[:3])  # (heads, T, D)
    k, v = k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(32)
    want = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
    assert torch.allclose(got, want.transpose(0, 1), atol=1e-12)


def test_decode_reference_reads_only_each_sequences_keys():
    inp = make_inputs(PAGED, "cpu", 0)
    got = reference_outputs(inp, PAGED, torch.float64)["o"]
    q, k_pool, v_pool, lens, table = inp.args
    for b in range(3):
        n = int(lens[b])
        k = torch.stack([k_pool[table[b, i // 16], i % 16] for i in range(n)])
        v = torch.stack([v_pool[table[b, i // 16], i % 16] for i in range(n)])
        want = reference_attention(q[b].transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                   causal=True, compute_dtype=torch.float64)
        assert torch.allclose(got[b], want[0].transpose(0, 1), atol=1e-12)


# --- backends, measured on the CPU ----------------------------------------------------------------

REFERENCE_BACKEND_RUNS = [
    *[pytest.param(case, backend, id=f"{backend}-{name}")
      for backend in ("naive", "sdpa", "sdpa_math")
      for case, name in ((DECODE, "decode"), (PAGED, "paged"), (EQUAL, "equal"), (VARLEN_MHA, "varlen"),
                         (WINDOW, "window"))],
    # SDPA refuses causal nested tensors (test_sdpa_says_why_it_cannot_run_a_varlen_case): naive alone masks varlen
    pytest.param(VARLEN_CAUSAL, "naive", id="naive-varlen_causal"),
]


@pytest.mark.parametrize("case, backend", REFERENCE_BACKEND_RUNS)
def test_reference_backends_run_every_workload(case, backend):
    """The reference backends run every workload, and their output is the attention the workload defines.

    The measured error alone cannot show the second part: naive runs the reference's own code, and sdpa's masks come
    from the same helper (reference.visible_mask), so a mask bug there agrees with itself. The output is also compared
    with fp64 attention under hand-built masks (tests/support/attention_oracle.py; decode through decode_reference),
    which share no code with flashbench's: decode's Nq < Nkv catches a top-left diagonal, every masked case a hidden
    diagonal key."""
    r = Measurer(FAST, "cpu").measure(Task(case, backend))
    assert r.status == "ok", r.reason
    assert r.max_abs_err is not None and r.max_abs_err <= r.tolerance_abs
    assert r.flops > 0 and r.min_hbm_bytes > 0 and r.hbm_gbps > 0 and r.case.total_tokens > 0
    inp = make_inputs(case, "cpu", FAST.seed)
    o = outputs_of(backends.get(backend).prepare(case, "cpu"), inp, case)["o"]
    err = (o.double() - oracle_output(case, inp)).abs().max().item()
    assert err < 1e-4, f"{backend} differs from attention under a hand-built mask by {err:.3g}"


def test_a_wrong_result_on_a_varlen_batch_is_a_mismatch():
    class OffByOne(Backend):
        name, devices, workloads = "test_off_by_one", ("cpu",), ("varlen",)

        def prepare(self, case, device):
            fn = backends.get("naive").prepare(case, device)
            return lambda q, k, v, cu: torch.cat([fn(q, k, v, cu)[1:], fn(q, k, v, cu)[:1]])  # rows shifted

    backends.register(OffByOne())
    try:
        r = Measurer(FAST, "cpu").measure(Task(VARLEN, "test_off_by_one"))
    finally:
        backends.REGISTRY.pop("test_off_by_one")
    assert r.status == "mismatch" and "o: max abs err" in r.reason


def test_a_backend_that_declares_only_dense_is_a_skipped_row():
    class DenseOnly(Backend):
        name, devices = "test_dense_only", ("cpu",)

        def prepare(self, case, device):
            raise AssertionError("never prepared for a workload it does not declare")

    backends.register(DenseOnly())
    try:
        runnable, skipped = split_runnable([Task(PAGED, "test_dense_only"), Task(WINDOW, "test_dense_only"),
                                            Task(Case(1, 2, 2, 8, 8, 32, "float32", False, "fwd"), "test_dense_only")],
                                           "cpu")
        r = Measurer(FAST, "cpu").measure(Task(VARLEN, "test_dense_only"))
    finally:
        backends.REGISTRY.pop("test_dense_only")
    assert len(runnable) == 1
    assert [s.reason for s in skipped] == ["test_dense_only does not run workload decode (runs: dense)",
                                           "test_dense_only does not support sliding windows"]
    assert r.status == "skipped" and r.reason == "test_dense_only does not run workload varlen (runs: dense)"


def test_sdpa_says_why_it_cannot_run_a_varlen_case():
    m = Measurer(FAST, "cpu")
    causal = m.measure(Task(Case(4, 2, 2, 64, 64, 32, "float32", True, "fwd", workload="varlen",
                                 lengths="uniform(8..64,seed=1)", total_tokens=150), "sdpa"))
    assert causal.status == "skipped" and causal.reason.startswith("PyTorch refuses sdpa for this case")
    assert "is_causal" in causal.reason  # PyTorch's own words, from its nested-tensor log
    windowed = m.measure(Task(Case(4, 2, 2, 64, 64, 32, "float32", False, "fwd", workload="varlen",
                                   lengths="uniform(8..64,seed=1)", total_tokens=150, window_left=4), "sdpa"))
    assert windowed.status == "skipped" and "nested tensors take no attention mask" in windowed.reason


def test_miniatures_keep_what_dispatch_depends_on():
    for case in (DECODE, PAGED, EQUAL, VARLEN, WINDOW, Case(1, 8, 1, 40, 24, 64, "float16", True, "fwd"),
                 Case(2, 4, 4, 4, 4096, 128, "bfloat16", True, "fwd", workload="decode")):
        mini = miniature(case)
        assert (mini.workload, mini.kv_layout, mini.page_size, mini.causal, mini.mode, mini.dtype, mini.head_dim) == \
            (case.workload, case.kv_layout, case.page_size, case.causal, case.mode, case.dtype, case.head_dim)
        assert needs_tensor_mask(mini) == needs_tensor_mask(case) and dense_causal(mini) == dense_causal(case)
        assert mini.is_gqa == case.is_gqa and (mini.kv_heads == 1) == (case.kv_heads == 1)
        assert (mini.seq_len_q < mini.seq_len_kv) == (case.seq_len_q < case.seq_len_kv)
        assert mini.batch * mini.heads * mini.seq_len_kv <= 2 * 16 * 96


@pytest.mark.parametrize("case", [DECODE, PAGED, EQUAL, WINDOW.__class__(**{**WINDOW.as_dict(), "mode": "fwd"}),
                                  Case(4, 4, 2, 64, 64, 32, "float32", True, "fwd", workload="varlen",
                                       lengths="uniform(8..64,seed=1)", total_tokens=150)],
                         ids=["decode", "paged", "equal", "window", "varlen"])
def test_flex_masks_match_the_reference(case):
    """The block masks of every workload, run by eager FlexAttention on the CPU (the backend itself
    compiles for CUDA); the paged case goes through PyTorch's paged-attention helper."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = FlexBackend().attention_fn(case, "cpu", flex_attention)
    inp = make_inputs(case, "cpu", 0)
    verdict = check(outputs_of(fn, inp, case), compute_reference(inp, case, "cpu"), 1e-4, 2.0)
    assert verdict.ok, verdict.detail


# --- the bundled kernels --------------------------------------------------------------------

@pytest.mark.parametrize("case", [DECODE, PAGED, EQUAL], ids=["decode", "paged", "equal"])
def test_triton_decode_on_the_interpreter(case):
    r = Measurer(FAST, "cpu").measure(Task(case, "triton_decode"))
    assert r.status == "ok", r.reason
    assert "num_splits" in r.backend_config


def test_triton_decode_skips_with_reasons():
    dec = backends.get("triton_decode")
    assert dec.unsupported_reason(Case(2, 4, 2, 1, 64, 32, "float32", True, "fwd", workload="decode",
                                       kv_layout="paged", page_size=8), "cuda") == \
        "triton_decode takes pages of 16, 32, 64, 128, 256 tokens (got 8)"
    assert "does not run workload varlen" in dec.unsupported_reason(VARLEN, "cuda")
    assert "does not run workload dense" in dec.unsupported_reason(WINDOW, "cuda")


def test_triton_fa2_runs_an_equal_length_decode_as_a_dense_call():
    r = Measurer(FAST, "cpu").measure(Task(EQUAL, "triton_fa2"))
    assert r.status == "ok", r.reason
    why = backends.get("triton_fa2").unsupported_reason(DECODE, "cuda")
    assert "every cache must be full" in why
    assert "cannot read a paged KV cache" in backends.get("triton_fa2").unsupported_reason(PAGED, "cuda")


def test_triton_fa2_runs_windows_and_packed_batches_through_the_kernels():
    """The bundled kernels' window and varlen paths (Triton's interpreter on a CPU), checked against the
    per-sequence reference like every backend; the launch log names what ran."""
    m = Measurer(FAST, "cpu")
    for case in (WINDOW, VARLEN):
        r = m.measure(Task(case, "triton_fa2"))
        assert r.status == "ok", r.reason
        assert r.max_abs_err is not None and "fwd" in r.backend_config


def test_triton_fa2_trusts_the_offsets_it_built(monkeypatch):
    """The harness builds cu_seqlens from the case, so the varlen call skips the host check of their
    values (check_values=False: no sync in the timed call, as flash-attn's API)."""
    import flashbench_kernels.flash_attn_v2 as fa2

    seen = {}
    monkeypatch.setattr(fa2, "flash_attn_varlen", lambda *args, **kwargs: seen.update(kwargs) or args[0])
    fn = backends.get("triton_fa2").prepare(VARLEN, "cpu")
    fn(*make_inputs(VARLEN, "cpu", 0).args)
    assert seen["check_values"] is False


def test_triton_fa1_skips_windows_with_the_reason():
    assert backends.get("triton_fa1").unsupported_reason(WINDOW, "cuda") == "triton_fa1 does not support sliding windows"


# --- torch_varlen (CUDA only): its arguments, checked against a model of varlen_attn -----------------

def fake_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """FlashAttention's varlen semantics (bottom-right windows, seqused_k, block_table), by the formula."""
    cq, ck = cu_seq_q.tolist(), cu_seq_k.tolist()
    outs = []
    for b in range(len(cq) - 1):
        q = query[cq[b]:cq[b + 1]]
        n = int(seqused_k[b]) if seqused_k is not None else ck[b + 1] - ck[b]
        if block_table is not None:
            page = key.shape[1]
            k = torch.stack([key[block_table[b, i // page], i % page] for i in range(n)])
            v = torch.stack([value[block_table[b, i // page], i % page] for i in range(n)])
        else:
            k, v = key[ck[b]:ck[b] + n], value[ck[b]:ck[b] + n]
        o = naive_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), window=tuple(window_size))
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("case", [DECODE, PAGED, EQUAL, Case(4, 4, 2, 64, 64, 32, "float32", True, "fwd",
                                                             workload="varlen", lengths="uniform(8..64,seed=1)",
                                                             total_tokens=150)],
                         ids=["decode", "paged", "equal", "varlen"])
def test_torch_varlen_arguments(monkeypatch, case):
    import flashbench.backends.torch_varlen as tv

    monkeypatch.setattr(tv, "varlen_attn", lambda: fake_varlen_attn)
    fn = tv.TorchVarlenBackend()._build(case, "cpu")
    inp = make_inputs(case, "cpu", 0)
    verdict = check(outputs_of(fn, inp, case), compute_reference(inp, case, "cpu"), 1e-4, 2.0)
    assert verdict.ok, verdict.detail


def test_torch_varlen_reads_its_features_off_the_signature(monkeypatch):
    import flashbench.backends.torch_varlen as tv

    def old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
        raise AssertionError

    monkeypatch.setattr(tv, "varlen_attn", lambda: old)
    b = tv.TorchVarlenBackend()
    assert b.extra_reason(PAGED, "cuda") == "this torch's varlen_attn takes no enable_gqa: it has no GQA/MQA"
    mha_decode = Case(2, 2, 2, 1, 64, 32, "bfloat16", True, "fwd", workload="decode")
    assert b.extra_reason(mha_decode, "cuda") == "this torch's varlen_attn takes no seqused_k: it cannot read a KV cache"
    assert b.extra_reason(Case(4, 2, 2, 64, 64, 32, "bfloat16", True, "fwd", workload="varlen"), "cuda") is None
    monkeypatch.setattr(tv, "varlen_attn", lambda: None)
    assert "no torch.nn.attention.varlen.varlen_attn" in b.extra_reason(VARLEN, "cuda")


# --- decode caches that all hold one length, shorter than their capacity ------------------------

# a batch of one draws one length from the distribution: every cache has one length, and it is not the capacity
ONE_SHORT = {layout: Case(1, 4, 2, 1, 100, 32, "float32", True, "fwd", workload="decode", kv_layout=layout,
                          page_size=16 if layout == "paged" else 0, lengths="uniform(20..100,seed=0)")
             for layout in ("contiguous", "paged")}


def test_full_caches_means_every_cache_holds_the_capacity():
    assert EQUAL.full_caches and not DECODE.full_caches
    for c in ONE_SHORT.values():
        (n,) = c.sequence_lengths()[1]
        assert n < c.seq_len_kv and not c.full_caches
        assert needs_tensor_mask(c)  # one length is not enough: keys past it must be hidden


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_math"])
def test_one_short_cache_is_attended_up_to_its_length(backend, layout):
    """Caches that all had one length were called without a mask over the whole capacity: with a batch of one
    drawing a length shorter than it, the keys past the sequence (padding, or the gathered pages past its last)
    were attended to, and the rows came out `mismatch` (0.27-0.55 on a CPU; the H200 decode baseline's cuDNN rows
    of batch 1 on paged caches, 0.05-0.51). Checked against the oracle, which shares no code with the harness."""
    c = ONE_SHORT[layout]
    r = Measurer(FAST, "cpu").measure(Task(c, backend))
    assert r.status == "ok", f"{r.status}: {r.reason}"
    inp = make_inputs(c, "cpu", 0)
    out = backends.get(backend).prepare(c, "cpu")(*inp.args)
    torch.testing.assert_close(out.double(), oracle_output(c, inp), atol=1e-4, rtol=0)


def test_triton_fa2_declines_decode_caches_that_are_not_full():
    """triton_fa2 runs decode as one dense call over the whole cache: a cache shorter than the capacity is not its."""
    why = backends.get("triton_fa2").unsupported_reason(ONE_SHORT["contiguous"], "cuda")
    assert why is not None and "every cache must be full" in why
    assert backends.get("triton_fa2").unsupported_reason(EQUAL, "cuda") is None
