"""Rounds: one row per task holding every round that measured it.

``flashbench run --rounds N`` measures the whole sweep N times, round after round, and
``flashbench baseline save`` merges several runs of one config: both end with one record per task
whose rounds are merged here. A merged record keeps every round: ``samples_ms`` holds the samples
of all rounds one after the other, ``round_samples`` how many each round took and
``round_medians_ms`` each round's median; ``rounds`` counts them.

Its ``median_ms`` is the median of the round medians, not of the pooled samples. Each round is one
process on the machine in one state (clocks, placement, allocator, other load), and run-to-run
variance is what dominates: the round medians are the independent observations. Pooled samples
would weight rounds by their sample count, which the time budget makes larger for rounds in which
the machine ran fast, and a median of medians shrugs off one disturbed round out of three. The
p20/p80, min and mean stay statistics of the pooled samples (the within-run spread).
"""
from __future__ import annotations

from dataclasses import replace

from ..measure.energy import energy_per_call_j, tflop_per_j
from ..measure.stats import percentile, summarize
from ..model.schema import STATUS_RANK, Record
from .files import ResultsError, Run, gpu_model, same_settings, timing_differs

# rows that carry timings: a later round measures their task again and merges into them
MEASURED_STATUSES = ("ok", "mismatch")


def round_medians(record: Record) -> list[float]:
    """Each round's median time (a single-round record: its median; no timing: empty)."""
    if record.round_medians_ms:
        return list(record.round_medians_ms)
    return [record.median_ms] if record.median_ms is not None else []


def _round_sizes(record: Record) -> list[int]:
    return list(record.round_samples) if record.round_samples else [len(record.samples_ms)]


def median_of(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def rounds_to_go(record: Record | None, rounds: int) -> int:
    """How many more rounds a task needs for ``rounds`` in all: every round without a row; none
    once its row is settled without timings (skipped, or failed: a crash is not measured again)."""
    if record is None:
        return rounds
    if record.status not in MEASURED_STATUSES:
        return 0
    return max(0, rounds - record.rounds)


def _distinct(*texts: str) -> str:
    parts = [p for t in texts for p in (t or "").split(" | ") if p]
    return " | ".join(dict.fromkeys(parts))


def _worst(a, b):
    values = [x for x in (a, b) if x is not None]
    return max(values) if values else None


def _sum(a, b):
    values = [x for x in (a, b) if x is not None]
    return sum(values) if values else None


def merge_rounds(first: Record, later: Record) -> Record:
    """One record holding ``first``'s rounds, then ``later``'s (the same task).

    A round that was not measured (skipped, or failed: oom, error, crashed, timeout) settles the
    row: the merged record is that round's, its reason saying which round failed. Otherwise the
    samples of both are kept, the median is the median of all round medians and the worse
    status and error figures win (ok then mismatch is mismatch).
    """
    if first.task().key() != later.task().key():
        raise ValueError(f"merge_rounds: records of different tasks ({first.task().key()} and {later.task().key()})")
    rounds = first.rounds + later.rounds
    if first.status not in MEASURED_STATUSES:
        return replace(first, rounds=rounds)
    if later.status not in MEASURED_STATUSES:
        done = f"rounds 1–{first.rounds}" if first.rounds > 1 else "round 1"
        where = f"in round {first.rounds + 1} ({done}: {first.status})"
        return replace(later, rounds=rounds, reason=f"{where}: {later.reason}" if later.reason else where)
    worse = later if STATUS_RANK.get(later.status, 3) > STATUS_RANK.get(first.status, 3) else first
    samples = list(first.samples_ms) + list(later.samples_ms)
    medians = round_medians(first) + round_medians(later)
    merged = replace(first, status=worse.status, reason=worse.reason, rounds=rounds, samples_ms=samples,
                     round_medians_ms=medians, round_samples=_round_sizes(first) + _round_sizes(later),
                     timing_method=_distinct(first.timing_method, later.timing_method),
                     backend_config=_distinct(first.backend_config, later.backend_config),
                     peak_hbm_bytes=_worst(first.peak_hbm_bytes, later.peak_hbm_bytes),
                     peak_hbm_abs_bytes=_worst(first.peak_hbm_abs_bytes, later.peak_hbm_abs_bytes),
                     max_abs_err=_worst(first.max_abs_err, later.max_abs_err),
                     rel_err=_worst(first.rel_err, later.rel_err), wall_s=_sum(first.wall_s, later.wall_s))
    if samples:
        s = summarize(samples)
        merged.p20_ms, merged.p80_ms, merged.min_ms, merged.mean_ms, merged.samples = (
            s.p20_ms, s.p80_ms, s.min_ms, s.mean_ms, s.samples)
    if medians:
        before = merged.tflops
        merged.median_ms = median_of(medians)
        merged.set_rates()
        _merge_timer_figures(merged, first, later, before)
    return merged


def _mean_of_rounds(first: Record, later: Record, field: str) -> float | None:
    """A per-round figure averaged over the rounds: ``first`` may hold several rounds already (rounds are
    merged one at a time), so each side weighs as many rounds as it holds. A side without the figure
    does not count, and a round without it inside a side counts at that side's mean."""
    sides = [(getattr(r, field), max(r.rounds, 1)) for r in (first, later) if getattr(r, field) is not None]
    weight = sum(w for _, w in sides)
    return sum(v * w for v, w in sides) / weight if sides else None


def _merge_timer_figures(merged: Record, first: Record, later: Record, tflops_before) -> None:
    """The timer's per-row figures of a merged record: host time, power and SM clock averaged over the
    rounds, the noise the worse round reached, and what derives from the merged median recomputed (the
    percentages of the roofs scale with TFLOP/s, the roof itself being the same)."""
    merged.host_ms = _mean_of_rounds(first, later, "host_ms")
    merged.launch_bound = None if merged.host_ms is None else merged.host_ms > merged.median_ms
    merged.noise_pct = _worst(first.noise_pct, later.noise_pct)
    if tflops_before and merged.tflops is not None:
        scale = merged.tflops / tflops_before
        merged.pct_peak_flops = None if first.pct_peak_flops is None else first.pct_peak_flops * scale
        merged.pct_hbm = None if first.pct_hbm is None else first.pct_hbm * scale
    merged.avg_power_w = _mean_of_rounds(first, later, "avg_power_w")
    merged.sm_clock_mhz = _mean_of_rounds(first, later, "sm_clock_mhz")
    merged.energy_j = energy_per_call_j(merged.avg_power_w, merged.median_ms)
    merged.tflop_per_j = tflop_per_j(merged.flops, merged.energy_j)


def has_timings(record: Record) -> bool:
    """Whether a row holds timings (samples of one or more rounds)."""
    return record.status in MEASURED_STATUSES and bool(record.samples_ms)


def split_rounds(record: Record) -> list[Record]:
    """The rounds of a merged record as single-round records (each round's samples, median, interval and
    rates; the other figures stay the merged ones): the inverse of :func:`merge_rounds` for timings. A row
    without timings is its own single round."""
    if not has_timings(record):
        return [record]
    sizes = _round_sizes(record)
    if sum(sizes) != len(record.samples_ms):
        raise ValueError(f"split_rounds: round_samples {sizes} do not add up to the {len(record.samples_ms)} samples")
    rounds, start = [], 0
    for n in sizes:
        samples = record.samples_ms[start:start + n]
        start += n
        s = summarize(samples)
        one = replace(record, samples_ms=list(samples), round_samples=[], round_medians_ms=[], rounds=1,
                      median_ms=s.median_ms, p20_ms=s.p20_ms, p80_ms=s.p80_ms, min_ms=s.min_ms, mean_ms=s.mean_ms,
                      samples=s.samples)
        one.set_rates()
        rounds.append(one)
    return rounds


def regroup_rounds(run: Run, picks: list[int]) -> Run:
    """``run`` holding only rounds ``picks`` (0-based) of each timed task, merged as ``flashbench run
    --rounds`` merges them; a task with fewer rounds is left out, a row without timings kept as it is.
    Two disjoint ``picks`` of one run of unchanged code are an A/A pair: what the gate says of them is
    its false-alarm rate (``tools/gate_false_alarms.py``)."""
    records = []
    for r in run.records:
        if not has_timings(r):
            records.append(r)
            continue
        rounds = split_rounds(r)
        if len(rounds) > max(picks):
            merged = rounds[picks[0]]
            for i in picks[1:]:
                merged = merge_rounds(merged, rounds[i])
            records.append(merged)
    return Run(dict(run.meta, rounds=len(picks)), records)


def run_rounds(meta: dict) -> int:
    """The rounds a run was asked for (1 for results from before rounds)."""
    return int(meta.get("rounds") or 1)


def every_place_timed(rounds: int, backends: int) -> bool:
    """Whether ``rounds`` rounds time each of a case's ``backends`` backends once in every place of the case: the
    sweep rotates their order by one place a round (``flashbench.execute.order.round_order``)."""
    return rounds >= backends


def _warnings(run: Run) -> list[str]:
    return list(run.meta.get("warnings") or [])


# environment entries that may differ between the runs of one baseline, with a warning
_SOFT_ENVIRONMENT = ("driver_version", "cuda", "torch", "triton")


def merge_runs(runs: list[Run], labels: list[str]) -> Run:
    """Several runs of one config on one GPU model as one run whose rows hold all their rounds.

    Raises ResultsError when they cannot be rounds of one baseline: another config (other settings),
    another backend selection, other timing settings (``timing`` of the metadata) or another GPU model; a driver
    or software difference is recorded as a warning.
    """
    if len(runs) != len(labels) or not runs:
        raise ValueError("merge_runs: one label per run, at least one run")
    first, problems, warnings = runs[0].meta, [], _warnings(runs[0])
    for run, label in zip(runs[1:], labels[1:]):
        m = run.meta
        if not same_settings(first.get("config") or {}, m.get("config") or {}):
            problems.append(f"{label}: written by config {(m.get('config') or {}).get('path')}, {labels[0]} by "
                            f"{(first.get('config') or {}).get('path')} (other settings): a baseline's runs must "
                            "come from one config, its settings unchanged")
        timing = timing_differs(first, m)
        if timing:
            problems.append(f"{label}: timed with {timing[1]}, {labels[0]} with {timing[0]}: a baseline's runs must be "
                            "timed alike")
        if sorted(m.get("backends") or []) != sorted(first.get("backends") or []):
            problems.append(f"{label}: backends {','.join(m.get('backends') or [])}, {labels[0]}: "
                            f"{','.join(first.get('backends') or [])}: a baseline's runs must measure the same backends")
        if gpu_model(m) != gpu_model(first):
            problems.append(f"{label}: measured on {gpu_model(m)}, {labels[0]} on {gpu_model(first)}: "
                            "a baseline's runs must come from one GPU model")
        env, env0 = m.get("environment") or {}, first.get("environment") or {}
        warnings += [f"{label}: {k} {env.get(k)} (the first run: {env0.get(k)})"
                     for k in _SOFT_ENVIRONMENT if env.get(k) != env0.get(k)]
        warnings += _warnings(run)
    if problems:
        raise ResultsError("\n".join(problems))
    rows: dict[tuple, Record] = {}
    for run in runs:
        for r in run.records:
            key = r.task().key()
            rows[key] = merge_rounds(rows[key], r) if key in rows else r
    meta = dict(first, rounds=sum(run_rounds(r.meta) for r in runs),
                finished=all(r.meta.get("finished") is not False for r in runs), warnings=warnings,
                merged_runs=[{"path": label, "created_utc": r.meta.get("created_utc"), "rounds": run_rounds(r.meta),
                              "finished": r.meta.get("finished"),
                              "git_commit": (r.meta.get("environment") or {}).get("git_commit")}
                             for r, label in zip(runs, labels)])
    return Run({k: v for k, v in meta.items() if k != "schema_version"}, list(rows.values()))
