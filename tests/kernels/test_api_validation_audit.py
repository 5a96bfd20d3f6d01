"""An adversarial audit of the public entry points' input checks (``flash_attn_v1``, ``flash_attn_v2``,
``flash_attn_varlen``, ``flash_decode``): inputs that each gave a wrong result, a crash or an opaque Triton / PyTorch
error before they were checked, and now give a ValueError naming the argument (or, where the input is valid, the
right result).  Tiny shapes: the kernels run on the CPU interpreter (CUDA tensors on a GPU).

The cases the existing tests already cover (shapes, dtypes, head dims, empty inputs, offsets' values, table entries,
windows, options) are not repeated here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashbench_kernels._validate import MAX_BATCH_HEADS, MAX_SCALE, MAX_TOKENS, MIN_SCALE, check_inputs, check_scale
from flashbench_kernels.flash_attn_v1 import flash_attn_v1
from flashbench_kernels.flash_attn_v2 import flash_attn_v2, flash_attn_varlen, plans
from flashbench_kernels.flash_decode import flash_decode
from kernel_checks import DEV, cu_seqlens, make_inputs, make_packed_inputs

B, H, HKV, N, D = 1, 2, 2, 16, 32
MESSAGE_BOUND = 400  # characters: no message prints a whole tensor or list


def _dense(dtype=torch.float32, seed=0):
    q, k, v, _ = make_inputs(B, H, HKV, N, N, D, dtype, seed=seed)
    return q, k, v


def _packed(dtype=torch.float32):
    q, k, v, do, cu_q, cu_k = make_packed_inputs([3, 5], [4, 6], H, HKV, D, dtype, seed=0)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=6), do


def _decode(paged: bool):
    """Valid flash_decode arguments: B 2, Nq 2, H 4, H_kv 2, D 32, lengths 5 and 20 (paged: pages of 16)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=DEV, dtype=torch.float16)  # noqa: E731
    args = dict(q=mk(2, 2, 4, D), cache_seqlens=torch.tensor([5, 20], dtype=torch.int32, device=DEV))
    if paged:
        args.update(k_cache=mk(4, 16, 2, D), v_cache=mk(4, 16, 2, D),
                    block_table=torch.tensor([[2, -1], [0, 3]], dtype=torch.int32, device=DEV))
    else:
        args.update(k_cache=mk(2, 24, 2, D), v_cache=mk(2, 24, 2, D))
    return args


def _raises(fn, *words):
    """``fn()`` raises a ValueError whose message holds every one of ``words`` and is of bounded length."""
    with pytest.raises(ValueError) as err:
        fn()
    message = str(err.value)
    assert all(w in message for w in words), message
    assert len(message) < MESSAGE_BOUND, message
    return message


# ---------------------------------------------------------------------------------------------
# Tensors the kernels cannot read: meta, lazily negated views, sparse and nested tensors
# ---------------------------------------------------------------------------------------------
def test_meta_tensors_are_refused_not_crashed_on():
    """All inputs on the meta device passed the one-device check under the interpreter, then a kernel launch failed
    with NotImplementedError("Cannot copy out of meta tensor")."""
    q, k, v = (t.to("meta") for t in _dense())
    _raises(lambda: flash_attn_v2(q, k, v), "flash_attn_v2", "CUDA", "meta")
    _raises(lambda: flash_attn_v1(q, k, v), "flash_attn_v1", "CUDA", "meta")
    args, _ = _packed()
    meta = {n: t.to("meta") if isinstance(t, torch.Tensor) else t for n, t in args.items()}
    for check_values in (True, False):
        _raises(lambda: flash_attn_varlen(**meta, check_values=check_values), "flash_attn_varlen", "meta")
        dec = {n: t.to("meta") for n, t in _decode(paged=True).items()}
        _raises(lambda: flash_decode(**dec, check_values=check_values), "flash_decode", "meta")


def _neg(t):
    return torch._neg_view(t)  # what ``x.conj().imag`` of a complex x is: memory -x, values x


def test_a_negated_view_of_the_inputs_is_refused():
    """A lazily negated view's memory holds -values: the kernels read memory and computed with the negated tensor
    (a wrong result, no error)."""
    q, k, v = _dense()
    conj_imag = torch.complex(q, q).conj().imag  # the public way to get one
    assert conj_imag.is_neg()
    _raises(lambda: flash_attn_v2(conj_imag, k, v), "flash_attn_v2: q", "negated", "resolve_neg")
    _raises(lambda: flash_attn_v2(q, _neg(k), v), "flash_attn_v2: k", "negated")
    _raises(lambda: flash_attn_v1(q, k, _neg(v)), "flash_attn_v1: v", "negated")
    args, _ = _packed()
    _raises(lambda: flash_attn_varlen(**{**args, "q": _neg(args["q"])}), "flash_attn_varlen: q", "negated")
    dec = _decode(paged=True)
    _raises(lambda: flash_decode(**{**dec, "q": _neg(dec["q"])}), "flash_decode: q", "negated")
    _raises(lambda: flash_decode(**{**dec, "v_cache": _neg(dec["v_cache"])}), "flash_decode: v_cache", "negated")


def test_a_negated_view_of_offsets_lengths_or_table_is_refused():
    """Integer tensors can be negated views too: their checked values were the logical ones, the kernels read the
    negated memory (``.contiguous()`` keeps the flag)."""
    args, _ = _packed()
    real = args["cu_seqlens_q"]
    for check_values in (True, False):
        _raises(lambda: flash_attn_varlen(**{**args, "cu_seqlens_q": _neg(-real)}, check_values=check_values),
                "flash_attn_varlen: cu_seqlens_q", "negated")
        dec = _decode(paged=True)
        _raises(lambda: flash_decode(**{**dec, "cache_seqlens": _neg(-dec["cache_seqlens"])},
                                     check_values=check_values), "flash_decode: cache_seqlens", "negated")
        _raises(lambda: flash_decode(**{**dec, "block_table": _neg(-dec["block_table"])}, check_values=check_values),
                "flash_decode: block_table", "negated")


def test_a_kept_plan_never_lets_a_negated_view_through():
    """A negated view has the shape, strides, dtype and alignment of its memory: it found the plan that a plain
    call had kept, which skips the checks."""
    plans.forget()
    q, k, v = _dense()
    flash_attn_v2(q, k, v)
    assert len(plans.kept()) == 1
    _raises(lambda: flash_attn_v2(_neg(q), k, v), "flash_attn_v2: q", "negated")


@pytest.mark.parametrize("kernel", [flash_attn_v2, flash_attn_v1])
def test_a_negated_output_gradient_is_read_for_its_values(kernel):
    """dO comes from the caller through autograd: a negated view of it is resolved, not read as its memory (the
    gradients were those of -dO)."""
    q, k, v, do = make_inputs(B, H, HKV, N, N, D, torch.float32, seed=3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    negated = _neg(-do)  # values do, memory -do
    got = torch.autograd.grad(kernel(*leaves, causal=True), leaves, negated)
    want = torch.autograd.grad(kernel(*leaves, causal=True), leaves, do)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_a_negated_output_gradient_of_a_packed_batch_is_read_for_its_values():
    args, do = _packed()
    leaves = [args[n].clone().requires_grad_() for n in ("q", "k", "v")]
    rest = {n: a for n, a in args.items() if n not in ("q", "k", "v")}
    got = torch.autograd.grad(flash_attn_varlen(*leaves, **rest), leaves, _neg(-do))
    want = torch.autograd.grad(flash_attn_varlen(*leaves, **rest), leaves, do)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_sparse_and_nested_tensors_are_refused():
    """A sparse cu_seqlens / cache_seqlens / block_table crashed in torch (torch.cat, .contiguous()); a nested q
    crashed reading its sizes."""
    args, _ = _packed()
    _raises(lambda: flash_attn_varlen(**{**args, "cu_seqlens_k": args["cu_seqlens_k"].to_sparse()}),
            "flash_attn_varlen: cu_seqlens_k", "sparse")
    dec = _decode(paged=True)
    _raises(lambda: flash_decode(**{**dec, "cache_seqlens": dec["cache_seqlens"].to_sparse()}),
            "flash_decode: cache_seqlens", "sparse")
    _raises(lambda: flash_decode(**{**dec, "block_table": dec["block_table"].to_sparse()}),
            "flash_decode: block_table", "sparse")
    q, k, v = _dense()
    nested = torch.nested.nested_tensor([q[0], q[0]])
    _raises(lambda: flash_attn_v2(nested, k, v), "flash_attn_v2: q", "nested")
    _raises(lambda: flash_attn_v1(q, nested, v), "flash_attn_v1: k", "nested")


# ---------------------------------------------------------------------------------------------
# Offsets the kernels read at cu_seqlens + b
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("check_values", [True, False])
def test_strided_offsets_give_the_contiguous_offsets_result(check_values):
    """A strided view of cu_seqlens passed every check (the host copy reads it right), but the kernels and the
    program tables read offset b at cu_seqlens + b: the result was computed from the wrong offsets."""
    args, do = _packed()
    spread = lambda cu: torch.stack([cu, torch.full_like(cu, 7)], 1).reshape(-1)[::2]  # noqa: E731
    strided = {**args, "cu_seqlens_q": spread(args["cu_seqlens_q"]), "cu_seqlens_k": spread(args["cu_seqlens_k"])}
    assert strided["cu_seqlens_q"].stride() == (2,)
    got = flash_attn_varlen(**strided, causal=True, check_values=check_values)
    want = flash_attn_varlen(**args, causal=True)
    assert torch.equal(got, want)
    leaves = [args[n].clone().requires_grad_() for n in ("q", "k", "v")]
    rest = lambda a: {n: x for n, x in a.items() if n not in ("q", "k", "v")}  # noqa: E731
    got = torch.autograd.grad(flash_attn_varlen(*leaves, **rest(strided), check_values=check_values), leaves, do)
    want = torch.autograd.grad(flash_attn_varlen(*leaves, **rest(args)), leaves, do)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# ---------------------------------------------------------------------------------------------
# Stride-0 (expanded) inputs: read through their strides, never written (no defect found; kept as a regression)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [flash_attn_v2, flash_attn_v1])
def test_expanded_inputs_and_output_gradient_give_the_contiguous_results(kernel):
    g = torch.Generator(device="cpu").manual_seed(5)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEV)  # noqa: E731
    q = mk(1, H, N, D).expand(2, H, N, D)  # batch stride 0
    k = mk(2, HKV, 1, D).expand(2, HKV, N, D)  # row stride 0: every key the same
    v = mk(2, HKV, N, D)
    do = mk(2, H, 1, D).expand(2, H, N, D)
    leaves = [t.requires_grad_() for t in (q, k, v)]  # expanded views are leaves of their own
    dense = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    got_o, want_o = kernel(*leaves, causal=True), kernel(*dense, causal=True)
    assert torch.equal(got_o, want_o)
    assert all(got_o.data_ptr() != t.data_ptr() for t in (q, k, v))  # a fresh output, not one of the inputs
    got = torch.autograd.grad(got_o, leaves, do)
    want = torch.autograd.grad(want_o, dense, do.contiguous())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(q[0], q[1]) and torch.equal(k[:, :, 0], k[:, :, -1])  # the inputs were not written


def test_expanded_decode_inputs_give_the_contiguous_results():
    dec = _decode(paged=False)
    expanded = {**dec, "q": dec["q"][:, :1].expand(-1, 2, -1, -1), "k_cache": dec["k_cache"][:1].expand(2, -1, -1, -1),
                "cache_seqlens": torch.tensor([20], dtype=torch.int32, device=DEV).expand(2)}
    dense = {n: t.contiguous() for n, t in expanded.items()}
    assert torch.equal(flash_decode(**expanded, num_splits=2), flash_decode(**dense, num_splits=2))


# ---------------------------------------------------------------------------------------------
# Sequence lengths the kernels' int32 index arithmetic holds
# ---------------------------------------------------------------------------------------------
def _long_keys(n_kv: int, seed: int = 0):
    """k and v of ``n_kv`` equal rows, expanded (stride 0): any number of keys in no memory, and every row that sees
    a key outputs v's one row."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    k, v = (torch.randn(1, 1, 1, D, generator=g).to(DEV).expand(1, 1, n_kv, D) for _ in range(2))
    return torch.randn(1, 1, 16, D, generator=g).to(DEV), k, v


@pytest.mark.parametrize("window", [(4, 2 ** 31 - 1), (4, -1)])
def test_the_longest_dense_call_is_computed_right(window):
    """Nq + Nkv = MAX_TOKENS with a short left reach (only the last key blocks are visited, so the interpreter runs
    it): right, as every row sees a few equal keys."""
    q, k, v = _long_keys(MAX_TOKENS - 16)
    out = flash_attn_v2(q, k, v, window=window)
    torch.testing.assert_close(out, v[:, :, :1].expand_as(out), atol=1e-5, rtol=1e-5)


def test_sequences_past_the_int32_bound_are_refused():
    """Past 2**30 keys a window's loop bounds wrapped in int32 and every row output 0 (a wrong result, no error);
    past 2**31 Triton failed on the length itself."""
    for n_kv in (MAX_TOKENS - 15, 2 ** 30 + 4096, 2 ** 31 + 16):
        q, k, v = _long_keys(n_kv)
        _raises(lambda: flash_attn_v2(q, k, v, window=(4, -1)), "flash_attn_v2", "exceeds", "int32")
        _raises(lambda: flash_attn_v1(q, k, v), "flash_attn_v1", "exceeds")
        q3, k3, v3 = (t[0].transpose(0, 1) for t in (q, k, v))  # packed (total, H, D)
        cu_q, cu_k = cu_seqlens([16]), cu_seqlens([min(n_kv, 2 ** 31 - 1)])  # refused before they are read
        _raises(lambda: flash_attn_varlen(q3, k3, v3, cu_q, cu_k, 16, n_kv), "flash_attn_varlen", "total_k", "exceeds")


@pytest.mark.parametrize("batch, heads", [(MAX_BATCH_HEADS + 1, 1), (4097, 16)])
def test_more_batch_heads_than_a_grid_axis_holds_are_refused(batch, heads):
    """The dense kernels put batch x heads on the grid's second axis (at most 65535 programs in CUDA): past it a
    GPU launch failed with CUDA's bare "invalid argument".  Expanded views: nothing of that size is allocated."""
    q = torch.zeros(1, 1, 16, 32, device=DEV).expand(batch, heads, 16, 32)
    for fn, name in ((flash_attn_v2, "flash_attn_v2"), (flash_attn_v1, "flash_attn_v1")):
        _raises(lambda: fn(q, q, q), name, "batch x heads", str(batch * heads), "65535")


def test_batch_heads_at_the_grid_limit_are_taken():
    q = torch.zeros(1, 1, 16, 32, device=DEV).expand(MAX_BATCH_HEADS, 1, 16, 32)
    assert check_inputs(q, q, q, "flash_attn_v2")[:2] == (MAX_BATCH_HEADS, 1)


# ---------------------------------------------------------------------------------------------
# Flags: causal and return_lse are True or False, never read by their truth value
# ---------------------------------------------------------------------------------------------
BAD_FLAGS = ["False", "no", "", None, 2, -1, 1.0, [True], torch.tensor(True), torch.tensor([True, False])]


@pytest.mark.parametrize("bad", BAD_FLAGS, ids=repr)
def test_a_causal_flag_that_is_not_a_bool_is_refused(bad):
    """causal="False" ran causal (a non-empty string is true); a tensor of two values was a RuntimeError; a CUDA
    tensor's truth value would wait for the device."""
    q, k, v = _dense()
    _raises(lambda: flash_attn_v2(q, k, v, causal=bad), "flash_attn_v2: causal must be True or False")
    _raises(lambda: flash_attn_v1(q, k, v, causal=bad), "flash_attn_v1: causal must be True or False")
    args, _ = _packed()
    _raises(lambda: flash_attn_varlen(**args, causal=bad), "flash_attn_varlen: causal must be True or False")


@pytest.mark.parametrize("bad", BAD_FLAGS, ids=repr)
def test_a_return_lse_flag_that_is_not_a_bool_is_refused_with_or_without_a_kept_plan(bad):
    q, k, v = _dense()
    _raises(lambda: flash_attn_v1(q, k, v, return_lse=bad), "flash_attn_v1: return_lse must be True or False")
    _raises(lambda: flash_attn_v2(q, k, v, return_lse=bad), "flash_attn_v2: return_lse must be True or False")
    flash_attn_v2(q, k, v)  # keeps a plan: return_lse is not in its key, so it is checked every call
    _raises(lambda: flash_attn_v2(q, k, v, return_lse=bad), "flash_attn_v2: return_lse must be True or False")


def test_a_causal_string_after_a_kept_causal_plan_is_still_refused():
    q, k, v = _dense()
    flash_attn_v2(q, k, v, causal=True)
    _raises(lambda: flash_attn_v2(q, k, v, causal="True"), "causal must be True or False")


@pytest.mark.parametrize("flag", [True, 1, np.bool_(True)], ids=repr)
def test_flags_that_are_bools_in_all_but_type_are_taken(flag):
    q, k, v = _dense()
    want, want_lse = flash_attn_v2(q, k, v, causal=True, return_lse=True)
    got, got_lse = flash_attn_v2(q, k, v, causal=flag, return_lse=flag)
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)
    assert torch.equal(flash_attn_v1(q, k, v, causal=flag), flash_attn_v1(q, k, v, causal=True))
    assert not isinstance(flash_attn_v2(q, k, v, causal=np.bool_(False), return_lse=0), tuple)


# ---------------------------------------------------------------------------------------------
# sm_scale: a real number that the kernels' float32 arithmetic represents
# ---------------------------------------------------------------------------------------------
def _every_entry_point(**kw):
    q, k, v = _dense()
    args, _ = _packed()
    dec = _decode(paged=False)
    return [("flash_attn_v2", lambda: flash_attn_v2(q, k, v, **kw)),
            ("flash_attn_v1", lambda: flash_attn_v1(q, k, v, **kw)),
            ("flash_attn_varlen", lambda: flash_attn_varlen(**args, **kw)),
            ("flash_decode", lambda: flash_decode(**dec, **kw))]


@pytest.mark.parametrize("bad, words", [
    ("0.5", "must be a float"),  # was taken: float("0.5")
    (torch.tensor(0.5), "must be a float"),  # was taken: float(tensor), a host sync on a GPU
    (torch.tensor([0.5, 0.25]), "must be a float"),  # was an opaque PyTorch error
    (True, "must be a float"),  # was taken as 1.0
    (1j, "must be a float"),  # was a TypeError from float() naming no argument
    (10 ** 400, "positive finite"),  # was an OverflowError
    (1e-40, "in ["),  # below float32's normal range: an opaque Triton error (the argument typed float64)
    (3e38, "in ["),  # sm_scale * log2(e) past float32's largest: an opaque Triton error / inf in the kernel
], ids=["str", "tensor", "tensor2", "bool", "complex", "huge-int", "subnormal", "overflowing"])
def test_a_softmax_scale_the_kernels_cannot_take_is_refused(bad, words):
    for name, call in _every_entry_point(sm_scale=bad):
        _raises(call, f"{name}: sm_scale", words)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("-inf")])
def test_flash_attn_v1_takes_positive_scales_only_like_the_others(bad):
    """flash_attn_v1 took 0 and negative scales (flash_attn_v2, flash_attn_varlen and flash_decode refuse them)."""
    q, k, v = _dense()
    _raises(lambda: flash_attn_v1(q, k, v, sm_scale=bad), "flash_attn_v1: sm_scale must be a positive finite number")


def test_the_scale_bounds_are_the_normal_float32_range():
    assert check_scale(32, MIN_SCALE, "t") == MIN_SCALE and check_scale(32, MAX_SCALE, "t") == MAX_SCALE
    for bad in (MIN_SCALE * (1 - 2 ** -20), MAX_SCALE * (1 + 2 ** -20)):
        with pytest.raises(ValueError, match="t: sm_scale must be a positive finite number in"):
            check_scale(32, bad, "t")
    assert check_scale(64, None, "t") == 0.125 and check_scale(64, np.float32(0.5), "t") == 0.5
    assert check_scale(64, 2, "t") == 2.0


def test_a_numpy_scale_and_an_int_scale_are_taken():
    q, k, v = _dense()
    want = flash_attn_v2(q, k, v, sm_scale=0.5)
    assert torch.equal(flash_attn_v2(q, k, v, sm_scale=np.float64(0.5)), want)
    ref = F.scaled_dot_product_attention(q, k, v, scale=2.0)
    torch.testing.assert_close(flash_attn_v2(q, k, v, sm_scale=2), ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Messages stay short whatever the argument
# ---------------------------------------------------------------------------------------------
def test_messages_quote_long_arguments_briefly():
    q, k, v = _dense()
    long_list = list(range(100_000))
    _raises(lambda: flash_attn_v2(q, k, v, window=long_list), "window must be a pair")
    _raises(lambda: flash_attn_v2(q, k, v, window=torch.arange(2)), "window must be a pair", "a tensor of shape")
    _raises(lambda: flash_attn_v2(q, k, v, causal=long_list), "causal")
    _raises(lambda: flash_attn_v2(q, k, v, sm_scale=long_list), "sm_scale")
    args, _ = _packed()
    _raises(lambda: flash_attn_varlen(**{**args, "max_seqlen_q": long_list}), "max_seqlen_q")
    _raises(lambda: flash_attn_varlen(**args, check_values=long_list), "check_values")
    dec = _decode(paged=False)
    _raises(lambda: flash_decode(**dec, num_splits=long_list), "num_splits")
    _raises(lambda: flash_decode(**dec, check_values=long_list), "check_values")


def test_decreasing_offsets_name_the_first_decrease_not_every_offset():
    """The message printed the whole offset list: a batch of 100k sequences made a message of ~600 kB."""
    batch = 100_000
    lengths = [0] * batch
    lengths[-1] = 8
    cu_q = cu_seqlens(lengths)
    cu_q[batch // 2] = 5  # offsets 0 ... 0 5 0 ... 0 8
    q, k, v, _, _, cu_k = make_packed_inputs([8], [6], H, HKV, D, torch.float32, seed=0)
    cu_k = cu_seqlens([0] * (batch - 1) + [6])
    message = _raises(lambda: flash_attn_varlen(q, k, v, cu_q, cu_k, 8, 6), "cu_seqlens_q must be non-decreasing")
    assert f"cu_seqlens_q[{batch // 2}] = 5 > cu_seqlens_q[{batch // 2 + 1}] = 0" in message
