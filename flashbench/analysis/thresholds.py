"""Regression thresholds for ``flashbench check``: YAML -> validated pydantic model.

A file looks like::

    defaults:
      latency: 0.05        # median time may grow by 5% ...
      tflops: 0.05         # ... and the rate (TFLOP/s; GB/s for decode cases) drop by 5% before it counts (and only beyond noise)
      peak_hbm: 0.10       # peak memory above the inputs may grow by 10%
      min_abs_ms: 0.03     # a latency change smaller than this is never a regression
      single_round_margin: 0.10     # one round on each side (GPU): run-to-run noise assumed this large
      single_round_margin_cpu: 1.5  # the same for CPU runs
      single_round_shift_cpu: 0.5   # CPU runs: a backend's geometric mean over its cases
      unit_margin: 0.15    # runs on two units of one GPU model: a timing change must pass this too
      correctness: true    # ok -> mismatch fails
    noise: {method: both, alpha: 0.01, family_alpha: 0.05}
    backends:              # per-backend overrides (only the keys given change)
      flex: {latency: 0.10, tflops: 0.10}
    cases:                 # per-case-pattern overrides, applied in order after `backends`
      - match: {backend: naive, seq_len: [8192, 16384]}
        peak_hbm: 0.25

A metric set to ``null`` is not checked. Unknown keys are rejected; every problem names its field.
The metric keys and their defaults come from the metrics table (:mod:`flashbench.model.metrics`):
a metric row with a ``gate_key`` is a thresholds key.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

from pydantic import Field, create_model

from ..model.fields import Integer, Number, Strict as _Strict
from ..model.filters import Rule
from ..model.metrics import gated_metrics
from ..model.yaml_input import ConfigError, did_you_mean, preview, read_yaml_file, validate_yaml
from .noise import DEFAULT_ALPHA, DEFAULT_FAMILY_ALPHA, NoiseMethod


def _metric_fields(partial: bool) -> dict:
    """One optional relative threshold per gated metric (``null`` turns its check off)."""
    fields = {}
    for m in gated_metrics():
        # a relative drop cannot pass 100%: the threshold of a higher-is-better metric stays under 1
        bounds = {"ge": 0, "lt": 1} if m.higher_is_better else {"ge": 0}
        fields[m.gate_key] = (Optional[Number], Field(None if partial else m.default_threshold, **bounds,
                                                      description=m.threshold_help))
    return fields


class _Floors(_Strict):
    min_abs_ms: Number = Field(0.03, ge=0, description="latency changes below this (ms) are never regressions")
    min_abs_hbm_bytes: Integer = Field(1 << 20, ge=0, description="peak memory changes below this are never regressions")
    single_round_margin: Number = Field(0.10, ge=0, description="GPU runs: when both runs hold one round per case, "
                                       "the run-to-run noise is unknown: a timing change counts only past this "
                                       "relative amount; with rounds it shrinks to margin · √((1/n_old + 1/n_new)/2) "
                                       "and the rounds' spread or pooled noise decide where wider")
    single_round_margin_cpu: Number = Field(1.5, ge=0, description="the same for CPU runs, whose run-to-run "
                                           "noise (other processes, preemption) is far larger than a GPU's")
    unit_margin: Number = Field(0.15, ge=0, description="GPU runs recorded on two units of the same model: a "
                                "timing change counts only past this relative amount, with rounds or without "
                                "(each run's rounds share its unit, so what units differ by is in neither); "
                                "the single-round margin still applies where it is larger")
    single_round_shift_cpu: Number = Field(0.5, ge=0, description="CPU runs (named for one round a side, applied with "
                                          "rounds too, where the scaled CPU margin is as wide): a backend "
                                          "whose median time over all its compared cases (geometric mean of the "
                                          "ratios) grew past this fails, whatever each case's own change")
    correctness: bool = Field(True, description="a case that passed correctness must keep passing")


Limits = create_model("Limits", __base__=_Floors, __module__=__name__,
                      __doc__="The thresholds one case is checked against.", **_metric_fields(partial=False))
LIMIT_KEYS = tuple(Limits.model_fields)


class _Overrides(_Strict):
    min_abs_ms: Optional[Number] = Field(None, ge=0)
    min_abs_hbm_bytes: Optional[Integer] = Field(None, ge=0)
    single_round_margin: Optional[Number] = Field(None, ge=0)
    single_round_margin_cpu: Optional[Number] = Field(None, ge=0)
    unit_margin: Optional[Number] = Field(None, ge=0)
    single_round_shift_cpu: Optional[Number] = Field(None, ge=0)
    correctness: Optional[bool] = None

    def apply(self, base: Limits) -> Limits:
        changes = {k: getattr(self, k) for k in self.model_fields_set if k in LIMIT_KEYS}
        for k in _Floors.model_fields:  # these have no "off" value
            if k in changes and changes[k] is None:
                changes[k] = _Floors.model_fields[k].default
        return base.model_copy(update=changes)


PartialLimits = create_model("PartialLimits", __base__=_Overrides, __module__=__name__,
                             __doc__="Overrides: only the keys written in the file apply (``null`` turns a check off).",
                             **_metric_fields(partial=True))


class CaseOverride(PartialLimits):
    match: Rule = Field(description="which cases: the case filter's keys (backend, seq_len and every case field: "
                                    "batch, heads, kv_heads, seq_len_q, seq_len_kv, head_dim, dtype, causal, mode, "
                                    "workload, window_left, window_right, kv_layout, page_size, lengths, "
                                    "total_tokens), each a value or a list")


class Noise(_Strict):
    method: NoiseMethod = Field("both", description="intervals (p20–p80 disjoint) | rank (Mann-Whitney) | both")
    alpha: Number = Field(DEFAULT_ALPHA, gt=0, lt=1, description="significance level of the rank test")
    family_alpha: Number = Field(DEFAULT_FAMILY_ALPHA, gt=0, lt=1,
                                 description="the chance that an unchanged sweep raises any false alarm from the "
                                             "pooled run-to-run test (Bonferroni over the cases compared)")


class Thresholds(_Strict):
    defaults: Limits = Limits()
    noise: Noise = Noise()
    backends: dict[str, PartialLimits] = {}
    cases: list[CaseOverride] = []

    def for_backend(self, backend: str) -> Limits:
        """The defaults with the backend's overrides (no case rules): what holds for the backend as a whole."""
        return self.backends[backend].apply(self.defaults) if backend in self.backends else self.defaults

    def for_case(self, backend: str, case) -> Limits:
        """The limits for one case (a :class:`flashbench.model.case.Case`)."""
        limits = self.for_backend(backend)
        for rule in self.cases:
            if rule.match.matches(case, backend):
                limits = rule.apply(limits)
        return limits


def bundled_thresholds() -> dict[str, Path]:
    root = resources.files("flashbench.configs") / "thresholds"
    if not root.is_dir():
        return {}
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def parse_thresholds(text: str, source: str) -> Thresholds:
    return validate_yaml(Thresholds, text, source)


def load_thresholds(name_or_path: str | None) -> tuple[Thresholds, str]:
    """A thresholds file, or a bundled one by name ("default"); None means the bundled default.

    Returns the thresholds and where they came from. Raises :class:`ConfigError` (exit code 2).
    """
    bundled = bundled_thresholds()
    if name_or_path is None:
        if "default" not in bundled:
            return Thresholds(), "(built-in defaults)"
        name_or_path = "default"
    if not name_or_path.strip():  # Path("") is the current directory: "--thresholds : not a file" said nothing
        raise ConfigError(["--thresholds: the name is empty: give a thresholds YAML file or a bundled name "
                           f"(bundled: {', '.join(sorted(bundled)) or 'none'})"])
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path):
        if name_or_path not in bundled:
            raise ConfigError([f"--thresholds: {name_or_path}: neither a file nor a bundled thresholds name "
                               f"(bundled: {', '.join(sorted(bundled)) or 'none'})"])
        p = bundled[name_or_path]
    if not p.is_file():
        raise ConfigError([f"--thresholds: {name_or_path}: {'not a file' if p.exists() else 'no such file'}"])
    return parse_thresholds(read_yaml_file(p), str(p)), str(p)


def backend_typos(thresholds: Thresholds, present: set[str]) -> list[str]:
    """Backends the thresholds name that are absent from the runs but close to one present ("naiv" with
    naive in the runs): their overrides would silently apply to nothing. A name far from every backend
    of the runs is not reported: one thresholds file serves sweeps of different backends."""
    named = [(f"backends.{b}", b) for b in thresholds.backends]
    named += [(f"cases[{i}].match.backend", b) for i, rule in enumerate(thresholds.cases)
              for b in rule.match.backend or []]
    return [f"{where}: {preview(b)} names no backend of these runs, so its thresholds apply to nothing{close}"
            for where, b in named if b not in present and (close := did_you_mean(b, present))]


def single_round_margin(limits, device: str | None) -> float:
    """The margin standing in for unknown run-to-run noise, for runs measured on ``device``."""
    return limits.single_round_margin_cpu if device == "cpu" else limits.single_round_margin


def unit_margin(limits, device: str | None, other_unit: bool) -> float | None:
    """The least band of a timing change between runs on two units of one GPU model (None: one unit, a CPU,
    or a run that did not record its unit)."""
    return limits.unit_margin if other_unit and device != "cpu" else None
