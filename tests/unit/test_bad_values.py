"""Values a config must refuse (exit 2, one line each) and what the grid leaves out, said out loud
(issue 15, items 6, 7, 9, 10, 11, 12)."""
import pytest

from flashbench.analysis.thresholds import parse_thresholds
from flashbench.backends.base import Backend
from flashbench.model.case import Case, Task
from flashbench.model.config import ConfigError, parse_config
from flashbench.model.grid import expand_tasks
from flashbench.model.filters import parse_case_option
from sweeps import invoke

AXES = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\n"
KNOWN = {"naive", "sdpa"}


def problems(text):
    with pytest.raises(ConfigError) as e:
        cfg = parse_config(text, "bad.yaml")
        expand_tasks(cfg, "bad.yaml", known_backends=KNOWN)
    return e.value.problems


@pytest.mark.parametrize("timing, field", [
    ("{warmup_ms: .inf}", "timing.warmup_ms"),
    ("{budget_ms: .nan}", "timing.budget_ms"),
    ("{budget_ms: 1.0e+308}", "timing.budget_ms"),
    ("{warmup_ms: 1000000}", "timing.warmup_ms"),
    ("{max_samples: 100000000}", "timing.max_samples"),
    ("{rest_ms: -1}", "timing.rest_ms"),
    ("{rest_ms: .inf}", "timing.rest_ms"),
    ("{rest_ms: 60001}", "timing.rest_ms"),
])
def test_timing_values_outside_a_sane_range_are_refused(timing, field):
    """Item 6: infinite, NaN and absurd timing values are refused with the field named."""
    (p,) = problems(AXES + f"backends: [naive]\ntiming: {timing}\n")
    assert p.startswith(f"bad.yaml: {field}: ")


def test_tolerance_and_threshold_numbers_must_be_finite():
    """Item 6: NaN/inf are refused in every settings block (tolerances, thresholds)."""
    (p,) = problems(AXES + "backends: [naive]\ntolerances: {float16: {atol: .nan}}\n")
    assert "tolerances.float16.atol: expected a finite number" in p
    with pytest.raises(ConfigError) as e:
        parse_thresholds("defaults: {latency: .inf}\n", "t.yaml")
    assert "defaults.latency: expected a finite number" in e.value.problems[0]


@pytest.mark.parametrize("axis, value", [("batch", 10 ** 23), ("heads", 100_000), ("seq_len", 1 << 40),
                                         ("head_dim", 65536)])
def test_integers_no_machine_can_run_are_refused(axis, value):
    """Item 7: each case field has a documented maximum (model/fields.py)."""
    text = AXES.replace(f"{axis}: ", f"{axis}: {value}, _old_{axis}: ", 1)
    text = text.replace(f", _old_{axis}: " + {"batch": "1", "heads": "2", "seq_len": "64", "head_dim": "32"}[axis], "")
    (p,) = problems(text + "backends: [naive]\n")
    assert f"axes.{axis}[0]: must be at most" in p


def test_derived_sizes_are_bounded_and_the_grid_size_too():
    """Item 7: batch from tokens and heads from hidden obey the same maxima; a grid of millions of cases
    is refused before it is expanded."""
    (p,) = problems("axes: {tokens: 4294967296, heads: 2, seq_len: 1, head_dim: 32}\nbackends: [naive]\n")
    assert "batch = tokens // seq_len must be at most" in p
    (p,) = problems("axes: {batch: 1, hidden: 4194304, seq_len: 64, head_dim: 1}\nbackends: [naive]\n")
    assert "heads = hidden // head_dim must be at most" in p
    lots = ", ".join(str(n) for n in range(1, 101))
    (p,) = problems(f"axes: {{batch: [{lots}], heads: [{lots}], seq_len: [{lots}], head_dim: 32}}\nbackends: [naive]\n")
    assert "1,000,000 cases" in p


def test_rule_values_share_the_maxima():
    """Item 7/10: include/exclude rules and --case read values through the same bounded types."""
    (p,) = problems(AXES + "backends: [naive]\nexclude: [{seq_len: 99999999999}]\n")
    assert "exclude[0].seq_len[0]: must be at most" in p
    with pytest.raises(ConfigError):
        parse_case_option("b=99999999")


class Cpp(Backend):
    name = "test_cpp_error"
    devices = ("cpu", "cuda")

    def prepare(self, case, device):
        def fn(q, k, v):
            raise RuntimeError("bad shape\nException raised from empty_cpu at aten/src/ATen/EmptyTensor.cpp:54 "
                               "(most recent call first):\nframe #0: c10::Error::Error() + 0x9c\nframe #1: at::empty()")
        return fn


def test_error_rows_keep_one_line_without_stack_frames():
    """Item 7: a library error with C++ frames becomes a one-line reason, frames cut."""
    from flashbench import backends
    from flashbench.measure.measurer import Measurer
    from sweeps import FAST

    backends.register(Cpp())
    try:
        r = Measurer(FAST, "cpu").measure(Task(Case(1, 2, 2, 16, 16, 16, "float32", False, "fwd"), "test_cpp_error"))
    finally:
        backends.REGISTRY.pop("test_cpp_error")
    assert r.status == "error" and r.reason == "RuntimeError: bad shape"


@pytest.mark.parametrize("text, field", [
    ("seed: true\n", "seed"),
    ("timing: {min_samples: true}\n", "timing.min_samples"),
    ("timing: {warmup_ms: true}\n", "timing.warmup_ms"),
    ("timing: {rest_ms: false}\n", "timing.rest_ms"),
    ("tolerances: {float32: {atol: false}}\n", "tolerances.float32.atol"),
])
def test_booleans_where_numbers_belong_are_refused(text, field):
    """Item 9: every number field refuses booleans (YAML's true is Python's 1)."""
    (p,) = problems(AXES + "backends: [naive]\n" + text)
    assert p.startswith(f"bad.yaml: {field}: ") and "boolean" in p


def test_reference_backend_must_be_in_the_sweep():
    """Item 10: a reference_backend that names no backend of the sweep is refused."""
    (p,) = problems(AXES + "backends: [naive, sdpa]\nreference_backend: sdpa_flashh\n")
    assert p == "bad.yaml: reference_backend: 'sdpa_flashh' is not one of this sweep's backends (naive, sdpa)"


def test_unknown_backends_in_rules_are_refused():
    """Item 10: a backend in include/exclude that does not exist is refused, naming the rule."""
    (p,) = problems(AXES + "backends: [naive, sdpa]\nexclude: [{backend: [naive, sdpa_flsh]}]\n")
    assert p.startswith("bad.yaml: exclude[0].backend: unknown backend 'sdpa_flsh'")
    (p,) = problems(AXES + "backends: [naive, sdpa]\ninclude: [{backend: turbo, seq_len: 64}]\n")
    assert p.startswith("bad.yaml: include[0].backend: unknown backend 'turbo'")


def test_rule_values_outside_their_domain_are_refused():
    """Item 10: a dtype or mode that does not exist in a rule is refused."""
    (p,) = problems(AXES + "backends: [naive]\nexclude: [{dtype: float8}]\n")
    assert "exclude[0].dtype[0]: expected one of" in p
    (p,) = problems(AXES + "backends: [naive]\ninclude: [{mode: sideways}]\n")
    assert "include[0].mode[0]: expected one of" in p


@pytest.mark.parametrize("axes, says", [
    ("{batch: 1, hidden: 2048, seq_len: 64, head_dim: [64, 128], kv_heads: [8, 32]}",
     ["3 cases", "left out where heads is not a multiple of kv_heads: heads=16 kv_heads=32"]),
    ("{tokens: [1024, 4096], hidden: [2048, 96], seq_len: [512, 2048], head_dim: [64, 32]}",
     ["hidden=96 head_dim=64", "tokens=1024 seq_len=2048"]),
])
def test_dry_run_names_the_combinations_left_out(tmp_path, axes, says):
    """Item 11: kv_heads that do not divide heads in part of the grid (and the same for hidden/head_dim
    and tokens/seq_len): --dry-run says which combinations are left out."""
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(f"axes: {axes}\nbackends: [naive]\n")
    r = invoke("run", cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    for text in says:
        assert text in r.output


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x" * 101, "bad\\name", "a b"])
def test_run_names_that_are_not_plain_names_are_refused(name):
    """Item 12: a name that would put the run directory outside results/runs/ is refused."""
    (p,) = problems(f"name: {name!r}\n".replace("'", '"') + AXES + "backends: [naive]\n")
    assert p.startswith("bad.yaml: name: must be a plain name")


def test_plain_names_are_kept():
    """Item 12: names like the bundled ones stay valid."""
    assert parse_config("name: fa2_h100-v1.2\n" + AXES + "backends: [naive]\n", "ok.yaml").name == "fa2_h100-v1.2"
