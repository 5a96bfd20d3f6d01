"""``flash_attn_varlen``: FlashAttention-2 over a packed batch of sequences of different lengths.

The API of flash-attn's ``flash_attn_varlen_func``: the sequences of a batch are concatenated along
the token axis, q (total_q, H, D) and k, v (total_k, H_kv, D), and ``cu_seqlens_*`` hold where each
one starts.  The kernels are ``flash_attn_v2``'s, run with their ``VARLEN`` path: each program reads
its sequence's offsets and lengths, so no padding is computed or stored; the launch grid is sized
from shapes alone and its programs past the real blocks do nothing (``_schedule.SequenceBlocks``).
Masks, windows and GQA behave per sequence as ``flash_attn_v2``'s do per batch entry.

Not supported: returning the LSE, paged KV, dropout, attention bias or arbitrary masks, top-left causal
alignment, fp8; the warp-specialised Triton forward, the Gluon forward at D256 and with a right window
reach (the Triton forward runs those); bad offset values with ``check_values=False`` (undefined results,
see ``flash_attn_varlen``).
"""
from __future__ import annotations

from typing import MutableMapping

import torch

from .._validate import NO_WINDOW, check_flag, check_varlen_inputs, check_window
from .launch import attention, call_settings, make_call
from .options import FA2Options


def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
                      sm_scale: float | None = None, window: tuple[int, int] = NO_WINDOW, *,
                      check_values: bool = True, options: FA2Options | None = None,
                      launch_log: MutableMapping[str, str] | None = None) -> torch.Tensor:
    """FlashAttention-2 (Triton) over variable-length sequences packed into one batch.

    q: (total_q, H, D); k, v: (total_k, H_kv, D) with H a multiple of H_kv (GQA/MQA: query head h
    reads kv head h // (H / H_kv)); D in {32, 64, 96, 128, 256}; fp16, bf16 or fp32 (exact dots);
    a contiguous last dimension; total_q + total_k <= 2**30 - 256 (int32 indices).  Sequence b is rows
    [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of q and [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of k and v.

    cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) on q's device, starting at 0, non-decreasing, ending
        at total_q and total_k (a strided view is copied contiguous: the kernels read offset b at
        cu_seqlens + b).  A sequence may have no queries (nothing to compute) or no keys (its
        rows output 0).
    max_seqlen_q, max_seqlen_k: ints >= the longest query / key sequence (flash-attn's API).  They
        stand in for the real maxima on the host (tuning buckets, an unbounded window side taken as
        max_seqlen_q + max_seqlen_k, each capped at its packed length); the kernels use each
        sequence's own lengths.
    causal, window: as in ``flash_attn_v2``, per sequence with its own Nq_b and Nkv_b: query i of
        sequence b sees its key j iff i + (Nkv_b - Nq_b) - left <= j <= i + (Nkv_b - Nq_b) + right
        (bottom-right aligned within the sequence; -1 unbounded; causal caps right at 0).  Rows that
        see no key output 0 and get zero gradients.
    check_values: True (default) checks the values of the offsets on the host (start at 0,
        non-decreasing, last entry == total, max_seqlen_* >= the real maxima), one device-to-host
        synchronisation a call, a ValueError naming the argument otherwise; False skips it for offsets
        the caller has made or checked (tensor metadata is still checked: int32, 1-D, one length, q's
        device), and then nothing in the call waits for the device.  Unchecked values must be a valid
        ``cu_seqlens`` with max_seqlen_* >= every length, else the results are undefined: the kernels
        clamp each sequence's offsets into [0, total] with end >= start, so no program reads or writes
        outside q, k, v and the outputs, but a sequence may read other sequences' rows, output and
        gradient rows may be left unwritten (holding whatever the fresh buffer held; offsets whose
        blocks outnumber the grid's rows) or written by two programs (overlapping sequences), and a
        max_seqlen_* below a real length narrows an unbounded window side (rows then miss keys) and
        skews the tuning buckets.  No error is raised for such values.
    sm_scale, options, launch_log: as in ``flash_attn_v2``.  The Gluon Hopper forward runs packed batches
        (``sm90.forward_varlen``: Hopper, fp16/bf16, D 64 or 128, contiguous q, k, v, no right reach;
        offered to the tuner at D128 from max_seqlen_q >= 1024, or pinned); the warp-specialised
        forward does not; the Triton forward runs every packed call.

    Returns (total_q, H, D) in q's dtype, differentiable in q, k and v (``options.backward``: on Hopper the
    Gluon backward over the packed batch, ``sm90_bwd.backward_varlen``, else the Triton kernels).

    Host synchronisation: with ``check_values=True`` the one device-to-host copy of both offset tensors that
    validates them; nothing else. The program tables (one (sequence, block) row per program, longest first)
    are built on the device from the offsets by two Triton launches (``_schedule.SequenceBlocks``) that the
    host never waits for, with a row count known from shapes alone (total // block + batch; the rows past
    the real blocks are empty programs), so with ``check_values=False`` a call only queues work on the
    stream (a GPU test runs one under ``torch.cuda.set_sync_debug_mode("error")``), once the tuner has
    chosen for its tuning key (choosing times candidates, which waits).

    Not supported: dropout, attention bias or arbitrary masks, top-left causal alignment, KV cache /
    paged attention, fp8, other head dims, returning the LSE.  Bad inputs raise ValueError (bad offset
    values only with ``check_values=True``).
    """
    name = "flash_attn_varlen"
    packed = check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, name,
                                 check_values)
    causal = check_flag(causal, "causal", name)
    window = check_window(window, causal, name)
    scale, options = call_settings(name, q.shape[-1], sm_scale, options, launch_log)
    o, _ = attention(q, k, v, causal, scale, make_call(q, k, options, launch_log, window, packed))
    return o
