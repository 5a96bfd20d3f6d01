"""``_prepared.PreparedLaunch``: each call is the kernel's JIT launch with the call's tensors first, then the fixed
arguments, the constexprs and the launch options (CPU: a fake kernel)."""
import torch

from flashbench_kernels._prepared import PreparedLaunch


class _Kernel:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def test_each_call_launches_the_calls_tensors_with_the_fixed_arguments():
    kernel = _Kernel()
    launch = PreparedLaunch(kernel, [4, 2], (16, 0.5, None), dict(BLOCK=32, num_warps=8))
    a, b = torch.zeros(4), torch.ones(4)
    launch(a, b)
    launch(b, a)
    assert kernel.calls == [((4, 2), (a, b, 16, 0.5, None), dict(BLOCK=32, num_warps=8)),
                            ((4, 2), (b, a, 16, 0.5, None), dict(BLOCK=32, num_warps=8))]


def test_what_it_was_given_is_copied_not_shared():
    kernel, kwargs = _Kernel(), dict(BLOCK=32)
    launch = PreparedLaunch(kernel, (1,), [7], kwargs)
    kwargs["BLOCK"] = 64  # a caller's dict changed afterwards does not change the launch
    launch(torch.zeros(1))
    assert kernel.calls[0][1][1:] == (7,) and kernel.calls[0][2] == dict(BLOCK=32)
