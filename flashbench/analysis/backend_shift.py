"""A backend slower over all its cases: the gate's second test where single cases are too noisy.

On a CPU, with one round on each side, an unchanged case's median time moves by up to 2-3x between
runs (other processes, preemption; ``configs/thresholds/default.yaml``), so the per-case test
admits changes up to ``1 + single_round_margin_cpu``. A change to a backend's code moves all of its
cases the same way, while that noise moves single cases, mostly independently: the geometric mean of
the ratios over a backend's cases moved by 0.78-1.26x in 13 unchanged runs of the smoke sweep (11
cases a backend) where single cases moved by up to 2.2x. So a backend whose geometric mean grew past
``single_round_shift_cpu`` fails the gate even when none of its cases does alone.

Only CPU runs are tested this way, with rounds or without: with rounds each case is still held to
``single_round_margin_cpu`` scaled to its rounds (:func:`flashbench.analysis.noise.rounds_margin`,
87% for three rounds each), so a 2x slower backend can pass case by case there too. GPU runs keep
their per-case margins (10% for one round each).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.metrics import factor_text
from .compare import geometric_mean

MIN_CASES = 3  # fewer cases than this are not a backend-wide shift


@dataclass
class BackendShift:
    backend: str
    cases: int      # cases of the backend compared on median time (on a CPU)
    ratio: float    # geometric mean of current / baseline median times
    limit: float    # single_round_shift_cpu: the ratio may grow to 1 + limit

    @property
    def failed(self) -> bool:
        return self.ratio > 1 + self.limit

    def words(self) -> str:
        return (f"{self.backend}: median time {factor_text(self.ratio)}x the baseline's over its {self.cases} cases "
                f"(geometric mean; allowed up to {1 + self.limit:.2f}x, `single_round_shift_cpu`)")


def backend_shifts(cases, thresholds, device: str | None) -> list[BackendShift]:
    """The shift of each backend with at least ``MIN_CASES`` cases measured ok on both sides, for runs
    on a CPU (none otherwise). ``cases``: the gate's
    :class:`~flashbench.analysis.gate.CaseResult` list."""
    if device != "cpu":
        return []
    ratios: dict[str, list[float]] = {}
    for c in cases:
        latency = next((m for m in c.checks if m.metric.gate_key == "latency"), None)
        if latency is not None and latency.old > 0 and latency.new > 0:
            ratios.setdefault(c.backend, []).append(latency.new / latency.old)
    return [BackendShift(b, len(x), geometric_mean(x), thresholds.for_backend(b).single_round_shift_cpu)
            for b, x in ratios.items() if len(x) >= MIN_CASES]
