"""The results schema round-trips; files are valid after every record; bad files are clean errors."""
import csv
import json

import pytest

from flashbench.model.case import Case, Task
from flashbench.results.files import ResultsError, ResultsWriter, load_run
from flashbench.model.schema import CSV_COLUMNS, SCHEMA_VERSION, Record

REQUIRED_CSV = ("backend, batch, heads, kv_heads, seq_len_q, seq_len_kv, head_dim, dtype, causal, mode, status, "
                "median_ms, p20_ms, p80_ms, min_ms, samples, tflops, hbm_gbps, peak_hbm_bytes, max_abs_err, rel_err").split(", ")


def rec(backend="naive", status="ok", **kw):
    t = Task(Case(1, 2, 2, 64, 64, 32, "float32", False, "fwd"), backend)
    base = dict(status=status, median_ms=1.5, p20_ms=1.4, p80_ms=1.6, min_ms=1.3, samples=3, samples_ms=[1.3, 1.5, 1.6],
                tflops=0.1, max_abs_err=float("nan") if status == "mismatch" else 1e-6)
    base.update(kw)
    return Record.for_task(t, **base)


def test_csv_has_the_documented_columns():
    assert set(REQUIRED_CSV) <= set(CSV_COLUMNS)
    assert "samples_ms" not in CSV_COLUMNS


def test_round_trip(tmp_path):
    w = ResultsWriter(tmp_path / "run", {"environment": {"gpu_name": "X"}})
    w.add(rec())
    w.add(rec("sdpa", status="error", reason="boom", median_ms=None))
    run = load_run(tmp_path / "run")
    assert run.meta["schema_version"] == SCHEMA_VERSION and run.meta["environment"]["gpu_name"] == "X"
    assert [r.backend for r in run.records] == ["naive", "sdpa"]
    assert run.records[0].samples_ms == [1.3, 1.5, 1.6]
    assert run.records[0].case == rec().case
    df = run.frame()
    assert list(df["status"]) == ["ok", "error"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert rows[1]["reason"] == "boom" and rows[1]["median_ms"] == ""


def test_non_finite_numbers_stay_valid_json(tmp_path):
    w = ResultsWriter(tmp_path, {})
    w.add(rec(status="mismatch"))
    json.loads((tmp_path / "results.json").read_text())  # strict JSON: no NaN literal
    assert load_run(tmp_path).records[0].max_abs_err is None


def test_files_are_complete_after_every_record(tmp_path):
    w = ResultsWriter(tmp_path, {})
    for i in range(3):
        w.add(rec(backend=f"b{i}"))
        assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == i + 1
        assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == i + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_bad_files(tmp_path):
    with pytest.raises(ResultsError, match="no results.json"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not a readable results file"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 999, "records": []}))
    with pytest.raises(ResultsError, match="schema_version 999"):
        load_run(tmp_path)


def test_each_record_is_encoded_once(tmp_path, monkeypatch):
    # a long sweep must not re-encode every earlier record after each new one (quadratic cost)
    calls = []
    real = Record.to_dict
    monkeypatch.setattr(Record, "to_dict", lambda self: calls.append(1) or real(self))
    w = ResultsWriter(tmp_path, {})
    for i in range(20):
        w.add(rec(backend=f"b{i}"))
    w.update_meta(finished=True)
    assert len(calls) == 20
    assert [r.backend for r in load_run(tmp_path).records] == [f"b{i}" for i in range(20)]


def test_edited_records_reach_the_files_on_reserialize(tmp_path):
    w = ResultsWriter(tmp_path, {"x": 1})
    w.add(rec())
    w.records[0].hbm_bytes_read = 1234  # as flashbench profile does after ncu
    w.flush()
    assert load_run(tmp_path).records[0].hbm_bytes_read is None  # cached text: unchanged
    w.flush(reserialize=True)
    run = load_run(tmp_path)
    assert run.records[0].hbm_bytes_read == 1234 and run.meta["x"] == 1
    assert list(csv.DictReader(open(tmp_path / "results.csv")))[0]["hbm_bytes_read"] == "1234"
