"""How ``flash_attn_v2`` and ``flash_attn_varlen`` run their kernels: checks, tile path, one
configuration per kernel, autograd, and the plan that lets a repeated call skip all of that.

A call's inputs decide its plan (``_Plan``): the checked options and window, the layout of its
sequences, and, on its first forward and backward, each kernel's configuration (pinned, fixed or
tuned), prepared as a launch that takes only the call's tensors (``_prepared.PreparedLaunch``), with
the label the caller's ``launch_log`` gets.  A dense call's plan is kept for the next call with the
same metadata (``plans.key``: shapes, strides, dtypes, devices, alignment, causal, scale, window,
options): such a call then allocates its outputs, builds its descriptors and enqueues its kernels,
and none of the checks and decisions run again.  A packed batch's program tables come from the values of its offsets, so its plan serves
one call.  Dense (B, H, N, D) and packed (total, H, D) batches run the same kernels (``_layout``
says which, with a packed batch's program tables).  The forward and backward are bound into a
``torch.autograd.Function``; the backward gets the forward's plan and log.
"""
from __future__ import annotations

from typing import Callable, MutableMapping, NamedTuple

import torch
import triton

from .._autograd import attention_function
from .._prepared import PreparedLaunch
from .._schedule import SequenceBlocks
from .._validate import (NO_WINDOW, PackedBatch, check_flag, check_inputs, check_launch_log, check_scale, check_window,
                         device_capability, interpreting, sm_count)
from . import plans, sm90, sm90_bwd
from .kernels import bwd_preprocess_kernel
from .options import FA2Options
from .spaces import INTERPRET_CONFIG, INTERPRET_PREPROCESS_BLOCK_M, PREPROCESS_BLOCK_M
from .tuning import (BOTH, PTR_ONLY, TMA_ONLY, TUNERS, fwd_persistent, gluon_tile_reason, head_dim_class, is_gluon,
                     is_ws, launch_label, to_config, ws_refusals)

LN2 = 0.6931471805599453


class _Layout(NamedTuple):
    """Where one call's sequences lie: a dense (B, H, N, D) batch or a packed (total, H, D) one."""
    packed: bool
    n_q: int  # the sequence length, or a bound of the longest packed sequence (tuning buckets, windows)
    n_kv: int
    extents: tuple[int, int]  # N_Q, N_KV as the kernels take them: n_q, n_kv (dense), total_q, total_k (packed)
    window: tuple[int, int]  # WIN_LEFT, WIN_RIGHT (``_window_args``)
    stat_shape: tuple  # of the LSE and Delta: (B, H, Nq) dense, (H, total_q) packed
    q_grid: Callable  # config -> grid of the forward and dQ kernels
    k_grid: Callable  # config -> grid of the dK/dV kernel
    tables: tuple  # CU_Q, CU_K and the query / key program tables (all None when dense)


class _Plan:
    """What a call's inputs decide (module docstring): its options, window and layout, and once run, its forward
    ``(run(q, k, v) -> (o, lse), labels)`` and its backwards by dO's layout (``_grad_key``:
    ``(run(q, k, v, o, lse, do) -> (dq, dk, dv), labels)``)."""
    __slots__ = ("options", "window", "layout", "forward", "backward")

    def __init__(self, options: FA2Options, window: tuple[int, int], layout: _Layout):
        self.options = options
        self.window = window  # (left, right) reaches, causal folded in (right 0), -1 unbounded
        self.layout = layout  # a packed batch's program tables serve the forward and backward
        self.forward = None
        self.backward = {}


class _Call(NamedTuple):
    """What one call hands to its forward and, through autograd, to its backward."""
    plan: _Plan
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
               and device_capability(tensors[0].device.index)[0] >= 9
               and all(_aligned16(t) for t in tensors))
    if path == "tma" and not capable:
        raise ValueError("flash_attn_v2: options.path='tma' needs a GPU of capability >= 9 and tensors with "
                         "16-byte aligned base addresses and strides; these inputs allow only the pointer path")
    return TMA_ONLY if path == "tma" else (BOTH if capable else PTR_ONLY)


def _use_tma_allocator(tma_ok: int) -> None:
    if tma_ok != PTR_ONLY and not interpreting():
        triton.set_allocator(_tma_allocator)  # device-side descriptors need a global scratch allocator


def kernel_meta(head_dim: int, causal: bool, ieee: bool, group_programs: int, window: bool = False,
                varlen: bool = False) -> dict:
    """The constexprs every FA2 kernel takes, as the launcher passes them (the tools compile these).

    GROUP_PROGRAMS orders programs whose work differs: causal ones, and those of a packed batch."""
    return dict(HEAD_DIM=head_dim, BLOCK_D=max(16, _next_pow2(head_dim)), CAUSAL=bool(causal), IEEE=bool(ieee),
                GROUP_PROGRAMS=group_programs if (causal or varlen) else 0, WINDOW=bool(window), VARLEN=bool(varlen))


def _sm90_refusal(q, k, v, causal: bool, window: bool, tma_ok: int, options: FA2Options, packed: bool) -> str | None:
    """Why the Gluon Hopper forward may not be offered for these inputs (None: it may)."""
    if not options.sm90_forward:
        return "options.sm90_forward is False"
    if tma_ok == PTR_ONLY:
        return "the TMA path is not allowed"
    return sm90.unsupported_reason(q, k, v, causal, window, packed)


def _sm90_bwd_refusal(q, k, v, causal: bool, window: bool, tma_ok: int, options: FA2Options,
                      packed: bool) -> str | None:
    """Why the Gluon Hopper backward may not run these inputs (None: it may)."""
    if options.backward == "triton":
        return "options.backward is 'triton' (the deterministic path)"
    if tma_ok == PTR_ONLY:
        return "the TMA path is not allowed"
    if options.backward == "auto" and {"bwd_dkdv", "bwd_dq"} & set(options.configs):
        return "auto: a Triton backward configuration is pinned (options.configs)"
    # fwd_bwd on an H200, bf16, 16k tokens: the Gluon backward measured faster than the Triton one everywhere
    # it runs (D64: results/evidence/h200/gluon_bwd/; D128 with dQ split between the consumers:
    # results/evidence/h200/gluon_bwd_split_dq/; D256 on an H100: results/evidence/h100/gluon_bwd_d256/), so
    # "auto" runs it wherever it takes the inputs
    return sm90_bwd.unsupported_reason(q, k, v, causal, window, packed)


def _check_pinned(name: str, pinned: tuple, meta: dict, tma_ok: int, sm90_refusal: str | None) -> None:
    """A pinned warp-specialised or Gluon forward these inputs cannot run is a ValueError, not a launch."""
    where = f"flash_attn_v2: options.configs[{name!r}] = {pinned}"
    why_not_ws = (ws_refusals(tma_ok, meta["IEEE"], meta["CAUSAL"], meta["WINDOW"], meta["VARLEN"])
                  if is_ws(pinned) else [])
    if why_not_ws:
        raise ValueError(f"{where} needs warp specialisation, which this call does not allow: {'; '.join(why_not_ws)}")
    if is_gluon(pinned) and sm90_refusal is not None:
        raise ValueError(f"{where} is the Gluon Hopper forward, which cannot run these inputs: {sm90_refusal}")
    why_not_tile = gluon_tile_reason(pinned, meta) if is_gluon(pinned) else None
    if why_not_tile is not None:
        raise ValueError(f"{where} is the Gluon Hopper forward, which cannot run this configuration: {why_not_tile}")


def _prepare(name: str, grid_fn, args: tuple, meta: dict, tma_ok: int, options: FA2Options, sm90_refusal=None):
    """One kernel's configuration, pinned (options.configs), fixed (interpreter, or autotune off) or tuned (which
    times the candidates on ``args``), prepared: (its launch, taking the call's leading tensors, its log label)."""
    kernel = TUNERS[name]
    pinned = options.configs.get(name)
    if pinned is not None:
        _check_pinned(name, pinned, meta, tma_ok, sm90_refusal)
    if pinned is not None or interpreting() or not options.autotune:
        t = pinned or (INTERPRET_CONFIG[name] if interpreting() else kernel.space[head_dim_class(meta["HEAD_DIM"])][0])
        cfg = to_config(t, tma_ok != PTR_ONLY)
    else:
        cfg = kernel.tuner.choose(grid_fn, args, meta)
    label = launch_label(cfg, persistent=name == "fwd" and fwd_persistent(cfg, args, meta))
    return kernel.prepare(cfg, grid_fn, args, meta), label


def make_call(q, k, options: FA2Options, launch_log, window: tuple[int, int], packed: PackedBatch | None) -> _Call:
    """A call of validated inputs with a new plan (``packed`` None: dense)."""
    return _Call(_Plan(options, window, _layout(q, k, packed, window)), launch_log)


def _layout(q, k, packed: PackedBatch | None, window: tuple[int, int]) -> _Layout:
    H, Hkv = q.shape[1], k.shape[1]
    if packed is None:
        B, Nq, Nkv = q.shape[0], q.shape[2], k.shape[2]
        return _Layout(False, Nq, Nkv, (Nq, Nkv), _window_args(window, Nq, Nkv), (B, H, Nq),
                       lambda m: (triton.cdiv(Nq, m["BLOCK_M"]), B * H),
                       lambda m: (triton.cdiv(Nkv, m["BLOCK_N"]), B * Hkv), (None,) * 4)
    # no host lengths: max_seqlen_* bound the longest sequences (checked so with check_values), and no
    # sequence is longer than its packed tensor, which keeps the window bounds within int32
    total_q, total_k = q.shape[0], k.shape[0]
    n_q, n_kv = min(packed.max_seqlen_q, total_q), min(packed.max_seqlen_k, total_k)
    left, right = _window_args(window, n_q, n_kv)
    cu_q, cu_k = packed.cu_seqlens_q, packed.cu_seqlens_k
    q_blocks = SequenceBlocks(cu_q, cu_k, total_q, left, right, "BLOCK_M")
    k_blocks = SequenceBlocks(cu_k, cu_q, total_k, right, left, "BLOCK_N")
    return _Layout(True, n_q, n_kv, (total_q, total_k), (left, right), (H, total_q),
                   lambda m: (q_blocks.count(m), H), lambda m: (k_blocks.count(m), Hkv),
                   (cu_q, cu_k, q_blocks, k_blocks))


def _window_args(window: tuple[int, int], n_q: int, n_kv: int) -> tuple[int, int]:
    """WIN_LEFT, WIN_RIGHT: the reaches with an unbounded side (-1) as n_q + n_kv, which no index
    reaches (nor overflows int32 arithmetic in the kernels), and wider windows clipped to it."""
    unbounded = n_q + n_kv
    return tuple(unbounded if w < 0 else min(w, unbounded) for w in window)


def _rows(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, row) strides of a (B, H, N, D) tensor, or of a packed (total, H, D) one (batch 0)."""
    return (t.stride(0), t.stride(1), t.stride(2)) if t.dim() == 4 else (0, t.stride(1), t.stride(0))


def _stat_strides(t: torch.Tensor) -> tuple[int, int]:
    """(batch, head) strides of an LSE / Delta buffer: (B, H, Nq) dense, (H, total_q) packed."""
    return (t.stride(0), t.stride(1)) if t.dim() == 3 else (0, t.stride(0))


def _sizes(lay: _Layout, tma_ok: int) -> tuple:
    """N_Q, N_KV, WIN_LEFT, WIN_RIGHT, NQ_BUCKET, NKV_BUCKET, TMA_OK: the launch arguments after the heads."""
    return (*lay.extents, *lay.window, _next_pow2(lay.n_q), _next_pow2(lay.n_kv), tma_ok)


def _masking(window: tuple[int, int]) -> tuple[bool, bool]:
    """(CAUSAL, WINDOW) of a call's window (causal folded in by ``check_window``): right reach 0 is
    causal (a window (-1, 0) is the causal mask and runs as one); any other bounded reach is a window."""
    left, right = window
    return right == 0, left >= 0 or right > 0


def _outputs(q, lay: _Layout):
    return _empty(q.shape, q.dtype, q.device), _empty(lay.stat_shape, torch.float32, q.device)


def _forward(q, k, v, causal: bool, sm_scale: float, call: _Call):
    plan = call.plan
    if plan.forward is None:  # the first call with this plan: decide, prepare and run
        plan.forward, out = _first_forward(q, k, v, sm_scale, plan)
    else:
        out = plan.forward[0](q, k, v)
    if call.launch_log is not None:
        call.launch_log.update(plan.forward[1])
    return out


def _first_forward(q, k, v, sm_scale: float, plan: _Plan):
    """((run, labels), (o, lse)): the forward prepared for this plan's calls, and run on this one."""
    H, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    lay = plan.layout
    o, lse = _outputs(q, lay)
    tma_ok = _tma_ok(plan.options.path, q, k, v, o)
    _use_tma_allocator(tma_ok)
    causal, window = _masking(plan.window)  # the causal argument is folded into the window
    meta = kernel_meta(D, causal, q.dtype == torch.float32, plan.options.causal_group_programs, window, lay.packed)
    # every BLOCK_N (<= 128, a power of two) divides Nkv; packed sequences have lengths of their own
    meta["EVEN_KV"] = not lay.packed and lay.n_kv % 128 == 0
    refusal = _sm90_refusal(q, k, v, causal, window, tma_ok, plan.options, lay.packed)
    cu_q, cu_k, q_table, _ = lay.tables
    args = (q, k, v, o, lse, cu_q, cu_k, q_table, sm_scale, *_rows(q), *_rows(k), *_rows(v), *_rows(o),
            *_stat_strides(lse), H, H // Hkv) + _sizes(lay, tma_ok) + (int(refusal is None),)
    launch, label = _prepare("fwd", lay.q_grid, args, meta, tma_ok, plan.options, refusal)

    def run(q, k, v):
        o, lse = _outputs(q, lay)
        _use_tma_allocator(tma_ok)
        launch(q, k, v, o, lse)
        return o, lse

    launch(q, k, v, o, lse)
    return (run, {"fwd": label}), (o, lse)


def _grad_key(do: torch.Tensor) -> tuple:
    """What of dO a backward's launches are prepared for (its strides and alignment are launch arguments)."""
    return do.stride(), do.data_ptr() % 16, do.dtype


def _grad_buffers(q, k, v, lse, acc_shape: tuple | None, zero_acc: bool):
    """dQ, dK, dV, Delta and the Gluon backward's fp32 dQ accumulator of ``acc_shape`` (``sm90_bwd.accumulator_shape``),
    zeroed here where ``zero_acc`` (a chunk's: the chunks' conversions zero it again for the next; a whole one is
    zeroed by the preprocess, ``_first_backward`` decides); None: a placeholder never written (Delta, with strides 0
    at the launch)."""
    delta = _empty(lse.shape, torch.float32, q.device)
    if acc_shape is None:
        acc = delta
    else:
        acc = _empty(acc_shape, torch.float32, q.device)
        if zero_acc:
            acc.zero_()
    return (_empty(q.shape, q.dtype, q.device), _empty(k.shape, k.dtype, k.device), _empty(v.shape, v.dtype, v.device),
            delta, acc)


def _dq_chunk(q, k, options: FA2Options, packed: bool) -> int | None:
    """The (batch, kv head) pairs a launch of the dense Gluon backward runs (``FA2Options.dq_chunk_waves``,
    ``sm90_bwd.dq_chunk_pairs``); None: all in one launch (packed batches: one launch over the program table)."""
    if packed or options.dq_chunk_waves == 0:
        return None
    chunk = sm90_bwd.dq_chunk_pairs(tuple(q.shape), k.shape[1], k.shape[2], options.dq_chunk_waves,
                                    sm_count(q.device.index))
    return chunk if chunk < q.shape[0] * k.shape[1] else None


def _backward(q, k, v, o, lse, do, causal: bool, sm_scale: float, call: _Call):
    if do.is_neg():  # a lazily negated view (autograd hands on the caller's): the kernels read memory
        do = do.resolve_neg()
    if do.stride(-1) != 1:
        do = do.contiguous()
    plan = call.plan
    key = _grad_key(do)
    entry = plan.backward.get(key)
    if entry is None:  # the first backward of this plan with such a dO: decide, prepare and run
        entry, grads = _first_backward(q, k, v, o, lse, do, sm_scale, plan)
        plan.backward[key] = entry
    else:
        grads = entry[0](q, k, v, o, lse, do)
    if call.launch_log is not None:
        call.launch_log.update(entry[1])
    return grads


def _first_backward(q, k, v, o, lse, do, sm_scale: float, plan: _Plan):
    """((run, labels), (dq, dk, dv)): the backward prepared for this plan's calls with such a dO, run on this one."""
    H, D = q.shape[1], q.shape[-1]
    lay = plan.layout
    tma_ok = _tma_ok(plan.options.path, q, k, v, do)  # dq, dk, dv: contiguous, allocated by _grad_buffers
    _use_tma_allocator(tma_ok)
    causal, window = _masking(plan.window)  # the causal argument is folded into the window
    gluon = _sm90_bwd_refusal(q, k, v, causal, window, tma_ok, plan.options, lay.packed) is None
    chunk = _dq_chunk(q, k, plan.options, lay.packed) if gluon else None
    acc_shape = sm90_bwd.accumulator_shape(tuple(q.shape), k.shape[1], chunk) if gluon else None
    pre_zero = acc_shape == tuple(q.shape)  # a whole accumulator is zeroed with Delta, a chunk's when allocated
    zero_here = gluon and not pre_zero
    dq, dk, dv, delta, dq_acc = buffers = _grad_buffers(q, k, v, lse, acc_shape, zero_here)

    pre_m = INTERPRET_PREPROCESS_BLOCK_M if interpreting() else PREPROCESS_BLOCK_M
    rows = lay.stat_shape[-1]  # a packed batch is one batch entry of total_q rows
    # the placeholder accumulator's strides are 0: Triton specialises integer arguments, and its own would only
    # add compilations
    preprocess = PreparedLaunch(
        bwd_preprocess_kernel, (triton.cdiv(rows, pre_m), delta.numel() // rows),
        (*_rows(o), *_rows(do), *(_rows(dq_acc) if pre_zero else (0, 0, 0)), H, rows),
        dict(HEAD_DIM=D, BLOCK_D=max(16, _next_pow2(D)), BLOCK_M=pre_m, ZERO_DQ=pre_zero))
    labels = {"bwd_preprocess": f"BLOCK_M={pre_m},num_warps=4"}
    preprocess(o, do, delta, dq_acc)

    if gluon:
        gradients, label = _gluon_gradients(q, k, sm_scale, plan, causal, window, chunk)
        labels["bwd_dkdv"] = labels["bwd_dq"] = label
    else:
        gradients, triton_labels = _triton_gradients(q, k, v, do, lse, buffers, sm_scale, plan, tma_ok, causal,
                                                     window)
        labels.update(triton_labels)

    def run(q, k, v, o, lse, do):
        dq, dk, dv, delta, dq_acc = buffers = _grad_buffers(q, k, v, lse, acc_shape, zero_here)
        _use_tma_allocator(tma_ok)
        preprocess(o, do, delta, dq_acc)
        gradients(q, k, v, o, lse, do, *buffers)
        return dq, dk, dv

    gradients(q, k, v, o, lse, do, *buffers)
    return (run, labels), (dq, dk, dv)


def _gluon_gradients(q, k, sm_scale: float, plan: _Plan, causal: bool, window: bool, chunk: int | None):
    """(gradients(q, k, v, o, lse, do, dq, dk, dv, delta, dq_acc), label): the Gluon Hopper backward, prepared
    (dense, ``chunk`` pairs a launch: ``_dq_chunk``) or over this call's program table (packed)."""
    lay, group = plan.layout, plan.options.causal_group_programs
    window_left = lay.window[0] if window else -1
    descending = not lay.packed and sm90_bwd.descending_walk(q.shape[-1], q.shape[2], causal, window)
    label = sm90_bwd.config_label(q.shape[-1], window=window, chunk_pairs=chunk, descending=descending)
    if lay.packed:
        cu_q, cu_k, _, k_blocks = lay.tables
        table = k_blocks.table(sm90_bwd.block_n(q.shape[-1]))

        def packed(q, k, v, o, lse, do, dq, dk, dv, delta, dq_acc):
            sm90_bwd.backward_varlen(q, k, v, do, lse, delta, dq, dk, dv, cu_q, cu_k, table, causal, sm_scale, group,
                                     window_left=window_left, dq_acc=dq_acc)

        return packed, label
    run = sm90_bwd.prepare_backward(tuple(q.shape), k.shape[1], k.shape[2], causal, sm_scale, group,
                                    window_left=window_left, chunk_pairs=chunk)

    def dense(q, k, v, o, lse, do, dq, dk, dv, delta, dq_acc):
        run(q, k, v, do, lse, delta, dq, dk, dv, dq_acc)

    return dense, label


def _triton_gradients(q, k, v, do, lse, buffers, sm_scale: float, plan: _Plan, tma_ok: int, causal: bool,
                      window: bool):
    """(gradients(q, k, v, o, lse, do, dq, dk, dv, delta, dq_acc), labels): the Triton dK/dV and dQ kernels, each
    configuration chosen on this call's tensors and ``buffers`` (tuning launches the candidates into them)."""
    H, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    lay = plan.layout
    dq, dk, dv, delta, _ = buffers
    meta = kernel_meta(D, causal, q.dtype == torch.float32, plan.options.causal_group_programs, window, lay.packed)
    cu_q, cu_k, q_table, k_table = lay.tables
    sizes = _sizes(lay, tma_ok)
    dkdv_args = (q, k, v, do, dk, dv, lse, delta, cu_q, cu_k, k_table, sm_scale, *_rows(q), *_rows(k), *_rows(v),
                 *_rows(do), *_rows(dk), *_rows(dv), *_stat_strides(lse), H, Hkv, H // Hkv) + sizes
    dkdv, dkdv_label = _prepare("bwd_dkdv", lay.k_grid, dkdv_args, meta, tma_ok, plan.options)
    dq_args = (q, k, v, do, dq, lse, delta, cu_q, cu_k, q_table, sm_scale, *_rows(q), *_rows(k), *_rows(v),
               *_rows(do), *_rows(dq), *_stat_strides(lse), H, H // Hkv) + sizes
    dq_launch, dq_label = _prepare("bwd_dq", lay.q_grid, dq_args, meta, tma_ok, plan.options)

    def gradients(q, k, v, o, lse, do, dq, dk, dv, delta, dq_acc):
        dkdv(q, k, v, do, dk, dv, lse, delta)
        dq_launch(q, k, v, do, dq, lse, delta)

    return gradients, {"bwd_dkdv": dkdv_label, "bwd_dq": dq_label}


_FlashAttnV2Fn = attention_function("_FlashAttnV2Fn", _forward, _backward)


def call_settings(name: str, head_dim: int, sm_scale, options, launch_log) -> tuple[float, FA2Options]:
    """The checked softmax scale and options of a call (``name`` is the public function, for messages)."""
    options = FA2Options() if options is None else options
    if not isinstance(options, FA2Options):
        raise ValueError(f"{name}: options must be an FA2Options, got {type(options).__name__}")
    check_launch_log(launch_log, name)
    return check_scale(head_dim, sm_scale, name), options


def attention(q, k, v, causal: bool, scale: float, call: _Call):
    """(out, base-2 LSE) through autograd, for validated inputs and settings."""
    return _FlashAttnV2Fn.apply(q, k, v, bool(causal), scale, call)


def flash_attn_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, return_lse: bool = False, *, window: tuple[int, int] = NO_WINDOW,
                  options: FA2Options | None = None, launch_log: MutableMapping[str, str] | None = None):
    """FlashAttention-2 (Triton): softmax(sm_scale * q k^T + mask) v, SDPA layout, GQA/MQA, bottom-right
    causal, sliding windows.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nkv, D) with H a multiple of H_kv; D in {32, 64, 96, 128, 256};
    fp16, bf16 or fp32 (exact dots); any Nq and Nkv with Nq + Nkv <= 2**30 - 256 (int32 indices); B * H <= 65535
    (a grid axis); strided inputs with a contiguous last dimension (not lazily negated views).
    Returns (B, H, Nq, D) in q's dtype, or (out, lse) with ``return_lse=True``, lse being (B, H, Nq)
    float32 natural-log log-sum-exp of the scaled scores (-inf for rows with no visible key, whose
    output is 0).  Differentiable in q, k and v (the backward: ``options.backward``; the LSE is not
    differentiable).  ``sm_scale`` defaults to 1/sqrt(D) and must be a positive finite number (a normal float32
    with log2(e) folded in: 2**-126 to about 2.4e38).  ``causal`` and ``return_lse`` are True or False (0 and 1).

    window: FlashAttention's sliding window ``(left, right)``, ints >= -1: query i sees key j iff
        i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right, -1 leaving that side unbounded; with
        ``causal`` the right reach is 0.  Key blocks outside a query block's window are never visited,
        so the work scales with the window.  Rows that see no key output 0 (LSE -inf, zero gradients).
        Causal windows ``(left, 0)`` may run the Gluon Hopper forward, other windows the Triton one
        (the warp-specialised forward takes no window); ``(-1, 0)`` is the causal mask and runs as
        causal.
    options: an ``FA2Options`` (default: ``FA2Options()``: autotuned, tile path from the GPU and the
        inputs, Gluon Hopper forward offered where it runs).
    launch_log: a dict that the call fills with the configuration each kernel ran, by kernel:
        "fwd" on the forward, and "bwd_preprocess", "bwd_dkdv", "bwd_dq" when autograd runs the
        backward (entries are overwritten, never removed).

    Repeated calls: the checks and every choice of kernel and configuration are made once per call
    signature (shapes, strides, dtypes, devices, 16-byte alignment, causal, sm_scale, window, options) and
    kept for the calls that share it, which only allocate their outputs and enqueue their kernels.

    Not supported: dropout, attention bias or arbitrary masks, top-left causal alignment, KV cache /
    paged attention, fp8, other head dims, gradients with respect to the returned LSE (packed batches:
    ``flash_attn_varlen``).  Bad inputs or options raise ValueError.
    """
    return_lse = check_flag(return_lse, "return_lse", "flash_attn_v2")  # not in the key: checked every call
    key = plans.key(q, k, v, causal, sm_scale, window, options)
    kept = plans.get(key)
    if kept is None:
        check_inputs(q, k, v, "flash_attn_v2")
        causal = check_flag(causal, "causal", "flash_attn_v2")
        checked = check_window(window, causal, "flash_attn_v2")
        scale, options = call_settings("flash_attn_v2", q.shape[-1], sm_scale, options, launch_log)
        kept = make_call(q, k, options, None, checked, None).plan, scale
        plans.keep(key, kept)
    else:
        check_launch_log(launch_log, "flash_attn_v2")
    plan, scale = kept
    o, lse2 = attention(q, k, v, causal, scale, _Call(plan, launch_log))
    if return_lse:
        return o, lse2 * LN2
    return o
