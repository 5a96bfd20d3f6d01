"""An adversarial audit of every command against bad input: broken results files through compare, check,
plot, baseline save and run --resume; options with impossible values; paths the file system refuses;
outputs that would overwrite results. Each is exit 2 (3 where the README says "not comparable") with a
line naming what is wrong, no traceback, bounded output, and results already written left untouched."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthetic import H100, case, record, write_run
from flashbench.cli import app
from flashbench.model.case import Case
from flashbench.model.schema import Record

runner = CliRunner()
MAX_OUTPUT = 4096
VARLEN = Case(3, 2, 2, 128, 128, 32, "float32", False, "fwd", workload="varlen", lengths="uniform(16..128,seed=0)",
              total_tokens=256)


def invoke(*args, env=None):
    r = runner.invoke(app, [str(a) for a in args], env={"GITHUB_STEP_SUMMARY": "", **(env or {})})
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


def bad(r, code=2, says=""):
    """Exit ``code``, output bounded, every line of it an error (or a table before it), naming ``says``."""
    assert r.exit_code == code, f"exit {r.exit_code}: {r.output[:1000]}"
    assert len(r.output.encode()) <= MAX_OUTPUT, f"{len(r.output)} bytes: {r.output[:300]}"
    assert says in r.output, r.output[:1000]
    return r


@pytest.fixture()
def good(tmp_path):
    """A small, valid results directory: two dense cases, a varlen case, one error row."""
    return write_run(tmp_path / "good", [record("sdpa_flash", case(1024), 1.0, seed=1),
                                         record("triton_fa2", case(1024), 0.8, seed=2),
                                         record("sdpa_flash", VARLEN, 0.5, seed=3),
                                         record("triton_fa2", VARLEN, 0.4, status="error", reason="boom")])


def edited(good: Path, tmp_path: Path, edit) -> Path:
    doc = json.loads((good / "results.json").read_text())
    edit(doc)
    out = tmp_path / "edited"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(doc))
    return out


def on_records(field, value, index=0):
    def edit(doc):
        doc["records"][index][field] = value
    return edit


# every edit: (what it does to results.json, what the message names)
EDITS = {
    "median a string": (on_records("median_ms", "fast"), "records[0].median_ms: expected a number"),
    "median negative": (on_records("median_ms", -1.0), "records[0].median_ms: must be 0 or more"),
    "median zero": (on_records("median_ms", 0.0), "records[0].median_ms: must be a finite time > 0"),
    "median infinite": (on_records("median_ms", "inf"), "records[0].median_ms: must be a finite time"),
    "median a list": (on_records("median_ms", [1]), "records[0].median_ms"),
    "samples of strings": (on_records("samples_ms", ["a", "b"]), "records[0].samples_ms[0]"),
    "samples nested": (on_records("samples_ms", [[1.0]]), "records[0].samples_ms[0]"),
    "samples a string": (on_records("samples_ms", "abc"), "records[0].samples_ms: expected a list"),
    "round medians of strings": (on_records("round_medians_ms", ["x"]), "records[0].round_medians_ms[0]"),
    # a round's median of 0 divided by zero in the gate's between-run test and in baseline save's merge
    "round median zero": (on_records("round_medians_ms", [1.0, 0.0]),
                          "records[0].round_medians_ms[1]: must be a finite time > 0"),
    # null and NaN in a list of times failed to sort in baseline save's merge (TypeError)
    "sample null": (on_records("samples_ms", [1.0, None]), "records[0].samples_ms[1]: must be a finite time"),
    "round median nan": (on_records("round_medians_ms", ["nan", 1.0]),
                         "records[0].round_medians_ms[0]: must be a finite time"),
    "batch 10**12": (on_records("batch", 10 ** 12), "records[0].batch: must be between 1 and 65,536"),
    "batch a float": (on_records("batch", 1.5), "records[0].batch: expected an integer"),
    "batch null": (on_records("batch", None), "records[0].batch"),
    "batch missing": (lambda d: d["records"][0].pop("batch"), "records[0].batch: missing"),
    "causal a string": (on_records("causal", "false"), "records[0].causal: expected true or false"),
    "dtype unknown": (on_records("dtype", "float8"), "records[0].dtype: expected one of"),
    "mode unknown": (on_records("mode", "sideways"), "records[0].mode"),
    "status unknown": (on_records("status", "maybe"), "records[0].status: expected one of"),
    "status a number": (on_records("status", 3), "records[0].status: expected a string"),
    "backend a number": (on_records("backend", 5), "records[0].backend"),
    "backend 100 kB": (on_records("backend", "q" * 100_000), "records[0].backend"),
    # names the registry refuses: a newline broke one-line messages, an escape sequence reached the terminal
    "backend with a newline": (on_records("backend", "sdpa\nflash"), "records[0].backend: expected a backend name"),
    "backend with an escape": (on_records("backend", "sdpa\x1b[31m"), "records[0].backend: expected a backend name"),
    "lengths garbage": (on_records("lengths", "garbage(1..2)", 2), "records[2].lengths"),
    "varlen budget of 2**32 ones": (lambda d: d["records"][2].update(lengths="list(1)", total_tokens=1 << 32),
                                    "records[2].total_tokens"),
    "record a string": (lambda d: d["records"].append("x"), "records[4]: expected a mapping"),
    "record null": (lambda d: d["records"].append(None), "records[4]: expected a mapping"),
    "records a mapping": (lambda d: d.update(records={"a": 1}), "no list of 'records'"),
    "environment a list": (lambda d: d.update(environment=[1]), "environment: expected a mapping"),
    "environment a string": (lambda d: d.update(environment="x"), "environment: expected a mapping"),
    "gpu_name a number": (lambda d: d["environment"].update(gpu_name=5), "environment.gpu_name"),
    "gpu_name 100 kB": (lambda d: d["environment"].update(gpu_name="g" * 100_000), "environment.gpu_name"),
    "config a list": (lambda d: d.update(config=[1]), "config: expected a mapping"),
    "reference_backend a number": (lambda d: d.update(reference_backend=5), "reference_backend"),
    "reference_backend 100 kB": (lambda d: d.update(reference_backend="r" * 100_000),
                                 "reference_backend: expected a string of at most 256 characters"),
    "rounds a string": (lambda d: d.update(rounds="abc"), "rounds: expected an integer"),
    "warnings a string": (lambda d: d.update(warnings="abc"), "warnings: expected a list"),
    "schema_version true": (lambda d: d.update(schema_version=True), "schema_version True"),
}


def commands(path: Path, good: Path, tmp_path: Path, config: str) -> dict:
    return {"compare": ["compare", path], "compare runs": ["compare", good, path],
            "check": ["check", path, "--baseline", good], "check baseline": ["check", good, "--baseline", path],
            "plot": ["plot", path, "--out", tmp_path / "plots"],
            "baseline save": ["baseline", "save", path, "x", "--root", tmp_path / "baselines"],
            "run --resume": ["run", config, "--resume", path, "--dry-run"]}


@pytest.mark.parametrize("name", list(EDITS))
def test_broken_results_are_one_line_naming_the_field_in_every_command(good, tmp_path, name):
    """A results.json edited by hand or by a tool: every command that reads it says which field of which
    record is wrong (exit 2), instead of a TypeError deep in the gate, a MemoryError from batch 10**12, or
    a megabyte of a value echoed back."""
    edit, says = EDITS[name]
    path = edited(good, tmp_path, edit)
    config = tmp_path / "c.yaml"
    config.write_text("axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n")
    for command, args in commands(path, good, tmp_path, str(config)).items():
        r = invoke(*args)
        bad(r, says=says)
        assert r.output.startswith("error: ") or command == "check", (command, r.output[:300])
    assert json.loads((path / "results.json").read_text())  # never rewritten


@pytest.mark.parametrize("content", [b"", b"{\"schema_version\": 2, \"records\": [", bytes(range(256)) * 8,
                                     "{\"schema_version\": 2, \"records\": [], \"x\": \"\xe9\"}".encode("latin-1"),
                                     b"[" * 100_000 + b"]" * 100_000, b"null", b"[1, 2]"])
def test_unreadable_results_files_are_exit_2(tmp_path, content):
    """Empty, truncated, binary, not UTF-8, nested 100,000 deep, not an object: one line, exit 2.
    (`compare` and `check` first read the file in analysis/compare.py, which a RecursionError still
    escapes for the deeply nested one: left to its owners.)"""
    (tmp_path / "results.json").write_bytes(content)
    commands = [["plot", tmp_path], ["baseline", "save", tmp_path, "x", "--root", tmp_path / "b"]]
    if not content.startswith(b"[" * 1000):
        commands.append(["compare", tmp_path])
    for args in commands:
        bad(invoke(*args), says="results")


def test_writer_spellings_of_non_finite_numbers_read_back(tmp_path):
    """The writer spells inf as "inf" and NaN as null (strict JSON): they load as inf and None."""
    r = record("sdpa_flash", case(1024), 1.0)
    r.rel_err, r.max_abs_err = float("inf"), float("nan")
    write_run(tmp_path / "run", [r])
    (loaded,) = __import__("flashbench.results.files", fromlist=["load_run"]).load_run(tmp_path / "run").records
    assert loaded.rel_err == float("inf") and loaded.max_abs_err is None and loaded.samples_ms == r.samples_ms


def test_many_warnings_and_a_huge_reason_do_not_flood_the_gate(good, tmp_path):
    """A results file holding 10,000 warnings or a 1 MB reason: the gate's report stays short."""
    def edit(doc):
        doc["warnings"] = ["w" * 100] * 10_000
        doc["records"][1].update(status="error", reason="r" * 1_000_000, median_ms=None, samples_ms=[])
    path = edited(good, tmp_path, edit)
    r = invoke("check", path, "--baseline", good)
    assert r.exit_code == 1 and len(r.output) < 10_000, len(r.output)
    assert "… and 9981 more warnings" in r.output


def test_a_long_warning_is_cut_on_reading_and_the_records_still_load(good, tmp_path):
    """A warning is a line; one of 100,000 characters (an edited file) is cut, not a reason to refuse the run."""
    from flashbench.results.files import MAX_WARNING_CHARS, load_run
    path = edited(good, tmp_path, lambda doc: doc.update(warnings=["x" * 100_000, "short"]))
    run = load_run(path)
    assert [len(w) for w in run.meta["warnings"]] == [MAX_WARNING_CHARS, 5] and len(run.records) == 4


def test_baseline_save_writes_the_csv_from_the_records(good, tmp_path):
    """A run whose results.csv was cut short: the baseline's csv is written from the checked records."""
    (good / "results.csv").write_text("backend,bat")
    r = invoke("baseline", "save", good, "main", "--root", tmp_path / "b")
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "b" / "h100" / "main" / "results.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("backend,batch,heads")


# --- options and paths --------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["run", "smoke", "-b", ",,", "--dry-run"], "--backends: ',,' names no backend"),
    (["run", "smoke", "-b", "naive,naive", "--dry-run"], "'naive' listed more than once"),
    (["run", "smoke", "-b", "naiv", "--dry-run"], "unknown backend 'naiv': did you mean 'naive'?"),
    (["run", "smok", "--dry-run"], "did you mean 'smoke'?"),
    (["run", "", "--dry-run"], "the name is empty"),
    (["run", "smoke", "--timeout", "nan", "--dry-run"], "--timeout"),
    (["run", "smoke", "--timeout", "inf", "--dry-run"], "--timeout"),
    (["run", "smoke", "--rounds", str(10 ** 30), "--dry-run"], "--rounds"),
    (["run", "smoke", "--ray-num-gpus", "nan", "--dry-run"], "--ray-num-gpus"),
    (["run", "smoke", "--executor", "ray", "--ray-resources", "a=nan", "--dry-run"], "--ray-resources"),
    (["run", "smoke", "--device", "t" * 100_000, "--dry-run"], "--device"),
    (["profile", "smoke", "--ncu-timeout", "nan"], "--ncu-timeout"),
    (["profile", "smoke", "-b", "naive", "--sweep-n", "--n", str(1 << 40)], "--n: 1,099,511,627,776 is longer"),
    (["profile", "smoke", "-b", ","], "names no backend"),
    (["env", "--refresh"], "--refresh"),
    # options a command would silently ignore, as it refused --address without --executor ray
    (["run", "smoke", "--ray-num-gpus", "0", "--dry-run"], "the --ray-* options need --executor ray"),
    (["run", "smoke", "-e", "inprocess", "--ray-group-size", "4", "--dry-run"],
     "the --ray-* options need --executor ray"),
    (["profile", "smoke", "-b", "naive", "--n", "banana"], "--n lists the sequence lengths of --sweep-n"),
    # "--thresholds: : not a file"
    (["check", "run", "--baseline", "base", "--thresholds", ""], "--thresholds: the name is empty"),
])
def test_impossible_option_values_are_exit_2(args, says):
    """NaN passes `x < 0`; an empty -b meant "all the config's backends"; a duplicate backend merged a
    task's two rows as rounds; --n 2**40 hung allocating: each is now refused, naming the option."""
    bad(invoke(*args), says=says)


def test_resume_given_a_results_json_names_the_directory(tmp_path):
    """`run --resume DIR/results.json` (compare, check and plot take either) failed as "--out: cannot write
    results to DIR/results.json: File exists", naming an option never given; the directory is named instead."""
    from sweeps import tiny_config

    cfg, out = tiny_config(tmp_path, ["naive"]), tmp_path / "run"
    assert invoke("run", cfg, "--out", out, "--quiet", "-e", "inprocess").exit_code == 0
    before = (out / "results.json").read_bytes()
    r = bad(invoke("run", cfg, "--resume", out / "results.json", "-e", "inprocess"),
            says=f"give the results directory that holds it (--resume {out})")
    assert "--out" not in r.output and (out / "results.json").read_bytes() == before


def test_special_files_are_not_results(good):
    """/dev/zero as a results file was read until memory ran out (compare, check, plot, baseline save)."""
    for args in (["compare", "/dev/zero"], ["compare", good, "/dev/zero"], ["check", good, "--baseline", "/dev/zero"],
                 ["check", "/dev/zero", "--baseline", good], ["plot", "/dev/zero"], ["baseline", "save", "/dev/zero", "x"]):
        bad(invoke(*args), says="/dev/zero: not a results file")


def test_paths_the_file_system_refuses_are_one_line(tmp_path, good):
    """A path longer than the file system takes (ENAMETOOLONG) or under a file: exit 2, the name cut."""
    long = "p" * 5000
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["run", long, "--dry-run"], ["run", "smoke", "--out", tmp_path / long, "--dry-run"],
                 ["compare", long], ["compare", good, long], ["check", long, "--baseline", good],
                 ["check", good, "--baseline", long], ["check", good, "--baseline", good, "--thresholds", long],
                 ["plot", long], ["baseline", "save", long, "x"], ["run", "smoke", "--resume", long],
                 ["profile", long], ["baseline", "save", good, "x", "--root", afile],
                 ["baseline", "save", good, "n" * 300, "--root", tmp_path / "b"]):
        r = bad(invoke(*args))
        assert r.output.startswith("error: ") and len(r.output) < 600, (args[:2], r.output[:300])


def test_profile_never_replaces_results(good):
    """`profile --out DIR` into a directory holding results is refused; its files are untouched."""
    before = (good / "results.json").read_bytes()
    bad(invoke("profile", "smoke", "-b", "naive", "--out", good), says="already holds results")
    assert (good / "results.json").read_bytes() == before


def test_junit_never_overwrites_a_results_file(good, tmp_path):
    """`check --junit` naming the run's (or the baseline's) results.json is refused before the gate runs."""
    for target in (good / "results.json", good / "results.csv"):
        before = target.read_bytes()
        bad(invoke("check", good, "--baseline", good, "--junit", target), says="--junit")
        assert target.read_bytes() == before
    summary = good / "results.json"
    before = summary.read_bytes()
    r = invoke("check", good, "--baseline", good, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 0 and "not appended" in r.output and summary.read_bytes() == before


def test_compare_names_backends_missing_from_runs_against_runs(good, tmp_path):
    """-b with a backend in no run: exit 2 (it had shown an empty comparison); an empty run and a
    run without its config's reference backend say so instead of "(it has: )"."""
    bad(invoke("compare", good, good, "-b", "sdpa_flash,turbo"), says="--backends: turbo in none of these runs")
    empty = write_run(tmp_path / "empty", [])
    bad(invoke("compare", empty), says="no records")
    only = write_run(tmp_path / "only", [record("triton_fa2", case(1024), 1.0)])
    bad(invoke("compare", only), says="reference_backend 'sdpa_flash' has no rows")


def test_an_unknown_baseline_name_lists_the_saved_ones(good, tmp_path):
    """`check --baseline NAME` with a name not saved for the run's GPU names those that are."""
    assert invoke("baseline", "save", good, "main", "--root", tmp_path / "b").exit_code == 0
    bad(invoke("check", good, "--baseline", "mian", "--baselines-root", tmp_path / "b"), says="saved for h100: main")


def test_thresholds_typos_of_a_backend_warn_and_a_directory_is_not_a_file(good, tmp_path):
    """A thresholds override for "sdpa_flsh" applied to nothing, silently: now a warning with the name it
    is close to. A directory given as --thresholds is "not a file" (it was "no such file")."""
    thr = tmp_path / "t.yaml"
    thr.write_text("backends: {sdpa_flsh: {latency: 0.5}}\ncases: [{match: {backend: triton_fa}, latency: 0.5}]\n"
                   "defaults: {latncy: 0.1}\n")
    bad(invoke("check", good, "--baseline", good, "--thresholds", thr),
        says="defaults.latncy: unknown key (not a flashbench setting): did you mean 'latency'?")
    thr.write_text("backends: {sdpa_flsh: {latency: 0.5}, flex: {latency: 0.5}}\n"
                   "cases: [{match: {backend: triton_fa}, latency: 0.5}]\n")
    r = invoke("check", good, "--baseline", good, "--thresholds", thr)
    assert r.exit_code == 0, r.output
    assert "backends.sdpa_flsh: 'sdpa_flsh' names no backend of these runs" in r.output and "'sdpa_flash'?" in r.output
    assert "cases[0].match.backend: 'triton_fa'" in r.output and "flex" not in r.output  # far from all: one file, many sweeps
    bad(invoke("check", good, "--baseline", good, "--thresholds", tmp_path), says="not a file")


# --- configs ------------------------------------------------------------------------------------

def test_unknown_keys_suggest_the_key_they_are_a_typo_of():
    """The suggestion follows the model to the mapping the key is in (a list, a dict, a rule), and never
    names a key the mapping already has."""
    from flashbench.analysis.thresholds import parse_thresholds
    from flashbench.model.config import ConfigError, parse_config

    axes = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\n"
    cases = {axes + "backends: [naive]\ntimming: {warmup_ms: 1}\n": "timming: unknown key (not a flashbench setting): "
                                                                   "did you mean 'timing'?",
             "grids: [{batch: 1, heads: 2, seq_len: 64, head_dim: 32, causl: true}]\nbackends: [naive]\n":
                 "grids[0].causl: unknown key (not a flashbench setting): did you mean 'causal'?",
             axes + "backends: [naive]\nexclude: [{seqlen: 64}]\n":
                 "exclude[0].seqlen: unknown key (not a flashbench setting): did you mean 'seq_len'?",
             axes.replace("head_dim: 32", "head_dim: 32, head_dims: 64") + "backends: [naive]\n":
                 "axes.head_dims: unknown key (not a flashbench setting)"}
    for text, says in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(text, "bad.yaml")
        assert e.value.problems == [f"bad.yaml: {says}"]
    with pytest.raises(ConfigError) as e:
        parse_thresholds("backends: {flex: {tflop: 0.1}}\n", "t.yaml")
    assert e.value.problems == ["t.yaml: backends.flex.tflop: unknown key (not a flashbench setting): did you mean "
                                "'tflops'?"]


def test_a_key_yaml_reads_as_a_value_is_named_as_written():
    """`true: 1` was "[1]: Keys should be strings (got True)", a list index that is nowhere in the file."""
    from flashbench.model.config import ConfigError, parse_config

    axes = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\n"
    cases = {axes + "backends: [naive]\ntrue: 1\n": "True", axes + "backends: [naive]\n5: x\n": "5",
             axes.replace("head_dim: 32", "head_dim: 32, 7: 1") + "backends: [naive]\n": "axes.7"}
    for text, key in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(text, "bad.yaml")
        assert e.value.problems == [f"bad.yaml: {key}: unknown key (not a flashbench setting; YAML reads it as a "
                                    "value, not a name)"]


LONG_LIST = "[[" + ",".join(["1"] * 20_000) + "]]"
LONG = "x" * 100_000
VARLEN_GRID = "grids: [{workload: varlen, tokens: %s, heads: 2, seq_len: %s, head_dim: 32}]\nbackends: [naive]\n"
DENSE = "axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n"


@pytest.mark.parametrize("text", [
    "grids: [{workload: decode, batch: 1, heads: 2, seq_len: 4, seq_len_kv: %s, head_dim: 32}]\nbackends: [naive]\n"
    % LONG_LIST,                                                                  # the grid's checks
    "axes: {batch: 1, heads: 2, seq_len: %s, head_dim: 32}\nbackends: [naive]\n" % LONG_LIST,
    VARLEN_GRID % (1 << 32, LONG_LIST),                                           # a budget too many draws fill
    VARLEN_GRID % (64, "{dist: uniform, min: 1, max: 4, seed: %s}" % LONG),       # a distribution's fields
    VARLEN_GRID % (64, "{dist: uniform, min: 1, max: 4, %s}" % ", ".join(f"k{i}: 1" for i in range(10_000))),
    DENSE + "exclude: [{lengths: %s}]\n" % LONG,                                  # a rule's compact form
])
def test_config_messages_name_a_long_value_briefly(text):
    """The library bounds its own messages (the CLI's cut at 1,000 characters is a last resort): a listed
    distribution of 20,000 lengths, or a value of 100,000 characters, is named in a few dozen characters.
    Each of these lines held the whole value (40,000 to 150,000 characters)."""
    from flashbench.model.config import ConfigError, parse_config
    from flashbench.model.grid import expand_cases

    with pytest.raises(ConfigError) as e:
        expand_cases(parse_config(text, "c.yaml"), "c.yaml")
    assert all(len(p) < 400 for p in e.value.problems), [p[:200] for p in e.value.problems]
    if LONG_LIST in text:  # named as tables label it: its first lengths, how many, a digest
        assert any("list(1,1,1,1,…; 20,000 lengths, #" in p for p in e.value.problems), e.value.problems


def test_case_option_names_a_long_value_briefly():
    """--case lengths=<100,000 characters>: each line of the error stays short (it repeated the value whole)."""
    from flashbench.model.filters import parse_case_option
    from flashbench.model.yaml_input import ConfigError

    for text in (f"lengths={LONG}", f"lengths=uniform(1..4,seed={LONG})"):
        with pytest.raises(ConfigError) as e:
            parse_case_option(text)
        assert all(len(p) < 400 for p in e.value.problems), [p[:200] for p in e.value.problems]


@pytest.mark.parametrize("command", ["compare", "check"])
def test_json_nested_past_pythons_recursion_limit_is_one_line(command, good, tmp_path):
    """A results.json of 100,000 nested lists: one line and exit 2 (it was a RecursionError in compare and check)."""
    bad = tmp_path / "deep"
    bad.mkdir()
    (bad / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    args = [bad] if command == "compare" else [bad, "--baseline", good]
    r = invoke(command, *args)
    assert r.exit_code == 2 and "nested too deeply" in r.output, r.output[:500]


@pytest.mark.parametrize("devices, says", [("0,1,banana", "is not 'all' or a comma-separated list"),
                                           (",".join(map(str, range(300))), "300 devices listed; at most 256")])
def test_devices_are_checked_by_a_dry_run_too(devices, says):
    """--devices was only read when the sweep started: a dry run said nothing of a typo, and on a CPU any number
    of fake devices (a worker process each) was taken."""
    r = invoke("run", "smoke", "--dry-run", "--devices", devices)
    assert r.exit_code == 2 and says in r.output, r.output[-500:]
