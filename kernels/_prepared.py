"""One kernel launch prepared once and enqueued many times: the host path of short calls.

A ``PreparedLaunch`` fixes everything of a launch but its leading arguments (the tensors, or the TMA
descriptors, of one call): the grid, the trailing scalar arguments, the constexprs and the launch options.
Its first call goes through Triton's JIT, ``kernel[grid](...)``, which compiles (or loads) the kernel and
returns it.  Later calls hand the arguments straight to that compiled kernel's launcher: Triton's binder,
which re-derives the same specialisation from every argument on every call, is skipped.  On an H200's host
that binder and its key cost about as much as the launcher itself for kernels of 20-40 arguments
(``results/evidence/h200/host_path_profile/``).

The shortcut is taken only while it is exact: the leading arguments must specialise as on the first call
(a tensor's dtype and 16-byte alignment, a descriptor's base dtype; the trailing ones are fixed), the device
must be the first call's, and no launch hook may be installed (a profiler's hooks get their metadata
through the JIT).  Otherwise the call goes through the JIT, as every call does under ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import torch
from triton import knobs
from triton.runtime import driver


def _specialisation(args: tuple) -> tuple:
    """What Triton specialises a leading argument on: a tensor's dtype and 16-byte alignment, a descriptor's
    base dtype (its block shape and layout come from the caller's fixed tile)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append((a.dtype, a.data_ptr() % 16 == 0))
        else:
            base = getattr(a, "base", None)
            out.append(base.dtype if isinstance(base, torch.Tensor) else type(a))
    return tuple(out)


def _unhooked(hook) -> bool:
    # Triton 3.6 keeps each launch hook as a HookChain, never None (empty: nothing installed); earlier
    # releases kept None or one callable
    return hook is None or (hasattr(hook, "calls") and not hook.calls)


def no_launch_hooks() -> bool:
    """Whether no launch enter/exit hook is installed (a profiler's, Proton's): only then may a launch skip the
    JIT, which builds the metadata those hooks read."""
    return _unhooked(knobs.runtime.launch_enter_hook) and _unhooked(knobs.runtime.launch_exit_hook)


class PreparedLaunch:
    """``kernel[grid](*lead, *fixed, **kwargs)`` for each call's ``lead``; see the module docstring."""

    def __init__(self, kernel, grid: tuple, fixed: tuple = (), kwargs: dict | None = None):
        self.kernel = kernel
        self.grid = tuple(grid)
        self._grid3 = self.grid + (1,) * (3 - len(self.grid))
        self.fixed = tuple(fixed)
        self.kwargs = dict(kwargs or {})
        self._compiled = None  # the kernel the JIT returned on the first call (None under the interpreter)
        self._device = None
        self._lead = None  # the leading arguments' specialisation on the first call
        self._tail = ()  # ``fixed``, then every later parameter as the JIT binds it (constexprs, defaults)

    def __call__(self, *lead) -> None:
        c = self._compiled
        if c is not None and no_launch_hooks():
            device = driver.active.get_current_device()
            if device == self._device and _specialisation(lead) == self._lead:
                g = self._grid3
                c.run(g[0], g[1], g[2], driver.active.get_current_stream(device), c.function, c.packed_metadata,
                      None, None, None, *lead, *self._tail)
                return
        compiled = self.kernel[self.grid](*lead, *self.fixed, **self.kwargs)
        if self._compiled is None and getattr(compiled, "packed_metadata", None) is not None:
            self._bind(compiled, lead)

    def _bind(self, compiled, lead: tuple) -> None:
        """Keep the compiled kernel and the trailing arguments in the launcher's order: the kernel's parameters
        after ``lead`` and ``fixed``, each from ``kwargs`` or its default (what the JIT binds, constexprs too)."""
        params = self.kernel.params[len(lead) + len(self.fixed):]
        tail = []
        for p in params:
            if p.name in self.kwargs:
                tail.append(self.kwargs[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                return  # a parameter the JIT would refuse: never shortcut (the JIT call above raised already)
        self._tail = self.fixed + tuple(tail)
        self._device = driver.active.get_current_device()
        self._lead = _specialisation(lead)
        self._compiled = compiled
