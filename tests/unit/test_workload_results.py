"""Results with the workload fields: schema version 2 reads version-1 files, compare/check key on the
new fields and work across the versions for dense cases, tables and plots show the workloads."""
import json

import pytest
from typer.testing import CliRunner

from synthetic import case, record, write_run
from flashbench.analysis.compare import compare_backends, shape_columns
from flashbench.cli import app
from flashbench.model.case import CASE_FIELDS, Case
from flashbench.model.flops import min_hbm_bytes
from flashbench.model.schema import SCHEMA_VERSION
from flashbench.report.format import compact_shape
from flashbench.results.files import ResultsError, load_run

runner = CliRunner()
NEW_FIELDS = ("workload", "window_left", "window_right", "kv_layout", "page_size", "lengths", "total_tokens")


def as_version_1(directory):
    """Rewrite a results directory as flashbench wrote it before the workload fields existed."""
    p = directory / "results.json"
    doc = json.loads(p.read_text())
    doc["schema_version"] = 1
    for r in doc["records"]:
        for f in NEW_FIELDS:
            del r[f]
    p.write_text(json.dumps(doc))
    return directory


def test_schema_is_2_and_the_new_fields_are_columns(tmp_path):
    assert SCHEMA_VERSION == 2
    run = load_run(write_run(tmp_path / "r", [record("naive", case(1024))]))
    assert set(NEW_FIELDS) <= set(CASE_FIELDS) and set(NEW_FIELDS) <= set(run.frame().columns)
    header = (tmp_path / "r" / "results.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("mode") + 1:header.index("mode") + 8] == list(NEW_FIELDS)


def test_version_1_files_load_as_dense_cases(tmp_path):
    old = as_version_1(write_run(tmp_path / "old", [record("naive", case(1024)), record("sdpa", case(2048))]))
    run = load_run(old)
    assert [r.case for r in run.records] == [case(1024), case(2048)]
    assert run.records[0].case.total_tokens == case(1024).batch * 1024


def test_unknown_versions_are_still_refused(tmp_path):
    d = write_run(tmp_path / "r", [record("naive", case(1024))])
    doc = json.loads((d / "results.json").read_text())
    doc["schema_version"] = 99
    (d / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match="schema_version 99 is not supported"):
        load_run(d)
    r = runner.invoke(app, ["compare", str(d), str(d)])
    assert r.exit_code == 3


def _two_runs(tmp_path, slower=1.0):
    recs = lambda scale, seed: [record("sdpa_flash", case(1024), 1.0 * scale, seed=seed),  # noqa: E731
                                record("triton_fa2", case(1024), 0.8, seed=seed + 1)]
    old = as_version_1(write_run(tmp_path / "v1", recs(1.0, 1)))
    new = write_run(tmp_path / "v2", recs(slower, 10))
    return old, new


def test_check_between_a_version_1_baseline_and_a_version_2_run(tmp_path):
    old, new = _two_runs(tmp_path)
    r = runner.invoke(app, ["check", str(new), "--baseline", str(old)], env={"GITHUB_STEP_SUMMARY": ""})
    assert r.exit_code == 0, r.output
    assert "schema_version" in r.output  # noted, not a reason to refuse
    old, new = _two_runs(tmp_path / "slow", slower=1.5)
    r = runner.invoke(app, ["check", str(new), "--baseline", str(old)], env={"GITHUB_STEP_SUMMARY": ""})
    assert r.exit_code == 1, r.output  # the dense cases are matched and gated


def test_compare_between_versions(tmp_path):
    old, new = _two_runs(tmp_path, slower=1.5)
    r = runner.invoke(app, ["compare", str(old), str(new), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {x["backend"]: x for x in json.loads(r.stdout)}
    assert rows["sdpa_flash"]["change"] == "1.50x slower" and rows["triton_fa2"]["change"] == "within noise"


def decode_case(n_kv, layout="contiguous", page=0):
    return Case(8, 32, 8, 1, n_kv, 128, "bfloat16", True, "fwd", workload="decode", kv_layout=layout, page_size=page)


def decode_record(backend, c, ms, seed=0):
    r = record(backend, c, ms, seed=seed)
    r.min_hbm_bytes = min_hbm_bytes(c)
    r.hbm_gbps = r.min_hbm_bytes / (r.median_ms * 1e-3) / 1e9
    return r


def test_compare_keys_on_workload_fields_and_shows_them(tmp_path):
    recs = [decode_record(b, decode_case(n, *lay), ms * n / 4096, seed=i)
            for i, (b, ms) in enumerate((("sdpa_cudnn", 0.02), ("triton_decode", 0.03)))
            for n in (4096, 32768) for lay in (("contiguous", 0), ("paged", 16))]
    run = load_run(write_run(tmp_path / "d", recs))
    df = run.frame()
    cmp = compare_backends(df, "sdpa_cudnn", metric="gbps")
    assert len(cmp.rows) == 4  # contiguous and paged are different cases
    assert "kv_layout" in cmp.shape_columns and "page_size" in cmp.shape_columns
    assert "workload" not in shape_columns(df)  # it does not vary here
    assert cmp.geomean["triton_decode"] == pytest.approx(0.02 / 0.03, rel=0.05)
    shapes = {compact_shape(row) for _, row in df.iterrows()}
    assert "B8 H32/8 N1x4096 D128 bf16 causal fwd decode paged16" in shapes and len(shapes) == 4
    r = runner.invoke(app, ["compare", str(tmp_path / "d"), "--metric", "gbps", "--baseline", "sdpa_cudnn"])
    assert r.exit_code == 0, r.output
    assert "GB/s" in r.output and "paged" in r.output


def test_plot_draws_decode_bandwidth_against_cache_length(tmp_path):
    pytest.importorskip("matplotlib")
    from flashbench.report.plots import plot_frame

    recs = [decode_record(b, decode_case(n), ms * n / 4096, seed=i)
            for i, (b, ms) in enumerate((("sdpa_cudnn", 0.02), ("triton_decode", 0.03))) for n in (4096, 32768)]
    recs += [decode_record("triton_decode", decode_case(n, "paged", 16), 0.04 * n / 4096) for n in (4096, 32768)]
    infos = plot_frame(load_run(write_run(tmp_path / "d", recs)).frame(), tmp_path / "figs", "decode")
    assert [i.path.name for i in infos] == ["gbps_vs_cache_len.png"]
    assert infos[0].panels == 2 and any("paged16" in t for t in infos[0].titles)
    # a run of dense and decode rows gets both kinds of figures
    mixed = recs + [record("sdpa_flash", case(n), 0.1 * n / 512, seed=n) for n in (512, 1024)]
    names = [i.path.name for i in plot_frame(load_run(write_run(tmp_path / "m", mixed)).frame(), tmp_path / "f2")]
    assert names == ["tflops_vs_seqlen.png", "peak_hbm_vs_seqlen.png", "gbps_vs_cache_len.png"]
