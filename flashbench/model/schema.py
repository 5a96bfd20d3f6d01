"""The one results schema: a record per case × backend, with units in the field names.

``results.json`` holds the run's metadata and every record (with raw samples);
``results.csv`` holds one tidy row per record with the scalar fields (``CSV_COLUMNS``).
Bump ``SCHEMA_VERSION`` whenever a field changes meaning or is removed, and teach :func:`upgrade`
to read the older version. Version 2 added the workload fields of the case (``workload``,
``window_left``, ``window_right``, ``kv_layout``, ``page_size``, ``lengths``, ``total_tokens``); a
version-1 record is a dense case and reads with their defaults.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

from .case import CASE_FIELDS, DTYPES, KV_LAYOUTS, MODES, WORKLOADS, Case, Task
from .fields import MAX_BATCH, MAX_HEAD_DIM, MAX_HEADS, MAX_SEQ_LEN, MAX_TOKENS
from .flops import attention_flops, min_hbm_bytes
from .lengths import parse_lengths, realise_budget
from .yaml_input import cut, preview

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
    # --- energy and clock (NVML, while the timed batches ran on the GPU) ---------------------
    energy_j: float | None = None      # per call: avg_power_w × median time
    avg_power_w: float | None = None   # average board power while the timed batches ran on the GPU
    tflop_per_j: float | None = None   # flops / energy_j / 1e12
    sm_clock_mhz: float | None = None  # median SM clock read while the timed batches ran (measure/sm_clock.py)
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

    def settle_texts(self) -> "Record":
        """This record with its free texts (:data:`FREE_TEXTS`) as results files hold them, one printable line
        each (:func:`printable_line`), in place: the writer's step. :func:`read_record` applies the same to a
        file a person edited, so a record flashbench wrote reads back unchanged."""
        for name in FREE_TEXTS:
            text = getattr(self, name)
            if isinstance(text, str):
                setattr(self, name, printable_line(text, TEXT_LIMITS.get(name)))
        return self

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


# --- reading records back ---------------------------------------------------------------------
# results.json comes back from disk, where a tool may have cut it short or a person edited it: each
# record is checked field by field, so that a bad value is one message naming it, not a TypeError
# deep inside `compare` or a MemoryError from a batch of 10**12 (the case derives its token count).

class RecordError(ValueError):
    """A record read from a file holds a field of the wrong type, or a value outside its domain."""


MAX_BACKEND_CHARS = 100  # backend names are short identifiers; they head every table row
BACKEND_NAME_RULE = f"1 to {MAX_BACKEND_CHARS} printable characters, no commas or white space"


def is_backend_name(name) -> bool:
    """Whether ``name`` is a backend's name: the registry's rule for a backend it registers, and results files'
    for a row they hold (a name with a newline or a terminal escape, from an edited file, would break the
    one-line messages and tables that show it; ``-b a,b`` lists names)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_BACKEND_CHARS and name.isprintable()
            and not any(c == "," or c.isspace() for c in name))


MAX_REASON_CHARS = 1000  # a reason is one line; a longer one is cut, on writing and on reading


# --- texts shown from a file --------------------------------------------------------------------
# A results file can hold any character, and commands print its texts in one-line messages, table rows, markdown
# cells and JUnit attributes: an ESC there starts a terminal sequence (clear the screen, retitle the window), a BEL
# rings, a line break splits the row. Free texts (reasons, descriptions, warnings) are kept, made printable lines;
# a text that keys a task or matches runs (a case field, a backend name, a config digest) is refused instead,
# since a mended key would name another task.

def printable_line(text, limit: int | None = None) -> str:
    """``text`` (made a str) as one printable line, cut to ``limit``: its lines joined with " | " (as a failure's
    multi-line message reads in a row), any other non-printable character written as its escape ("\\x1b").
    A printable line is returned as it is (the common case, one C-speed test); applied twice, the same as once."""
    text = text if isinstance(text, str) else str(text)
    if not text.isprintable():
        lines = (ln.strip() for ln in text.splitlines())
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in " | ".join(ln for ln in lines if ln))
    return text if limit is None else cut(text, limit)


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": None}  # how the writer spells non-finite floats
# (least, most) of each integer case field: the configs' maxima (model/fields.py)
_CASE_INTS = {"batch": (1, MAX_BATCH), "heads": (1, MAX_HEADS), "kv_heads": (1, MAX_HEADS),
              "seq_len_q": (1, MAX_SEQ_LEN), "seq_len_kv": (1, MAX_SEQ_LEN), "head_dim": (1, MAX_HEAD_DIM),
              "window_left": (-1, MAX_SEQ_LEN), "window_right": (-1, MAX_SEQ_LEN), "page_size": (0, MAX_SEQ_LEN),
              "total_tokens": (0, None)}
_CASE_WORDS = {"dtype": DTYPES, "mode": MODES, "workload": WORKLOADS, "kv_layout": KV_LAYOUTS}


def _bad(name: str, what: str, value) -> RecordError:
    return RecordError(f"{name}: {what} (got {preview(value)})")


def _int(name: str, v, least: int | None = None, most: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, "expected an integer", v)
    if (least is not None and v < least) or (most is not None and v > most):
        raise _bad(name, f"must be {least:,} or more" if most is None else f"must be between {least:,} and {most:,}", v)
    return v


def _float(name: str, v, least: float | None = None) -> float | None:
    if isinstance(v, str) and v in _NON_FINITE:
        v = _NON_FINITE[v]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(name, "expected a number or null", v)
    if least is not None and v < least:
        raise _bad(name, f"must be {least:g} or more", v)
    return float(v)


def _numbers(name: str, v, integers: bool = False) -> list:
    if not isinstance(v, list):
        raise _bad(name, "expected a list of numbers", v)
    kinds = (int,) if integers else (int, float)
    # x == x: a NaN literal (json reads one) is no time, and min() and max() step over it
    if all(type(x) in kinds and x == x for x in v) and 0 <= min(v, default=0) and max(v, default=0) < math.inf:
        return v  # the common case, fast: a baseline holds 10**6 samples
    if integers:
        return [_int(f"{name}[{i}]", x, 0) for i, x in enumerate(v)]
    values = [_float(f"{name}[{i}]", x, 0) for i, x in enumerate(v)]
    # lists of times (samples_ms, round_medians_ms): null, NaN and inf are no time (a median of them fails
    # to sort in baseline save's merge); a float field's null is "not measured", an entry of a list is not
    bad = next((i for i, x in enumerate(values) if x is None or x == math.inf), None)
    if bad is not None:
        raise _bad(f"{name}[{bad}]", "must be a finite time", v[bad])
    return values


def _case_value(name: str, v):
    """One case field, by the domain configs give it (model/fields.py)."""
    if isinstance(v, str) and not v.isprintable():  # refused, not mended: it keys the task (resume, the gate)
        raise _bad(name, "a control character in a case field (the field keys its task, so it is not mended)", v)
    if name in _CASE_INTS:
        return _int(name, v, *_CASE_INTS[name])
    if name in _CASE_WORDS:
        if v not in _CASE_WORDS[name]:
            raise _bad(name, f"expected one of {', '.join(_CASE_WORDS[name])}", v)
        return v
    if name == "causal":
        if not isinstance(v, bool):
            raise _bad(name, "expected true or false", v)
        return v
    try:  # lengths: "" (equal lengths) or a distribution's compact form
        if not isinstance(v, str) or (v and parse_lengths(v).longest > MAX_SEQ_LEN):
            raise ValueError
    except ValueError:
        raise _bad(name, "expected a length distribution such as uniform(1024..32768,seed=0) with lengths up to "
                         f"{MAX_SEQ_LEN:,}, or an empty string (equal lengths)", v) from None
    return v


def _case(d: dict) -> Case:
    missing = next((f for f in CASE_FIELDS if f not in d), None)
    if missing:
        raise RecordError(f"{missing}: missing")
    values = {f: _case_value(f, d[f]) for f in CASE_FIELDS}
    if values["workload"] == "varlen" and values["lengths"]:  # a budget its lengths must fill, boundedly
        _int("total_tokens", values["total_tokens"], 1, MAX_TOKENS)
        try:
            realise_budget(values["lengths"], values["total_tokens"])
        except ValueError as e:
            raise _bad("total_tokens", str(e), values["total_tokens"]) from None
    return Case(**values)


def _outcome(name: str, kind: str, v):
    """One outcome field by its declared type (``kind``: the dataclass annotation)."""
    timing = name.endswith("_ms")
    if kind == "str":
        if not isinstance(v, str):
            raise _bad(name, "expected a string", v)
        if name == "status":
            if v not in STATUSES:
                raise _bad(name, f"expected one of {', '.join(STATUSES)}", v)
            return v
        # a free text, as the writer writes it: a reason of a megabyte (an edited file) cut, an ESC written as \x1b
        return printable_line(v, TEXT_LIMITS.get(name))
    if kind == "float | None":
        value = _float(name, v, 0 if timing else None)
        if timing and value is not None and (value == math.inf or (name == "median_ms" and value == 0)):
            raise _bad(name, "must be a finite time > 0 (rates and ratios divide by it)" if name == "median_ms"
                       else "must be a finite time", v)
        return value
    if kind in ("int", "int | None"):
        return None if v is None and kind == "int | None" else _int(name, v, 0 if kind == "int" else None)
    if kind == "bool | None":
        if v is not None and not isinstance(v, bool):
            raise _bad(name, "expected true, false or null", v)
        return v
    values = _numbers(name, v, integers=kind == "list[int]")
    if name == "round_medians_ms" and 0 in values:  # each is a round's median_ms: spreads and rates divide by it
        raise _bad(f"{name}[{values.index(0)}]", "must be a finite time > 0 (rates and ratios divide by it)", 0.0)
    return values


_OUTCOME_KINDS = {f.name: f.type for f in fields(Record) if f.name in (*OUTCOME_FIELDS, *JSON_ONLY_FIELDS)}
# the record's free texts (every text but the status, a word), written and read as printable lines, and their bounds
FREE_TEXTS = tuple(f for f, kind in _OUTCOME_KINDS.items() if kind == "str" and f != "status")
TEXT_LIMITS = {"reason": MAX_REASON_CHARS}


def read_record(d) -> Record:
    """A record of results.json (in the current schema: :func:`upgrade` first), every field checked;
    RecordError names the first bad one. Fields this flashbench does not know are ignored."""
    if not isinstance(d, dict):
        raise RecordError(f"expected a mapping of fields (got {preview(d)})")
    backend = d.get("backend")
    if not is_backend_name(backend):
        raise _bad("backend", f"expected a backend name ({BACKEND_NAME_RULE})", backend)
    outcome = {k: _outcome(k, kind, d[k]) for k, kind in _OUTCOME_KINDS.items() if k in d}
    return Record(backend=backend, case=_case(d), **outcome)
