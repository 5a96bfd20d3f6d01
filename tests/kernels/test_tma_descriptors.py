"""``_descriptors.tma_descriptor``: the same descriptor as ``TensorDescriptor``'s constructor where the TMA can read
the tensor, and the constructor's refusal where it cannot (CPU: descriptors are plain host objects)."""
import dataclasses

import pytest
import torch
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from flashbench_kernels._descriptors import tma_descriptor
from flashbench_kernels.flash_attn_v2 import sm90


def _fields(d):
    return {f.name: getattr(d, f.name) for f in dataclasses.fields(TensorDescriptor)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 128, 64), (5, 4, 128)])
def test_the_same_descriptor_as_the_constructor(dtype, shape):
    t = torch.zeros(shape, dtype=dtype)
    D = shape[-1]
    args = (t, [t.numel() // D, D], [D, 1], [64, D], sm90._smem_layout(64, D, dtype))
    ours, theirs = tma_descriptor(*args), TensorDescriptor(*args)
    assert type(ours) is TensorDescriptor and _fields(ours) == _fields(theirs)


def test_a_one_dimensional_statistic():
    t = torch.zeros(4 * 256, dtype=torch.float32)
    layout = sm90._smem_layout(64, 64, torch.float32)
    assert _fields(tma_descriptor(t, [t.numel()], [1], [64], layout)) == _fields(
        TensorDescriptor(t, [t.numel()], [1], [64], layout))


def _misaligned_base():
    buf = torch.zeros(4096 + 8, dtype=torch.float16)
    t = buf[1:4097].view(64, 64)  # 2 bytes past a 16-byte boundary
    return t, [64, 64], [64, 1]


def _odd_row_stride():
    t = torch.zeros(64, 36, dtype=torch.float16)[:, :32]  # 72-byte rows: not a multiple of 16
    return t, [64, 32], [36, 1]


def _empty():
    t = torch.zeros(0, 64, dtype=torch.float16)
    return t, [0, 64], [64, 1]


@pytest.mark.parametrize("make, message", [(_misaligned_base, "16-byte aligned"),
                                           (_odd_row_stride, "strides must be 16-byte aligned"),
                                           (_empty, "shape must be positive")])
def test_what_the_tma_cannot_read_is_refused_by_the_constructor(make, message):
    t, shape, strides = make()
    if make is _misaligned_base:
        assert t.data_ptr() % 16 == 2  # PyTorch's CPU allocations start on 64-byte boundaries
    with pytest.raises(AssertionError, match=message):
        tma_descriptor(t, shape, strides, [16, shape[-1]], sm90._smem_layout(16, shape[-1], t.dtype))
