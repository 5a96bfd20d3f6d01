"""Control characters in results files: a results.json edited to hold an ESC sequence, a carriage return, a
line feed or a BEL in one of its texts never reaches the terminal, the gate's markdown or its JUnit XML as such.
A free text (a record's reason or descriptions, the environment, the config's name and path, warnings) is kept,
made one printable line as the reader reads it; a text that keys a task or matches runs (a case field, the
backend list, the reference backend, the config's digest) is refused, exit 2 naming it. What `flashbench run`
writes reads back unchanged: the writer makes texts printable lines as the reader does."""
import json

import pytest

from flashbench import backends
from flashbench.backends import Unsupported
from flashbench.model.schema import Record
from flashbench.results.files import ResultsWriter, load_run
from synthetic import case, meta, record
from test_bad_input_cli_audit import bad, commands, edited, good, invoke  # noqa: F401 - good: the fixture
from sweeps import tiny_config

CONTROLS = {"\x1b[31m": "\\x1b[31m", "\r": " | ", "\n": " | ", "\x07": "\\x07"}  # each, and how it reads back
BEFORE, AFTER = "qqbefore", "qqafter"  # around the control character, in no other text of these runs


def text(control: str) -> str:
    return f"{BEFORE}{control}{AFTER}"


def shown(control: str) -> str:
    return f"{BEFORE}{CONTROLS[control]}{AFTER}"


def assert_clean(output: str) -> None:
    """No terminal control in ``output``, and the edited text, wherever shown, on one line."""
    assert "\x1b" not in output and "\x07" not in output, repr(output[:500])
    for line in output.splitlines():
        assert (BEFORE in line) == (AFTER in line), repr(line)


def outputs(path, good, tmp_path) -> list[str]:
    """What compare (the run; the run against ``good``) and check (markdown and JUnit) show of the run at ``path``."""
    junit = tmp_path / "junit.xml"
    results = [invoke("compare", path), invoke("compare", good, path),
               invoke("check", path, "--baseline", good, "--junit", junit)]
    for r in results:
        assert r.exit_code != 2, r.output[:500]  # loaded, not refused
    return [r.output for r in results] + ([junit.read_text()] if junit.exists() else [])  # none: not comparable


# --- free texts: kept, made one printable line ------------------------------------------------------------

def _record_text(field):
    def edit(doc, value):
        if field == "reason":  # an ok row of the baseline failing here: the gate shows its reason
            doc["records"][1].update(status="error", reason=value, median_ms=None, samples_ms=[])
        else:
            doc["records"][0][field] = value
    return edit


def _meta_text(key):
    parent, _, name = key.rpartition(".")

    def edit(doc, value):
        if key == "warnings":
            doc["warnings"] = ["a warning", value]
        else:
            (doc[parent] if parent else doc)[name] = value
    return edit


RECORD_TEXTS = ["reason", "timing_method", "device_name", "device_uuid", "backend_config"]
META_TEXTS = [f"environment.{k}" for k in ("gpu_name", "gpu_uuid", "driver_version", "device", "cuda", "torch",
                                           "triton", "git_commit")] + ["config.name", "config.path", "executor",
                                                                       "created_utc", "warnings"]


@pytest.mark.parametrize("control", list(CONTROLS), ids=repr)
@pytest.mark.parametrize("field", RECORD_TEXTS)
def test_a_records_free_text_is_read_as_one_printable_line(good, tmp_path, field, control):
    """A reason with an escape sequence went raw into the gate's markdown and JUnit XML (ESC is not even
    valid XML); with a line break it split the JUnit failure. The record is kept, its text made a line."""
    path = edited(good, tmp_path, lambda doc: _record_text(field)(doc, text(control)))
    loaded = load_run(path).records[1 if field == "reason" else 0]
    assert getattr(loaded, field) == shown(control)
    for output in outputs(path, good, tmp_path):
        assert_clean(output)


@pytest.mark.parametrize("control", list(CONTROLS), ids=repr)
@pytest.mark.parametrize("key", META_TEXTS)
def test_a_metadata_free_text_is_read_as_one_printable_line(good, tmp_path, key, control):
    """A GPU name, a driver or a software version, a config's name: compare and check print them in titles and
    environment differences, a warning in every gate report; an ESC there reached the terminal."""
    path = edited(good, tmp_path, lambda doc: _meta_text(key)(doc, text(control)))
    run = load_run(path)
    parent, _, name = key.rpartition(".")
    value = run.meta["warnings"][1] if key == "warnings" else (run.meta[parent] if parent else run.meta)[name]
    assert value == shown(control) and len(run.records) == 4
    for output in outputs(path, good, tmp_path):
        assert_clean(output)


# --- keys and names runs are matched by: refused ----------------------------------------------------------

def _refused_edits(control: str) -> dict:
    """field named -> the edit: a case field of a record (it keys the task), the metadata's matched names."""
    return {"records[2].lengths": lambda d: d["records"][2].update(lengths=f"uniform(16..128,seed=0){control}"),
            "records[0].dtype": lambda d: d["records"][0].update(dtype=f"float32{control}"),
            "config.sha256": lambda d: d["config"].update(sha256=f"abc123{control}"),
            "backends": lambda d: d.update(backends=["sdpa_flash", f"triton_fa2{control}"]),
            "reference_backend": lambda d: d.update(reference_backend=f"sdpa_flash{control}")}


@pytest.mark.parametrize("control", list(CONTROLS), ids=repr)
@pytest.mark.parametrize("field", list(_refused_edits("")))
def test_a_key_with_a_control_character_is_refused_naming_it(good, tmp_path, field, control):
    """A lengths of "uniform(16..128,seed=0)\\n" was read as it stood (spaces are ignored in its compact form)
    and keyed a task no config makes: resume measured the task again beside the edited row. Mending it would do
    the same; it is refused, as a config digest or a backend name with one is, by every command."""
    path = edited(good, tmp_path, _refused_edits(control)[field])
    config = tmp_path / "c.yaml"
    config.write_text("axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32}\nbackends: [naive]\n")
    for command, args in commands(path, good, tmp_path, str(config)).items():
        r = bad(invoke(*args), says=f"{field}: a control character")
        assert_clean(r.output)
        assert r.output.startswith("error: ") or command == "check", (command, r.output[:300])


# --- what flashbench writes reads back unchanged ----------------------------------------------------------

@pytest.mark.parametrize("control", list(CONTROLS), ids=repr)
def test_the_writer_writes_texts_as_the_reader_reads_them(tmp_path, control):
    """A multi-line reason (a backend's exception), a launch log with an escape, a config name with a line break:
    the file holds each as one printable line, and reading it back gives the records and metadata written."""
    failed = Record(backend="triton_fa2", case=case(1024), status="error", reason=f"RuntimeError: {text(control)}",
                    backend_config=text(control), device_name=text(control))
    writer = ResultsWriter(tmp_path / "run", meta(name=text(control)), [record("sdpa_flash", case(1024), 1.0)])
    writer.add(failed)
    writer.update_meta(warnings=[text(control)])
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["records"][1]["reason"] == f"RuntimeError: {shown(control)}"
    assert written["records"][1]["backend_config"] == written["records"][1]["device_name"] == shown(control)
    assert written["config"]["name"] == written["warnings"][0] == shown(control)
    run = load_run(tmp_path / "run")
    assert run.records == writer.records
    assert {k: v for k, v in run.meta.items() if k != "schema_version"} == \
        {k: v for k, v in writer.meta.items() if k != "schema_version"}


def _fail_how(how: str, control: str):
    """A backend method and what it does instead: a multi-line skip reason, an Unsupported or an error raised."""
    def raise_(e):
        def call(*a, **kw):
            raise e
        return call
    return {"skip reason": ("unsupported_reason", lambda case, device: f"cannot run this:\n  {text(control)}"),
            "unsupported": ("prepare", raise_(Unsupported(f"cannot run this:\n  {text(control)}"))),
            "error": ("prepare", raise_(RuntimeError(f"kernel failed:\n  {text(control)}")))}[how]


@pytest.fixture(scope="module")
def cpu_baseline(tmp_path_factory):
    """A tiny CPU run of naive and sdpa, every row ok."""
    tmp = tmp_path_factory.mktemp("baseline")
    out = tmp / "run"
    r = invoke("run", tiny_config(tmp, ["naive", "sdpa"]), "--out", out, "--quiet", "-e", "inprocess")
    assert r.exit_code == 0, r.output[-1000:]
    return out


@pytest.mark.parametrize("control", ["\x1b[31m", "\x07"], ids=repr)
@pytest.mark.parametrize("how", ["skip reason", "unsupported", "error"])
def test_a_run_writes_a_backends_multi_line_message_as_one_line(cpu_baseline, tmp_path, monkeypatch, how, control):
    """A skip reason or an Unsupported message of several lines was written as it was (only cut); an error's
    lines were joined but its escape sequence kept. Each row's reason is now one printable line: the run's own
    summary shows it so, it reads back unchanged, and the gate shows it as it reads (an error row's)."""
    method, replacement = _fail_how(how, control)
    monkeypatch.setattr(backends.get("sdpa"), method, replacement)
    out = tmp_path / "run"
    r = invoke("run", tiny_config(tmp_path, ["naive", "sdpa"]), "--out", out, "-e", "inprocess")
    assert r.exit_code == 0 and shown(control) in r.output, r.output[-1000:]  # the skips and failures under its tables
    assert_clean(r.output)
    rows = json.loads((out / "results.json").read_text())["records"]
    reasons = [row["reason"] for row in rows if row["backend"] == "sdpa"]
    assert reasons and all(reason.isprintable() and shown(control) in reason for reason in reasons), reasons
    assert [x.reason for x in load_run(out).records] == [row["reason"] for row in rows]
    check = invoke("check", out, "--baseline", cpu_baseline)
    if how == "error":  # a skipped row is "measured only in the baseline", its reason not shown
        assert check.exit_code == 1 and shown(control) in check.output, check.output[-1000:]
    assert_clean(check.output)


@pytest.mark.parametrize("gpu_name", ["H100 [/x]", "[bold]H100", "H100 [red]"])
def test_rich_markup_in_an_environment_difference_is_printed_as_written(good, tmp_path, gpu_name):
    """A printable text is kept as it is, so it may hold Rich's markup: compare and check print the environment
    differences between runs, and "H100 [/x]" as a GPU name stopped compare with a MarkupError (exit 1)."""
    path = edited(good, tmp_path, lambda d: d["environment"].update(gpu_name=gpu_name))
    for args in (["compare", good, path], ["check", path, "--baseline", good]):
        r = invoke(*args)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert gpu_name in r.output, r.output[:500]
