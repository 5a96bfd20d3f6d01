"""The one results schema: a record per case × backend, with units in the field names.

``results.json`` holds the run's metadata and every record (with raw samples);
``results.csv`` holds one tidy row per record with the scalar fields (``CSV_COLUMNS``).
Bump ``SCHEMA_VERSION`` whenever a field changes meaning or is removed, and teach :func:`upgrade`
to read the older version. Version 2 added the workload fields of the case (``workload``,
``window_left``, ``window_right``, ``kv_layout``, ``page_size``, ``lengths``, ``total_tokens``); a
version-1 record is a dense case and reads with their defaults.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from .case import CASE_FIELDS, Case, Task
from .flops import attention_flops, min_hbm_bytes

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # what upgrade() reads

# Final states of a record.  "crashed" and "timeout" come from isolated workers.
STATUSES = ("ok", "skipped", "oom", "error", "mismatch", "crashed", "timeout")
FAILED_STATUSES = ("oom", "error", "mismatch", "crashed", "timeout")
# Worse states rank higher: used by the regression gate ("a status that got worse").
STATUS_RANK = {"ok": 0, "skipped": 0, "mismatch": 2, "oom": 2, "timeout": 3, "error": 3, "crashed": 3}


@dataclass
class Record:
    """One row. The case is embedded (its fields are defined once, in :class:`Case`); in files and
    frames they are flattened next to ``backend``, so the columns read backend, case fields, outcome."""

    # --- the task -------------------------------------------------------------------------
    backend: str
    case: Case
    # --- outcome --------------------------------------------------------------------------
    status: str = "ok"
    reason: str = ""                 # why skipped / the error message / what mismatched
    # --- timing (milliseconds per call) ---------------------------------------------------
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    samples: int = 0
    rounds: int = 1                  # rounds of the sweep whose measurements this row holds (0: settled unmeasured)
    timing_method: str = ""          # how the samples were taken: flashbench.measure.timer.TIMING_METHODS
    noise_pct: float | None = None   # half-width of the median's 95% confidence interval, in % of the median
    host_ms: float | None = None     # host (CPU) time to enqueue one call while the GPU waited (median)
    launch_bound: bool | None = None  # host_ms > median_ms: an eager loop of this call waits on the host
    # --- derived throughput ---------------------------------------------------------------
    flops: float | None = None       # analytic count (flashbench.model.flops.attention_flops)
    tflops: float | None = None      # flops / median time / 1e12
    min_hbm_bytes: int | None = None  # analytic minimum traffic (flashbench.model.flops.min_hbm_bytes)
    hbm_gbps: float | None = None    # min_hbm_bytes / median time / 1e9 (GB/s, decimal)
    pct_peak_flops: float | None = None  # tflops over the device's sustained compute roof (env --ceilings), in %
    pct_hbm: float | None = None         # hbm_gbps over the device's read-bandwidth roof (env --ceilings), in %
    # --- energy (NVML's energy counter around the timed batches) ----------------------------
    energy_j: float | None = None      # per call: avg_power_w × median time
    avg_power_w: float | None = None   # average board power while the timed batches ran on the GPU
    tflop_per_j: float | None = None   # flops / energy_j / 1e12
    # --- memory ---------------------------------------------------------------------------
    peak_hbm_bytes: int | None = None      # peak allocated during one call, above what was allocated before it
    peak_hbm_abs_bytes: int | None = None  # absolute peak allocated during that call (inputs included)
    hbm_bytes_read: int | None = None      # measured DRAM bytes (flashbench profile, ncu), per call
    hbm_bytes_written: int | None = None
    # --- correctness ----------------------------------------------------------------------
    max_abs_err: float | None = None  # worst over O (and dQ, dK, dV when the mode has a backward)
    rel_err: float | None = None      # worst ||x - ref|| / ||ref|| over the same tensors
    tolerance_abs: float | None = None  # the max_abs_err bound this record was checked against
    # --- provenance -----------------------------------------------------------------------
    device_name: str = ""
    device_index: int | None = None
    device_uuid: str = ""
    backend_config: str = ""          # e.g. the autotuned Triton config the kernel chose
    wall_s: float | None = None       # wall time spent on this record (correctness + memory + timing)
    samples_ms: list[float] = field(default_factory=list)  # raw samples (JSON only), round after round
    round_medians_ms: list[float] = field(default_factory=list)  # each round's median (JSON only; empty: one round)
    round_samples: list[int] = field(default_factory=list)  # each round's share of samples_ms (JSON only)

    @classmethod
    def for_task(cls, task: Task, **kw) -> "Record":
        """A record of ``task``; every row carries the case's work counts, whatever its status."""
        kw.setdefault("flops", attention_flops(task.case))
        kw.setdefault("min_hbm_bytes", min_hbm_bytes(task.case))
        return cls(backend=task.backend, case=task.case, **kw)

    def set_rates(self) -> None:
        """``tflops`` and ``hbm_gbps`` from ``median_ms``: the one place they are computed."""
        self.tflops = self.flops / (self.median_ms * 1e-3) / 1e12 if self.flops is not None else None
        self.hbm_gbps = self.min_hbm_bytes / (self.median_ms * 1e-3) / 1e9 if self.min_hbm_bytes is not None else None

    def task(self) -> Task:
        return Task(self.case, self.backend)

    def to_dict(self) -> dict:
        """The flat form written to results.json: backend, the case fields, then the outcome."""
        d = {"backend": self.backend, **self.case.as_dict()}
        d.update({f: getattr(self, f) for f in OUTCOME_FIELDS})
        d.update({f: list(getattr(self, f)) for f in JSON_ONLY_FIELDS})
        return d

    def row(self) -> dict:
        """The scalar columns (``CSV_COLUMNS``) of this record."""
        return {"backend": self.backend, **self.case.as_dict(), **{f: getattr(self, f) for f in OUTCOME_FIELDS}}

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        known = set(OUTCOME_FIELDS) | set(JSON_ONLY_FIELDS)
        return cls(backend=d["backend"], case=Case.from_values(d),
                   **{k: v for k, v in d.items() if k in known})


# lists: in results.json only, never in results.csv
JSON_ONLY_FIELDS = ("samples_ms", "round_medians_ms", "round_samples")
OUTCOME_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("backend", "case", *JSON_ONLY_FIELDS))
RECORD_FIELDS = ("backend", *CASE_FIELDS, *OUTCOME_FIELDS, *JSON_ONLY_FIELDS)
CSV_COLUMNS = tuple(f for f in RECORD_FIELDS if f not in JSON_ONLY_FIELDS)


def upgrade(record: dict, version) -> dict:
    """A record dict written by ``version`` in the current version's form (ValueError if unreadable).

    Version 1 predates the workload fields: its records are dense cases, so the missing case fields
    take their defaults (``total_tokens`` is then derived from the shape).
    """
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"schema_version {version!r} is not supported (this flashbench reads "
                         f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))})")
    if version == 1:
        defaults = {f.name: f.default for f in fields(Case) if f.default is not MISSING}
        record = {**defaults, **record}
    return record
