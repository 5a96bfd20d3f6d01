"""``naive``: textbook attention that materialises S = QKᵀ and P = softmax(S) in memory."""
from __future__ import annotations

from functools import partial

from ..measure.reference import naive_attention
from .base import Backend


class NaiveBackend(Backend):
    name = "naive"
    description = "textbook PyTorch: S = QKᵀ and P = softmax(S) materialised (O(N²) memory)"
    devices = ("cuda", "cpu")

    def prepare(self, case, device):
        return partial(naive_attention, causal=case.causal)
