"""``flash_attn_v2``'s plans: a dense call decided once and repeated by its prepared launches, a new plan for anything
that decides one, checks that still refuse bad calls, packed calls never kept, the kept plans bounded and holding no
tensors (CPU: the Triton kernels on the interpreter)."""
import gc
import weakref

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, flash_attn_varlen, launch, plans
from kernel_checks import DEV, make_inputs, make_packed_inputs, poisoned_empty

B, H, HKV, N, D = 1, 4, 2, 24, 32


def _inputs(seed=0, dtype=torch.float32, n=N):
    return make_inputs(B, H, HKV, n, n, D, dtype, seed=seed)


def _reference(q, k, v, do, causal=False, scale=None, window=(-1, -1)):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    rows, cols = torch.arange(q.shape[2])[:, None], torch.arange(k.shape[2])[None, :]
    shift = k.shape[2] - q.shape[2]
    left, right = window[0], 0 if causal else window[1]
    visible = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool)
    if right >= 0:
        visible &= cols <= rows + shift + right
    if left >= 0:
        visible &= cols >= rows + shift - left
    o = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=visible.to(DEV), scale=scale,
                                                         enable_gqa=True)
    return [o.detach()] + list(torch.autograd.grad(o, leaves, do.double()))


def _fwd_bwd(q, k, v, do, **kw):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]  # not cloned: its strides and alignment are the case
    o = flash_attn_v2(*leaves, **kw)
    return [o.detach()] + list(torch.autograd.grad(o, leaves, do))


def _assert_close(got, want):
    for g, w in zip(got, want):
        assert (g.double() - w).abs().max().item() < 1e-4


def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: (calls.append(a[0] if a else None), real(*a, **kw))[1])
    return calls


def test_a_repeated_dense_call_is_decided_once_and_its_outputs_written_every_time(monkeypatch):
    checks, prepared = _count(monkeypatch, launch, "check_inputs"), _count(monkeypatch, launch, "_prepare")
    monkeypatch.setattr(launch, "_empty", poisoned_empty)  # every call's outputs are new buffers, fully written
    q, k, v, do = _inputs()
    want = _reference(q, k, v, do, causal=True)
    logs = []
    for _ in range(3):
        logs.append({})
        _assert_close(_fwd_bwd(q, k, v, do, causal=True, launch_log=logs[-1]), want)
    assert len(checks) == 1 and prepared == ["fwd", "bwd_dkdv", "bwd_dq"]
    assert logs[0] == logs[1] == logs[2] and set(logs[0]) == {"fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq"}
    assert len(plans.kept()) == 1


def _variant(name):
    """(inputs, keywords) of a call differing from the base call (contiguous fp32, non-causal) in one thing."""
    q, k, v, do = _inputs()
    kw = {}
    if name == "shape":
        q, k, v, do = _inputs(n=N + 8)
    elif name == "dtype":
        q, k, v, do = (t.half() for t in (q, k, v, do))
    elif name == "strides":  # the same values in a (B, N, H, D) buffer: other strides, the same shape
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    elif name == "alignment":  # 4 bytes past a 16-byte boundary: only the pointer path may read it
        buf = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)
        buf[1:].copy_(q.reshape(-1))
        q = buf[1:].view(q.shape)
    else:
        kw = {"causal": dict(causal=True), "scale": dict(sm_scale=0.25), "window": dict(window=(5, 3)),
              "options": dict(options=FA2Options(causal_group_programs=3))}[name]
    return (q, k, v, do), kw


@pytest.mark.parametrize("name", ["shape", "dtype", "strides", "alignment", "causal", "scale", "window", "options"])
def test_anything_that_decides_the_plan_makes_a_new_one(name):
    base = _inputs()
    _fwd_bwd(*base)
    (q, k, v, do), kw = _variant(name)
    got = _fwd_bwd(q, k, v, do, **kw)
    assert len(plans.kept()) == 2
    if name != "dtype":  # fp16 rounding: its accuracy has tests of its own
        want = _reference(q, k, v, do, causal=kw.get("causal", False), scale=kw.get("sm_scale"),
                          window=kw.get("window", (-1, -1)))
        _assert_close(got, want)


@pytest.mark.parametrize("bad, words", [
    (dict(launch_log="x"), "launch_log"), (dict(sm_scale=-1.0), "sm_scale"), (dict(window=(-2, 0)), "window"),
    (dict(sm_scale=float("nan")), "sm_scale"), (dict(options="fast"), "options"),
])
def test_a_kept_plan_never_lets_a_bad_call_through(bad, words):
    q, k, v, _ = _inputs()
    flash_attn_v2(q, k, v, launch_log={})
    with pytest.raises(ValueError, match=words):
        flash_attn_v2(q, k, v, **bad)
    with pytest.raises(ValueError, match="q must be a torch.Tensor"):
        flash_attn_v2(q.tolist(), k, v)


def test_a_bool_where_an_int_belongs_never_finds_the_ints_plan():
    q, k, v, _ = _inputs()
    flash_attn_v2(q, k, v, window=(1, 1))
    with pytest.raises(ValueError, match="window"):
        flash_attn_v2(q, k, v, window=(True, 1))  # equal to (1, 1) as a key, refused as a window


def test_arguments_a_key_cannot_compare_exactly_run_checked_and_unkept():
    q, k, v, do = _inputs()
    want = _reference(q, k, v, do, causal=True, window=(5, 0))
    _assert_close(_fwd_bwd(q, k, v, do, causal=1, window=[5, 0]), want)  # an int flag, a list: accepted as before
    assert not plans.kept()


def test_a_sparse_tensor_gets_the_checks_answer():
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="q must have a contiguous last dimension"):
        flash_attn_v2(q.to_sparse(), k, v)
    assert not plans.kept()


def test_packed_calls_keep_no_plan():
    q, k, v, do, cu_q, cu_k = make_packed_inputs([5, 17], [9, 17], H, HKV, D, torch.float32, seed=1)
    for _ in range(2):
        flash_attn_varlen(q, k, v, cu_q, cu_k, 17, 17, causal=True)
    assert not plans.kept()


def test_the_kept_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(plans, "MAX_PLANS", 2)
    for n in (16, 24, 32, 40, 48):
        q, k, v, _ = _inputs(n=n)
        flash_attn_v2(q, k, v)
        assert 1 <= len(plans.kept()) <= 2


def test_a_plan_prepares_a_backward_for_each_layout_of_the_output_gradient():
    q, k, v, do = _inputs()
    want = _reference(q, k, v, do)
    _assert_close(_fwd_bwd(q, k, v, do), want)
    strided = do.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, other strides
    _assert_close(_fwd_bwd(q, k, v, strided), want)
    (plan, _scale), = plans.kept()
    assert len(plan.backward) == 2


def test_a_kept_plan_holds_no_tensor():
    q, k, v, do = _inputs()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = flash_attn_v2(*leaves, causal=True)
    grads = torch.autograd.grad(o, leaves, do)
    refs = [weakref.ref(t) for t in (*leaves, o, *grads)]
    del leaves, o, grads
    gc.collect()
    assert plans.kept() and all(r() is None for r in refs)


def test_a_kept_plan_computes_each_calls_own_inputs():
    first, second = _inputs(seed=1), _inputs(seed=2)
    for q, k, v, do in (first, second, first):
        _assert_close(_fwd_bwd(q, k, v, do, causal=True), _reference(q, k, v, do, causal=True))
    assert len(plans.kept()) == 1


class _Recorder:
    """Stands in for a Gluon kernel: records the arguments of each ``kernel[grid](...)``."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(args)


def test_a_kept_gluon_plan_hands_each_call_its_own_tensors(monkeypatch):
    """The Gluon forward (persistent: 256 keys) and backward, as on an H100 but with recording kernels: every call
    of a kept plan gives the kernels descriptors over that call's q, k, v, O, dO and gradients."""
    from flashbench_kernels.flash_attn_v2 import sm90, sm90_bwd, sm90_persistent, spaces

    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)
    monkeypatch.setattr(launch, "_sm90_bwd_refusal", lambda *a: None)
    monkeypatch.setattr(sm90_persistent, "tile_counter", lambda device: "counter")
    monkeypatch.setattr(sm90_persistent, "sm_count", lambda index: 132)
    monkeypatch.setattr(launch, "sm_count", lambda index: 132)  # the backward's dQ chunks
    kernels = {name: _Recorder() for name in ("fwd", "bwd", "convert")}
    monkeypatch.setattr(sm90_persistent, "fwd_sm90_persistent_kernel", kernels["fwd"])
    monkeypatch.setattr(sm90_bwd, "bwd_sm90_kernel", kernels["bwd"])
    monkeypatch.setattr(sm90_bwd, "_dq_convert_kernel", kernels["convert"])
    options = FA2Options(path="tma", configs={"fwd": (128, 128, 4, 2, spaces.GLUON)})
    ptr = lambda t: t.data_ptr()  # noqa: E731
    for seed in (1, 2, 3):
        q, k, v, do = make_inputs(1, 2, 2, 256, 256, 128, torch.float16, seed=seed)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o = flash_attn_v2(*leaves, causal=True, options=options)
        dq, dk, dv = torch.autograd.grad(o, leaves, do)
        fwd, bwd, convert = (kernels[name].calls[-1] for name in ("fwd", "bwd", "convert"))
        assert [ptr(d.base) for d in fwd[:4]] == [ptr(t) for t in (*leaves, o)] and fwd[5] == "counter"
        assert [ptr(d.base) for d in bwd[:6]] == [ptr(t) for t in (leaves[0], do, leaves[1], leaves[2], dk, dv)]
        assert ptr(convert[0]) == ptr(bwd[6].base) and ptr(convert[1]) == ptr(dq)
    assert len(kernels["fwd"].calls) == len(kernels["bwd"].calls) == 3 and len(plans.kept()) == 1
