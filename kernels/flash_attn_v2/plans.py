"""Which ``flash_attn_v2`` calls share a plan: the key of a dense call, and the plans kept under it.

A plan (``launch._Plan``, with the call's softmax scale) is decided from a call's metadata only, so a
later call with the same key repeats it without its checks or decisions (kernels/DESIGN.md, "Plans").
At most ``MAX_PLANS`` are kept: a process that calls with ever new shapes forgets them all at once
rather than grow.
"""
from __future__ import annotations

import torch

from .._validate import interpreting
from .options import FA2Options

MAX_PLANS = 512
_PLANS: dict = {}  # key -> (plan, softmax scale)


def key(q, k, v, causal, sm_scale, window, options) -> tuple | None:
    """Everything of a dense call that its plan is decided from; None (no plan kept) unless the arguments are of
    the plain types a key compares exactly (the checks then run every call, and name what is wrong)."""
    # exact types: True == 1 and (True, 0) == (1, 0), so a bool where an int belongs would find an int's plan
    if not (type(q) is type(k) is type(v) is torch.Tensor and type(causal) is bool and type(window) is tuple
            and all(type(w) is int for w in window) and (sm_scale is None or type(sm_scale) in (float, int))
            and (options is None or type(options) is FA2Options)):
        return None
    # a lazily negated view has the metadata of its memory but not its values: it never finds a plan (the checks
    # refuse it)
    if q.is_neg() or k.is_neg() or v.is_neg():
        return None
    # the alignment and strides decide the tile path (launch._tma_ok) and are launch arguments; the interpreter
    # and the GPU's capability decide the kernels (a device is one GPU)
    try:
        return (q.shape, q.stride(), q.dtype, q.device, q.data_ptr() % 16, k.shape, k.stride(), k.dtype, k.device,
                k.data_ptr() % 16, v.shape, v.stride(), v.dtype, v.device, v.data_ptr() % 16, causal, sm_scale,
                window, options, interpreting())
    except RuntimeError:  # no strides or no storage (a sparse or fake tensor): the checks say what they make of it
        return None


def get(key: tuple | None):
    """The (plan, scale) kept under ``key``, or None."""
    return None if key is None else _PLANS.get(key)


def keep(key: tuple | None, kept: tuple) -> None:
    """Keep (plan, scale) under ``key`` (a None key keeps nothing)."""
    if key is None:
        return
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = kept


def kept() -> list:
    """The (plan, scale) pairs kept now."""
    return list(_PLANS.values())


def forget() -> None:
    """Drop every kept plan (tests that replace a kernel or a decision of the launcher call this first)."""
    _PLANS.clear()
