"""Gluon TMA descriptors built on every call's host path, with only the checks these tiles need.

``TensorDescriptor``'s own constructor re-derives, for every descriptor of every call, what the launchers here
fix once (the rank, the block shape's powers of two, the dtype's width from its name, the layout's class): about
1.4 µs of Python a descriptor, 13 descriptors a fwd_bwd call.  ``tma_descriptor`` checks only what changes from
call to call and would fault the TMA unit if wrong (a base off a 16-byte boundary, a row stride that is not a
multiple of 16 bytes, an empty extent) and builds the descriptor directly when they hold; otherwise it goes
through the constructor, whose assertion says what is wrong.
"""
from __future__ import annotations

from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


def tma_descriptor(base, shape: list, strides: list, block_shape: list, layout) -> TensorDescriptor:
    """``TensorDescriptor(base, shape, strides, block_shape, layout)`` for a contiguous last dimension
    (``strides[-1] == 1``) and a block shape the caller fixed; see the module docstring."""
    width = base.element_size()
    ok = base.data_ptr() % 16 == 0 and strides[-1] == 1 and min(shape) > 0
    for stride in strides[:-1]:  # a loop, not any(): a generator costs more than these one or two strides
        ok = ok and stride * width % 16 == 0
    if not ok:
        return TensorDescriptor(base, shape, strides, block_shape, layout)
    d = object.__new__(TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.layout, d.padding = base, shape, strides, block_shape, layout, "zero"
    return d
