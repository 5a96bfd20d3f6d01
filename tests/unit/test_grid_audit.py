"""How a sweep's YAML becomes cases: grid conventions, invariants, the filter grammar, notes on what the
grid leaves out or rounds, and the bundled configs against what their descriptions say."""
import random

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.execute.plan import plan
from flashbench.model.config import bundled_configs, load_config, parse_config
from flashbench.model.filters import parse_case_option
from flashbench.model.grid import (MAX_CASES, dropped_combinations, expand_cases, expand_loaded, expand_tasks,
                                   unmatched_rules)
from flashbench.model.lengths import realise_count
from flashbench.model.yaml_input import ConfigError

runner = CliRunner()


def cfg(text: str):
    return parse_config(text, "t.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        expand_cases(cfg(text), "t.yaml")
    return e.value.problems


DECODE = "{workload: decode, batch: 2, heads: 4, seq_len: %s, seq_len_kv: %s, head_dim: 32}"


# --- decode: the cache holds the new tokens ---------------------------------------------------

@pytest.mark.parametrize("kv, shortest", [("2", "it is shorter"),
                                          ("{dist: uniform, min: 1, max: 64, seed: 0}", "draws lengths down to 1")])
def test_decode_cache_shorter_than_its_new_tokens_is_a_config_error(kv, shortest):
    lines = problems(f"axes: {DECODE % (4, kv)}\nbackends: [naive]")
    assert len(lines) == 1 and "t.yaml: axes.seq_len_kv:" in lines[0]
    assert "at least 4 keys long" in lines[0] and shortest in lines[0]


def test_decode_cache_long_enough_for_some_new_tokens_leaves_out_only_the_others():
    c = cfg(f"axes: {DECODE % ('[1, 4]', '[2, 64]')}\nbackends: [naive]")
    got = {(x.seq_len_q, x.seq_len_kv) for x in expand_cases(c)}
    assert got == {(1, 2), (1, 64), (4, 64)}
    notes = dropped_combinations(c)
    assert notes == ["axes.seq_len_kv: left out where a decode cache is shorter than its new tokens: "
                     "seq_len=4 seq_len_kv=2"]


# --- tokens: batch = tokens // seq_len ---------------------------------------------------------

def test_batch_rounded_down_from_tokens_is_noted():
    c = cfg("axes: {tokens: 16384, heads: 2, seq_len: [3000, 4096], head_dim: 32}\nbackends: [naive]")
    assert {(x.batch, x.seq_len_q) for x in expand_cases(c)} == {(5, 3000), (4, 4096)}
    notes = dropped_combinations(c)
    assert len(notes) == 1 and "rounds down" in notes[0]
    assert "tokens=16384 seq_len=3000 (batch 5: 15,000 tokens)" in notes[0] and "4096" not in notes[0]


def test_packed_equal_lengths_rounded_down_are_noted_and_distributions_fill_the_budget():
    c = cfg("axes: {workload: varlen, tokens: 1000, heads: 2, head_dim: 32,\n"
            "       seq_len: [300, {dist: uniform, min: 16, max: 64, seed: 0}]}\nbackends: [naive]")
    cases = expand_cases(c)
    assert {x.total_tokens for x in cases} == {900, 1000}
    assert dropped_combinations(c) == ["axes.tokens: batch = tokens // seq_len rounds down where seq_len does not "
                                       "divide tokens: tokens=1000 seq_len=300 (batch 3: 900 tokens)"]


def test_two_token_budgets_giving_one_batch_make_one_case_and_one_task_per_backend():
    c = cfg("axes: {tokens: [16384, 17000], heads: 2, seq_len: 8192, head_dim: 32}\nbackends: [naive, sdpa]")
    tasks = expand_tasks(c)
    assert [(t.case.batch, t.backend) for t in tasks] == [(2, "naive"), (2, "sdpa")]


# --- the filter grammar -----------------------------------------------------------------------

def test_case_option_key_given_twice_compares_values_not_spellings():
    rule = parse_case_option("dtype=bf16,dtype=bfloat16,n=4096|1024,n=04096")
    assert rule.allowed() == {"dtype": {"bfloat16"}, "seq_len": {4096}}


def test_case_option_key_given_twice_with_nothing_in_common_is_refused():
    with pytest.raises(ConfigError) as e:
        parse_case_option("n=4096,mode=fwd,n=1024")
    assert e.value.problems == ["--case: seq_len is given 2 times with no value in common ('4096' and '1024'): "
                                "the filter would match nothing"]


def test_case_option_unknown_key_names_the_close_match():
    with pytest.raises(ConfigError) as e:
        parse_case_option("headdim=64")
    assert e.value.problems[0].startswith("--case: unknown key 'headdim': did you mean 'head_dim'? (keys: backend,")


@pytest.mark.parametrize("kind", ["include", "exclude"])
def test_rule_with_an_empty_list_is_refused(kind):
    with pytest.raises(ConfigError) as e:
        cfg(f"axes: {{batch: 1, heads: 2, seq_len: 64, head_dim: 32}}\nbackends: [naive]\n"
            f"{kind}: [{{backend: naive, seq_len: []}}]")
    assert any(f"{kind}[0].seq_len" in p and "at least one value" in p for p in e.value.problems)


GRID = "axes: {batch: 1, heads: 2, seq_len: [64, 128], head_dim: 32}\nbackends: [naive, sdpa]\n"


def test_rules_that_match_nothing_are_named():
    c = cfg(GRID + "include: [{dtype: fp16}]\n"
                   "exclude: [{seq_len: 96}, {backend: flex}, {backend: naive, causal: true}, {backend: naive, seq_len: 64}]")
    assert unmatched_rules(c) == [
        "include[0]: matches no case of the grid (dtype: float16)",
        "exclude[0]: matches no case of the grid (seq_len: 96)",
        "exclude[1]: matches nothing: this config runs none of its backends (flex)",
        "exclude[2]: matches no case of the grid (causal: true)",
    ]


def test_the_plan_carries_the_notes_and_dry_run_prints_them(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("axes: {tokens: 1000, heads: 2, seq_len: [300, 500], head_dim: 32}\nbackends: [naive]\n"
                    "exclude: [{backend: naive, seq_len: 96}]\n")
    notes = plan(load_config(str(path)), device="cpu").notes
    assert [n.split(":")[0] for n in notes] == ["axes.tokens", "exclude[0]"]
    r = runner.invoke(app, ["run", str(path), "--dry-run", "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "note: exclude[0]: matches no case of the grid (seq_len: 96)" in r.output


def test_rules_keep_only_what_they_say():
    c = cfg(GRID + "exclude: [{backend: naive, seq_len: 64}]\ninclude: [{seq_len: 128}, {backend: sdpa, seq_len: 64}]")
    # case include keeps N128 for every backend; sdpa is limited to N64 by its own rule: nothing of sdpa is left
    assert [(t.backend, t.case.seq_len_q) for t in expand_tasks(c)] == [("naive", 128)]
    assert unmatched_rules(c) == []


# --- lengths: the same for every backend and every run -----------------------------------------

def test_decode_lengths_are_seeded_draws_shared_across_batches():
    desc = "uniform(1024..32768,seed=3)"
    rng = random.Random(3)
    assert realise_count(desc, 8) == tuple(rng.randint(1024, 32768) for _ in range(8))
    realise_count.cache_clear()
    assert realise_count(desc, 256)[:8] == realise_count(desc, 8)


def test_task_order_is_case_major_in_config_backend_order_and_stable():
    loaded = load_config("smoke")
    tasks = expand_loaded(loaded)
    assert tasks == expand_loaded(load_config("smoke"))
    names = loaded.config.backends
    per_case = [tasks[i:i + len(names)] for i in range(0, len(tasks), len(names))]
    assert all([t.backend for t in group] == names and len({t.case for t in group}) == 1 for group in per_case)


# --- the bundled configs ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_every_bundled_case_keeps_its_invariants(name):
    loaded = load_config(name)
    c = loaded.config
    cases = expand_cases(c, loaded.path)
    tasks = expand_loaded(loaded)
    assert len({t.key() for t in tasks}) == len(tasks)
    assert len({x.label() for x in cases}) == len(cases)  # results, --resume and the gate key on them
    assert dropped_combinations(c) == [] and unmatched_rules(c, loaded.path) == []
    for x in cases:
        q, kv = x.sequence_lengths()
        assert x.heads % x.kv_heads == 0 and len(q) == len(kv) == x.batch and sum(kv) == x.total_tokens
        assert (x.page_size > 0) == x.is_paged
        if x.workload == "decode":
            assert x.causal and x.mode == "fwd" and 1 <= x.seq_len_q <= 16 and min(kv) >= x.seq_len_q
            assert max(kv) <= x.seq_len_kv
        if x.workload == "varlen":
            assert q == kv and x.seq_len_q == x.seq_len_kv >= max(kv)
    for where, a in c.all_axes():
        grid = [x for x in cases if x.workload == a.workload]
        if a.hidden is not None:
            assert {x.heads * x.head_dim for x in grid} <= set(a.hidden), where
        if a.tokens is not None and a.workload == "dense":
            assert {x.batch * x.seq_len_q for x in grid} <= set(a.tokens), where


def axes_of(cases, *fields):
    return {f: sorted({getattr(c, f) for c in cases}, key=str) for f in fields}


def test_default_is_the_flashattention_grid_on_every_backend():
    loaded = load_config("default")
    cases = expand_cases(loaded.config)
    assert len(cases) == 6 * 2 * 2 * 2 * 2  # N x D x dtype x causal x mode
    assert axes_of(cases, "seq_len_q", "head_dim", "dtype", "causal", "mode") == {
        "seq_len_q": [1024, 16384, 2048, 4096, 512, 8192], "head_dim": [128, 64],
        "dtype": ["bfloat16", "float16"], "causal": [False, True], "mode": ["fwd", "fwd_bwd"]}
    assert {c.batch * c.seq_len_q for c in cases} == {16384} and {c.heads * c.head_dim for c in cases} == {2048}
    ran = {t.backend for t in expand_loaded(loaded)}
    assert ran == set(loaded.config.backends) and len(ran) == 9


def test_fa2_h100_is_bf16_16k_tokens_hidden_2048_n_1k_to_16k():
    cases = expand_cases(load_config("fa2_h100").config)
    assert len(cases) == 5 * 2 * 2 * 2
    assert axes_of(cases, "seq_len_q", "head_dim", "dtype", "causal", "mode") == {
        "seq_len_q": [1024, 16384, 2048, 4096, 8192], "head_dim": [128, 64], "dtype": ["bfloat16"],
        "causal": [False, True], "mode": ["fwd", "fwd_bwd"]}
    assert {c.batch * c.seq_len_q for c in cases} == {16384} and {c.heads * c.head_dim for c in cases} == {2048}


def test_fa1_vs_fa2_runs_batch_heads_16_and_128():
    cases = expand_cases(load_config("fa1_vs_fa2").config)
    assert {c.batch * c.heads for c in cases} == {16, 128}
    assert axes_of(cases, "seq_len_q", "head_dim", "mode") == {
        "seq_len_q": [1024, 16384, 4096], "head_dim": [128, 64], "mode": ["fwd", "fwd_bwd"]}


def test_fa2_d256_has_eight_heads():
    cases = expand_cases(load_config("fa2_d256").config)
    assert {(c.heads, c.head_dim) for c in cases} == {(8, 256)} and len(cases) == 3 * 2 * 2


def test_workload_configs_match_their_descriptions():
    varlen = expand_cases(load_config("varlen").config)
    assert len(varlen) == 4 * 2 * 2 * 2 and {c.total_tokens for c in varlen} == {16384}
    assert {(c.heads, c.kv_heads) for c in varlen} == {(16, 16), (16, 4)}
    window = expand_cases(load_config("window").config)
    assert {c.window for c in window} == {(-1, -1), (4096, 0)} and all(c.causal for c in window)
    assert {c.batch * c.seq_len_q for c in window} == {65536}
    decode = {t.case for t in expand_loaded(load_config("decode_batches"))}  # excludes drop tasks, not cases
    # B x new tokens x caches x layouts (contiguous, paged16, paged256), less B64 x 128k paged
    assert len(decode) == 3 * 2 * 3 * 3 - 2 * 2
    smoke = expand_cases(load_config("smoke").config)
    assert {c.workload for c in smoke} == {"dense", "decode", "varlen"} and any(c.has_window for c in smoke)


def test_decode_config_exclusion_follows_its_comment():
    # "caches past 2M tokens ... B256 runs the 4k caches, B32 up to 32k"
    loaded = load_config("decode")
    tasks = expand_loaded(loaded)
    assert all(sum(t.case.sequence_lengths()[1]) <= 2 * 1024 * 1024 for t in tasks)
    assert {c.seq_len_kv for c in {t.case for t in tasks} if c.batch == 256} == {4096}
    assert max(c.seq_len_kv for c in {t.case for t in tasks} if c.batch == 32) == 32768


def test_grids_past_the_case_limit_together_are_refused():
    grid = "  - {batch: [1, 2, 3, 4, 5], heads: [1, 2, 3, 4, 5], seq_len: [%s], head_dim: [1, 2, 3, 4, 5]}"
    per_grid = 5 * 5 * 5 * 8  # within the limit alone
    count = MAX_CASES // per_grid + 1
    grids = "\n".join(grid % ", ".join(str(100 * i + j) for j in range(1, 9)) for i in range(1, count + 1))
    lines = problems("grids:\n" + grids + "\nbackends: [naive]")
    assert lines == [f"t.yaml: grids: the grids multiply to {count * per_grid:,} cases in all, more than a sweep "
                     f"can hold ({MAX_CASES:,}): shorten the lists or split the sweep"]


def test_exclude_wins_over_a_backend_include():
    c = cfg(GRID + "include: [{backend: naive, seq_len: 64}]\nexclude: [{backend: naive, seq_len: 64}]")
    assert [(t.backend, t.case.seq_len_q) for t in expand_tasks(c)] == [("sdpa", 64), ("sdpa", 128)]
