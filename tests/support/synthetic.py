"""Synthetic result directories for the compare/check/plot tests (no GPU, no kernels)."""
from __future__ import annotations

import random
from pathlib import Path

from flashbench.model.case import Case
from flashbench.model.flops import attention_flops
from flashbench.results.files import ResultsWriter
from flashbench.results.rounds import merge_rounds
from flashbench.model.schema import Record
from flashbench.measure.stats import summarize

H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-1234", "driver_version": "580.65",
        "torch": "2.13.0", "triton": "3.6.0", "cuda": "12.8", "device": "cuda"}


def meta(env: dict | None = None, config_sha: str = "abc123", name: str = "synthetic", **kw) -> dict:
    return {"config": {"path": f"{name}.yaml", "name": name, "sha256": config_sha, "text": ""},
            "reference_backend": "sdpa_flash", "environment": dict(env or H100), "finished": True, "warnings": [], **kw}


def case(n: int = 1024, d: int = 128, dtype: str = "bfloat16", causal: bool = False, mode: str = "fwd",
         batch: int | None = None, heads: int | None = None) -> Case:
    b = batch if batch is not None else max(1, 16384 // n)
    h = heads if heads is not None else 2048 // d
    return Case(b, h, h, n, n, d, dtype, causal, mode)


def record(backend: str, c: Case, median_ms: float = 1.0, spread: float = 0.01, n: int = 40, seed: int = 0,
           status: str = "ok", peak_hbm: int | None = 64 << 20, reason: str = "", rounds: int = 1,
           drift: float = 0.0) -> Record:
    """A record whose samples scatter ±``spread`` around ``median_ms``; with ``rounds`` > 1, that many
    rounds merged as ``flashbench run --rounds`` does, each round's level moved by up to ±``drift``."""
    if status != "ok":
        return Record(backend=backend, case=c, status=status, reason=reason)
    if rounds > 1:
        rng = random.Random(seed)
        levels = [median_ms * (1 + rng.uniform(-drift, drift)) for _ in range(rounds)]
        merged = record(backend, c, levels[0], spread, n, seed * 1000, peak_hbm=peak_hbm)
        for i, level in enumerate(levels[1:], 1):
            merged = merge_rounds(merged, record(backend, c, level, spread, n, seed * 1000 + i, peak_hbm=peak_hbm))
        return merged
    rng = random.Random(seed)
    samples = [median_ms * (1 + rng.uniform(-spread, spread)) for _ in range(n)]
    s = summarize(samples)
    flops = attention_flops(c)
    return Record(backend=backend, case=c, status="ok", median_ms=s.median_ms, p20_ms=s.p20_ms,
                  p80_ms=s.p80_ms, min_ms=s.min_ms, mean_ms=s.mean_ms, samples=s.samples,
                  timing_method="cuda_events_l2_flush", flops=flops, tflops=flops / s.median_ms / 1e9,
                  peak_hbm_bytes=peak_hbm, samples_ms=samples, device_name=H100["gpu_name"])


def write_run(directory: Path, records: list[Record], **meta_kw) -> Path:
    ResultsWriter(directory, meta(**meta_kw), records)
    return directory


def slower_copy(source: Path, directory: Path, factor: float, only: int | None = None) -> Path:
    """A copy of a results directory whose every timing is ``factor`` times longer (rates follow);
    with ``only``, just the first ``only`` measured rows."""
    from flashbench.results.files import load_run

    run = load_run(source)
    changed = 0
    for r in run.records:
        if r.median_ms is None or (only is not None and changed >= only):
            continue
        changed += 1
        for f in ("median_ms", "p20_ms", "p80_ms", "min_ms", "mean_ms"):
            setattr(r, f, getattr(r, f) * factor)
        r.samples_ms = [x * factor for x in r.samples_ms]
        r.round_medians_ms = [x * factor for x in r.round_medians_ms]
        r.set_rates()
    ResultsWriter(directory, {k: v for k, v in run.meta.items() if k != "schema_version"}, run.records)
    return directory
