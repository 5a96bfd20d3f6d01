"""Reading and writing result directories (``results.json`` + ``results.csv``).

Files are rewritten after every record through a temporary file and ``os.replace``, so an
interrupted sweep (Ctrl-C, kill) always leaves valid files holding every finished record.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..model.schema import (CSV_COLUMNS, READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, Record, RecordError,
                            printable_line, read_record, upgrade)
from ..model.yaml_input import ConfigError, cut, load_yaml, preview

if TYPE_CHECKING:
    import pandas as pd


class ResultsError(Exception):
    """A results file is missing, unreadable or of an unknown schema (exit code 2)."""


class SchemaVersionError(ResultsError):
    """A results file of a schema version this flashbench cannot read (``compare`` and ``check``: not
    comparable, exit code 3)."""

    def __init__(self, path, version):
        self.path, self.version = path, version
        super().__init__(f"{path}: schema_version {preview(version)} is not supported (this flashbench reads "
                         f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))})")


def _atomic_write(path: Path, text: str) -> None:
    # created like any file (0666 less the umask), not mkstemp's 0600: results are shared files
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


@dataclass
class Run:
    """One results directory in memory: metadata plus records."""

    meta: dict
    records: list[Record] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return records_frame(self.records)


def _settings(config: dict):
    """The settings a run's recorded config text holds, comments and layout aside; None without a text
    or when it no longer parses."""
    text = config.get("text")
    if not isinstance(text, str) or not text:
        return None
    try:
        return load_yaml(text, "config")
    except ConfigError:
        return None


def same_settings(old: dict, new: dict) -> bool:
    """Whether two runs' configs (their ``config`` metadata) hold the same settings: equal texts, or texts
    that differ only in comments and layout (a comment corrected after a baseline was recorded does not
    make it another config)."""
    if old.get("sha256") == new.get("sha256"):
        return True
    a, b = _settings(old), _settings(new)
    return a is not None and a == b


# A run written before results recorded their timing ran without a rest before the warm-up (timing.rest_ms came
# with the record); its other timing settings are in its config's text.
UNRECORDED_TIMING = {"rest_ms": 0.0}
TIMING_CHARS = 300  # of each side's list of settings that differ


def timing_differs(old: dict, new: dict) -> tuple[str, str] | None:
    """The timing settings (``timing`` of two runs' metadata: as run, defaults included) in which the runs differ,
    as each side's "name value, ..." text; a run that recorded none is taken as timed without a rest. None when
    neither recorded any, or they agree."""
    to, tn = old.get("timing"), new.get("timing")
    if not isinstance(to, dict) and not isinstance(tn, dict):
        return None
    to = to if isinstance(to, dict) else UNRECORDED_TIMING
    tn = tn if isinstance(tn, dict) else UNRECORDED_TIMING
    keys = [k for k in dict.fromkeys([*to, *tn]) if k in to and k in tn and to[k] != tn[k]]
    if not keys:
        return None

    def side(t):
        return cut(", ".join(f"{cut(k, 40)} {cut(t[k], 40)}" for k in keys), TIMING_CHARS)
    return side(to), side(tn)


def gpu_model(meta: dict) -> str:
    """The GPU model a run's metadata names ("cpu" for CPU runs): runs of different models never compare."""
    env = meta.get("environment") or {}
    return env.get("gpu_name") or env.get("device") or "unknown"


def records_frame(records: list[Record]) -> pd.DataFrame:
    import pandas as pd  # here, not at the top: commands that only catch ResultsError do not pay for pandas

    return pd.DataFrame([r.row() for r in records], columns=list(CSV_COLUMNS))


class ResultsWriter:
    """Keeps ``results.json`` and ``results.csv`` current after every record.

    Each record is serialised once, when it is added, and every flush writes the cached texts:
    rewriting the whole document from the records each time made a 700-record sweep spend tens of
    seconds re-encoding old records (quadratic in the record count). Code that edits records
    already added (``flashbench profile`` fills in measured bytes) calls ``flush(reserialize=True)``.

    ``deferred``: write nothing until the first record (or the end of the run), so that the files of an
    earlier run this one replaces (``flashbench run --force``) stay whole if it stops before it has a row to
    put in their place (Ctrl-C while compiling, no worker starts, a Ray cluster without GPUs).
    """

    def __init__(self, directory: str | Path, meta: dict, records: list[Record] | None = None,
                 deferred: bool = False):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = settled_meta({"schema_version": SCHEMA_VERSION, **meta})
        self.records: list[Record] = [r.settle_texts() for r in records or []]
        self.deferred = deferred and not self.records  # True while nothing of this run is written
        self._rows = {r.task().key(): i for i, r in enumerate(self.records)}  # task key -> its (last) row
        self._json_texts: list[str] = []
        self._csv_lines: list[str] = []
        self.flush(reserialize=True)

    @property
    def json_path(self) -> Path:
        return self.dir / "results.json"

    @property
    def csv_path(self) -> Path:
        return self.dir / "results.csv"

    def add(self, record: Record) -> None:
        self._rows[record.task().key()] = len(self.records)
        self.records.append(record.settle_texts())
        self.flush()

    def row(self, key: tuple) -> Record | None:
        """The row of the task with this key (:meth:`~flashbench.model.case.Task.key`), if any."""
        i = self._rows.get(key)
        return self.records[i] if i is not None else None

    def put(self, record: Record) -> None:
        """Replace the row of ``record``'s task in place (a later round merged into it), else add it."""
        i = self._rows.get(record.task().key())
        if i is None:
            return self.add(record)
        self.records[i] = record.settle_texts()
        if i < len(self._json_texts):
            self._json_texts[i] = json.dumps(_json_safe(record.to_dict()))
            self._csv_lines[i] = _csv_line(record)
        self.flush()

    def update_meta(self, **kw) -> None:
        self.meta.update(settled_meta(kw))
        self.flush()

    def flush(self, reserialize: bool = False) -> None:
        self.deferred = self.deferred and not self.records and not self.meta.get("finished")
        if self.deferred:
            return
        if reserialize:
            self._json_texts, self._csv_lines = [], []
        for r in self.records[len(self._json_texts):]:
            self._json_texts.append(json.dumps(_json_safe(r.to_dict())))
            self._csv_lines.append(_csv_line(r))
        meta = json.dumps(_json_safe({k: v for k, v in self.meta.items() if k != "records"}), indent=1)
        records = "[\n" + ",\n".join(self._json_texts) + "\n]" if self._json_texts else "[]"
        head = meta[:-1].rstrip() + ("," if len(meta) > 2 else "")
        _atomic_write(self.json_path, f'{head}\n "records": {records}\n}}\n')
        _atomic_write(self.csv_path, _CSV_HEADER + "".join(self._csv_lines))


def write_csv(path: str | Path, records: list[Record]) -> None:
    """``results.csv`` of ``records`` (atomically), as a :class:`ResultsWriter` writes it."""
    _atomic_write(Path(path), _CSV_HEADER + "".join(_csv_line(r) for r in records))


def results_files(path: str | Path) -> set[Path]:
    """The files of a results directory (or of the directory of a results.json), resolved: what a
    command writing some other file (JUnit XML, a summary) must never write over."""
    p = Path(path).resolve()
    directory = p.parent if p.name == "results.json" or p.is_file() else p
    return {directory / "results.json", directory / "results.csv"}


def held_results(directory: str | Path) -> str | None:
    """The results file ``directory`` already holds (results.json or results.csv), if any: a command
    that writes new results refuses such a directory rather than replace what it holds."""
    return next((name for name in ("results.json", "results.csv") if (Path(directory) / name).exists()), None)


def _csv_line(r: Record) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writerow({c: ("" if v is None else v) for c, v in r.row().items()})
    return buf.getvalue()


_CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"


MAX_WARNINGS = 20  # a run has a few (throttling, the GPU monitor); a merged baseline a few per run
MAX_WARNING_CHARS = 1024  # a warning is a line; a longer one (an edited file) is cut (settled_meta)


def shown_path(path) -> str:
    """A path as messages show it: whole, unless longer than any real one (then its two ends)."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:120]}…{text[-60:]} ({len(text):,} characters)"


def os_error_text(e: OSError) -> str:
    """An OSError as a message: "PATH: reason" for a path the file system refused (too long, not a directory,
    no permission, gone; the path as :func:`shown_path` shows it), else its type and text."""
    return f"{shown_path(e.filename)}: {e.strerror or e}" if e.filename is not None else f"{type(e).__name__}: {e}"


def results_json(path: str | Path) -> Path:
    """The results.json of a results directory (or the file itself); ResultsError when there is none, or
    when it is no regular file (reading /dev/zero would never end) or the file system refuses the path."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / "results.json"
        if not p.is_file():
            raise ResultsError(f"{path}: no results.json found" if not p.exists() else f"{path}: not a results file")
    except OSError as e:  # a name too long: the name is cut, the reason kept
        raise ResultsError(f"{shown_path(p)}: cannot read: {e.strerror or e}") from None
    return p


def load_run(path: str | Path) -> Run:
    """Load a results directory or a results.json file (older schema versions are upgraded on reading).

    Everything read is checked (the metadata flashbench reads back, every field of every record), so
    a truncated, hand-edited or foreign file is a ResultsError naming the first bad field."""
    p = results_json(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:  # a permission, a directory named results.json
        raise ResultsError(f"{shown_path(p)}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # UnicodeDecodeError and JSON errors are ValueErrors
        raise ResultsError(f"{p}: not a readable results file: {str(e)[:200]}") from None
    except RecursionError:
        raise ResultsError(f"{p}: not a readable results file: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise ResultsError(f"{p}: not a flashbench results file (no list of 'records')")
    version = doc.get("schema_version")
    if type(version) is not int:  # True == 1 and 2.0 == 2, but neither is a version: a malformed file
        raise ResultsError(f"{p}: schema_version {preview(version)} is not a version number")
    if version not in READABLE_SCHEMA_VERSIONS:  # another flashbench's file
        raise SchemaVersionError(p, version)
    problem = meta_problem(doc)
    if problem:
        raise ResultsError(f"{p}: {problem}")
    records = []
    for i, r in enumerate(doc["records"]):
        try:
            records.append(read_record(upgrade(r, version) if isinstance(r, dict) else r))
        except RecordError as e:  # "field: what is wrong", or what is wrong with the whole record
            raise ResultsError(f"{p}: records[{i}]{'.' if isinstance(r, dict) else ': '}{e}") from None
    meta = settled_meta({k: v for k, v in doc.items() if k != "records"})
    warnings = meta.get("warnings") or []
    if len(warnings) > MAX_WARNINGS:  # every report prints them: ten thousand would flood it
        extra = len(warnings) - MAX_WARNINGS + 1
        meta["warnings"] = warnings[:MAX_WARNINGS - 1] + [f"… and {extra} more warnings in {p}"]
    return Run(meta, records)


MAX_META_CHARS = 256  # a GPU name, a driver version, a config name: echoed in warnings and titles
# the metadata commands read back, and the keys of its mappings they print
_META_MAPPINGS = {"environment": ("gpu_name", "gpu_uuid", "driver_version", "device", "cuda", "torch", "triton",
                                  "git_commit"),
                  "config": ("name", "sha256")}


def _matched_texts(doc: dict) -> dict[str, list]:
    """The metadata's texts that runs are matched by: refused with a control character rather than mended (as a
    case field is), since a mended one would match no config (resume), no row (the reference backend) or
    another run's (baseline merges)."""
    return {"config.sha256": [(doc.get("config") or {}).get("sha256")], "backends": doc.get("backends") or [],
            "reference_backend": [doc.get("reference_backend")]}


# the metadata's free texts that commands print (titles, environment differences, warnings): kept, made printable
# lines; the launch's config text is YAML, parsed and never printed, so its lines stay
_META_TEXTS = {"environment": _META_MAPPINGS["environment"], "config": ("name", "path")}


def settled_meta(meta: dict) -> dict:
    """``meta`` with the texts commands print from it as one printable line each (:func:`printable_line`, a
    warning cut to MAX_WARNING_CHARS): what the writer writes and the reader reads (an edited file is mended
    here), so that a file flashbench wrote reads back unchanged. The mappings are copied, not changed."""
    meta = dict(meta)
    for key, names in _META_TEXTS.items():
        if isinstance(meta.get(key), dict):
            meta[key] = {k: printable_line(v) if k in names and isinstance(v, str) else v for k, v in meta[key].items()}
    for key in ("executor", "created_utc"):
        if isinstance(meta.get(key), str):
            meta[key] = printable_line(meta[key])
    if isinstance(meta.get("warnings"), list):
        meta["warnings"] = [printable_line(w, MAX_WARNING_CHARS) if isinstance(w, str) else w for w in meta["warnings"]]
    return meta


def meta_problem(doc: dict) -> str | None:
    """What is wrong with a results document's metadata, as far as flashbench reads it back (None: nothing)."""
    for key, shown in _META_MAPPINGS.items():
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{key}: expected a mapping (got {preview(value)})"
        for k in shown:
            v = value.get(k)
            if v is not None and not (isinstance(v, str) and len(v) <= MAX_META_CHARS):
                return f"{key}.{k}: expected a string of at most {MAX_META_CHARS} characters (got {preview(v)})"
    for key in ("config.path", "config.text", "executor", "created_utc"):
        parent, _, k = key.rpartition(".")
        v = (doc.get(parent) or {}).get(k) if parent else doc.get(k)
        if v is not None and not isinstance(v, str):
            return f"{key}: expected a string (got {preview(v)})"
    v = doc.get("backends")
    if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and len(x) <= MAX_META_CHARS for x in v)):
        return f"backends: expected a list of strings of at most {MAX_META_CHARS} characters (got {preview(v)})"
    v = doc.get("reference_backend")  # a backend's name, echoed by `compare` when the run has no rows of it
    if v is not None and not (isinstance(v, str) and len(v) <= MAX_META_CHARS):
        return f"reference_backend: expected a string of at most {MAX_META_CHARS} characters (got {preview(v)})"
    v = doc.get("warnings")  # a long one is cut on reading (settled_meta), not refused: the records are still good
    if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        return f"warnings: expected a list of strings (got {preview(v)})"
    for key, values in _matched_texts(doc).items():
        bad = next((x for x in values if isinstance(x, str) and not x.isprintable()), None)
        if bad is not None:
            return f"{key}: a control character (runs are matched by it, so it is not mended) (got {preview(bad)})"
    for key, least in (("rounds", 1), ("tasks_total", 0)):
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            return f"{key}: expected an integer of at least {least} (got {preview(v)})"
    if doc.get("finished") is not None and not isinstance(doc["finished"], bool):
        return f"finished: expected true or false (got {preview(doc['finished'])})"
    return None
