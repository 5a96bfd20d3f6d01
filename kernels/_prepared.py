"""One kernel launch prepared once and enqueued on each call: the host path of repeated calls.

A ``PreparedLaunch`` fixes everything of a launch but its leading arguments (the tensors, or the TMA
descriptors, of one call): the kernel, the grid, the trailing scalar arguments, the constexprs and the
launch options.  Calling it with a call's tensors is ``kernel[grid](*tensors, *fixed, **kwargs)``: the
arguments and the choices behind them are computed once, when a plan is made (``flash_attn_v2.launch``),
not on every call.  Each call still goes through Triton's JIT, which checks the arguments and finds the
compiled kernel for their specialisation.  It checks nothing itself: the tensors a call passes must have the
metadata (shapes, strides, dtypes, alignment) the launch was prepared for, which ``flash_attn_v2.plans``
guarantees by keying plans on them.
"""
from __future__ import annotations


class PreparedLaunch:
    """``kernel[grid](*lead, *fixed, **kwargs)`` for each call's ``lead``."""

    __slots__ = ("kernel", "grid", "fixed", "kwargs")

    def __init__(self, kernel, grid: tuple, fixed: tuple = (), kwargs: dict | None = None):
        self.kernel = kernel
        self.grid = tuple(grid)
        self.fixed = tuple(fixed)
        self.kwargs = dict(kwargs or {})

    def __call__(self, *lead) -> None:
        self.kernel[self.grid](*lead, *self.fixed, **self.kwargs)
