"""Launch a Triton or Gluon JIT kernel through the compiled kernel its arguments select, found by a cheap key.

``kernel[grid](*args, **kwargs)`` spends most of its host time choosing the compiled kernel: it binds the
arguments to the signature, specialises each one (a Gluon tensor descriptor's type spells out its shared
layout), turns that list and the options into a string and looks it up (``JITFunction.run``).  On the H200
that took 20-90 µs a launch (the Gluon backward's the most), a third of a short fwd_bwd call's host time
(kernels/DESIGN.md, "Host path").  ``run_kernel`` keys the compiled kernel by a tuple built here, at least as fine
as Triton's specialisation of each argument:

- tensor: dtype, and whether its address is 16-byte aligned (Triton: ``*bf16`` with or without ``D``);
- int: equal to 1, divisible by 16, within int32, within int64 (Triton: constexpr 1, ``i32``/``i64``/``u64``
  with or without ``D``);
- float, None: the type; bool: its value (Triton: ``fp32``; constexpr None; ``u1``);
- tensor descriptor: the dtype, block shape, shared layout and padding (Triton: ``tensordesc<...>``);

plus the constexpr values and types, the launch options (num_warps, ...) and the current device.  A key seen for the
first time launches through ``kernel[grid]``, and the compiled kernel it returns is kept under that key; later
launches go straight to it (``CompiledKernel[grid]``, which still takes the current stream and calls Triton's
launch hooks).  Equal keys imply equal specialisations (``tests/kernels/test_launch_cache.py`` checks that
against Triton's own ``native_specialize_impl``), so a cached kernel is the one Triton would have chosen.
Another argument type, the interpreter, or a kernel that is not a ``JITFunction`` (a test's stand-in) launches
through ``kernel[grid]`` every time.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from triton.runtime.jit import JITFunction

from ._validate import interpreting

try:  # Gluon's host descriptor (Hopper TMA); absent from Triton builds without Gluon
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor
except ImportError:  # pragma: no cover
    _GluonDescriptor = ()
try:
    from triton.tools.tensor_descriptor import TensorDescriptor as _TritonDescriptor
except ImportError:  # pragma: no cover
    _TritonDescriptor = ()

class _Unkeyable(Exception):
    """An argument this module does not know how Triton specialises: launch through ``kernel[grid]``."""


def arg_key(a: Any) -> tuple:
    """What of ``a`` may select a different compiled kernel (see the module docstring).  The common types are
    tested by identity first: this runs for every argument of every launch."""
    t = type(a)
    if t is int:
        return ("i", a == 1, a % 16 == 0, -2**31 <= a < 2**31, -2**63 <= a < 2**63)
    if a is None:
        return _NONE
    if t is float:
        return _FLOAT
    if t is bool:
        return ("b", a)
    if isinstance(a, torch.Tensor):
        return ("t", a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, int):  # an int subclass (bool is handled above)
        return arg_key(int(a))
    if isinstance(a, float):
        return _FLOAT
    if isinstance(a, (_GluonDescriptor, _TritonDescriptor)):
        layout = getattr(a, "layout", None)
        return ("d", a.base.dtype, tuple(a.block_shape), layout, a.padding)
    raise _Unkeyable(t.__name__)


_NONE = ("n",)
_FLOAT = ("f",)


class _Signature:
    """A kernel's parameter names and defaults, read once."""

    def __init__(self, kernel: JITFunction):
        self.names = tuple(kernel.arg_names)
        self.known = frozenset(self.names)
        self.constexpr = tuple(i in kernel.constexprs for i in range(len(self.names)))
        self.defaults = {name: p.default for name, p in kernel.signature.parameters.items()
                         if p.default is not inspect.Parameter.empty}

    def bind(self, args: tuple, kwargs: dict) -> tuple[list, tuple] | None:
        """(every parameter's value in signature order, the launch options) or None when the call does not
        name each parameter once (positional first, then by keyword, then defaults)."""
        values = list(args)
        for name in self.names[len(args):]:
            if name in kwargs:
                values.append(kwargs[name])
            elif name in self.defaults:
                values.append(self.defaults[name])
            else:
                return None
        if len(values) != len(self.names) or any(name in kwargs for name in self.names[:len(args)]):
            return None
        options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in self.known))
        return values, options


# per kernel: its signature and {key: compiled kernel}; kernels live as long as their modules
_SIGNATURES: dict[JITFunction, _Signature] = {}
_COMPILED: dict[JITFunction, dict[tuple, Any]] = {}


def run_kernel(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, through the compiled kernel cached for these arguments' key."""
    if interpreting() or not isinstance(kernel, JITFunction) or callable(grid):
        kernel[grid](*args, **kwargs)
        return
    sig = _SIGNATURES.get(kernel)
    if sig is None:
        sig = _SIGNATURES[kernel] = _Signature(kernel)
    bound = sig.bind(args, kwargs)
    try:
        if bound is None:
            raise _Unkeyable("arguments")
        values, options = bound
        # a constexpr's type too: constexpr 1 and True are different kernels, though equal in Python
        key = (torch.cuda.current_device(), options,
               tuple(("c", type(a), a) if c else arg_key(a) for a, c in zip(values, sig.constexpr)))
        hash(key)  # an unhashable constexpr value: no key
    except (_Unkeyable, TypeError):
        kernel[grid](*args, **kwargs)
        return
    cache = _COMPILED.setdefault(kernel, {})
    compiled = cache.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, **kwargs)  # JITFunction.run returns the compiled kernel it launched
        if compiled is not None and hasattr(compiled, "function"):
            cache[key] = compiled
        return
    compiled[tuple(grid) + (1,) * (3 - len(grid))](*values)  # CompiledKernel takes all three grid dims
