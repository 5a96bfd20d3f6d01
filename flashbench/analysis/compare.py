"""Comparisons: backends within one run, and runs against runs.

Pure functions: runs (metadata + DataFrames) in, dataclasses holding DataFrames out. Rendering
lives in :mod:`flashbench.report.comparison_tables`; the beyond-noise test lives in
:mod:`flashbench.analysis.noise`; what each metric is lives in :mod:`flashbench.model.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..model.case import CASE_FIELDS, TASK_KEY_FIELDS
from ..model.metrics import LATENCY, Metric, factor_text, get_metric
from .noise import (DEFAULT_ALPHA, DEFAULT_FAMILY_ALPHA, CaseNoise, NoiseMethod, NoiseVerdict, PooledNoise,
                    beyond_noise, pool_rounds, run_to_run)
from ..results.files import Run, SchemaVersionError, gpu_model, load_run, same_settings, timing_differs
from ..results.rounds import every_place_timed, round_medians, run_rounds
from ..model.schema import SCHEMA_VERSION
from ..model.yaml_input import cut, preview


class NotComparableError(Exception):
    """Two runs cannot be compared (different GPU model, schema version...): exit code 3."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- loading --------------------------------------------------------------------------------

def load_for_comparison(path: str | Path) -> Run:
    """:func:`load_run`, except that a results file of a schema version this flashbench cannot read
    raises :class:`NotComparableError` (exit 3) rather than a ResultsError (exit 2). Older readable
    versions are upgraded (their missing fields take defaults) and compare on the fields they have."""
    try:
        return load_run(path)
    except SchemaVersionError as e:
        raise NotComparableError([f"{path}: schema_version {preview(e.version)}, but this flashbench writes and "
                                  f"compares schema_version {SCHEMA_VERSION}: re-record it with this version "
                                  "(flashbench run, then flashbench baseline save)"]) from None


def run_frame(run: Run) -> pd.DataFrame:
    """The run's records (last one wins per case key) with their raw samples in ``samples_ms`` and
    their rounds' medians in ``round_medians_ms``."""
    df = run.frame()
    df["samples_ms"] = [list(r.samples_ms or []) for r in run.records]
    df["round_medians_ms"] = [round_medians(r) for r in run.records]
    return df.drop_duplicates(subset=list(TASK_KEY_FIELDS), keep="last").reset_index(drop=True)


def join_runs(old: Run, new: Run) -> pd.DataFrame:
    """Both runs' records joined on the case key (outer): columns suffixed ``_old``/``_new``, and
    ``_merge`` saying left_only (old only), right_only (new only) or both."""
    return run_frame(old).merge(run_frame(new), on=list(TASK_KEY_FIELDS), how="outer", suffixes=("_old", "_new"),
                                indicator=True)


def pooled_noise(joined: pd.DataFrame, family_alpha: float = DEFAULT_FAMILY_ALPHA) -> PooledNoise:
    """The run-to-run noise pooled per backend (:func:`flashbench.analysis.noise.pool_rounds`) over
    the cases of a joined frame (:func:`join_runs`) compared on timing: in both runs, ok in both."""
    timed = joined[(joined["_merge"] == "both") & (joined["status_old"] == "ok") & (joined["status_new"] == "ok")]
    return pool_rounds(((b, old, new) for b, old, new in zip(timed["backend"], timed["round_medians_ms_old"],
                                                                timed["round_medians_ms_new"]) if old and new),
                       family_alpha)


def timing_verdict(row, method: NoiseMethod = "both", alpha: float = DEFAULT_ALPHA,
                   single_round_margin: float | None = None, pooled: PooledNoise | None = None,
                   unit_margin: float | None = None) -> CaseNoise:
    """Is the timing change of one joined row (:func:`join_runs`) beyond noise? Within the runs the
    raw samples decide (the recorded interval stands in where a run kept none); between the runs
    the rounds' medians (the case's own, and the backend's ``pooled`` σ with its family-wise z:
    the wider band decides; :func:`flashbench.analysis.noise.run_to_run`), or
    ``single_round_margin`` when both sides hold one round (None: only the within-run part decides
    then); ``unit_margin`` when the runs came from two units of one GPU model (the least band between them)."""
    _, lo, hi = LATENCY.interval
    within = beyond_noise(row["samples_ms_old"], row["samples_ms_new"], method, alpha,
                          (row[f"{lo}_old"], row[f"{hi}_old"]), (row[f"{lo}_new"], row[f"{hi}_new"]))
    sigma = pooled.sigma_of(row["backend"]) if pooled is not None else None
    between = run_to_run(row["round_medians_ms_old"], row["round_medians_ms_new"], single_round_margin,
                         sigma, pooled.z if pooled is not None else None, unit_margin)
    return CaseNoise(within, between)


# --- environments ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EnvDifference:
    kind: str        # gpu | driver | config | timing | schema | software | device | order
    what: str
    old: object
    new: object

    @property
    def loud(self) -> bool:
        """GPU, driver, config, timing and schema differences make timings incomparable."""
        return self.kind not in ("software", "device", "order")

    def message(self) -> str:
        if self.kind == "order":
            return (f"each case's backends ran in another order: {self.old!s} (old) vs {self.new!s} (new); at a GPU's "
                    "power limit a backend's place in its case moves its figures (README: Known limits)")
        if self.kind == "device":
            # the rounds of one run on one GPU cannot show how another unit of the model runs
            return (f"another GPU of the same model ({self.old!s} old, {self.new!s} new): unit-to-unit "
                    "differences (clocks under load, power, temperature) are not in the rounds' noise")
        return f"{self.what} differs: {self.old!s} (old) vs {self.new!s} (new)"


def environment_differences(old: dict, new: dict) -> list[EnvDifference]:
    eo, en = old.get("environment") or {}, new.get("environment") or {}
    diffs = []
    if old.get("schema_version") != new.get("schema_version"):
        # both were read (load_run upgrades older versions): a note, not a reason to refuse the comparison
        diffs.append(EnvDifference("software", "schema_version", old.get("schema_version"), new.get("schema_version")))
    if gpu_model(old) != gpu_model(new):
        diffs.append(EnvDifference("gpu", "GPU", gpu_model(old), gpu_model(new)))
    elif eo.get("gpu_uuid") and en.get("gpu_uuid") and eo["gpu_uuid"] != en["gpu_uuid"]:
        diffs.append(EnvDifference("device", "GPU unit", eo["gpu_uuid"], en["gpu_uuid"]))
    if eo.get("driver_version") != en.get("driver_version"):
        diffs.append(EnvDifference("driver", "driver", eo.get("driver_version"), en.get("driver_version")))
    co, cn = old.get("config") or {}, new.get("config") or {}
    if co.get("sha256") != cn.get("sha256") and not same_settings(co, cn):
        diffs.append(EnvDifference("config", "config", f"{co.get('name') or co.get('path')} "
                                   f"({str(co.get('sha256'))[:8]})", f"{cn.get('name') or cn.get('path')} "
                                   f"({str(cn.get('sha256'))[:8]})"))
    timing = timing_differs(old, new)
    if timing:
        diffs.append(EnvDifference("timing", "timing", *timing))
    for key in ("cuda", "torch", "triton"):
        if eo.get(key) != en.get(key):
            diffs.append(EnvDifference("software", key, eo.get(key), en.get(key)))
    order = order_difference(old, new)
    return diffs + ([order] if order else [])


ORDER_CHARS = 200  # of each side's backend list in the order note


def order_difference(old: dict, new: dict) -> EnvDifference | None:
    """Whether the backends both runs measured ran in another order within a case (``backends`` of the
    metadata is the first round's order; ``flashbench.execute.order``), where that can matter: not when both
    runs had at least as many rounds as those backends, each then timed once in every place."""
    both = set(old.get("backends") or []) & set(new.get("backends") or [])
    in_old = [b for b in old.get("backends") or [] if b in both]
    in_new = [b for b in new.get("backends") or [] if b in both]
    if len(in_old) < 2 or in_old == in_new or every_place_timed(min(run_rounds(old), run_rounds(new)), len(in_old)):
        return None
    # the lists come from results files, as long as their writer made them: the note stays one short line
    return EnvDifference("order", "backend order", cut(", ".join(in_old), ORDER_CHARS),
                         cut(", ".join(in_new), ORDER_CHARS))


# --- backends within one run ---------------------------------------------------------------

@dataclass
class BackendComparison:
    metric: Metric
    baseline: str
    backends: list[str]
    shape_columns: list[str]
    rows: pd.DataFrame            # shape columns, then per backend: B, "B status", "B speedup"; winner
    geomean: dict[str, float]      # backend -> geometric-mean speedup against the baseline
    geomean_value: dict[str, float]  # backend -> geometric mean of the metric over the same shapes
    geomean_n: dict[str, int]       # shapes that entered each geomean

    def frame(self) -> pd.DataFrame:
        """One tidy-wide frame for machines: the metric (or the status word when not ok) and the
        speedup per backend, the winner, and a final ``geomean`` row."""
        out = self.rows[self.shape_columns].copy()
        for b in self.backends:
            out[b] = [v if s == "ok" else s for v, s in zip(self.rows[b], self.rows[f"{b} status"])]
            out[f"{b} speedup"] = self.rows[f"{b} speedup"]
        out["winner"] = self.rows["winner"]
        summary = {c: "" for c in out.columns}
        summary[self.shape_columns[0]] = "geomean"
        for b in self.backends:
            summary[b] = self.geomean_value.get(b, math.nan)
            summary[f"{b} speedup"] = self.geomean.get(b, math.nan)
        # the best geomean among the backends measured on the most shapes (a backend that ran one
        # shape does not "win" the summary)
        most = max(self.geomean_n.values(), default=0)
        full = {b: g for b, g in self.geomean.items() if self.geomean_n.get(b) == most and not math.isnan(g)}
        summary["winner"] = max(full, key=full.get) if full and most else ""
        return pd.concat([out.astype(object), pd.DataFrame([summary], dtype=object)], ignore_index=True)


WORKLOAD_COLUMNS = ("workload", "kv_layout", "page_size", "lengths", "total_tokens", "window_left", "window_right")


def shape_columns(df: pd.DataFrame) -> list[str]:
    """Shape fields worth a column: seq_len, head_dim, dtype, causal, mode, and the others (the
    workload's fields among them) where they vary."""
    cols = [c for c in ("workload", "batch", "heads", "kv_heads") if df[c].nunique() > 1]
    cols.append("seq_len_q")
    if (df["seq_len_q"] != df["seq_len_kv"]).any():
        cols.append("seq_len_kv")
    cols += [c for c in WORKLOAD_COLUMNS[1:] if df[c].nunique() > 1]
    return cols + ["head_dim", "dtype", "causal", "mode"]


# rows read as sequence-length sweeps, one block per workload × head_dim × dtype × causal × mode
ROW_ORDER = ("workload", "head_dim", "dtype", "causal", "mode", "kv_layout", "page_size", "lengths", "window_left",
             "window_right", "seq_len_q", "seq_len_kv", "batch", "heads", "kv_heads", "total_tokens")


def geometric_mean(values) -> float:
    """The geometric mean of the finite positive values (NaN when there are none)."""
    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else math.nan


def compare_backends(df: pd.DataFrame, baseline: str, metric: str = "tflops",
                     backends: list[str] | None = None) -> BackendComparison:
    """One row per shape, one column per backend; speedups ("higher is better") against ``baseline``."""
    m = get_metric(metric)
    df = df.drop_duplicates(subset=list(TASK_KEY_FIELDS), keep="last")
    present = list(dict.fromkeys(df["backend"]))
    if baseline not in present:
        raise ValueError(f"--baseline: backend {baseline!r} is not in this run (it has: {', '.join(present)})")
    if backends:
        unknown = [b for b in backends if b not in present]
        if unknown:
            raise ValueError(f"--backends: {', '.join(unknown)} not in this run (it has: {', '.join(present)})")
    order = [baseline] + [b for b in (backends or present) if b != baseline]
    df = df[df["backend"].isin(order)]
    cols = shape_columns(df)
    case_fields = list(CASE_FIELDS)
    rows = []
    for case, group in df.groupby(case_fields, sort=True):
        row = dict(zip(case_fields, case))
        by_backend = {r["backend"]: r for _, r in group.iterrows()}
        base = by_backend.get(baseline)
        base_v = base[m.column] if base is not None and base["status"] == "ok" else None
        best, best_v = "", None
        for b in order:
            r = by_backend.get(b)
            status = "–" if r is None else r["status"]
            v = r[m.column] if r is not None and status == "ok" and pd.notna(r[m.column]) else None
            row[b] = float(v) if v is not None else math.nan
            row[f"{b} status"] = status
            sp = math.nan
            if v is not None and base_v is not None and pd.notna(base_v) and v > 0 and base_v > 0:
                sp = m.speedup(v, base_v)
            row[f"{b} speedup"] = sp
            if m.merit and v is not None and (best_v is None or m.better(v, best_v)):
                best, best_v = b, v  # no best clock: it is a condition of the measurement, not a merit
        row["winner"] = best
        rows.append(row)
    rows_df = pd.DataFrame(rows)
    if not rows_df.empty:
        rows_df = rows_df.sort_values(list(ROW_ORDER), kind="stable").reset_index(drop=True)
    geomean, geomean_value, geomean_n = {}, {}, {}
    for b in order:
        both = rows_df[rows_df[f"{b} speedup"].notna()] if not rows_df.empty else rows_df
        geomean[b] = geometric_mean(both[f"{b} speedup"]) if len(both) else math.nan
        geomean_value[b] = geometric_mean(both[b]) if len(both) else math.nan
        geomean_n[b] = len(both)
    return BackendComparison(m, baseline, order, cols, rows_df, geomean, geomean_value, geomean_n)


# --- runs against runs ----------------------------------------------------------------------

def change_words(ratio: float, metric: Metric) -> str:
    """``ratio`` is new/old of the metric. "1.33x slower", "1.10x faster", "1.20x more memory"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "–"
    factor = max(ratio, 1 / ratio)
    if factor == 1:
        return "same"
    worse, better = metric.change_words
    return f"{factor_text(factor)}x {worse if metric.worse(ratio) else better}"


@dataclass
class RunComparison:
    old_label: str
    new_label: str
    metric: Metric
    rows: pd.DataFrame        # case key, old/new status and value, ratio, beyond_noise, change, noise
    only_old: pd.DataFrame    # case keys (and status) present in the old run only
    only_new: pd.DataFrame
    differences: list[EnvDifference] = field(default_factory=list)
    pooled: PooledNoise | None = None  # the run-to-run noise pooled per backend (timing metrics)

    def frame(self) -> pd.DataFrame:
        """Every case for machines, one-sided ones included (``change`` says "only in old/new")."""
        parts = [self.rows.drop(columns=["noise_detail"], errors="ignore")]
        for side, df in (("old", self.only_old), ("new", self.only_new)):
            if not df.empty:
                extra = df[list(TASK_KEY_FIELDS)].copy()
                extra[f"{side}_status"] = df["status"].values
                extra[side] = [float(v) if st == "ok" and pd.notna(v) else math.nan
                               for st, v in zip(df["status"], df["value"])]
                extra["change"] = f"only in {side}"
                parts.append(extra)
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        out.insert(0, "new_run", self.new_label)
        out.insert(0, "old_run", self.old_label)
        return out


def compare_runs(old: Run, new: Run, metric: str = "ms", noise_method: NoiseMethod = "both",
                 alpha: float = DEFAULT_ALPHA, old_label: str = "old", new_label: str = "new",
                 family_alpha: float = DEFAULT_FAMILY_ALPHA) -> RunComparison:
    """Join two runs on the case key (backend + case fields); per case the ratio new/old of the
    metric and whether the change is beyond noise (timing metrics, :func:`timing_verdict` with the
    noise pooled over the joined cases as ``flashbench check`` does; memory is exact)."""
    m = get_metric(metric)
    keys = list(TASK_KEY_FIELDS)
    joined = join_runs(old, new)
    pooled = pooled_noise(joined, family_alpha)
    only_old = joined[joined["_merge"] == "left_only"]
    only_new = joined[joined["_merge"] == "right_only"]
    both = joined[joined["_merge"] == "both"]
    rows = []
    for _, r in both.iterrows():
        row = {k: r[k] for k in keys}
        so, sn = r["status_old"], r["status_new"]
        vo, vn = r[f"{m.column}_old"], r[f"{m.column}_new"]
        row.update(old_status=so, new_status=sn,
                   old=float(vo) if so == "ok" and pd.notna(vo) else math.nan,
                   new=float(vn) if sn == "ok" and pd.notna(vn) else math.nan)
        ratio, noisy, detail = math.nan, None, ""
        if so == "ok" and sn == "ok":
            if pd.notna(vo) and pd.notna(vn) and vo > 0:
                ratio = float(vn) / float(vo)
            if m.timing:
                v = timing_verdict(r, noise_method, alpha, pooled=pooled)
                noisy, detail = v.beyond_noise, v.describe()
            else:
                noisy, detail = True, "exact measurement" if m.exact else "a measured figure, not noise-tested"
            if not math.isfinite(ratio):
                change = "–"
            elif noisy or ratio == 1:
                change = change_words(ratio, m)
            else:
                change = "within noise"
        elif so == sn:
            change = so
        else:
            change = f"{so} → {sn}"
        row.update(ratio=ratio, beyond_noise=noisy, change=change, noise_detail=detail)
        rows.append(row)
    cols = keys + ["old_status", "new_status", "old", "new", "ratio", "beyond_noise", "change", "noise_detail"]
    side_cols = keys + ["status", "value"]  # a one-sided case keeps its own figure (machines read it in frame())
    return RunComparison(
        old_label, new_label, m, pd.DataFrame(rows, columns=cols),
        only_old.rename(columns={"status_old": "status", f"{m.column}_old": "value"})[side_cols].reset_index(drop=True),
        only_new.rename(columns={"status_new": "status", f"{m.column}_new": "value"})[side_cols].reset_index(drop=True),
        environment_differences(old.meta, new.meta), pooled if m.timing else None,
    )
