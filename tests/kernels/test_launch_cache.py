"""kernels/_launch_cache.py: the key that picks a cached compiled kernel, and the launches through it (CPU).

The key must never be coarser than Triton's specialisation, or a launch could run a kernel compiled for other
arguments: checked here against Triton's own ``native_specialize_impl`` over arguments that differ in every
way it looks at.  The launches are checked with a real ``JITFunction`` whose ``run`` (compile and launch) is
replaced by a recorder.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import triton.language as tl
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

from flashbench_kernels import _launch_cache
from flashbench_kernels._launch_cache import arg_key, run_kernel
from flashbench_kernels.flash_attn_v2 import sm90


def _tensors():
    base = torch.empty(4096, dtype=torch.uint8)
    out = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int32, torch.int8):
        t = base.view(dtype) if dtype.itemsize <= 4 else base
        for offset in (0, 1, 2, 4, 8, 16):  # elements: 16-byte aligned or not, depending on the dtype
            out.append(t[offset:])
    return out


def _descriptors():
    out = []
    for dtype, d in itertools.product((torch.float16, torch.bfloat16, torch.float32), (64, 128)):
        t = torch.empty(512, d, dtype=dtype)
        for rows in (64, 128):
            out.append(sm90.descriptor(t, rows))
    padded = sm90.descriptor(torch.empty(512, 64, dtype=torch.bfloat16), 64)
    padded.padding = "nan"
    out.append(padded)
    return out


INTS = [-2**40, -17, -16, -1, 0, 1, 2, 15, 16, 17, 32, 1000, 1024, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16,
        2**32, 2**62, 2**63 - 16, 2**63 - 1, 2**63, 2**64 - 16]
ARGS = INTS + [0.5, 1.0, -3.0, 1e30, True, False, None] + _tensors() + _descriptors()


def _triton_spec(a):
    return native_specialize_impl(BaseBackend, a, False, True, True)


def test_equal_keys_mean_equal_triton_specialisations():
    """For every pair of arguments: the same key implies the same specialisation (the key may be finer)."""
    specs = [_triton_spec(a) for a in ARGS]
    keys = [arg_key(a) for a in ARGS]
    for (ka, sa, a), (kb, sb, b) in itertools.combinations(zip(keys, specs, ARGS), 2):
        if ka == kb:
            assert sa == sb, f"{a!r:.60} and {b!r:.60} share a key but Triton specialises them {sa} / {sb}"


def test_the_key_tells_apart_what_triton_does():
    """The cases that change a compiled kernel get different keys: 1, alignment, width, dtype, block shape."""
    assert arg_key(1) != arg_key(2) != arg_key(16)
    assert arg_key(2**31) != arg_key(2**31 - 16)
    t = torch.empty(64, dtype=torch.float16)
    assert arg_key(t) != arg_key(t[1:]) and arg_key(t) != arg_key(t.view(torch.bfloat16))
    d = _descriptors()
    assert len({arg_key(x) for x in d}) == len(d)


def test_an_unknown_argument_type_has_no_key():
    with pytest.raises(_launch_cache._Unkeyable):
        arg_key("a string")


def _kernel(X, n, scale, B: tl.constexpr, C: tl.constexpr = 4):  # a stand-in signature, never compiled
    pass


class _Compiled:
    """What ``JITFunction.run`` returns: a compiled kernel launched by ``compiled[grid](*all_params)``."""

    function = object()

    def __init__(self, tag):
        self.tag, self.launches = tag, []

    def __getitem__(self, grid):
        return lambda *args: self.launches.append((grid, args))


@pytest.fixture
def kernel(monkeypatch):
    """A real JITFunction whose run (compile on a miss, then launch) is a recorder, on a pretend CUDA device."""
    k = JITFunction(_kernel)
    runs = []

    def run(*args, grid, warmup, **kwargs):
        runs.append((grid, args, kwargs))
        return _Compiled(len(runs))

    monkeypatch.setattr(k, "run", run)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    k.runs = runs
    yield k
    _launch_cache._COMPILED.pop(k, None)
    _launch_cache._SIGNATURES.pop(k, None)


def test_a_repeated_key_launches_the_cached_kernel_with_every_parameter_in_order(kernel):
    x = torch.empty(64, dtype=torch.float16)
    run_kernel(kernel, (3,), x, 32, 0.5, B=8, num_warps=4)
    assert len(kernel.runs) == 1 and kernel.runs[0][0] == (3,)
    run_kernel(kernel, (5, 2), x, 48, 0.25, B=8, num_warps=4)  # 48: divisible by 16 as 32 is, same key
    assert len(kernel.runs) == 1
    compiled = _launch_cache._COMPILED[kernel]
    (hit,) = compiled.values()
    assert hit.launches == [((5, 2, 1), (x, 48, 0.25, 8, 4))]  # 3-D grid; C's default filled in, signature order


@pytest.mark.parametrize("change", [
    dict(n=33), dict(n=1), dict(B=16), dict(num_warps=8), dict(x_offset=1), dict(B=True), dict(device=1)])
def test_a_different_specialisation_compiles_through_triton(kernel, change, monkeypatch):
    x = torch.empty(64, dtype=torch.float16)
    run_kernel(kernel, (1,), x, 32, 0.5, B=1, num_warps=4)
    if "device" in change:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: change["device"])
    args = dict(n=32, B=1, num_warps=4) | {k: v for k, v in change.items() if k in ("n", "B", "num_warps")}
    x2 = x[change.get("x_offset", 0):]
    run_kernel(kernel, (1,), x2, args["n"], 0.5, B=args["B"], num_warps=args["num_warps"])
    assert len(kernel.runs) == 2, f"{change}: a launch reused a kernel compiled for other arguments"


def test_calls_it_cannot_key_go_through_triton_every_time(kernel):
    x = torch.empty(64, dtype=torch.float16)
    for _ in range(2):
        run_kernel(kernel, (1,), x, 32, 0.5)  # B missing: Triton reports it
        run_kernel(kernel, (1,), x, "n", 0.5, B=1)  # an argument type the key does not know
        run_kernel(kernel, (1,), x, 32, 0.5, B=[1, 2])  # an unhashable constexpr
    assert len(kernel.runs) == 6 and kernel not in _launch_cache._COMPILED or not _launch_cache._COMPILED[kernel]


def test_the_interpreter_and_stand_ins_launch_directly(monkeypatch):
    calls = []

    class StandIn:
        def __getitem__(self, grid):
            return lambda *a, **k: calls.append((grid, a, k))

    run_kernel(StandIn(), (2,), 1, B=3)
    assert calls == [((2,), (1,), {"B": 3})]


@pytest.mark.gpu
def test_on_the_gpu_each_specialisation_runs_its_own_kernel():
    """A real kernel launched through the cache with lengths and addresses that Triton specialises differently
    (divisible by 16, not, 1; an aligned and a misaligned base) computes the right thing each time, twice."""
    from flashbench_kernels.flash_attn_v2.sm90_bwd import _dq_convert_kernel

    _launch_cache._COMPILED.pop(_dq_convert_kernel, None)  # counted below
    acc = torch.randn(8192 + 1, device="cuda")
    for _ in range(2):
        for n, offset in ((4096, 0), (4095, 0), (1, 0), (4096, 1), (8192, 0)):
            src = acc[offset:offset + n]
            out = torch.full((n,), float("nan"), dtype=torch.bfloat16, device="cuda")
            run_kernel(_dq_convert_kernel, (triton_cdiv(n, 1024),), src, out, 0.5, n, BLOCK=1024, num_warps=4)
            torch.testing.assert_close(out, (src * 0.5).to(torch.bfloat16), rtol=0, atol=0)
    assert len(_launch_cache._COMPILED[_dq_convert_kernel]) == 4  # (div 16, aligned), (not), (1), (misaligned)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
