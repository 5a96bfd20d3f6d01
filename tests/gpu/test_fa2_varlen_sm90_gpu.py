"""GPU tests of the Gluon Hopper kernels over packed batches (``sm90.forward_varlen``, ``sm90_bwd.backward_varlen``;
marked ``gpu``, run on Hopper GPUs only, skipped elsewhere).

Sequences of odd lengths (1, 17, 127, 128, 129, 300, 2048 and mixes with empty ones), equal and unequal
query/key lengths (bottom-right causal diagonals off the 128-row grid, rows that see no key), causal and
not, causal windows, GQA and MQA, D 64 and 128 (and 256 for the backward), bf16 and fp16, 2 and 3 ring stages:
the output and the three gradients (the Gluon backward's, ``backward="auto"``) meet flash-attention's rule against
the fp64 reference of each sequence alone, with every buffer the launcher allocates NaN-poisoned, and the launch log
shows both Gluon kernels ran.  Also: its LSE against each sequence's log-sum-exp computed from the inputs and
against the Triton varlen forward's (-inf where a row sees no key), padding programs writing nothing, one
packed sequence giving the dense Gluon forward's output bit for bit and the dense Gluon backward's dK, dV (dQ
within the reduce order's rounding), an unchecked call never waiting for the device, the tuner offering it.
"""
from __future__ import annotations

import math

import pytest
import torch

from flashbench_kernels._validate import NO_WINDOW, check_varlen_inputs, check_window
from flashbench_kernels.flash_attn_v2 import (FA2Options, flash_attn_v2, flash_attn_varlen, launch, sm90, sm90_bwd,
                                              spaces, tuning)
from kernel_checks import (check_varlen_against_reference, cu_seqlens, make_inputs, make_packed_inputs,
                           on_hopper, only_padding_tables, poisoned_empty, repeat_without_sync)


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not on_hopper(), reason="the Gluon forward runs on Hopper (capability 9.x) only")]


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)


def _gluon(stages: int = 2) -> FA2Options:
    """The Gluon forward pinned (the tuner never offers it at D64), one configuration for the backward."""
    return FA2Options(autotune=False, configs={"fwd": (128, 128, 4, stages, spaces.GLUON)})


ODD = [1, 17, 127, 128, 129, 300, 2048]
ODD_KV = [300, 129, 2048, 1, 17, 128, 127]  # the same lengths as keys, shuffled: Nq_b > Nkv_b and < both
EMPTY_Q = [0, 129, 17, 0, 300, 1]  # sequences without queries, without keys, one-token ones
EMPTY_KV = [5, 0, 17, 300, 1000, 0]

CASES = [
    # lengths_q, lengths_k, H, H_kv, D, causal, window
    (ODD, ODD, 8, 8, 128, False, NO_WINDOW),
    (ODD, ODD, 8, 2, 128, True, NO_WINDOW),  # GQA
    (ODD, ODD, 8, 8, 64, True, NO_WINDOW),
    (ODD, ODD, 4, 1, 64, False, NO_WINDOW),  # MQA
    (ODD, ODD_KV, 8, 2, 128, True, NO_WINDOW),  # rows that see no key; diagonals across two key blocks
    (ODD, ODD_KV, 8, 4, 64, False, NO_WINDOW),  # key tails of every length
    (EMPTY_Q, EMPTY_KV, 4, 2, 128, True, NO_WINDOW),
    (EMPTY_Q, EMPTY_KV, 4, 4, 64, False, NO_WINDOW),
    (ODD, ODD, 8, 2, 128, True, (200, -1)),  # causal windows: left-edge blocks masked too
    (ODD, ODD_KV, 4, 4, 64, True, (100, 0)),
    ([2048, 128, 129, 1, 2048], [2048, 128, 129, 1, 2048], 4, 2, 128, True, (0, 0)),  # each row sees itself only
]


def _case_id(c) -> str:
    lq, lk, H, Hkv, D, causal, (left, right) = c
    kv = "same" if lk == lq else "-".join(map(str, lk))
    return (f"q{'-'.join(map(str, lq))}-kv{kv}-H{H}-Hkv{Hkv}-D{D}-{'causal' if causal else 'full'}"
            f"-w{left}_{right}")


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gpu_gluon_varlen_forward_and_gradients(case, dtype, stages):
    lq, lk, H, Hkv, D, causal, window = case
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, D, dtype, seed=sum(lq) + 3 * sum(lk) + D + stages)
    log = {}
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window, options=_gluon(stages), launch_log=log)
    assert log["fwd"] == sm90.config_label(stages), log["fwd"]
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(D, window=window != NO_WINDOW), log


D256_CASES = [
    # lengths_q, lengths_k, H, H_kv, causal, window: the Gluon D256 backward's 64-key programs over packed batches
    (ODD, ODD, 4, 4, False, NO_WINDOW),
    (ODD, ODD, 4, 2, True, NO_WINDOW),  # GQA
    (ODD, ODD_KV, 4, 1, True, NO_WINDOW),  # MQA, rows that see no key, diagonals off the 64-key grid
    (ODD, ODD_KV, 2, 2, False, NO_WINDOW),  # key tails of every length
    (EMPTY_Q, EMPTY_KV, 2, 2, True, NO_WINDOW),
    (ODD, ODD, 4, 2, True, (200, 0)),  # causal windows: left-edge blocks masked too
    ([2048, 128, 129, 1, 2048], [2048, 128, 129, 1, 2048], 2, 1, True, (0, 0)),  # each row sees itself only
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", D256_CASES, ids=lambda c: _case_id((*c[:4], 256, *c[4:])))
def test_gpu_gluon_d256_varlen_gradients(case, dtype):
    """Packed batches at D256: the forward is the Triton one (the Gluon forward's 64-key blocks are built dense
    only), the backward ``sm90_bwd_d256``'s packed build; the three gradients meet the rule against each sequence's
    fp64 reference, every buffer the launcher allocates NaN-poisoned."""
    lq, lk, H, Hkv, causal, window = case
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, 256, dtype, seed=sum(lq) + 5 * sum(lk))
    log = {}
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window,
                                   options=FA2Options(autotune=False, backward="sm90"), launch_log=log)
    assert log["bwd_dkdv"] == log["bwd_dq"] == sm90_bwd.config_label(256, window=window != NO_WINDOW), log


def _attention(q, k, v, cu_q, cu_k, causal, options, log, window=NO_WINDOW):
    """(out, base-2 LSE (H, total_q)) of a packed call through the launcher (flash_attn_varlen returns no LSE)."""
    lq, lk = (torch.diff(c).tolist() for c in (cu_q, cu_k))
    packed = check_varlen_inputs(q, k, v, cu_q, cu_k, max(lq), max(lk), "test")
    call = launch.make_call(q, k, options, log, check_window(window, causal, "test"), packed)
    return launch.attention(q, k, v, causal, q.shape[-1] ** -0.5, call)


def _lse2_of_each_sequence(q, k, cu_q, cu_k, causal) -> torch.Tensor:
    """(H, total_q) float64: the base-2 log-sum-exp of each packed sequence's scaled scores, computed in PyTorch from
    q and k alone (no kernel, no flashbench mask helper): query i of a sequence of Nq queries and Nkv keys sees key j
    iff j <= i + Nkv - Nq when causal (bottom-right), every key otherwise; query head h reads key head h // (H / H_kv);
    -inf for a row that sees no key."""
    H, D = q.shape[1], q.shape[2]
    out = torch.full((H, q.shape[0]), float("-inf"), dtype=torch.float64, device=q.device)
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:]):
        n_q, n_kv = q1 - q0, k1 - k0
        if n_q == 0 or n_kv == 0:
            continue
        qs = q[q0:q1].double().transpose(0, 1)  # (H, n_q, D)
        ks = k[k0:k1].double().transpose(0, 1).repeat_interleave(H // k.shape[1], dim=0)  # (H, n_kv, D)
        s = (qs @ ks.transpose(1, 2)) * D ** -0.5
        if causal:
            rows = torch.arange(n_q, device=q.device)[:, None]
            cols = torch.arange(n_kv, device=q.device)[None, :]
            s = s.masked_fill(cols > rows + (n_kv - n_q), float("-inf"))
        out[:, q0:q1] = torch.logsumexp(s, dim=-1) / math.log(2)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_gluon_varlen_lse_matches_the_triton_forward(causal):
    """The LSE the backward reads (base 2, the launcher's): against the log-sum-exp of each sequence's scores computed
    from the inputs, -inf exactly where a row sees no key, with every buffer poisoned (the fixture); then against the
    Triton varlen forward's (itself checked against the inputs first: two forwards could agree on a wrong LSE)."""
    q, k, v, _, cu_q, cu_k = make_packed_inputs(ODD + EMPTY_Q, ODD_KV + EMPTY_KV, 8, 2, 128, torch.bfloat16, seed=5)
    gluon_log, triton_log = {}, {}
    o, lse = _attention(q, k, v, cu_q, cu_k, causal, _gluon(), gluon_log)
    o_ref, lse_ref = _attention(q, k, v, cu_q, cu_k, causal,
                                FA2Options(autotune=False, configs={"fwd": spaces.FWD_SPACE["mid"][0]}), triton_log)
    assert gluon_log["fwd"].startswith("gluon_sm90") and not triton_log["fwd"].startswith("gluon")
    want = _lse2_of_each_sequence(q, k, cu_q, cu_k, causal)
    assert torch.isneginf(want).any() and torch.isfinite(want).any()  # both kinds of rows are there
    seen = torch.isfinite(want)
    for name, got in (("gluon", lse), ("triton", lse_ref)):
        assert got.shape == want.shape == (8, q.shape[0]) and got.dtype == torch.float32, name
        assert not got.isnan().any(), f"{name}: NaN (an unwritten, poisoned element)"
        assert torch.equal(torch.isneginf(got), ~seen), f"{name}: -inf where a row sees a key, or not where none"
        err = (got[seen].double() - want[seen]).abs().max().item()
        assert err < 1e-3, f"{name}: base-2 LSE max error {err:.3e} against the inputs' log-sum-exp"
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref))
    assert (lse[seen] - lse_ref[seen]).abs().max().item() < 1e-3
    assert (o.float() - o_ref.float()).abs().max().item() < 2e-2
    assert (o[~seen.t()] == 0).all()  # rows that see no key output 0


def test_gpu_gluon_varlen_padding_programs_write_nothing(monkeypatch):
    """A table of nothing but padding rows: every Gluon program is empty, the output stays NaN."""
    only_padding_tables(monkeypatch)
    q, k, v, _, cu_q, cu_k = make_packed_inputs([300, 129], [200, 129], 4, 2, 128, torch.bfloat16, seed=5)
    for causal in (False, True):
        log = {}
        out = flash_attn_varlen(q, k, v, cu_q, cu_k, 300, 200, causal, check_values=False, options=_gluon(),
                                launch_log=log)
        assert log["fwd"].startswith("gluon_sm90")
        assert out.isnan().all(), f"a padding program wrote {int((~out.isnan()).sum())} elements"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D, Hkv", [(128, 2), (64, 8)])
def test_gpu_one_length_packed_is_the_dense_gluon_forward_bit_for_bit(causal, D, Hkv):
    """Sequences of one length, a multiple of 128, packed: the same blocks, masks and sums in the same
    order as the dense Gluon forward over the (B, H, N, D) batch."""
    B, H, N = 3, 8, 1024
    q, k, v, _ = make_inputs(B, H, Hkv, N, N, D, torch.bfloat16, seed=7)
    dense_log, packed_log = {}, {}
    dense = flash_attn_v2(q, k, v, causal=causal, options=_gluon(), launch_log=dense_log)
    pack = lambda t: t.transpose(1, 2).reshape(B * N, t.shape[1], D).contiguous()  # noqa: E731
    cu = cu_seqlens([N] * B)
    packed = flash_attn_varlen(pack(q), pack(k), pack(v), cu, cu, N, N, causal, options=_gluon(),
                               launch_log=packed_log)
    # the same tiles; 1024 keys run dense by the persistent build (sm90_persistent), packed one program a tile
    assert dense_log["fwd"] == sm90.config_label(2, persistent=True) and packed_log["fwd"] == sm90.config_label(2)
    assert torch.equal(packed, pack(dense))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D, Hkv", [(128, 2), (64, 8)])
def test_gpu_one_length_packed_backward_is_the_dense_gluon_backward(causal, D, Hkv):
    """Sequences of one length, a multiple of 128, packed: the Gluon backward visits the same blocks with the same
    masks, so dV (P^T dO summed in registers) equals the dense call's bit for bit.  dK within fp32 rounding: the
    dense builds start dP^T from zero and subtract Delta_i after the product, the packed ones start it from
    -Delta_i (``sm90_bwd._step``); dQ (reduce-adds in whatever order the programs run) likewise."""
    B, H, N = 3, 8, 1024
    q, k, v, do = make_inputs(B, H, Hkv, N, N, D, torch.bfloat16, seed=9)
    pack = lambda t: t.transpose(1, 2).reshape(B * N, t.shape[1], D).contiguous()  # noqa: E731
    cu = cu_seqlens([N] * B)
    dense_log, packed_log = {}, {}
    dense = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    flash_attn_v2(*dense, causal=causal, options=_gluon(), launch_log=dense_log).backward(do)
    packed = [pack(t).requires_grad_() for t in (q, k, v)]
    flash_attn_varlen(*packed, cu, cu, N, N, causal, options=_gluon(), launch_log=packed_log).backward(pack(do))
    assert dense_log["bwd_dq"] == packed_log["bwd_dq"] == sm90_bwd.config_label(D), (dense_log, packed_log)
    assert torch.equal(packed[2].grad, pack(dense[2].grad))
    for i in (0, 1):
        a, b = packed[i].grad.float(), pack(dense[i].grad).float()
        assert (a - b).abs().max().item() <= 1e-2 * b.abs().max().item(), "dq dk".split()[i]


def test_gpu_an_unchecked_gluon_varlen_call_never_syncs():
    q, k, v, do, cu_q, cu_k = make_packed_inputs(ODD, ODD_KV, 4, 2, 128, torch.bfloat16, seed=3)
    q.requires_grad_()
    log = {}

    def call():  # the first one compiles (and waits)
        q.grad = None
        out = flash_attn_varlen(q, k, v, cu_q, cu_k, max(ODD), max(ODD_KV), causal=True, check_values=False,
                                options=_gluon(), launch_log=log)
        out.backward(do)
        return out

    expected, out = repeat_without_sync(call)
    assert log["fwd"].startswith("gluon_sm90")
    assert torch.equal(out, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_tuner_offers_it_for_packed_batches_and_either_choice_is_correct(causal):
    """D128 with max_seqlen_q >= GLUON_MIN_NQ: the tuner times the Gluon forward beside the Triton ones."""
    lengths = [2048, 1000, 129, 3000, 17, 1500]
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lengths, lengths, 16, 16, 128, torch.bfloat16, seed=11)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal)
    offered = {tuning.signature(c) for c in tuning.TUNERS["fwd"][0].timings}
    assert (128, 128, 4, 2, spaces.GLUON) in offered, f"the tuner did not time the Gluon forward: {offered}"
