"""Grid expansion: tokens/hidden conventions, GQA, include/exclude rules."""
from flashbench.model.config import parse_config
from flashbench.model.grid import expand_cases, expand_tasks


def cfg(text):
    return parse_config(text, "t.yaml")


def test_tokens_and_hidden_follow_the_flashattention_convention():
    c = cfg("""
axes: {tokens: 16384, hidden: 2048, seq_len: [512, 16384], head_dim: [64, 128]}
backends: [naive]
""")
    cases = expand_cases(c)
    got = {(x.seq_len_q, x.head_dim): (x.batch, x.heads) for x in cases}
    assert got == {(512, 64): (32, 32), (512, 128): (32, 16), (16384, 64): (1, 32), (16384, 128): (1, 16)}
    assert all(x.kv_heads == x.heads and x.seq_len_kv == x.seq_len_q for x in cases)


def test_full_product_and_gqa():
    c = cfg("""
axes: {batch: [1, 2], heads: 8, kv_heads: [8, 2, 1], seq_len: 64, seq_len_kv: [64, 128], head_dim: 32,
       dtype: [float16, float32], causal: [false, true], mode: [fwd, bwd, fwd_bwd]}
backends: [naive, sdpa]
""")
    cases = expand_cases(c)
    assert len(cases) == 2 * 3 * 2 * 2 * 2 * 3
    assert len(expand_tasks(c)) == 2 * len(cases)
    assert {x.kv_heads for x in cases} == {8, 2, 1}


def test_include_and_exclude_rules():
    c = cfg("""
axes: {batch: 1, heads: 2, seq_len: [64, 128, 256], head_dim: 32, causal: [false, true]}
backends: [naive, sdpa]
include:
  - {seq_len: [64, 128]}
exclude:
  - {backend: naive, seq_len: 128}
  - {causal: true, seq_len: 64}
""")
    tasks = expand_tasks(c)
    keys = {(t.backend, t.case.seq_len_q, t.case.causal) for t in tasks}
    assert keys == {("naive", 64, False), ("sdpa", 64, False), ("sdpa", 128, False), ("sdpa", 128, True)}


def test_backend_include_rule_limits_that_backend_only():
    c = cfg("""
axes: {batch: 1, heads: 2, seq_len: [64, 128], head_dim: 32}
backends: [naive, sdpa]
include:
  - {backend: naive, seq_len: 64}
""")
    keys = {(t.backend, t.case.seq_len_q) for t in expand_tasks(c)}
    assert keys == {("naive", 64), ("sdpa", 64), ("sdpa", 128)}


def test_backends_override():
    c = cfg("axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive, sdpa]\n")
    assert {t.backend for t in expand_tasks(c, backends=["sdpa"])} == {"sdpa"}
