"""How ``flash_attn_v2`` runs its kernels: checks, tile path, one configuration per kernel, autograd.

Each call validates its inputs and options, chooses the tile paths the tensors allow (``TMA_OK``),
runs every kernel with a pinned, fixed or tuned configuration (``_launch``) and records what ran in
the caller's ``launch_log``.  The forward and backward are bound into a ``torch.autograd.Function``;
the backward gets the forward's options and log.
"""
from __future__ import annotations

import math
from typing import MutableMapping, NamedTuple

import torch
import triton

from .._autograd import attention_function
from .._validate import check_inputs, check_launch_log, default_scale, interpreting
from . import sm90
from .kernels import bwd_preprocess_kernel
from .options import FA2Options
from .spaces import INTERPRET_CONFIG, INTERPRET_PREPROCESS_BLOCK_M, PREPROCESS_BLOCK_M
from .tuning import (BOTH, PTR_ONLY, TMA_ONLY, TUNERS, head_dim_class, is_gluon, is_ws, launch_label, to_config,
                     ws_refusals)

LN2 = 0.6931471805599453


class _Call(NamedTuple):
    """What one call hands to its forward and, through autograd, to its backward."""
    options: FA2Options
    launch_log: MutableMapping[str, str] | None


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _tma_allocator(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _aligned16(t: torch.Tensor) -> bool:
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1])


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _tma_ok(path: str, *tensors: torch.Tensor) -> int:
    """TMA_OK: the tile paths these tensors allow under ``path``.

    TMA needs capability >= 9 and 16-byte aligned base addresses and strides.  The CPU interpreter
    emulates tensor descriptors, so ``path="tma"`` runs the TMA code there too (the tests use that).
    """
    if path == "ptr":
        return PTR_ONLY
    if path == "tma" and interpreting():
        return TMA_ONLY
    capable = (not interpreting() and tensors[0].is_cuda
               and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9
               and all(_aligned16(t) for t in tensors))
    if path == "tma" and not capable:
        raise ValueError("flash_attn_v2: options.path='tma' needs a GPU of capability >= 9 and tensors with "
                         "16-byte aligned base addresses and strides; these inputs allow only the pointer path")
    return TMA_ONLY if path == "tma" else (BOTH if capable else PTR_ONLY)


def _use_tma_allocator(tma_ok: int) -> None:
    if tma_ok != PTR_ONLY and not interpreting():
        triton.set_allocator(_tma_allocator)  # device-side descriptors need a global scratch allocator


def kernel_meta(head_dim: int, causal: bool, ieee: bool, group_programs: int) -> dict:
    """The constexprs every FA2 kernel takes, as the launcher passes them (the tools compile these)."""
    return dict(HEAD_DIM=head_dim, BLOCK_D=max(16, _next_pow2(head_dim)), CAUSAL=bool(causal), IEEE=bool(ieee),
                GROUP_PROGRAMS=group_programs if causal else 0)


def _sm90_ok(q, k, v, causal: bool, tma_ok: int, options: FA2Options) -> int:
    """SM90_OK, a forward tuning key: 1 when the Gluon Hopper forward may be offered for these inputs."""
    return int(options.sm90_forward and tma_ok != PTR_ONLY and sm90.unsupported_reason(q, k, v, causal) is None)


def _check_pinned(name: str, pinned: tuple, args: tuple, meta: dict, tma_ok: int, options: FA2Options) -> None:
    """A pinned warp-specialised or Gluon forward these inputs cannot run is a ValueError, not a launch."""
    where = f"flash_attn_v2: options.configs[{name!r}] = {pinned}"
    why_not_ws = ws_refusals(tma_ok, meta["IEEE"], meta["CAUSAL"]) if is_ws(pinned) else []
    if why_not_ws:
        raise ValueError(f"{where} needs warp specialisation, which this call does not allow: {'; '.join(why_not_ws)}")
    if is_gluon(pinned):
        a = dict(zip(TUNERS[name][0].kernel.arg_names, args))
        if not a["SM90_OK"]:
            why = ("options.sm90_forward is False" if not options.sm90_forward else
                   "the TMA path is not allowed" if tma_ok == PTR_ONLY else
                   sm90.unsupported_reason(a["Q"], a["K"], a["V"], meta["CAUSAL"]))
            raise ValueError(f"{where} is the Gluon Hopper forward, which cannot run these inputs: {why}")


def _launch(name: str, grid_fn, args: tuple, meta: dict, tma_ok: int, call: _Call) -> None:
    """Run one kernel: pinned (options.configs), fixed (interpreter, or autotune off) or tuned."""
    tuner, space = TUNERS[name]
    pinned = call.options.configs.get(name)
    if pinned is not None:
        _check_pinned(name, pinned, args, meta, tma_ok, call.options)
    if pinned is not None or interpreting() or not call.options.autotune:
        t = pinned or (INTERPRET_CONFIG[name] if interpreting() else space[head_dim_class(meta["HEAD_DIM"])][0])
        cfg = to_config(t, tma_ok != PTR_ONLY)
        tuner.launch(cfg, grid_fn, args, meta)
    else:
        cfg = tuner.run(grid_fn, args, meta)
    if call.launch_log is not None:
        call.launch_log[name] = launch_label(cfg)


def _forward(q, k, v, causal: bool, sm_scale: float, call: _Call):
    B, H, Hkv, Nq, Nkv, D = check_inputs(q, k, v, "flash_attn_v2")
    o = _empty((B, H, Nq, D), q.dtype, q.device)
    lse = _empty((B, H, Nq), torch.float32, q.device)
    tma_ok = _tma_ok(call.options.path, q, k, v, o)
    _use_tma_allocator(tma_ok)
    meta = kernel_meta(D, causal, q.dtype == torch.float32, call.options.causal_group_programs)
    meta["EVEN_KV"] = Nkv % 128 == 0  # every BLOCK_N (<= 128, a power of two) divides Nkv
    args = (q, k, v, o, lse, sm_scale,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            H, H // Hkv, Nq, Nkv, _next_pow2(Nq), _next_pow2(Nkv), tma_ok,
            _sm90_ok(q, k, v, causal, tma_ok, call.options))
    _launch("fwd", lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * H), args, meta, tma_ok, call)
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, sm_scale: float, call: _Call):
    B, H, Nq, D = q.shape
    Hkv, Nkv = k.shape[1], k.shape[2]
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    delta = _empty((B, H, Nq), torch.float32, q.device)

    pre_m = INTERPRET_PREPROCESS_BLOCK_M if interpreting() else PREPROCESS_BLOCK_M
    bwd_preprocess_kernel[(triton.cdiv(Nq, pre_m), B * H)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        H, Nq, HEAD_DIM=D, BLOCK_D=max(16, _next_pow2(D)), BLOCK_M=pre_m)
    if call.launch_log is not None:
        call.launch_log["bwd_preprocess"] = f"BLOCK_M={pre_m},num_warps=4"

    tma_ok = _tma_ok(call.options.path, q, k, v, do, dq, dk, dv)
    _use_tma_allocator(tma_ok)
    meta = kernel_meta(D, causal, q.dtype == torch.float32, call.options.causal_group_programs)
    buckets = (_next_pow2(Nq), _next_pow2(Nkv), tma_ok)
    dkdv_args = (q, k, v, do, dk, dv, lse, delta, sm_scale,
                 q.stride(0), q.stride(1), q.stride(2),
                 k.stride(0), k.stride(1), k.stride(2),
                 v.stride(0), v.stride(1), v.stride(2),
                 do.stride(0), do.stride(1), do.stride(2),
                 dk.stride(0), dk.stride(1), dk.stride(2),
                 dv.stride(0), dv.stride(1), dv.stride(2),
                 H, Hkv, H // Hkv, Nq, Nkv) + buckets
    _launch("bwd_dkdv", lambda m: (triton.cdiv(Nkv, m["BLOCK_N"]), B * Hkv), dkdv_args, meta, tma_ok, call)
    dq_args = (q, k, v, do, dq, lse, delta, sm_scale,
               q.stride(0), q.stride(1), q.stride(2),
               k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2),
               do.stride(0), do.stride(1), do.stride(2),
               dq.stride(0), dq.stride(1), dq.stride(2),
               H, H // Hkv, Nq, Nkv) + buckets
    _launch("bwd_dq", lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * H), dq_args, meta, tma_ok, call)
    return dq, dk, dv


_FlashAttnV2Fn = attention_function("_FlashAttnV2Fn", _forward, _backward)


def flash_attn_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, return_lse: bool = False, *,
                  options: FA2Options | None = None, launch_log: MutableMapping[str, str] | None = None):
    """FlashAttention-2 (Triton): softmax(sm_scale * q k^T) v, SDPA layout, GQA/MQA, bottom-right causal.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nkv, D) with H a multiple of H_kv; D in {32, 64, 96, 128, 256};
    fp16, bf16 or fp32 (exact dots); any Nq and Nkv; strided inputs with a contiguous last dimension.
    Returns (B, H, Nq, D) in q's dtype, or (out, lse) with ``return_lse=True``, lse being (B, H, Nq)
    float32 natural-log log-sum-exp of the scaled scores (-inf for rows with no visible key, whose
    output is 0).  Differentiable in q, k and v (the backward runs the Triton kernels; the LSE is not
    differentiable).  ``sm_scale`` defaults to 1/sqrt(D) and must be a positive finite number.

    options: an ``FA2Options`` (default: ``FA2Options()``: autotuned, tile path from the GPU and the
        inputs, Gluon Hopper forward offered where it runs).
    launch_log: a dict that the call fills with the configuration each kernel ran, by kernel:
        "fwd" on the forward, and "bwd_preprocess", "bwd_dkdv", "bwd_dq" when autograd runs the
        backward (entries are overwritten, never removed).

    Not supported: dropout, attention bias / arbitrary or sliding-window masks, top-left causal
    alignment, variable-length (packed) batches, KV cache / paged attention, fp8, other head dims,
    gradients with respect to the returned LSE.  Bad inputs or options raise ValueError.
    """
    check_inputs(q, k, v, "flash_attn_v2")
    options = FA2Options() if options is None else options
    if not isinstance(options, FA2Options):
        raise ValueError(f"flash_attn_v2: options must be an FA2Options, got {type(options).__name__}")
    check_launch_log(launch_log, "flash_attn_v2")
    D = q.shape[-1]
    scale = default_scale(D, sm_scale)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"flash_attn_v2: sm_scale must be a positive finite number, got {sm_scale}")
    o, lse2 = _FlashAttnV2Fn.apply(q, k, v, bool(causal), scale, _Call(options, launch_log))
    if return_lse:
        return o, lse2 * LN2
    return o
