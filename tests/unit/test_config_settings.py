"""Runs of one config whose text differs only in comments and layout are runs of the same config: a
comment corrected after a baseline was recorded must not make `check` and `compare` call the baseline
"another config", nor `baseline save` refuse to merge them. Other settings still count."""
import hashlib

from flashbench.analysis.compare import environment_differences
from flashbench.results.files import same_settings
from flashbench.results.rounds import merge_runs
from flashbench.results.files import Run

from synthetic import case, meta, record

TEXT = "name: s\naxes:\n  seq_len: [512, 1024]  # two lengths\nbackends: [sdpa]\n"


def config(text: str) -> dict:
    return {"path": "s.yaml", "name": "s", "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}


def test_a_comment_or_layout_is_not_another_config():
    edited = "# a corrected comment\nname: s\naxes:\n  seq_len:\n    - 512\n    - 1024\nbackends: [sdpa]\n"
    assert same_settings(config(TEXT), config(edited))
    old, new = meta(), meta()
    old["config"], new["config"] = config(TEXT), config(edited)
    assert not [d for d in environment_differences(old, new) if d.kind == "config"]
    runs = [Run(dict(m), [record("sdpa", case(n=512))]) for m in (old, new)]
    assert merge_runs(runs, ["a", "b"]).records


def test_other_settings_or_no_text_are_another_config():
    assert not same_settings(config(TEXT), config(TEXT.replace("1024", "2048")))
    assert not same_settings(config(TEXT), {**config(TEXT + "# x\n"), "text": ""})  # nothing to read: the hashes decide
    assert not same_settings(config(TEXT), config("name: [unclosed\n"))
    old, new = meta(), meta()
    old["config"], new["config"] = config(TEXT), config(TEXT.replace("1024", "2048"))
    assert [d.kind for d in environment_differences(old, new)] == ["config"]


def timing(**over) -> dict:
    t = {"warmup_ms": 25.0, "rest_ms": 300.0, "budget_ms": 200.0}
    t.update(over)
    return t


def test_runs_timed_alike_have_no_timing_difference():
    old, new = meta(), meta()
    assert not [d for d in environment_differences(old, new) if d.kind == "timing"]  # neither recorded any
    old["timing"], new["timing"] = timing(), timing()
    assert not [d for d in environment_differences(old, new) if d.kind == "timing"]


def test_a_timing_setting_that_differs_is_named_with_both_values():
    """The timing as run is in the metadata (defaults included, which a config's text does not show): a baseline
    timed with another warm-up or rest is named, loudly, with only the settings that differ."""
    old, new = meta(), meta()
    old["timing"], new["timing"] = timing(), timing(rest_ms=0.0, warmup_ms=1500.0)
    (d,) = [d for d in environment_differences(old, new) if d.kind == "timing"]
    assert d.loud
    assert d.message() == "timing differs: warmup_ms 25.0, rest_ms 300.0 (old) vs warmup_ms 1500.0, rest_ms 0.0 (new)"


def test_a_run_that_recorded_no_timing_was_timed_without_a_rest():
    old, new = meta(), meta()
    new["timing"] = timing()
    (d,) = [d for d in environment_differences(old, new) if d.kind == "timing"]
    assert d.message() == "timing differs: rest_ms 0.0 (old) vs rest_ms 300.0 (new)"
    new["timing"] = timing(rest_ms=0.0)
    assert not [d for d in environment_differences(old, new) if d.kind == "timing"]


def test_a_timing_note_from_a_hostile_file_stays_short():
    old, new = meta(), meta()
    old["timing"] = {f"k{i}": "x" * 1000 for i in range(100)}
    new["timing"] = {f"k{i}": "y" * 1000 for i in range(100)}
    (d,) = [d for d in environment_differences(old, new) if d.kind == "timing"]
    assert len(d.message()) < 1000


def test_runs_timed_otherwise_are_not_merged_into_one_baseline():
    import pytest
    from flashbench.results.files import ResultsError

    old, new = meta(), meta()
    old["config"] = new["config"] = config(TEXT)
    new["timing"] = timing()
    runs = [Run(dict(m), [record("sdpa", case(n=512))]) for m in (old, new)]
    with pytest.raises(ResultsError, match="b: timed with rest_ms 300.0, a with rest_ms 0.0: a baseline's runs must"):
        merge_runs(runs, ["a", "b"])
    old["timing"] = timing()
    assert merge_runs([Run(dict(m), [record("sdpa", case(n=512))]) for m in (old, new)], ["a", "b"]).records
