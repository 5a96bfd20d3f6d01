"""Checks shared by the kernel test files (FlashAttention-2 and Flash-Decoding): inputs (dense and packed),
the reference comparison, poisoned outputs.

Tolerance rule (flash-attention's): compared with an fp64 reference on fresh random inputs, the
kernel's max error must be <= 2 x the max error of PyTorch's same-dtype math + a small absolute term.
"""
from __future__ import annotations

import itertools

import torch

from decode_reference import decode_reference
from flashbench.attention.reference import NO_WINDOW, naive_attention, reference_attention, visible_mask
from flashbench_kernels._schedule import SequenceBlocks
from flashbench_kernels.flash_attn_v2 import flash_attn_v2, flash_attn_varlen

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 2e-5}


def on_hopper() -> bool:
    """A Hopper GPU (capability 9.x) is present: the Gluon kernels run there only."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


class ClaimsCuda:
    """A CPU tensor that says it is on ``cuda:0``: for reaching the GPU checks of the Gluon kernels'
    ``unsupported_reason`` without a GPU (they read ``is_cuda`` and ``device.index``, then the inputs'
    dtype, shape and layout, which come from the wrapped tensor). Never launched."""

    is_cuda = True
    device = torch.device("cuda", 0)

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor

    def __getattr__(self, name):
        return getattr(self._tensor, name)


def offered_forward_configs(monkeypatch, head_dim: int, nq: int, causal: bool, sm90_ok: int, window: bool = False,
                            varlen: bool = False) -> set:
    """The forward configurations the FA2 tuner's pruner keeps for a call of this shape (as signatures), as if
    the interpreter were off; ``sm90_ok`` says whether the Gluon forward runs the inputs."""
    from flashbench_kernels.flash_attn_v2 import spaces, tuning

    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    prune, configs = tuning.TUNERS["fwd"][0].prune, tuning.all_configs(spaces.FWD_SPACE)
    named = {"TMA_OK": tuning.BOTH, "NQ_BUCKET": nq, "NKV_BUCKET": nq, "SM90_OK": sm90_ok}
    return {tuning.signature(c) for c in prune(configs, named, HEAD_DIM=head_dim, IEEE=False, CAUSAL=causal,
                                                WINDOW=window, VARLEN=varlen)}


def assert_forwards_agree(o, lse, o_ref, lse_ref):
    """Two forward kernels' outputs on the same inputs: LSE within 1e-3, O within 2e-2 (16-bit rounding)."""
    assert (lse - lse_ref).abs().max().item() < 1e-3
    assert (o.float() - o_ref.float()).abs().max().item() < 2e-2


def check_forward_against_fp32(o, lse, q, k, v, causal, window=NO_WINDOW):
    """A forward's O within flash-attention's rule (2 x the same-dtype math's max error + atol) of the fp32 reference,
    and its natural-log LSE (``flash_attn_v2(..., return_lse=True)``) within 1e-3 of the fp32 logsumexp of the scaled,
    masked scores computed here from q and k (every row of the inputs given must see a key), nothing left poisoned:
    an LSE checked against the inputs, not against the kernel in another configuration."""
    assert torch.isfinite(o).all() and torch.isfinite(lse).all(), "unwritten (poisoned) or non-finite outputs"
    H, D = q.shape[1], q.shape[-1]
    o_ref = reference_attention(q, k, v, causal, None, torch.float32, window=window)
    err = (o.float() - o_ref).abs().max().item()
    err_naive = (naive_attention(q, k, v, causal, None, window).float() - o_ref).abs().max().item()
    assert err <= 2 * err_naive + ATOL[q.dtype], f"out: max error {err:.3e} > 2 x naive {err_naive:.3e} + atol"
    kf = k.float().repeat_interleave(H // k.shape[1], dim=1)
    s = torch.matmul(q.float(), kf.transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~visible_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    lse_err = (lse - torch.logsumexp(s, dim=-1)).abs().max().item()
    assert lse_err < 1e-3, f"lse: max error {lse_err:.3e}"


def tma_unavailable() -> bool:
    """True on a GPU without tensor descriptors (the interpreter emulates them; Hopper has them)."""
    return DEV == "cuda" and torch.cuda.get_device_capability()[0] < 9


def make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed, device=DEV):
    """q, k, v and the output gradient do, standard normal from ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)  # noqa: E731
    return mk(B, H, Nq, D), mk(B, Hkv, Nkv, D), mk(B, Hkv, Nkv, D), mk(B, H, Nq, D)


def case_id(c) -> str:
    B, H, Hkv, Nq, Nkv, D, causal = c
    return f"B{B}-H{H}-Hkv{Hkv}-q{Nq}-kv{Nkv}-D{D}-{'causal' if causal else 'full'}"


def window_case_id(c) -> str:
    B, H, Hkv, Nq, Nkv, D, causal, (left, right) = c
    return f"{case_id((B, H, Hkv, Nq, Nkv, D, causal))}-w{left}_{right}"


def poisoned_empty(shape, dtype, device):
    """Stands in for the launcher's allocator: NaN everywhere, so an unwritten element shows."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _run_with_grads(fn, q, k, v, do, dtype=None):
    """Output and (dq, dk, dv) of fn on leaf copies of q, k, v (cast to dtype if given)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return [out.detach()] + [t.grad.detach() for t in leaves]


def _visible_rows_fn(fn, n_q, n_kv, causal, window=NO_WINDOW):
    """fn restricted to the query rows that see at least one key; the others are defined as 0.

    (PyTorch's softmax of an all -inf row gives NaN gradients, so the references cannot be
    differentiated through such rows; their correct contribution is zero.)  Under FlashAttention's
    masks such rows are always a prefix (bottom-right alignment: only the right reach can exclude
    every key, and it does so for the first rows).
    """
    seen = visible_mask(n_q, n_kv, causal, window).any(dim=1)
    cut = int((~seen).sum())
    assert seen[cut:].all(), "rows that see no key are not a prefix"
    if cut == 0:
        return fn

    def wrapped(q, k, v):
        zeros = q.new_zeros(*q.shape[:2], cut, v.shape[3])
        if cut == n_q:
            return zeros + 0 * q.sum()  # keep the graph connected: zero gradients, not None
        out = fn(q[:, :, cut:], k, v)
        return torch.cat([zeros.to(out.dtype), out], dim=2)

    return wrapped


def _assert_within_rule(ours, naive, ref, dtype, atol):
    """Every tensor of ``ours`` (out and gradients) finite and within 2 x naive's error + atol of ref."""
    atol = ATOL[dtype] if atol is None else atol
    for name, o, n, r in zip(("out", "dq", "dk", "dv"), ours, naive, ref):
        assert o.dtype == dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        err = (o.double() - r).abs().max().item()
        err_naive = (n.double() - r).abs().max().item()
        assert err <= 2 * err_naive + atol, f"{name}: max error {err:.3e} > 2 x naive {err_naive:.3e} + {atol:g}"


def check_against_reference(q, k, v, do, causal, sm_scale=None, atol=None, options=None, launch_log=None,
                            window=NO_WINDOW):
    """flash_attn_v2's output and gradients against the fp64 reference, within the tolerance rule."""
    Nq, Nkv = q.shape[2], k.shape[2]
    ref_fn = _visible_rows_fn(lambda a, b, c: reference_attention(a, b, c, causal, sm_scale, torch.float64,
                                                                  window=window), Nq, Nkv, causal, window)
    naive_fn = _visible_rows_fn(lambda a, b, c: naive_attention(a, b, c, causal, sm_scale, window), Nq, Nkv, causal,
                                window)
    ref = _run_with_grads(ref_fn, q, k, v, do, torch.float64)
    naive = _run_with_grads(naive_fn, q, k, v, do)
    ours = _run_with_grads(lambda a, b, c: flash_attn_v2(a, b, c, causal=causal, sm_scale=sm_scale, window=window,
                                                         options=options, launch_log=launch_log), q, k, v, do)
    _assert_within_rule(ours, naive, ref, q.dtype, atol)


# ---------------------------------------------------------------------------------------------
# Packed (variable-length) batches
# ---------------------------------------------------------------------------------------------
def cu_seqlens(lengths, device=DEV) -> torch.Tensor:
    """int32 offsets (batch + 1,) of sequences of the given lengths packed one after another."""
    return torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32, device=device)


def make_packed_inputs(lengths_q, lengths_k, H, Hkv, D, dtype, seed, device=DEV):
    """Packed q (total_q, H, D), k, v (total_k, H_kv, D), do, and both cu_seqlens."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)  # noqa: E731
    tq, tk = sum(lengths_q), sum(lengths_k)
    return (mk(tq, H, D), mk(tk, Hkv, D), mk(tk, Hkv, D), mk(tq, H, D),
            cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device))


def per_sequence(attention, cu_q, cu_k, causal, window=NO_WINDOW):
    """A packed-batch function made of ``attention(q, k, v, causal, window)`` on each sequence alone
    ((1, H, N, D) views), rows that see no key defined as 0: the definition the varlen kernel meets."""
    offsets_q, offsets_k = cu_q.tolist(), cu_k.tolist()

    def fn(q, k, v):
        outs = []
        for (q0, q1), (k0, k1) in zip(zip(offsets_q, offsets_q[1:]), zip(offsets_k, offsets_k[1:])):
            if q1 == q0:
                continue
            seq = lambda t, a, b: t[a:b].transpose(0, 1).unsqueeze(0)  # noqa: E731
            one = _visible_rows_fn(lambda a, b, c: attention(a, b, c, causal, window), q1 - q0, k1 - k0, causal,
                                   window)
            outs.append(one(seq(q, q0, q1), seq(k, k0, k1), seq(v, k0, k1))[0].transpose(0, 1))
        return torch.cat(outs, dim=0)

    return fn


def check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window=NO_WINDOW, sm_scale=None, atol=None,
                                   options=None, launch_log=None):
    """flash_attn_varlen's output and gradients against the fp64 reference of each sequence alone."""
    ref_fn = per_sequence(lambda a, b, c, cz, w: reference_attention(a, b, c, cz, sm_scale, torch.float64, window=w),
                          cu_q, cu_k, causal, window)
    naive_fn = per_sequence(lambda a, b, c, cz, w: naive_attention(a, b, c, cz, sm_scale, w), cu_q, cu_k, causal,
                            window)
    lengths_q, lengths_k = (torch.diff(c).tolist() for c in (cu_q, cu_k))
    ours_fn = lambda a, b, c: flash_attn_varlen(a, b, c, cu_q, cu_k, max(lengths_q), max(lengths_k),  # noqa: E731
                                                causal, sm_scale, window, options=options, launch_log=launch_log)
    _assert_within_rule(_run_with_grads(ours_fn, q, k, v, do), _run_with_grads(naive_fn, q, k, v, do),
                        _run_with_grads(ref_fn, q, k, v, do, torch.float64), q.dtype, atol)


def repeat_without_sync(call):
    """``call()`` once (it may compile, tune and wait), then again with any host synchronisation an
    error (``torch.cuda.set_sync_debug_mode``): (first result, second result)."""
    first = call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        second = call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return first, second


def only_padding_tables(monkeypatch):
    """Make every packed batch's program table nothing but padding rows (-1, 0), of the real table's
    shape: every program is empty, so the outputs must stay as the launcher poisoned them."""
    real_table = SequenceBlocks.table

    def padding_only(self, block):
        return torch.tensor([[-1, 0]], dtype=torch.int32, device=self.cu_own.device).expand_as(
            real_table(self, block)).contiguous()

    monkeypatch.setattr(SequenceBlocks, "table", padding_only)


def fake_gluon_forward(monkeypatch, module, forward) -> None:
    """Make ``module.prepare_forward`` (``sm90`` or ``sm90_persistent``) hand each run to ``forward``, called as
    ``module.forward`` would be: the launcher prepares the Gluon forward once a plan, and tests fake what runs."""

    def prepare(q_shape, kv_heads, n_kv, causal, sm_scale, group_programs, stages, window_left=-1, block_rows=128,
                *_device):
        return lambda q, k, v, o, lse: forward(q, k, v, o, lse, causal, sm_scale, group_programs, stages,
                                               window_left=window_left, block_rows=block_rows)

    monkeypatch.setattr(module, "prepare_forward", prepare)


def fake_gluon_backward(monkeypatch, backward, sms: int = 132) -> None:
    """Make ``sm90_bwd.prepare_backward`` hand each run to ``backward``, called as ``sm90_bwd.backward`` would be,
    on a GPU of ``sms`` SMs (what the launcher's dQ chunks are sized by)."""
    from flashbench_kernels.flash_attn_v2 import launch, sm90_bwd

    monkeypatch.setattr(launch, "sm_count", lambda index: sms)

    def prepare(q_shape, kv_heads, n_kv, causal, sm_scale, group_programs=256, stages=None, layout=None,
                window_left=-1, chunk_pairs=None):
        return lambda q, k, v, do, lse, delta, dq, dk, dv, dq_acc: backward(
            q, k, v, do, lse, delta, dq, dk, dv, causal, sm_scale, group_programs, window_left=window_left,
            dq_acc=dq_acc, chunk_pairs=chunk_pairs)

    monkeypatch.setattr(sm90_bwd, "prepare_backward", prepare)


# ---------------------------------------------------------------------------------------------
# Decoding (flash_decode) against the decode reference of tests/support/decode_reference.py
# ---------------------------------------------------------------------------------------------
def assert_decode_within_rule(out, q, k_seqs, v_seqs, sm_scale=None, atol=None):
    """flash_decode's output (B, Nq, H, D) finite, of q's dtype and shape, and within 2 x the max error of
    PyTorch's same-dtype math + atol of the fp64 reference over each sequence's cache (``k_seqs``, ``v_seqs``:
    one (seqlen, H_kv, D) tensor a sequence)."""
    atol = ATOL[q.dtype] if atol is None else atol
    ref = decode_reference(q, k_seqs, v_seqs, sm_scale)
    same_dtype = decode_reference(q, k_seqs, v_seqs, sm_scale, dtype=q.dtype)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all(), "non-finite values (unwritten or NaN)"
    err = (out.double() - ref).abs().max().item()
    err_torch = (same_dtype.double() - ref).abs().max().item()
    assert err <= 2 * err_torch + atol, f"max error {err:.3e} > 2 x torch {err_torch:.3e} + {atol:g}"
