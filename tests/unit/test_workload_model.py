"""The workload model: length distributions, case fields, the YAML syntax of decode/varlen/window
grids (and its one-line refusals), and the filter keys."""
import dataclasses

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.model.case import CASE_FIELDS, Case
from flashbench.model.config import parse_config
from flashbench.model.filters import Rule, parse_case_option
from flashbench.model.grid import dropped_combinations, expand_cases, expand_tasks
from flashbench.model.lengths import LengthSpec, as_spec, parse_lengths, realise_budget, realise_count
from flashbench.model.yaml_input import ConfigError


# --- length distributions ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["uniform(1024..32768,seed=0)", "lognormal(128..8192,seed=7)", "list(128,512,8192)"])
def test_compact_form_round_trips(text):
    assert parse_lengths(text).describe() == text
    assert parse_lengths(text.replace(",", ", ")).describe() == text  # spaces are not part of it


def test_mapping_and_compact_forms_are_one_spec():
    assert as_spec({"dist": "uniform", "min": 16, "max": 64, "seed": 3}) == parse_lengths("uniform(16..64,seed=3)")
    assert as_spec({"dist": "list", "values": [5, 9]}).describe() == "list(5,9)"
    assert as_spec({"dist": "lognormal", "min": 4, "max": 9}).seed == 0


@pytest.mark.parametrize("bad, words", [
    ({"dist": "zipf", "min": 1, "max": 2}, "dist: one of uniform, lognormal, list"),
    ({"dist": "uniform", "min": 10}, "needs min and max"),
    ({"dist": "uniform", "min": 10, "max": 5}, "max (5) must be >= min (10)"),
    ({"dist": "uniform", "min": 0, "max": 5}, "min must be a positive integer"),
    ({"dist": "uniform", "min": 1, "max": 5, "colour": 1}, "unknown key"),
    ({"dist": "list", "values": []}, "at least one length"),
    ({"dist": "list", "values": [3, 0]}, "positive"),
    ("uniform(5..1)", "not a length distribution"),
])
def test_bad_distributions_say_why(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        as_spec(bad)


def test_realisation_is_deterministic_bounded_and_seeded():
    a = realise_count("uniform(100..200,seed=1)", 50)
    assert a == realise_count("uniform(100..200,seed=1)", 50) and len(a) == 50
    assert min(a) >= 100 and max(a) <= 200 and len(set(a)) > 10
    assert a != realise_count("uniform(100..200,seed=2)", 50)
    logn = realise_count("lognormal(128..8192,seed=0)", 400)
    assert min(logn) >= 128 and max(logn) <= 8192
    median = sorted(logn)[200]
    assert 700 < median < 1400  # the median sits at sqrt(128 * 8192) = 1024
    assert realise_count("list(3,5)", 5) == (3, 5, 3, 5, 3)


def test_a_budget_is_filled_exactly_the_last_sequence_taking_the_rest():
    lens = realise_budget("uniform(100..200,seed=0)", 1000)
    assert sum(lens) == 1000 and all(1 <= n <= 200 for n in lens)
    assert realise_budget("list(300,500)", 1000) == (300, 500, 200)
    with pytest.raises(ValueError, match="budget"):
        realise_budget("list(3)", 0)


# --- the case ---------------------------------------------------------------------------------

def test_old_positional_cases_are_dense_with_derived_tokens():
    c = Case(2, 8, 4, 64, 96, 32, "float16", True, "fwd")
    assert (c.workload, c.window, c.kv_layout, c.page_size, c.lengths) == ("dense", (-1, -1), "contiguous", 0, "")
    assert c.total_tokens == 2 * 96
    assert c.label() == "B2 H8/4kv N64x96 D32 float16 causal fwd"  # unchanged: inputs are seeded from it
    assert CASE_FIELDS[:9] == ("batch", "heads", "kv_heads", "seq_len_q", "seq_len_kv", "head_dim", "dtype", "causal",
                               "mode")


def test_sequence_lengths_per_workload():
    dense = Case(3, 2, 2, 8, 16, 32, "float32", False, "fwd")
    assert dense.sequence_lengths() == ((8, 8, 8), (16, 16, 16))
    dec = Case(3, 2, 2, 2, 100, 32, "float32", True, "fwd", workload="decode", lengths="list(40,100,70)")
    assert dec.sequence_lengths() == ((2, 2, 2), (40, 100, 70)) and dec.total_tokens == 210
    var = Case(3, 2, 2, 128, 128, 32, "float32", False, "fwd", workload="varlen", lengths="list(100,28)",
               total_tokens=300)
    assert var.sequence_lengths() == ((100, 28, 100, 28, 44),) * 2
    assert "decode" in dec.label() and "lengths=list(40,100,70)" in dec.label()
    assert "varlen" in var.label() and "T300" in var.label()


def test_derived_tokens_follow_replace():
    c = Case(2, 2, 2, 64, 64, 32, "float32", False, "fwd")
    assert dataclasses.replace(c, seq_len_q=128, seq_len_kv=128).total_tokens == 256
    assert Case.from_values({**c.as_dict(), "total_tokens": 999}).total_tokens == 128


# --- YAML: grids of each workload ---------------------------------------------------------------

def cfg(text):
    return parse_config(text, "t.yaml")


def problems(text):
    with pytest.raises(ConfigError) as e:
        expand_cases(cfg(text), "t.yaml")
    return e.value.problems


DECODE = """
axes:
  workload: decode
  batch: [2, 4]
  heads: 8
  kv_heads: 2
  seq_len: [1, 4]
  seq_len_kv: [512, {dist: uniform, min: 64, max: 1024, seed: 3}]
  kv_layout: [contiguous, paged]
  page_size: [16, 256]
  head_dim: 64
backends: [naive]
"""


def test_decode_grid():
    cases = expand_cases(cfg(DECODE))
    # 2 batches x 2 new-token counts x 2 cache lengths x (contiguous, paged16, paged256)
    assert len(cases) == 2 * 2 * 2 * 3
    assert all(c.workload == "decode" and c.causal and c.mode == "fwd" for c in cases)
    assert {(c.kv_layout, c.page_size) for c in cases} == {("contiguous", 0), ("paged", 16), ("paged", 256)}
    drawn = [c for c in cases if c.lengths]
    assert {c.lengths for c in drawn} == {"uniform(64..1024,seed=3)"} and {c.seq_len_kv for c in drawn} == {1024}
    for c in drawn:
        assert len(c.sequence_lengths()[1]) == c.batch and c.total_tokens == sum(c.sequence_lengths()[1])


def test_varlen_grid_fills_the_budget():
    cases = expand_cases(cfg("""
axes:
  workload: varlen
  tokens: [1000]
  heads: 4
  kv_heads: [4, 2]
  seq_len: [{dist: lognormal, min: 16, max: 256, seed: 1}, [100, 300], 250, 'uniform(10..50,seed=2)']
  head_dim: 32
  causal: [false, true]
backends: [naive]
"""))
    assert len(cases) == 4 * 2 * 2
    for c in cases:
        q, kv = c.sequence_lengths()
        assert q == kv and len(q) == c.batch
        assert sum(q) == c.total_tokens == 1000
    listed = next(c for c in cases if c.lengths == "list(100,300)")
    assert listed.sequence_lengths()[0] == (100, 300, 100, 300, 100, 100) and listed.seq_len_q == 300
    equal = next(c for c in cases if not c.lengths)
    assert (equal.batch, equal.seq_len_q) == (4, 250)


def test_window_on_any_workload_and_several_grids():
    cases = expand_cases(cfg("""
axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, causal: true, window: [[-1, -1], [16, 0], [8, -1]]}
grids:
  - {workload: decode, batch: 2, heads: 2, seq_len: 1, seq_len_kv: 64, head_dim: 32, window: [32, 0]}
  - {batch: 1, heads: 2, seq_len: 64, head_dim: 32, window: [4, 4]}
backends: [naive]
"""))
    assert [(c.workload, c.window) for c in cases] == [("dense", (-1, -1)), ("dense", (16, 0)), ("dense", (8, 0)),
                                                       ("decode", (32, 0)), ("dense", (4, 4))]


def test_causal_windows_written_two_ways_are_one_case():
    """Under causal masking [8, -1] is [8, 0] and [-1, 0] is no window: each attention is measured once, and
    the plan says how it was read."""
    loaded = cfg("""
axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, causal: [true, false], window: [[-1, -1], [-1, 0], [8, 0], [8, -1]]}
backends: [naive]
""")
    cases = expand_cases(loaded)
    assert [(c.causal, c.window) for c in cases] == [(True, (-1, -1)), (True, (8, 0)), (False, (-1, -1)),
                                                     (False, (-1, 0)), (False, (8, 0)), (False, (8, -1))]
    assert any("[-1, 0] as [-1, -1]" in n and "[8, -1] as [8, 0]" in n for n in dropped_combinations(loaded))


@pytest.mark.parametrize("axes, expected", [
    ("{workload: decode, batch: 1, heads: 2, seq_len: 32, seq_len_kv: 64, head_dim: 32}",
     "axes.seq_len: decode takes 1 to 16 new tokens per sequence, got 32"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, head_dim: 32}",
     "axes.seq_len_kv: decode needs the cache length"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, seq_len_kv: 64, head_dim: 32, mode: fwd_bwd}",
     "axes.mode: decode is forward only"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, seq_len_kv: 64, head_dim: 32, causal: false}",
     "axes.causal: decode's new tokens are causal among themselves"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, seq_len_kv: 64, head_dim: 32, page_size: 16}",
     "axes.page_size: page_size needs kv_layout: paged"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, seq_len_kv: 64, head_dim: 32, kv_layout: paged}",
     "axes.page_size: kv_layout paged needs page_size"),
    ("{workload: decode, batch: 1, heads: 2, seq_len: 2, seq_len_kv: [[64, 32]], head_dim: 32}",
     "decode takes a cache length or a uniform/lognormal distribution, not a list"),
    ("{batch: 1, heads: 2, seq_len: 64, head_dim: 32, kv_layout: paged}",
     "axes.kv_layout: kv_layout is for workload decode"),
    ("{batch: 1, heads: 2, seq_len: [{dist: uniform, min: 1, max: 9}], head_dim: 32}",
     "axes.seq_len: uniform(1..9,seed=0) is a length distribution: distributions are for workload decode"),
    ("{workload: varlen, tokens: 64, heads: 2, seq_len: 32, seq_len_kv: 32, head_dim: 32}",
     "axes.seq_len_kv: varlen sequences attend to themselves"),
    ("{batch: 1, heads: 2, seq_len: 64, head_dim: 32, causal: true, window: [4, 4]}",
     "axes.window: [4, 4] with causal: true: a causal query sees no key to its right"),
])
def test_nonsense_combinations_are_one_line_each(axes, expected):
    got = problems(f"axes: {axes}\nbackends: [naive]\n")
    assert len(got) == 1 and got[0].startswith("t.yaml: ") and expected in got[0], got


@pytest.mark.parametrize("axes, expected", [
    ("{workload: decode, tokens: 64, heads: 2, seq_len: 1, seq_len_kv: 64, head_dim: 32}",
     "axes: workload decode: give 'batch'"),
    ("{workload: varlen, batch: 2, heads: 2, seq_len: 16, head_dim: 32}", "axes: workload varlen: give 'tokens'"),
    ("{workload: prefill, batch: 1, heads: 2, seq_len: 16, head_dim: 32}", "axes.workload: expected one of dense"),
    ("{batch: 1, heads: 2, seq_len: 16, head_dim: 32, window: [-2, 0]}", "axes.window[0]: a window bound is -1"),
    ("{batch: 1, heads: 2, seq_len: 16, head_dim: 32, window: [3]}", "axes.window[0]: a window is [left, right]"),
    ("{batch: 1, heads: 2, seq_len: [{dist: uniform, min: 9, max: 1}], head_dim: 32}",
     "axes.seq_len[0]: max (1) must be >= min (9)"),
])
def test_schema_level_refusals_name_the_field(axes, expected):
    with pytest.raises(ConfigError) as e:
        cfg(f"axes: {axes}\nbackends: [naive]\n")
    assert len(e.value.problems) == 1 and expected in e.value.problems[0], e.value.problems


def test_a_config_needs_a_grid():
    with pytest.raises(ConfigError, match="give 'axes' .a grid. or 'grids'"):
        cfg("backends: [naive]\n")


def test_bad_workload_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: {workload: decode, batch: 1, heads: 2, seq_len: 20, seq_len_kv: 64, head_dim: 32}\n"
                   "backends: [naive]\n")
    r = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if "decode takes 1 to 16" in x]
    assert len(lines) == 1 and "bad.yaml: axes.seq_len" in lines[0]


# --- filters ----------------------------------------------------------------------------------

def test_filters_know_the_workload_keys():
    c = expand_cases(cfg(DECODE))
    rule = Rule.model_validate({"workload": "decode", "kv_layout": "paged", "page_size": 16,
                                "lengths": {"dist": "uniform", "min": 64, "max": 1024, "seed": 3}})
    assert sum(rule.matches(x) for x in c) == 4  # 2 batches x 2 new-token counts
    assert all(Rule.model_validate({"window_left": -1, "window_right": -1}).matches(x) for x in c)
    assert not Rule.model_validate({"workload": "varlen"}).matches(c[0])


def test_case_option_keeps_commas_inside_parentheses():
    rule = parse_case_option("workload=decode,lengths=uniform(64..1024, seed=3)|list(1,2),kv_layout=paged")
    assert rule.allowed() == {"workload": {"decode"}, "lengths": {"uniform(64..1024,seed=3)", "list(1,2)"},
                              "kv_layout": {"paged"}}
    with pytest.raises(ConfigError, match="lengths=.*not a length distribution"):
        parse_case_option("lengths=zipf(1..2)")
    with pytest.raises(ConfigError, match="window_left"):
        parse_case_option("window_left=-3")


def test_exclude_rules_on_workload_fields():
    tasks = expand_tasks(cfg(DECODE + "exclude:\n  - {backend: naive, kv_layout: paged, page_size: 256}\n"))
    assert {t.case.page_size for t in tasks} == {0, 16}


def test_length_spec_is_hashable_and_frozen():
    spec = LengthSpec("uniform", 1, 5, 0)
    assert hash(spec) == hash(parse_lengths("uniform(1..5,seed=0)"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.low = 2


def test_a_long_listed_batch_has_a_short_label_that_still_tells_lists_apart():
    """A listed batch of 50,000 lengths: tables show a label of bounded length, and two lists that share their
    first lengths are still two labels (a digest of the whole list)."""
    from flashbench.model.case import workload_label
    from flashbench.model.lengths import short_lengths
    short = "list(128,256,512)"
    assert short_lengths(short) == short
    a = "list(" + ",".join(["128"] * 50_000) + ")"
    b = "list(" + ",".join(["128"] * 49_999 + ["256"]) + ")"
    la, lb = (workload_label({"workload": "varlen", "lengths": x, "total_tokens": 1}) for x in (a, b))
    assert len(la) < 120 and "50,000 lengths" in la and la.startswith(" varlen lengths=list(128,128,128,128,…")
    assert la != lb
