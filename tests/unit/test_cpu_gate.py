"""On a CPU: unchanged runs pass the gate pairwise with the default thresholds, a 2x slower run fails.

Real ``flashbench run`` sweeps through the CLI (worker processes, results files, ``flashbench check``).
The four-runs test measures ``fake_sleep``, whose calls sleep 2 ms: a sleep's time is about the same
in every run, so the test checks the gate and not how busy the machine running it is (CPU-bound
attention on a shared machine moves by up to ~2x between runs, the figure the single-round margin of
the default thresholds is sized against). The 2x test also copies a real smoke run with every
timing doubled.
"""
import pytest

from flashbench.analysis.thresholds import load_thresholds
from sweeps import invoke
from synthetic import slower_copy

SLEEP_CONFIG = """name: sleep
axes: {batch: 1, heads: 2, seq_len: [32, 64], head_dim: 16, dtype: float32, causal: [false, true], mode: fwd}
backends: [fake_sleep]
timing: {warmup_ms: 1, budget_ms: 30, min_samples: 10, max_samples: 20}
"""


def _run(cfg, out, *extra):
    r = invoke("run", cfg, "--out", out, "--quiet", *extra)
    assert r.exit_code == 0, r.output
    return out


def _check(current, baseline):
    return invoke("check", current, "--baseline", baseline)


@pytest.mark.slow
def test_four_unchanged_runs_pass_and_a_twice_slower_run_fails(tmp_path, fake_plugins, monkeypatch):
    cfg = tmp_path / "sleep.yaml"
    cfg.write_text(SLEEP_CONFIG)
    first, *later = [_run(cfg, tmp_path / f"run{i}") for i in range(4)]
    for run in later:
        r = _check(run, first)
        assert r.exit_code == 0, r.output
        assert "4 cases compared (1 round each; noise within-run only, single-round margin" in r.output
    monkeypatch.setenv("FAKE_SLEEP_MS", "4")
    r = _check(_run(cfg, tmp_path / "slow"), first)
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert "FAIL: 4 cases compared" in out and "slower as a whole: fake_sleep" in out
    assert "the baseline's over its 4 cases" in out


def test_a_twice_slower_copy_of_a_smoke_run_fails(tmp_path):
    assert load_thresholds(None)[0].defaults.single_round_margin < 1
    run = _run("smoke", tmp_path / "smoke", "-b", "naive,sdpa")
    assert _check(run, run).exit_code == 0
    r = _check(slower_copy(run, tmp_path / "slower", 2.0), run)
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert "slower as a whole: naive, sdpa" in out and "2.00x the baseline's" in out
    # a single case moved that much is CPU noise (up to 2.2x in unchanged runs); its backend is not
    assert _check(slower_copy(run, tmp_path / "one_slower", 2.2, only=1), run).exit_code == 0
