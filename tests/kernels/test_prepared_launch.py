"""``_prepared.PreparedLaunch``: the first call through the JIT, later ones straight to the compiled kernel, and back
through the JIT whenever the shortcut would not be exact (CPU: a fake kernel, a fake compiled kernel, a fake driver)."""
import types

import pytest
import torch

from flashbench_kernels import _prepared
from flashbench_kernels._prepared import PreparedLaunch


class _Param:
    def __init__(self, name, default=None, has_default=False):
        self.name, self.default, self.has_default = name, default, has_default


class _Compiled:
    """What the JIT returns on a GPU: ``run`` (the launcher), ``function``, ``packed_metadata``."""

    def __init__(self):
        self.function, self.packed_metadata, self.launches = "fn", "meta", []

    def run(self, *args):
        self.launches.append(args)


class _Kernel:
    """kernel(A, B, n, scale, BLOCK: constexpr, EXTRA: constexpr = 7)."""

    def __init__(self, compiled):
        self.params = [_Param("A"), _Param("B"), _Param("n"), _Param("scale"), _Param("BLOCK"),
                       _Param("EXTRA", 7, True)]
        self.compiled, self.jit_calls = compiled, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.jit_calls.append((grid, args, kwargs))
            return self.compiled

        return run


@pytest.fixture
def gpu(monkeypatch):
    """A fake driver (device 0, stream 99); Triton's own launch hooks as it leaves them (installed: none)."""
    state = types.SimpleNamespace(device=0)
    active = types.SimpleNamespace(get_current_device=lambda: state.device, get_current_stream=lambda device: 99)
    monkeypatch.setattr(_prepared, "driver", types.SimpleNamespace(active=active))
    return state


def _tensors(dtype=torch.float16, offset=0):
    buf = torch.zeros(64, dtype=dtype)
    return buf[offset:offset + 16], buf[32:48]


def test_the_first_call_goes_through_the_jit_and_later_ones_to_the_compiled_kernel(gpu):
    compiled = _Compiled()
    kernel = _Kernel(compiled)
    launch = PreparedLaunch(kernel, (4, 2), (16, 0.5), dict(BLOCK=32, num_warps=8))
    a, b = _tensors()
    launch(a, b)
    assert kernel.jit_calls == [((4, 2), (a, b, 16, 0.5), dict(BLOCK=32, num_warps=8))] and not compiled.launches
    a2, b2 = _tensors()
    launch(a2, b2)
    launch(a2, b2)
    assert len(kernel.jit_calls) == 1
    # grid padded to three dims, the stream, no launch metadata or hooks, then every parameter in order:
    # the call's tensors, the fixed arguments, the constexprs from the keywords and the defaults (as the JIT binds)
    assert compiled.launches == [(4, 2, 1, 99, "fn", "meta", None, None, None, a2, b2, 16, 0.5, 32, 7)] * 2


@pytest.mark.parametrize("change", ["dtype", "alignment", "device", "hook"])
def test_a_call_the_compiled_kernel_was_not_specialised_for_goes_through_the_jit(change, gpu, request):
    compiled = _Compiled()
    kernel = _Kernel(compiled)
    launch = PreparedLaunch(kernel, (1,), (16, 0.5), dict(BLOCK=32))
    launch(*_tensors())
    args = _tensors()
    if change == "dtype":
        args = _tensors(torch.bfloat16)
    elif change == "alignment":
        args = _tensors(offset=1)  # 2 bytes past a 16-byte boundary: Triton specialises on that
    elif change == "device":
        gpu.device = 1
    else:
        hook = lambda metadata: None  # noqa: E731
        _prepared.knobs.runtime.launch_enter_hook.add(hook)  # as a profiler installs one in Triton 3.6
        request.addfinalizer(lambda: _prepared.knobs.runtime.launch_enter_hook.remove(hook))
    launch(*args)
    assert len(kernel.jit_calls) == 2 and not compiled.launches


def test_triton_s_default_hooks_are_no_hooks():
    """Triton 3.6 keeps its launch hooks as HookChain objects, never None: empty ones are no hooks (the
    shortcut had checked for None and so never engaged on a GPU); one added, or a bare callable as older
    Triton releases held, is a hook."""
    assert _prepared.no_launch_hooks()
    chain = _prepared.knobs.runtime.launch_exit_hook
    hook = lambda metadata: None  # noqa: E731
    chain.add(hook)
    try:
        assert not _prepared.no_launch_hooks()
    finally:
        chain.remove(hook)
    assert _prepared.no_launch_hooks()
    assert _prepared._unhooked(None) and not _prepared._unhooked(hook)


def test_descriptors_are_told_apart_by_their_bases_dtype(gpu):
    compiled = _Compiled()
    kernel = _Kernel(compiled)
    launch = PreparedLaunch(kernel, (1,), (16, 0.5), dict(BLOCK=32))
    desc = lambda t: types.SimpleNamespace(base=t)  # noqa: E731  (a TensorDescriptor's base)
    a, b = _tensors()
    launch(desc(a), b)
    launch(desc(a.clone()), b)
    assert len(compiled.launches) == 1
    launch(desc(a.float()), b)
    assert len(kernel.jit_calls) == 2


def test_under_the_interpreter_every_call_goes_through_the_jit(gpu):
    kernel = _Kernel(None)  # the interpreter's launch returns nothing
    launch = PreparedLaunch(kernel, (1,), (16, 0.5), dict(BLOCK=32))
    for _ in range(3):
        launch(*_tensors())
    assert len(kernel.jit_calls) == 3


def test_a_parameter_left_without_a_value_never_takes_the_shortcut(gpu):
    compiled = _Compiled()
    kernel = _Kernel(compiled)
    launch = PreparedLaunch(kernel, (1,), (16, 0.5))  # BLOCK missing: only the JIT can say what that means
    for _ in range(2):
        launch(*_tensors())
    assert len(kernel.jit_calls) == 2 and not compiled.launches


def test_what_it_was_given_is_copied_not_shared(gpu):
    compiled = _Compiled()
    kernel, kwargs = _Kernel(compiled), dict(BLOCK=32)
    launch = PreparedLaunch(kernel, (1,), [16, 0.5], kwargs)
    kwargs["BLOCK"] = 64  # a caller's dict changed afterwards does not change the launch
    launch(*_tensors())
    launch(*_tensors())
    assert kernel.jit_calls[0][2] == dict(BLOCK=32) and compiled.launches[0][-2:] == (32, 7)
