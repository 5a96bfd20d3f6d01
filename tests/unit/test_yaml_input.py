"""Reading YAML input: limits that keep a hostile or mistaken file from hanging flashbench or flooding the
terminal, duplicate keys, and messages that echo input only as a short preview (issue 15, items 1, 8, 14)."""
import time

import pytest

from flashbench.analysis.thresholds import parse_thresholds
from flashbench.model.config import ConfigError, load_config, parse_config
from flashbench.model.grid import expand_tasks
from flashbench.model.yaml_input import PREVIEW_CHARS, preview

AXES = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\n"
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))


def problems(text, source="bad.yaml"):
    with pytest.raises(ConfigError) as e:
        cfg = parse_config(text, source)
        expand_tasks(cfg, source)
    return e.value.problems


def test_alias_bomb_is_refused_quickly_with_one_short_line():
    """Item 1: a "billion laughs" file (9^9 values once expanded) placed inside a field is refused at
    load time, fast and in one line, instead of expanding during validation and echoing the value."""
    text = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + LAUGHS + \
           "axes: {batch: 1, heads: 2, seq_len: *l8, head_dim: 32}\nbackends: [naive]\n"
    assert len(text) < 1024
    t0 = time.perf_counter()
    (p,) = problems(text)
    assert time.perf_counter() - t0 < 2
    assert "aliases are followed" in p and len(p) < 200


def test_too_many_aliases_recursive_aliases_and_deep_nesting_are_refused():
    """Item 1: alias count, recursive aliases and nesting depth are bounded (no RecursionError)."""
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * 150) + "]\n" + AXES
    assert "more than 100 aliases" in problems(many)[0]
    assert "recursive alias" in problems("a: &a [*a]\n" + AXES)[0]
    deep = "axes: " + "[" * 3000 + "]" * 3000 + "\n"
    assert "levels deep" in problems(deep)[0]


def test_too_large_file_and_too_many_digits_are_refused(tmp_path):
    """Item 1: a file larger than a config can be is not read; an integer Python cannot convert is a line."""
    big = tmp_path / "big.yaml"
    big.write_text(AXES + "description: " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(big))
    assert "larger than a config can be" in e.value.problems[0]
    (p,) = problems("axes: {batch: " + "9" * 5000 + ", heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n")
    assert "not a valid value" in p and "9999" not in p


def test_echoed_values_are_short_previews():
    """Item 1: every echoed value is cut, nested values too (the repr itself is bounded)."""
    nested = [[["x" * 1000] * 100] * 100] * 100
    assert len(preview(nested)) <= PREVIEW_CHARS
    assert len(preview(10 ** 4000)) <= PREVIEW_CHARS
    (p,) = problems(AXES + "backends: [naive]\ndevice: " + "z" * 5000 + "\n")
    assert len(p) < 200 and "zzzzzzzzzz" in p
    (p,) = problems(AXES + "backends: [naive]\n" + "k" * 500 + ": 1\n")
    assert "unknown key" in p and len(p) < 200


def test_many_problems_are_counted_not_all_printed():
    """Item 1: a list of 1000 bad values gives MAX_PROBLEMS lines and a count of the rest."""
    from flashbench.model.yaml_input import MAX_PROBLEMS

    ps = problems("axes: {batch: 1, heads: 2, seq_len: [" + ", ".join(["-1"] * 1000) + "], head_dim: 32}\n"
                  "backends: [naive]\n")
    assert len(ps) == MAX_PROBLEMS + 1 and ps[-1] == f"… and {1000 - MAX_PROBLEMS} more problems"


def test_duplicate_keys_are_refused_with_both_lines():
    """Item 8: a key given twice in one mapping is an error naming both lines, at any level."""
    (p,) = problems(AXES + "backends: [naive]\nbackends: [sdpa]\n")
    assert "'backends' is given twice" in p and "line 3" in p and "first on line 2" in p
    (p,) = problems("axes: {batch: 1, batch: 2, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n")
    assert "'batch' is given twice" in p
    with pytest.raises(ConfigError) as e:
        parse_thresholds("defaults: {latency: 0.1, latency: 0.2}\n", "t.yaml")
    assert "given twice" in e.value.problems[0]


def test_merge_keys_may_be_overridden():
    """Item 8: a key that overrides one merged in with << is not a duplicate."""
    cfg = parse_config(AXES + "backends: [naive]\ntiming: {<<: {warmup_ms: 5, budget_ms: 10}, budget_ms: 20}\n", "ok.yaml")
    assert cfg.timing.budget_ms == 20 and cfg.timing.warmup_ms == 5


def test_messages_do_not_repeat_themselves():
    """Item 14: "must be a positive integer (got -1)", not "..., got -1 (got -1)"."""
    (p,) = problems("axes: {batch: 1, heads: 2, seq_len: [-1], head_dim: 32}\nbackends: [naive]\n")
    assert p == "bad.yaml: axes.seq_len[0]: must be a positive integer (got -1)"


def test_cross_field_errors_do_not_print_the_mapping():
    """Item 14: an error about the whole axes block does not paste the block back."""
    (p,) = problems("axes: {batch: 1, tokens: 64, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n")
    assert "exactly one of 'batch' or 'tokens'" in p and "{" not in p and "got" not in p


def test_bad_mapping_key_reads_as_a_key():
    """Item 14: a dtype key that does not exist reads "tolerances.float128: not a valid key", not ".[key]"."""
    (p,) = problems(AXES + "backends: [naive]\ntolerances: {float128: {atol: 0.1}}\n")
    assert p == "bad.yaml: tolerances.float128: not a valid key: expected one of float16, bfloat16, float32"


def test_an_empty_or_comment_only_file_says_so(tmp_path):
    from flashbench.model.config import SweepConfig
    from flashbench.model.yaml_input import ConfigError, validate_yaml

    for text in ("", "# only a comment\n", "\n\n"):
        with pytest.raises(ConfigError) as e:
            validate_yaml(SweepConfig, text, "sweep.yaml")
        assert e.value.problems == ["sweep.yaml: the file holds no settings (it is empty or only comments)"]
    with pytest.raises(ConfigError) as e:
        validate_yaml(SweepConfig, "- a\n- b\n", "sweep.yaml")
    assert e.value.problems == ["sweep.yaml: expected a mapping of settings at the top level, got a list"]
