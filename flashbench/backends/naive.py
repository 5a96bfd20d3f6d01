"""``naive``: textbook attention that materialises S = QKᵀ and P = softmax(S) in memory.

Every workload: a varlen or decode batch runs sequence by sequence (a decode sequence's keys
gathered from its pages), each sequence the same dense formula, as the reference computes it.
"""
from __future__ import annotations

from functools import partial

from ..attention.sequences import assemble, sequences
from ..attention.reference import naive_attention
from ..model.case import KV_LAYOUTS, WORKLOADS
from .base import Backend


class NaiveBackend(Backend):
    name = "naive"
    description = "textbook PyTorch: S = QKᵀ and P = softmax(S) materialised (O(N²) memory)"
    devices = ("cuda", "cpu")
    workloads = WORKLOADS
    kv_layouts = KV_LAYOUTS
    supports_window = True

    def prepare(self, case, device):
        attend = partial(naive_attention, causal=case.causal, window=case.window)
        if case.workload == "dense":
            return attend

        def per_sequence(*args):
            return assemble(case, [attend(s.q, s.k, s.v) for s in sequences(case, args)])

        return per_sequence
