"""Asking PyTorch whether it takes a case, on a miniature of it, before the real inputs exist.

PyTorch decides at call time which kernel runs a call (and whether any does); its reasons go to
warnings and, for nested tensors, to its logger. :func:`probe` runs a backend's attention function
on the inputs of :func:`miniature` (the same workload, layout, head grouping, head dim, dtype,
causal form, window kind and mode, a few short sequences) and turns a refusal into
:class:`Unsupported` carrying PyTorch's own explanation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings

from ..attention.inputs import make_inputs
from ..model.case import Case
from .base import Unsupported
from .calling import outputs_of

# PyTorch explains refused nested-tensor SDPA calls through this logger, not through warnings
_TORCH_LOGGERS = ("torch.nested._internal.sdpa",)
_REASON_CHARS = 400


def _short(n: int, cap: int = 8) -> int:
    return n if n < 0 else min(n, cap)


def miniature(case: Case) -> Case:
    """A small case that PyTorch dispatches like ``case``: lengths keep their order (Nq < Nkv stays
    so), varied lengths stay varied, windows stay windows."""
    ratio = case.heads // case.kv_heads
    h_kv = 1 if case.kv_heads == 1 else 2
    small = dict(heads=ratio * h_kv, kv_heads=h_kv, window_left=_short(case.window_left),
                 window_right=_short(case.window_right))
    if case.workload == "varlen":
        if case.lengths:
            small.update(lengths="list(40,72)", total_tokens=112)
            return dataclasses.replace(case, batch=2, seq_len_q=72, seq_len_kv=72, **small)
        return dataclasses.replace(case, batch=2, seq_len_q=64, seq_len_kv=64, **small)
    if case.workload == "decode":
        lengths = "list(72,96)" if case.lengths else ""
        return dataclasses.replace(case, batch=2, seq_len_kv=96, lengths=lengths, **small)
    n_q, n_kv = case.seq_len_q, case.seq_len_kv
    q, kv = (64, 64) if n_q == n_kv else ((64, 96) if n_q < n_kv else (96, 64))
    return dataclasses.replace(case, batch=1, seq_len_q=q, seq_len_kv=kv, **small)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage().strip())


@contextlib.contextmanager
def _torch_explanations():
    """Collect what PyTorch says while a call runs: warnings and its nested-SDPA log lines (kept from
    the terminal: they become the skip reason)."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in _TORCH_LOGGERS]
    propagate = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.lines, caught
    finally:
        for lg, was in zip(loggers, propagate):
            lg.removeHandler(handler)
            lg.propagate = was


def probe(name: str, build, case: Case, device: str) -> None:
    """Run ``build(miniature(case))`` once on the miniature's inputs; raise :class:`Unsupported` with
    PyTorch's explanation when PyTorch refuses it (a RuntimeError or NotImplementedError)."""
    mini = miniature(case)
    fn = build(mini)
    inputs = make_inputs(mini, device, 0)
    with _torch_explanations() as (log_lines, caught):
        try:
            outputs_of(fn, inputs, mini)
        except (RuntimeError, NotImplementedError) as e:
            said = [str(w.message).strip() for w in caught if "not used because" in str(w.message)
                    or "Expected" in str(w.message)]
            said += [line for line in log_lines if line and not line.endswith("because:")]
            why = "; ".join(dict.fromkeys(said)) or str(e).strip().splitlines()[0]
            if len(why) > _REASON_CHARS:
                why = why[:_REASON_CHARS - 1] + "…"
            raise Unsupported(f"PyTorch refuses {name} for this case: {why}") from None
