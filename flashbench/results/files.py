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

from ..model.schema import CSV_COLUMNS, READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, Record, upgrade

if TYPE_CHECKING:
    import pandas as pd


class ResultsError(Exception):
    """A results file is missing, unreadable or of an unknown schema (exit code 2)."""


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
    """

    def __init__(self, directory: str | Path, meta: dict, records: list[Record] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = {"schema_version": SCHEMA_VERSION, **meta}
        self.records: list[Record] = list(records or [])
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
        self.records.append(record)
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
        self.records[i] = record
        if i < len(self._json_texts):
            self._json_texts[i] = json.dumps(_json_safe(record.to_dict()))
            self._csv_lines[i] = _csv_line(record)
        self.flush()

    def update_meta(self, **kw) -> None:
        self.meta.update(kw)
        self.flush()

    def flush(self, reserialize: bool = False) -> None:
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


def _csv_line(r: Record) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writerow({c: ("" if v is None else v) for c, v in r.row().items()})
    return buf.getvalue()


_CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"


def load_run(path: str | Path) -> Run:
    """Load a results directory or a results.json file (older schema versions are upgraded on reading)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.exists():
        raise ResultsError(f"{path}: no results.json found")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{p}: not a readable results file: {e}") from None
    if not isinstance(doc, dict) or "records" not in doc:
        raise ResultsError(f"{p}: not a flashbench results file (no 'records')")
    version = doc.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ResultsError(f"{p}: schema_version {version!r} is not supported (this flashbench reads "
                           f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))})")
    try:
        records = [Record.from_dict(upgrade(r, version)) for r in doc["records"]]
    except (TypeError, KeyError, ValueError) as e:
        raise ResultsError(f"{p}: malformed record: {e}") from None
    meta = {k: v for k, v in doc.items() if k != "records"}
    return Run(meta, records)
