"""Inputs for a case and the zero-argument call that the timer runs, per mode.

A backend's attention function takes the workload's tensors (:data:`WORKLOAD_ARGS`), the layouts
of FlashAttention's APIs (``flash_attn_func``, ``flash_attn_varlen_func``, ``flash_attn_with_kvcache``):

- dense: ``fn(q, k, v)``, q (B, H, Nq, D), k and v (B, H_kv, Nkv, D); returns (B, H, Nq, D);
- varlen: ``fn(q, k, v, cu_seqlens)``, the sequences packed: q (T, H, D), k and v (T, H_kv, D),
  ``cu_seqlens`` (B + 1,) int32 offsets; returns (T, H, D);
- decode: ``fn(q, k_cache, v_cache, cache_seqlens, block_table)``, q (B, Nq, H, D); a contiguous
  cache (B, capacity, H_kv, D) with ``block_table`` None, or a pool of pages
  (num_pages, page_size, H_kv, D) with ``block_table`` (B, pages per sequence) int32 mapping a
  sequence's logical page to its page in the pool (shuffled, as a serving engine leaves them);
  ``cache_seqlens`` (B,) int32; returns (B, Nq, H, D).

Modes:

- fwd: ``fn(*args)`` on inputs without autograd;
- bwd: the forward runs once outside the call; the call is the backward alone
  (``torch.autograd.grad`` with ``retain_graph``);
- fwd_bwd: forward then backward in one call.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.case import Case

WORKLOAD_ARGS = {
    "dense": ("q", "k", "v"),
    "varlen": ("q", "k", "v", "cu_seqlens"),
    "decode": ("q", "k_cache", "v_cache", "cache_seqlens", "block_table"),
}


@dataclass
class Inputs:
    args: tuple                 # what the attention function receives, in WORKLOAD_ARGS order
    do: torch.Tensor | None     # upstream gradient, for modes with a backward

    @property
    def q(self) -> torch.Tensor:
        return self.args[0]

    @property
    def k(self) -> torch.Tensor:
        return self.args[1]

    @property
    def v(self) -> torch.Tensor:
        return self.args[2]

    def differentiable(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tensors a backward differentiates: q, k, v."""
        return self.args[0], self.args[1], self.args[2]


def case_seed(case: Case, seed: int) -> int:
    """A seed per case, so every backend of one case sees the same inputs, and cases differ."""
    digest = hashlib.sha256(f"{seed}:{case.label()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def offsets(lengths) -> list[int]:
    """[0, l0, l0 + l1, ...]: where each packed sequence starts (and the total at the end)."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return out


def pages_of(case: Case) -> list[int]:
    """Pages each sequence of a paged decode case uses."""
    return [-(-n // case.page_size) for n in case.sequence_lengths()[1]]


def make_inputs(case: Case, device: str, seed: int) -> Inputs:
    """Fresh standard-normal inputs (never zeros), reproducible from the case and the seed."""
    g = torch.Generator(device=device).manual_seed(case_seed(case, seed))
    dt = case.torch_dtype()

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    H, Hkv, D = case.heads, case.kv_heads, case.head_dim
    q_lens, kv_lens = case.sequence_lengths()
    if case.workload == "decode":
        q = randn(case.batch, case.seq_len_q, H, D)
        lens = torch.tensor(kv_lens, dtype=torch.int32, device=device)
        if not case.is_paged:
            k, v = randn(case.batch, case.seq_len_kv, Hkv, D), randn(case.batch, case.seq_len_kv, Hkv, D)
            return Inputs((q, k, v, lens, None), None)
        used = pages_of(case)
        k, v = randn(sum(used), case.page_size, Hkv, D), randn(sum(used), case.page_size, Hkv, D)
        pool = torch.randperm(sum(used), generator=g, device=device).to(torch.int32)
        table = torch.zeros(case.batch, -(-case.seq_len_kv // case.page_size), dtype=torch.int32, device=device)
        starts = offsets(used)
        for b, n in enumerate(used):
            table[b, :n] = pool[starts[b]:starts[b] + n]
        return Inputs((q, k, v, lens, table), None)
    if case.workload == "varlen":
        T = sum(q_lens)
        q, k, v = randn(T, H, D), randn(T, Hkv, D), randn(T, Hkv, D)
        do = randn(T, H, D) if case.has_backward else None
        extra = (torch.tensor(offsets(q_lens), dtype=torch.int32, device=device),)
    else:
        q = randn(case.batch, H, case.seq_len_q, D)
        k = randn(case.batch, Hkv, case.seq_len_kv, D)
        v = randn(case.batch, Hkv, case.seq_len_kv, D)
        do = randn(case.batch, H, case.seq_len_q, D) if case.has_backward else None
        extra = ()
    if case.has_backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    return Inputs((q, k, v, *extra), do)


# --- per-sequence views: how the reference and the naive backend see a non-dense batch ---------

@dataclass
class Sequence:
    """One sequence of a batch as dense (1, heads, length, D) tensors (views where the layout allows)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None = None


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    """(length, heads, D) -> (1, heads, length, D), a view."""
    return t.transpose(0, 1).unsqueeze(0)


def sequences(case: Case, args: tuple, do: torch.Tensor | None = None) -> list[Sequence]:
    """The sequences of a varlen or decode batch (``args`` in :data:`WORKLOAD_ARGS` order), each as a
    dense problem: a varlen sequence against itself, a decode sequence's new tokens against the first
    ``cache_seqlens[b]`` keys of its cache (gathered from its pages when paged)."""
    q_lens, kv_lens = case.sequence_lengths()
    if case.workload == "varlen":
        q, k, v = args[:3]
        starts = offsets(q_lens)
        return [Sequence(_bhsd(q[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]), None if do is None else _bhsd(do[a:b]))
                for a, b in zip(starts, starts[1:])]
    if case.workload != "decode":
        raise ValueError(f"sequences: a {case.workload} batch is already dense")
    q, k_cache, v_cache, _, table = args
    out = []
    for b, n in enumerate(kv_lens):
        if table is None:
            k, v = k_cache[b, :n], v_cache[b, :n]
        else:
            pages = table[b, :-(-n // case.page_size)].long()
            k = k_cache.index_select(0, pages).flatten(0, 1)[:n]
            v = v_cache.index_select(0, pages).flatten(0, 1)[:n]
        out.append(Sequence(_bhsd(q[b]), _bhsd(k), _bhsd(v)))
    return out


def assemble(case: Case, per_sequence: list[torch.Tensor]) -> torch.Tensor:
    """Per-sequence (1, heads, length, D) results -> the workload's layout: packed (T, heads, D) for
    varlen, (B, Nq, heads, D) for decode."""
    rows = [t[0].transpose(0, 1) for t in per_sequence]
    return torch.cat(rows) if case.workload == "varlen" else torch.stack(rows)


# --- calls ---------------------------------------------------------------------------------

def checked_output(o, q: torch.Tensor) -> torch.Tensor:
    """``o`` if it is what the contract asks (:mod:`flashbench.backends.base`): one tensor with q's shape,
    dtype and device; else :class:`~flashbench.backends.base.BackendContractError` saying what came back.
    Without it, a None became "'NoneType' object has no attribute 'to'", a complex output passed the
    check (its imaginary part dropped), and a float64 output for float32 inputs was an ``ok`` row."""
    from ..backends.base import BackendContractError

    if not isinstance(o, torch.Tensor):
        raise BackendContractError(f"the attention function returned {type(o).__name__}, not a tensor "
                                   f"(expected o with q's shape {tuple(q.shape)})")
    wrong = [f"{what} {got}, expected {want}" for what, got, want in (
        ("shape", tuple(o.shape), tuple(q.shape)), ("dtype", o.dtype, q.dtype), ("device", o.device, q.device))
        if got != want]
    if wrong:
        raise BackendContractError(f"the attention function returned o with {'; '.join(wrong)} (q's)")
    return o


def outputs_of(fn: Callable, inputs: Inputs, case: Case) -> dict[str, torch.Tensor]:
    """Run once and return what correctness compares: o, and dq, dk, dv with a backward. The output must
    be one tensor shaped like q (:func:`checked_output`)."""
    if not case.has_backward:
        with torch.no_grad():
            return {"o": checked_output(fn(*inputs.args), inputs.q)}
    o = checked_output(fn(*inputs.args), inputs.q)
    if not o.requires_grad:
        from ..backends.base import BackendContractError

        raise BackendContractError("the attention function returned o without a graph to q, k, v (detached, or computed "
                                   "with grad mode off): the backward cannot run")
    dq, dk, dv = torch.autograd.grad(o, inputs.differentiable(), inputs.do)
    return {"o": o.detach(), "dq": dq, "dk": dk, "dv": dv}


def bind(fn: Callable, inputs: Inputs, case: Case) -> Callable[[], object]:
    """The zero-argument call to time for this mode."""
    args, do, grads_of = inputs.args, inputs.do, inputs.differentiable()
    if case.mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(*args)
        return call
    if case.mode == "fwd_bwd":
        def call():
            o = fn(*args)
            return torch.autograd.grad(o, grads_of, do)
        return call
    o = fn(*args)  # bwd: the forward is outside the timed call

    def call():
        return torch.autograd.grad(o, grads_of, do, retain_graph=True)
    return call
