"""`flashbench check` (the CI gate), thresholds, the noise tests and `flashbench baseline save`."""
import json
import random
import re
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from synthetic import H100, case, record, write_run
from flashbench.cli import app
from flashbench.analysis.noise import beyond_noise, mann_whitney_u
from flashbench.analysis.thresholds import load_thresholds, parse_thresholds
from flashbench.model.yaml_input import ConfigError

runner = CliRunner()
C1, C2, C3 = case(1024), case(4096), case(4096, causal=True)


# three rounds a side, their levels within ±1% of each other: the run-to-run noise is measured
ROUNDS = dict(rounds=3, drift=0.01)


def _baseline(tmp_path, **kw):
    return write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, seed=1, **ROUNDS),
                                         record("triton_fa2", C1, 0.8, seed=2, **ROUNDS),
                                         record("sdpa_flash", C2, 4.0, seed=3, **ROUNDS),
                                         record("triton_fa2", C2, 3.0, seed=4, **ROUNDS)], **kw)


def _current(tmp_path, changes=None, drop=(), statuses=None, spread=0.01, **kw):
    changes, statuses = changes or {}, statuses or {}
    recs = []
    for i, (b, c, ms) in enumerate((("sdpa_flash", C1, 1.0), ("triton_fa2", C1, 0.8),
                                    ("sdpa_flash", C2, 4.0), ("triton_fa2", C2, 3.0))):
        if (b, c) in drop:
            continue
        recs.append(record(b, c, ms * changes.get((b, c), 1.0), spread=spread, seed=100 + i,
                           status=statuses.get((b, c), "ok"), reason="boom" if (b, c) in statuses else "", **ROUNDS))
    return write_run(tmp_path / "cur", recs, **kw)


def check(*args, env=None):
    return runner.invoke(app, ["check", *map(str, args)], env=env or {"GITHUB_STEP_SUMMARY": ""})


# --- the gate ---------------------------------------------------------------------------------

def test_identical_runs_pass(tmp_path):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path), "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout


def test_ten_percent_slowdown_beyond_noise_fails(tmp_path):
    base = _baseline(tmp_path)
    cur = _current(tmp_path, {("triton_fa2", C2): 1.10})
    r = check(cur, "--baseline", base)
    assert r.exit_code == 1, r.output
    assert "regression" in r.stdout and "triton_fa2" in r.stdout
    # the latency row of the slowed case says how much slower (about 10%: its samples are redrawn)
    (row,) = [line for line in r.stdout.splitlines() if "triton_fa2" in line and "N4096" in line and "slower" in line]
    assert 8.0 < float(re.search(r"\| ([\d.]+)% slower \|", row).group(1)) < 12.0, row


def test_ten_percent_shift_inside_wide_samples_passes(tmp_path):
    # the same wide sample shape (±30%), scaled by 1.10: the median moves 10%, the intervals overlap
    base = write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, spread=0.3, n=12, seed=1),
                                         record("sdpa_flash", C2, 4.0, spread=0.3, n=12, seed=3)])
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, spread=0.3, n=12, seed=1),
                                       record("sdpa_flash", C2, 4.4, spread=0.3, n=12, seed=3)])
    r = check(cur, "--baseline", base, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    lat = [x for x in rows if x["metric"] == "latency" and x["seq_len_q"] == 4096][0]
    assert lat["change"] == pytest.approx(0.10) and lat["beyond_noise"] is False and lat["note"] == "within noise"
    # the same shift with tight samples (and tight rounds) is a regression
    tight = write_run(tmp_path / "tight", [record("sdpa_flash", C1, 1.0, seed=1, **ROUNDS),
                                           record("sdpa_flash", C2, 4.4, seed=3, **ROUNDS)])
    assert check(tight, "--baseline", write_run(tmp_path / "tb", [record("sdpa_flash", C1, 1.0, seed=1, **ROUNDS),
                                                                  record("sdpa_flash", C2, 4.0, seed=3, **ROUNDS)])
                 ).exit_code == 1


def test_improvement_passes(tmp_path):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path, {("triton_fa2", C2): 0.8}), "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "improved" in r.stdout


def test_tiny_kernel_under_min_abs_ms_never_regresses(tmp_path):
    base = write_run(tmp_path / "base", [record("sdpa_flash", C1, 0.010, seed=1)])
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 0.020, seed=2)])  # 2x slower, but +10 µs
    assert check(cur, "--baseline", base).exit_code == 0
    assert check(cur, "--baseline", base, "--thresholds", _thr(tmp_path, "defaults: {min_abs_ms: 0.001}\n")).exit_code == 1


@pytest.mark.parametrize("status", ["mismatch", "error", "oom", "crashed", "timeout"])
def test_worse_status_fails(tmp_path, status):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path, statuses={("sdpa_flash", C1): status}), "--baseline", base)
    assert r.exit_code == 1, r.output
    assert f"ok → {status}" in r.stdout


def test_missing_case_reported_and_fails_with_require_all(tmp_path):
    base = _baseline(tmp_path)
    cur = _current(tmp_path, drop={("triton_fa2", C2)})
    r = check(cur, "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "missing" in r.stdout
    r = check(cur, "--baseline", base, "--require-all")
    assert r.exit_code == 1, r.output


def test_gpu_mismatch_exit_3(tmp_path):
    base = _baseline(tmp_path)
    cur = _current(tmp_path, env={**H100, "gpu_name": "NVIDIA A100-SXM4-80GB"})
    r = check(cur, "--baseline", base)
    assert r.exit_code == 3, r.output
    assert "GPU differs" in r.stderr


def test_driver_change_only_warns(tmp_path):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path, env={**H100, "driver_version": "590.1"}), "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "driver differs" in r.stdout


def test_another_unit_of_the_same_gpu_model_is_a_note_not_a_warning(tmp_path):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path, env={**H100, "gpu_uuid": "GPU-bbbb"}), "--baseline", base)
    assert r.exit_code == 0, r.output
    assert f"another GPU of the same model ({H100['gpu_uuid']} old, GPU-bbbb new)" in " ".join(r.stdout.split())
    assert "warning" not in r.stderr
    r = check(_current(tmp_path), "--baseline", base)
    assert "another GPU" not in r.stdout
    r = check(_current(tmp_path, env={k: v for k, v in H100.items() if k != "gpu_uuid"}), "--baseline", base)
    assert "another GPU" not in r.stdout  # a run that did not record its unit: nothing to compare


def test_schema_version_mismatch_exit_3(tmp_path):
    base = _baseline(tmp_path)
    doc = json.loads((base / "results.json").read_text())
    doc["schema_version"] = 0
    (base / "results.json").write_text(json.dumps(doc))
    r = check(_current(tmp_path), "--baseline", base)
    assert r.exit_code == 3, r.output
    assert "schema_version" in r.stderr


def test_missing_results_exit_2(tmp_path):
    base = _baseline(tmp_path)
    assert check(tmp_path / "nope", "--baseline", base).exit_code == 2
    assert check(base, "--baseline", tmp_path / "nope").exit_code == 2


def _thr(tmp_path, text):
    p = tmp_path / "thr.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, field", [
    ("defaults: {latncy: 0.05}\n", "defaults.latncy"),
    ("defaults: {latency: -1}\n", "defaults.latency"),
    ("backends: {flex: {tflops: lots}}\n", "backends.flex.tflops"),
    ("cases: [{match: {seq_len: 512, colour: red}, latency: 0.1}]\n", "cases[0].match.colour"),
    ("noise: {method: vibes}\n", "noise.method"),
    ("surprise: 1\n", "surprise"),
])
def test_bad_threshold_file_exit_2_names_field(tmp_path, text, field):
    base = _baseline(tmp_path)
    r = check(_current(tmp_path), "--baseline", base, "--thresholds", _thr(tmp_path, text))
    assert r.exit_code == 2, r.output
    assert field in r.stderr


def test_thresholds_overrides():
    t = parse_thresholds("defaults: {latency: 0.05}\nbackends: {flex: {latency: 0.2, peak_hbm: null}}\n"
                         "cases:\n  - match: {backend: flex, seq_len: [4096], causal: true}\n    latency: 0.3\n", "t.yaml")
    assert t.for_case("sdpa", C2).latency == 0.05
    assert t.for_case("flex", C2).latency == 0.2 and t.for_case("flex", C2).peak_hbm is None
    assert t.for_case("flex", C3).latency == 0.3
    assert t.for_case("flex", C3).tflops == 0.05


def test_bundled_thresholds_load():
    t, source = load_thresholds(None)
    assert source.endswith("default.yaml")
    assert t.defaults.latency == 0.05 and t.defaults.min_abs_ms == 0.03 and t.defaults.peak_hbm == 0.10
    with pytest.raises(ConfigError):
        load_thresholds("no-such-thresholds")


def test_threshold_loosening_per_backend(tmp_path):
    base = _baseline(tmp_path)
    cur = _current(tmp_path, {("triton_fa2", C2): 1.10})
    thr = _thr(tmp_path, "backends: {triton_fa2: {latency: 0.2, tflops: 0.2}}\n")
    assert check(cur, "--baseline", base, "--thresholds", thr).exit_code == 0


def test_peak_hbm_growth_fails(tmp_path):
    base = write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, seed=1, peak_hbm=64 << 20)])
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, seed=2, peak_hbm=80 << 20)])
    r = check(cur, "--baseline", base)
    assert r.exit_code == 1 and "more memory" in r.stdout


# --- outputs ------------------------------------------------------------------------------------

def test_markdown_junit_and_step_summary(tmp_path):
    base = _baseline(tmp_path)
    cur = _current(tmp_path, {("triton_fa2", C2): 1.10}, drop={("sdpa_flash", C1)})
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    junit = tmp_path / "out" / "junit.xml"
    r = check(cur, "--baseline", base, "--junit", junit, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 1, r.output
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "flashbench check" in text
    # the markdown table is well formed: every table row has the header's column count
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 4 and len({len(line.strip().strip("|").split("|")) for line in table}) == 1
    assert r.stdout == text[len("# earlier step\n"):]
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 4 and int(suite.get("tests")) == 4
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and failed[0].get("classname") == "flashbench.triton_fa2"
    assert "latency" in failed[0].find("failure").text
    assert int(suite.get("failures")) == 1
    assert [c for c in cases if c.find("skipped") is not None]  # the missing case


def test_check_by_baseline_name(tmp_path):
    base = _baseline(tmp_path)
    root = tmp_path / "baselines"
    r = runner.invoke(app, ["baseline", "save", str(base), "main", "--root", str(root)])
    assert r.exit_code == 0, r.output
    dest = root / "h100" / "main"
    assert (dest / "results.json").is_file() and (dest / "results.csv").is_file()
    assert check(_current(tmp_path), "--baseline", "main", "--baselines-root", root).exit_code == 0
    # refusing to overwrite, then --force
    assert runner.invoke(app, ["baseline", "save", str(base), "main", "--root", str(root)]).exit_code == 2
    assert runner.invoke(app, ["baseline", "save", str(base), "main", "--root", str(root), "--force"]).exit_code == 0
    assert runner.invoke(app, ["baseline", "save", str(base), "../evil", "--root", str(root)]).exit_code == 2


def test_baseline_save_cpu_slug(tmp_path):
    base = write_run(tmp_path / "cpu", [record("naive", C1)], env={"device": "cpu", "torch": "2.13.0"})
    r = runner.invoke(app, ["baseline", "save", str(base), "smoke", "--root", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "cpu" / "smoke" / "results.json").is_file()


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-80GB", "a100"),
                                        ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA H200", "h200"),
                                        ("NVIDIA L40S", "l40s"), (None, "cpu"), ("", "cpu")])
def test_gpu_slug(name, slug):
    from flashbench.results.baselines import gpu_slug

    assert gpu_slug(name) == slug


# --- noise (shared with compare) ------------------------------------------------------------------

# scipy.stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True) on the
# samples drawn below, by scipy 1.17.1: (n1, n2, shift) -> (U, p).  scipy is not a test dependency, so its
# answers are kept here and the comparison runs everywhere; where scipy is installed it is asked again.
SCIPY_MANN_WHITNEY = {(10, 12, 0.0): (72.5, 0.42709253684995163), (30, 25, 0.05): (325.5, 0.4070879277751799),
                      (50, 50, 0.2): (227.0, 1.7647236450804379e-12), (5, 7, 1.0): (0.0, 0.005766120914237261)}


def test_mann_whitney_matches_scipy():
    try:
        from scipy import stats
    except ImportError:
        stats = None
    rng = random.Random(7)
    for (n1, n2, shift), (want_u, want_p) in SCIPY_MANN_WHITNEY.items():
        a = [round(rng.gauss(1, 0.1), 2) for _ in range(n1)]  # rounding makes ties
        b = [round(rng.gauss(1 + shift, 0.1), 2) for _ in range(n2)]
        u, p = mann_whitney_u(a, b)
        assert u == pytest.approx(want_u)
        assert p == pytest.approx(want_p, rel=1e-9, abs=1e-12)
        if stats is not None:
            ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
            assert u == pytest.approx(ref.statistic)
            assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


def test_beyond_noise_methods():
    rng = random.Random(3)
    a = [1 + rng.uniform(-0.01, 0.01) for _ in range(30)]
    b = [1.1 + rng.uniform(-0.01, 0.01) for _ in range(30)]
    for method in ("intervals", "rank", "both"):
        assert beyond_noise(a, b, method).beyond_noise
        assert not beyond_noise(a, a, method).beyond_noise
    wide_a = [1 + rng.uniform(-0.5, 0.5) for _ in range(12)]
    wide_b = [1.1 + rng.uniform(-0.5, 0.5) for _ in range(12)]
    v = beyond_noise(wide_a, wide_b)
    assert not v.beyond_noise and v.intervals_overlap
    # no raw samples: recorded p20/p80 decide
    assert beyond_noise([], [], "both", old_interval=(1.0, 1.1), new_interval=(1.2, 1.3)).beyond_noise
    assert beyond_noise(None, None).method == "unknown"


# --- the backends' order within a case ----------------------------------------------------------

def test_a_current_run_with_its_backends_in_another_order_gets_a_note(tmp_path):
    """At a GPU's power limit a backend's place in its case moves its figures: the gate says when the two runs
    timed their common backends in another order (README: Known limits), and only then."""
    base = write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, seed=1), record("triton_fa2", C1, 0.8, seed=2)],
                     backends=["sdpa_flash", "triton_fa2"])
    swapped = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, seed=3), record("triton_fa2", C1, 0.8, seed=4)],
                        backends=["triton_fa2", "flex", "sdpa_flash"])
    r = check(swapped, "--baseline", base, "--format", "markdown")
    assert r.exit_code == 0, r.output
    assert ("> note: each case's backends ran in another order: sdpa_flash, triton_fa2 (old) vs triton_fa2, sdpa_flash "
            "(new); at a GPU's power limit a backend's place in its case moves its figures") in r.stdout
    same = write_run(tmp_path / "same", [record("sdpa_flash", C1, 1.0, seed=3)], backends=["sdpa_flash", "flex", "triton_fa2"])
    assert "another order" not in check(same, "--baseline", base, "--format", "markdown").stdout


def test_no_order_note_where_rounds_put_every_backend_in_every_place():
    from flashbench.analysis.compare import order_difference

    old, new = {"backends": ["a", "b"], "rounds": 2}, {"backends": ["b", "a"], "rounds": 2}
    assert order_difference(old, new) is None  # two rounds rotate two backends through both places
    assert order_difference(old, {**new, "rounds": 1}).kind == "order"
    assert order_difference({"backends": ["a", "b", "c"], "rounds": 2}, {"backends": ["c", "b", "a"], "rounds": 3})
    assert order_difference({"backends": ["a"]}, {"backends": ["a"]}) is None
    assert order_difference({}, {"backends": ["a", "b"]}) is None  # older results without the list
    assert not order_difference(old, new) and not order_difference(old, {**new, "rounds": 1}).loud


def test_the_order_note_stays_short_however_many_backends_the_runs_list():
    from flashbench.analysis.compare import ORDER_CHARS, order_difference

    names = [f"backend_{i:05d}" for i in range(5000)]
    d = order_difference({"backends": names}, {"backends": names[::-1]})
    assert len(d.old) == len(d.new) == ORDER_CHARS and d.old.endswith("…") and d.old.startswith("backend_00000, ")
    assert len(d.message()) < 3 * ORDER_CHARS
