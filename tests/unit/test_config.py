"""Config validation: good files load, bad files give one clear message per problem."""
import pytest

from flashbench.model.config import ConfigError, bundled_configs, load_config, parse_config
from flashbench.model.grid import expand_tasks

GOOD = """
name: t
axes:
  batch: [1, 2]
  heads: 4
  kv_heads: [4, 2]
  seq_len: [16, 32]
  head_dim: 32
  dtype: [float16, float32]
  causal: [false, true]
  mode: [fwd, fwd_bwd]
backends: [naive, sdpa]
"""


def test_good_config_parses_scalars_as_lists():
    cfg = parse_config(GOOD, "good.yaml")
    assert cfg.axes.heads == [4]
    assert cfg.axes.batch == [1, 2]
    assert cfg.timing.flush_l2 is True
    assert cfg.tolerance("bfloat16").atol > 0


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_every_bundled_config_is_valid_and_expands(name):
    loaded = load_config(name)
    tasks = expand_tasks(loaded.config, loaded.path)
    assert tasks


def _problems(text):
    with pytest.raises(ConfigError) as e:
        cfg = parse_config(text, "bad.yaml")
        expand_tasks(cfg, "bad.yaml")
    return e.value.problems


def test_unknown_key_is_named_with_its_path():
    problems = _problems(GOOD.replace("  head_dim: 32", "  head_dim: 32\n  head_dims: 64"))
    assert problems == ["bad.yaml: axes.head_dims: unknown key (not a flashbench setting)"]


def test_wrong_type_is_named():
    problems = _problems(GOOD.replace("seq_len: [16, 32]", "seq_len: [16, lots]"))
    assert len(problems) == 1 and problems[0].startswith("bad.yaml: axes.seq_len[1]:") and "'lots'" in problems[0]


def test_bad_dtype_lists_allowed_values():
    (p,) = _problems(GOOD.replace("dtype: [float16, float32]", "dtype: float8"))
    assert "axes.dtype[0]" in p and "bfloat16" in p


def test_several_problems_reported_together():
    text = GOOD.replace("mode: [fwd, fwd_bwd]", "mode: sideways").replace("name: t", "name: t\nbogus: 1")
    problems = _problems(text)
    assert len(problems) == 2
    assert any("bogus" in p for p in problems) and any("axes.mode" in p for p in problems)


def test_head_dim_dividing_no_hidden_is_an_error():
    text = GOOD.replace("heads: 4", "hidden: 100")
    (p,) = _problems(text)
    assert "axes.head_dim: 32 divides no value of axes.hidden" in p


def test_tokens_smaller_than_seq_len_is_an_error():
    text = GOOD.replace("batch: [1, 2]", "tokens: 16")
    (p,) = _problems(text)
    assert "axes.seq_len: 32 exceeds" in p


def test_batch_and_tokens_are_exclusive():
    (p,) = _problems(GOOD.replace("batch: [1, 2]", "batch: 1\n  tokens: 64"))
    assert "exactly one of 'batch' or 'tokens'" in p


def test_kv_heads_must_divide_heads():
    (p,) = _problems(GOOD.replace("kv_heads: [4, 2]", "kv_heads: 3"))
    assert "multiple of kv_heads" in p


def test_empty_grid_after_excludes():
    (p,) = _problems(GOOD + "exclude:\n  - {dtype: [float16, float32]}\n")
    assert "grid is empty" in p


def test_unknown_backend_is_named():
    cfg = parse_config(GOOD.replace("[naive, sdpa]", "[naive, fastest]"), "bad.yaml")
    with pytest.raises(ConfigError) as e:
        expand_tasks(cfg, "bad.yaml", known_backends={"naive", "sdpa"})
    assert "unknown backend 'fastest'" in e.value.problems[0]


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(ConfigError) as e:
        parse_config("axes: [unclosed", "x.yaml")
    assert "not valid YAML" in e.value.problems[0] and "line" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:
        parse_config("- just\n- a list\n", "x.yaml")
    assert "mapping" in e.value.problems[0]


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "nope.yaml"))
    assert "no such file" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:
        load_config("no_such_bundled_config")
    assert "bundled:" in e.value.problems[0] and "smoke" in e.value.problems[0]


def test_timing_bounds_are_checked():
    (p,) = _problems(GOOD + "timing:\n  min_samples: 10\n  max_samples: 5\n")
    assert "timing" in p and "max_samples" in p


def test_bundled_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "smoke").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("smoke").config.name == "smoke"
    with pytest.raises(ConfigError) as e:
        load_config("./smoke")
    assert "not a file" in e.value.problems[0]
    (tmp_path / "mine.yaml").write_text("axes: {batch: 1, heads: 1, seq_len: 8, head_dim: 32}\nbackends: [naive]\n")
    assert load_config("mine.yaml").config.backends == ["naive"]


def test_new_timing_fields_have_defaults_and_are_validated():
    cfg = parse_config(GOOD, "t.yaml")
    assert cfg.timing.hold_stream is True and cfg.timing.max_noise_pct == 1.0 and cfg.timing.cuda_graph is False
    cfg = parse_config(GOOD + "timing:\n  max_noise_pct: 0\n  hold_stream: false\n", "t.yaml")
    assert cfg.timing.max_noise_pct == 0 and cfg.timing.hold_stream is False
    (p,) = _problems(GOOD + "timing:\n  max_noise_pct: -1\n")
    assert "timing.max_noise_pct" in p and "must be >= 0" in p
    (p,) = _problems(GOOD + "timing:\n  hold_stream: sometimes\n")
    assert "timing.hold_stream" in p
    (p,) = _problems(GOOD + "timing:\n  max_noise: 1\n")
    assert "max_noise" in p


def test_command_line_timing_override_keeps_the_file_and_is_validated(tmp_path):
    from pydantic import ValidationError

    from flashbench.model.config import with_timing

    f = tmp_path / "c.yaml"
    f.write_text(GOOD + "timing:\n  flush_l2: false\n")
    loaded = load_config(str(f))
    graph = with_timing(loaded, cuda_graph=True)
    assert graph.config.timing.cuda_graph is True and graph.config.timing.flush_l2 is False
    assert graph.text == loaded.text and loaded.config.timing.cuda_graph is False
    with pytest.raises(ValidationError):
        with_timing(loaded, max_noise_pct=-2)
