"""Broken configs of every kind through `flashbench run FILE --dry-run`: each is exit 2, with no traceback,
output under 4 KB and an answer within seconds (issue 15: the fuzz test of "Done when")."""
import time

import pytest
from typer.testing import CliRunner

from flashbench.cli import app

runner = CliRunner()
MAX_OUTPUT = 4096
MAX_SECONDS = 20  # generous for a slow CI machine; each answers in well under a second here

AXES = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\n"
OK = AXES + "backends: [naive]\n"
LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


BROKEN = {
    # aliases
    "billion laughs in a field": LAUGHS + "axes: {batch: 1, heads: 2, seq_len: *l9, head_dim: 32}\nbackends: [naive]\n",
    "billion laughs in backends": LAUGHS + AXES + "backends: *l9\n",
    "billion laughs in a rule": LAUGHS + OK + "exclude: [{seq_len: *l9}]\n",
    "many aliases": "x: &x 1\ny: [" + ", ".join(["*x"] * 500) + "]\n" + OK,
    "recursive alias": "a: &a [1, *a]\n" + OK,
    "recursive mapping alias": "axes: &a {batch: 1, heads: 2, seq_len: 64, head_dim: 32, self: *a}\nbackends: [naive]\n",
    "undefined alias": AXES + "backends: *nowhere\n",
    # duplicate keys
    "duplicate top-level key": OK + "backends: [sdpa]\n",
    "duplicate axis": "axes: {batch: 1, batch: 2, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "duplicate timing key": OK + "timing:\n  warmup_ms: 5\n  warmup_ms: 6\n",
    "duplicate rule key": OK + "exclude: [{backend: naive, backend: sdpa}]\n",
    # NaN and infinities
    "warmup inf": OK + "timing: {warmup_ms: .inf}\n",
    "budget nan": OK + "timing: {budget_ms: .nan}\n",
    "budget 1e308": OK + "timing: {budget_ms: 1.0e+308}\n",
    "negative warmup": OK + "timing: {warmup_ms: -.inf}\n",
    "atol nan": OK + "tolerances: {float16: {atol: .nan}}\n",
    "factor inf": OK + "tolerances: {float16: {atol: 0.1, factor: .inf}}\n",
    "seed inf": OK + "seed: .inf\n",
    "seq_len inf": "axes: {batch: 1, heads: 2, seq_len: .inf, head_dim: 32}\nbackends: [naive]\n",
    # huge integers
    "batch 1e23": "axes: {batch: 100000000000000000000000, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "seq_len 2**64": f"axes: {{batch: 1, heads: 2, seq_len: {2 ** 64}, head_dim: 32}}\nbackends: [naive]\n",
    "head_dim 5000 digits": "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: " + "9" * 5000 + "}\nbackends: [naive]\n",
    "heads 1e6": "axes: {batch: 1, heads: 1000000, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "tokens huge": f"axes: {{tokens: {2 ** 40}, heads: 2, seq_len: 64, head_dim: 32}}\nbackends: [naive]\n",
    "hidden huge": f"axes: {{batch: 1, hidden: {2 ** 40}, seq_len: 64, head_dim: 32}}\nbackends: [naive]\n",
    "max_samples huge": OK + f"timing: {{max_samples: {10 ** 12}}}\n",
    "seed 2**70": OK + f"seed: {2 ** 70}\n",
    "grid of a billion cases": "axes: {batch: [" + ", ".join(map(str, range(1, 201))) + "], heads: ["
                               + ", ".join(map(str, range(1, 201))) + "], seq_len: [" + ", ".join(map(str, range(1, 201)))
                               + "], head_dim: 32}\nbackends: [naive]\n",
    "a thousand bad values": "axes: {batch: 1, heads: 2, seq_len: [" + ", ".join(["-5"] * 1000) + "], head_dim: 32}\n"
                             "backends: [naive]\n",
    # booleans where numbers belong
    "seq_len true": "axes: {batch: 1, heads: 2, seq_len: [true], head_dim: 32}\nbackends: [naive]\n",
    "batch false": "axes: {batch: false, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "min_samples true": OK + "timing: {min_samples: true}\n",
    "warmup true": OK + "timing: {warmup_ms: true}\n",
    "seed true": OK + "seed: true\n",
    "atol true": OK + "tolerances: {float32: {atol: true}}\n",
    "rule seq_len true": OK + "exclude: [{seq_len: true}]\n",
    # names that would leave the results root
    "name ../../x": "name: ../../x\n" + OK,
    "name absolute": "name: /etc/x\n" + OK,
    "name dotdot": "name: ..\n" + OK,
    "name with nul": 'name: "a\\0b"\n' + OK,
    "name home": "name: ~/x\n" + OK,
    "name backslash": 'name: "..\\\\..\\\\x"\n' + OK,
    # wrong types at every level
    "empty file": "",
    "top-level list": "- a\n- b\n",
    "top-level scalar": "42\n",
    "multi-document": "---\n" + OK + "---\n" + OK,
    "axes a list": "axes: [1, 2]\nbackends: [naive]\n",
    "axes a string": "axes: everything\nbackends: [naive]\n",
    "backends a mapping": AXES + "backends: {naive: 1}\n",
    "backends a number": AXES + "backends: 5\n",
    "backends empty": AXES + "backends: []\n",
    "timing a list": OK + "timing: [1, 2]\n",
    "tolerances a list": OK + "tolerances: [1]\n",
    "tolerance key not a dtype": OK + "tolerances: {float128: {atol: 1}}\n",
    "include a mapping": OK + "include: {seq_len: 64}\n",
    "exclude of numbers": OK + "exclude: [5]\n",
    "device a list": OK + "device: [cuda]\n",
    "name a list": "name: [x]\n" + OK,
    "correctness maybe": OK + "correctness: maybe\n",
    "seq_len a mapping": "axes: {batch: 1, heads: 2, seq_len: {a: 1}, head_dim: 32}\nbackends: [naive]\n",
    "dtype nested": "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, dtype: [[float16]]}\nbackends: [naive]\n",
    "mode a number": "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, mode: 5}\nbackends: [naive]\n",
    "unknown key": OK + "colour: red\n",
    "unknown axis": "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, width: 3}\nbackends: [naive]\n",
    "batch and tokens": "axes: {batch: 1, tokens: 64, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "unknown backend": AXES + "backends: [turbo]\n",
    "unknown rule backend": OK + "exclude: [{backend: turbo}]\n",
    "unknown reference backend": OK + "reference_backend: sdpa\n",
    "rule dtype float8": OK + "include: [{dtype: float8}]\n",
    "kv_heads dividing nothing": "axes: {batch: 1, heads: 2, kv_heads: 3, seq_len: 64, head_dim: 32}\nbackends: [naive]\n",
    "empty grid": OK + "exclude: [{backend: naive}]\n",
    "python tag": "axes: !!python/object/apply:os.system ['echo pwned']\nbackends: [naive]\n",
    "unhashable key": OK + "? [a, b]\n: 1\n",
    "merge of a scalar": OK + "timing: {<<: 5}\n",
    # deep nesting
    "deep list": "axes: " + nested(5000) + "\nbackends: [naive]\n",
    "deep list under the limit": "axes: {batch: 1, heads: 2, seq_len: " + nested(25) + ", head_dim: 32}\n"
                                 "backends: [naive]\n",
    "deep mapping": "axes: " + "{a: " * 200 + "1" + "}" * 200 + "\nbackends: [naive]\n",
    # huge strings
    "huge name": "name: " + "x" * 100_000 + "\n" + OK,
    "huge backend name": AXES + "backends: [" + "z" * 100_000 + "]\n",
    "huge device": OK + "device: " + "q" * 100_000 + "\n",
    "huge file": OK + "description: " + "y" * (2 << 20) + "\n",
    "huge key": OK + "k" * 2000 + ": 1\n",
    # not YAML
    "unclosed bracket": "axes: [unclosed\n",
    "tab indentation": "axes:\n\tbatch: 1\n",
    "a NUL byte": OK + "\x00\n",
    # sizes that hid behind distributions, windows and pages (each had been accepted)
    "varlen budget of 2**32 ones": "grids: [{workload: varlen, tokens: 4294967296, heads: 2, seq_len: [[1]], "
                                   "head_dim: 32}]\nbackends: [naive]\n",  # drew 4e9 lengths: a hang
    "varlen budget of short draws": "grids: [{workload: varlen, tokens: 4294967296, heads: 2, seq_len: "
                                    "[{dist: uniform, min: 1, max: 2, seed: 0}], head_dim: 32}]\nbackends: [naive]\n",
    "varlen batch 2**32": "grids: [{workload: varlen, tokens: 4294967296, heads: 2, seq_len: 1, head_dim: 32}]\n"
                          "backends: [naive]\n",
    "decode cache distribution past the maximum": "grids: [{workload: decode, batch: 1, heads: 2, seq_len: 1, seq_len_kv: "
                                                  "[{dist: uniform, min: 1, max: 99999999999999999, seed: 0}], "
                                                  "head_dim: 32}]\nbackends: [naive]\n",
    "varlen list past the maximum": "grids: [{workload: varlen, tokens: 64, heads: 2, seq_len: [[99999999999999999]], "
                                    "head_dim: 32}]\nbackends: [naive]\n",
    "window 1e20": "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, window: [100000000000000000000, 0]}\n"
                   "backends: [naive]\n",
    "page_size 1e14": "grids: [{workload: decode, batch: 1, heads: 2, seq_len: 1, seq_len_kv: 64, kv_layout: paged, "
                      "page_size: 100000000000000, head_dim: 32}]\nbackends: [naive]\n",
    "rounds true": OK + "rounds: true\n",
    "rounds 1e12": OK + "rounds: 1000000000000\n",
    "backend twice": AXES + "backends: [naive, naive]\n",  # its rows were merged as rounds of one row
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_config_is_exit_2_with_short_output_fast(tmp_path, name):
    """Every broken config: exit 2, no traceback, at most 4 KB of output, an answer within seconds."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN[name])
    t0 = time.perf_counter()
    r = runner.invoke(app, ["run", str(path), "--dry-run"])
    seconds = time.perf_counter() - t0
    assert r.exit_code == 2, f"{name}: exit {r.exit_code}: {r.output[:1000]} {r.exception!r}"
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(r.output.encode()) <= MAX_OUTPUT, f"{name}: {len(r.output)} bytes"
    assert r.output.startswith("error: ")
    assert seconds < MAX_SECONDS, f"{name}: {seconds:.1f} s"


def test_binary_junk_is_exit_2(tmp_path):
    """Not text at all: exit 2, one line."""
    path = tmp_path / "junk.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    r = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output) <= MAX_OUTPUT


def test_the_good_config_passes():
    """The base every broken config starts from is itself valid: the failures above are the breakage."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ok.yaml"
        path.write_text(OK)
        r = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert r.exit_code == 0, r.output
