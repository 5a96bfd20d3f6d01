"""The sweep never loses a sweep: an adversarial audit with backends that misbehave inside their call
(tests/support/misbehaving_backends.py), beyond the crash / hang / raise of test_workers.py.

- a backend that changes process state (grad mode, cwd, threads) does not change what the next backend
  measures, nor where an inprocess driver writes its results;
- an output that breaks the contract (None, a tuple, a wrong shape / dtype, complex, detached) is an
  ``error`` row saying so, not an ``ok`` row or a traceback from deeper code;
- a backend's texts (skip reasons, config descriptions) are bounded; a failing ``config_description``
  costs the description, not the measurement; an ``unsupported_reason`` that raises is an ``error`` row;
- in a worker, a KeyboardInterrupt raised by a backend is an ``error`` row, the worker lives on;
- a worker that dies while a child it forked holds its pipe is a ``crashed`` row at once (not a
  ``timeout`` after the whole limit), and the child is killed; a worker that closes its pipe and then
  exits is reported with its own exit code;
- a worker log stays bounded however much a backend prints;
- compile processes never outlive the precompile phase (Ctrl-C), a raising ``compile_key`` is no traceback;
- two runs never write one results directory; a write that fails mid-sweep is exit 3 with the resume
  hint, not a traceback.
"""
import json
import os
import sys
import time
from pathlib import Path

import pytest

from flashbench.execute import precompile
from flashbench.execute.local import LocalExecutor
from flashbench.execute.plan import runs_here, split_runnable
from flashbench.execute.session import DirectoryInUse, SweepRequest, lock_directory, prepare_sweep
from flashbench.measure.measurer import CONFIG_CHARS, Measurer
from flashbench.model.schema import MAX_REASON_CHARS
from flashbench.model.case import Case, Task
from flashbench.results.files import load_run
from sweeps import FAST, case, invoke, plugin_path, tiny_config


@pytest.fixture
def bad_plugins(monkeypatch):
    """FLASHBENCH_PLUGINS=misbehaving_backends (tests/support), for this process and its workers."""
    monkeypatch.setenv("FLASHBENCH_PLUGINS", "misbehaving_backends")
    monkeypatch.setenv("PYTHONPATH", plugin_path())
    from flashbench.backends.plugins import load_plugins

    load_plugins()
    yield
    mod = sys.modules.get("misbehaving_backends")
    if mod is not None:
        mod.unregister()


def bwd_case(n=32):
    return Case(1, 2, 2, n, n, 16, "float32", False, "fwd_bwd")


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _ends_within(pid: int, seconds: float = 5.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``seconds``."""
    deadline = time.time() + seconds
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


# --------------------------------------------------------------------------- process state ---

def test_process_state_a_backend_changes_is_put_back(bad_plugins, tmp_path, monkeypatch):
    """Before: grad mode left off by one backend made the next backend's fwd_bwd an error row ("element 0
    of tensors does not require grad"); a chdir made an inprocess sweep lose its relative --out."""
    import torch

    monkeypatch.chdir(tmp_path)
    m = Measurer(FAST, "cpu")
    threads = torch.get_num_threads()
    recs = [m.measure(Task(bwd_case(), b)) for b in ("bad_grad_off", "naive", "bad_chdir", "naive", "bad_threads")]
    assert [r.status for r in recs] == ["error", "ok", "ok", "ok", "ok"], [r.reason for r in recs]
    assert "torch.is_grad_enabled()" in recs[0].reason and "put back" in recs[0].reason
    assert "working directory" in recs[2].reason and "torch.get_num_threads()" in recs[4].reason
    assert recs[1].reason == recs[3].reason == ""  # nothing to say about a well-behaved backend
    assert torch.is_grad_enabled() and Path.cwd() == tmp_path and torch.get_num_threads() == threads


def test_inprocess_sweep_with_a_chdir_backend_keeps_its_relative_out(bad_plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, ["naive", "bad_chdir"], causal=(False,))
    r = invoke("run", cfg, "-e", "inprocess", "--out", "rel", "--quiet", "--no-precompile")
    assert r.exit_code == 0, r.output
    assert [x.status for x in load_run(tmp_path / "rel").records] == ["ok", "ok"]


# --------------------------------------------------------------------------- output contract -

@pytest.mark.parametrize("backend, mode, says", [
    ("bad_none", "fwd", "returned NoneType, not a tensor"),
    ("bad_tuple", "fwd_bwd", "returned tuple, not a tensor"),
    ("bad_shape", "fwd", "shape (1, 2, 32, 15), expected (1, 2, 32, 16)"),
    ("bad_dtype", "fwd", "dtype torch.float64, expected torch.float32"),  # was an ok row
    ("bad_complex", "fwd", "dtype torch.complex64"),                       # was an ok row (imaginary part dropped)
    ("bad_detached", "fwd_bwd", "without a graph to q, k, v"),
    ("bad_prepare_none", "fwd", "prepare() returned NoneType, not the attention function"),
])
def test_an_output_that_breaks_the_contract_is_an_error_row_saying_so(bad_plugins, backend, mode, says):
    m = Measurer(FAST, "cpu")
    c = Case(1, 2, 2, 32, 32, 16, "float32", False, mode)
    rec = m.measure(Task(c, backend))
    assert rec.status == "error" and rec.reason.startswith("BackendContractError: ") and says in rec.reason, rec.reason
    assert m.measure(Task(c, "naive")).status == "ok"


# --------------------------------------------------------------------------- bounded texts ---

def test_a_backends_texts_are_bounded_and_a_failing_description_keeps_the_measurement(bad_plugins):
    m = Measurer(FAST, "cpu")
    skipped = m.measure(Task(case(), "bad_huge_unsupported"))
    assert skipped.status == "skipped" and len(skipped.reason) == MAX_REASON_CHARS  # was 1 MiB in every row
    huge = m.measure(Task(case(), "bad_huge_config"))
    assert huge.status == "ok" and len(huge.backend_config) == CONFIG_CHARS
    failing = m.measure(Task(case(), "bad_failing_config"))
    assert failing.status == "ok" and failing.median_ms  # was an error row, its timing thrown away
    assert failing.backend_config == "config_description() failed: RuntimeError: config_description broke"


def test_unsupported_reason_that_raises_or_returns_junk(bad_plugins):
    """Before: an unsupported_reason that raised stopped `flashbench run` (and `list`) with a traceback; a
    1 MiB reason went into every row and the terminal; 42 was written as the reason."""
    fwd, bwd = case(), bwd_case()
    runnable, settled = split_runnable([Task(fwd, "bad_raising_reason"), Task(fwd, "bad_odd_reason"),
                                        Task(bwd, "bad_odd_reason"), Task(fwd, "naive")], "cpu")
    assert runnable == [Task(fwd, "naive")]
    rows = {(r.backend, r.case.mode): r for r in settled}
    raised = rows["bad_raising_reason", "fwd"]
    assert raised.status == "error"
    assert raised.reason == "bad_raising_reason.unsupported_reason() failed: RuntimeError: unsupported_reason broke"
    assert rows["bad_odd_reason", "fwd"].status == "skipped"
    assert len(rows["bad_odd_reason", "fwd"].reason) == MAX_REASON_CHARS
    assert rows["bad_odd_reason", "fwd_bwd"].reason == "42"
    from flashbench import backends

    assert runs_here(backends.get("bad_raising_reason"), "cpu").startswith("skips every case here: ")
    assert len(runs_here(backends.get("bad_odd_reason"), "cpu")) < 2 * MAX_REASON_CHARS


def test_run_and_list_with_a_raising_unsupported_reason(bad_plugins, tmp_path):
    cfg = tiny_config(tmp_path, ["naive", "bad_raising_reason"], causal=(False,))
    r = invoke("run", cfg, "-e", "inprocess", "--out", tmp_path / "o", "--quiet", "--no-precompile")
    assert r.exit_code == 0, r.output
    assert [x.status for x in load_run(tmp_path / "o").records] == ["error", "ok"]
    r = invoke("list")
    assert r.exit_code == 0 and "bad_raising_reason" in r.output and "Traceback" not in r.output


# --------------------------------------------------------------------------- workers --------

def test_keyboard_interrupt_from_a_backend_is_an_error_row_in_a_worker(bad_plugins):
    """Before: the worker died of it (a ``crashed`` row reading "killed by signal 9") and was replaced."""
    tasks = [Task(case(), b) for b in ("bad_keyboard_interrupt", "bad_huge_config")]
    ex = LocalExecutor(FAST, "cpu", timeout=60)
    recs = list(ex.run(tasks))
    assert [(r.status, r.reason) for r in recs][0] == ("error", "KeyboardInterrupt")
    assert recs[1].status == "ok" and ex.stats["workers_started"] == 1


def test_a_dead_worker_whose_pipe_a_child_holds_is_crashed_at_once(bad_plugins, tmp_path, monkeypatch):
    """Before: the forked child kept the worker's pipe open, no end of file came, and the task became a
    ``timeout`` after the whole --timeout (600 s by default), leaving the child running forever."""
    pids = tmp_path / "pids"
    monkeypatch.setenv("MISBEHAVE_PID_FILE", str(pids))
    ex = LocalExecutor(FAST, "cpu", timeout=60)
    t0 = time.perf_counter()
    recs = list(ex.run([Task(case(), "bad_fork_then_abort"), Task(case(), "naive")]))
    assert time.perf_counter() - t0 < 30
    assert recs[0].status == "crashed" and "killed by signal 6 (SIGABRT)" in recs[0].reason, recs[0].reason
    assert recs[1].status == "ok"
    assert _ends_within(int(pids.read_text().split()[0])), "the worker's forked child outlived it"


def test_a_worker_that_closes_its_pipe_then_exits_reports_its_own_exit_code(bad_plugins):
    """Before: the driver killed it the moment its pipe closed: "killed by signal 9 (SIGKILL)"."""
    recs = list(LocalExecutor(FAST, "cpu", timeout=60).run([Task(case(), "bad_close_pipe_then_exit")]))
    assert recs[0].status == "crashed" and "exited with code 5" in recs[0].reason, recs[0].reason


def test_a_worker_log_stays_bounded(bad_plugins, tmp_path, monkeypatch):
    """Before: every byte a backend printed stayed in DIR/logs (100 MB from a 4-task sweep that printed
    2 MB a call), and a crashed row's stderr tail read the whole log into the driver's memory."""
    from flashbench.execute import local

    monkeypatch.setattr(local, "WORKER_LOG_CAP", 300_000)
    monkeypatch.setattr(local, "WORKER_LOG_KEEP", 50_000)
    ex = LocalExecutor(FAST, "cpu", timeout=60, log_dir=tmp_path)
    recs = list(ex.run([Task(case(n), "bad_print_a_lot") for n in (32, 48)]))
    assert [r.status for r in recs] == ["ok", "ok"]
    log = (tmp_path / "worker-cpu.log").read_bytes()
    assert len(log) < 300_000 + 200_000 and b"bytes of worker output dropped here" in log


# --------------------------------------------------------------------------- precompile -----

def test_a_raising_compile_key_is_left_to_the_worker(bad_plugins):
    assert precompile.compile_groups([Task(case(), "bad_compile_key")]) == []


def test_compile_processes_never_outlive_an_interrupted_precompile(fake_plugins, tmp_path, monkeypatch):
    """Before: Ctrl-C during the precompile phase left its processes (their own session, so Ctrl-C never
    reached them) running; a hanging compile ran forever."""
    import subprocess

    import fake_backends  # noqa: F401 - registers fake_compiling here

    log = tmp_path / "compile.log"
    monkeypatch.setenv("FAKE_COMPILE_LOG", str(log))
    real_wait = subprocess.Popen.wait
    calls = []

    def interrupted_wait(self, timeout=None):
        if not calls:  # the first wait: once the compile process is inside the hanging case, "Ctrl-C"
            calls.append(1)
            deadline = time.time() + 60
            while not (log.exists() and log.read_text()) and time.time() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted_wait)
    hang = Case(1, 2, 2, 40, 40, 16, "float32", False, "fwd")  # fake_compiling hangs at seq_len 40
    with pytest.raises(KeyboardInterrupt):
        precompile.warm_caches([Task(hang, "fake_compiling")], "cpu", jobs=1)
    assert _ends_within(int(log.read_text().split()[0])), "a compile process outlived the interrupted precompile phase"


# --------------------------------------------------------------------------- the directory --

def test_two_runs_never_write_one_results_directory(tmp_path):
    """Before: two runs started together both passed the "already holds results" check, both wrote the
    directory, both printed "8 records written", and one run's rows were gone."""
    out = tmp_path / "run"
    req = SweepRequest(config="smoke", backends=["naive"], executor="inprocess", out_dir=out)
    a, b = prepare_sweep(req), prepare_sweep(req)
    a.open()
    with pytest.raises(DirectoryInUse, match="another flashbench run is writing results into"):
        b.open()
    a.close()
    with pytest.raises(DirectoryInUse, match="wrote results into .* after this one started"):
        b.open()  # a's results.json is there now: b must not replace it
    # the CLI: exit 2 with the message, the files untouched
    before = (out / "results.json").read_text()
    fd = lock_directory(out)
    try:
        r = invoke("run", "smoke", "-b", "naive", "--resume", out, "-e", "inprocess")
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another flashbench run is writing results" in r.output, r.output
    assert (out / "results.json").read_text() == before


def test_a_resume_refuses_a_directory_written_since_it_was_read(tmp_path):
    """Two resumes read the directory; the first finished it before the second locked it: the second
    would measure the same tasks again and replace the first one's rows."""
    out, cfg = tmp_path / "run", tiny_config(tmp_path, ["naive"], causal=(False,))
    assert invoke("run", cfg, "--out", out, "-e", "inprocess", "--quiet", "--no-precompile").exit_code == 0
    req = SweepRequest(config=cfg, executor="inprocess", resume=out, precompile=False)
    sweep = prepare_sweep(req)
    text = (out / "results.json").read_text()
    (out / "results.json").unlink()
    (out / "results.json").write_text(text)  # another run replaced it (a new file, as every write does)
    with pytest.raises(DirectoryInUse, match="changed after this run read it"):
        sweep.open()
    sweep = prepare_sweep(req)
    sweep.open()  # read again: fine
    sweep.close()


def test_results_that_cannot_be_written_mid_sweep_end_with_exit_3_not_a_traceback(bad_plugins, tmp_path,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("MISBEHAVE_RESULTS_DIR", str(out))
    cfg = tiny_config(tmp_path, ["naive", "bad_remove_results"], causal=(False,))
    r = invoke("run", cfg, "-e", "inprocess", "--out", out, "--no-precompile")
    assert r.exit_code == 3, r.output
    assert "the sweep stopped: " in r.output and "No such file or directory" in r.output
    assert f"--resume {out}" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("name", ["", "x" * 101, "a,b", "two words", "new\nline", "esc\x1b[31m", None])
def test_a_backend_name_a_sweep_could_not_round_trip_is_refused_at_registration(name):
    """Results files refuse backend names past 100 characters, or holding a newline or a terminal escape, on
    reading, and -b splits on commas: such a plugin is refused when it registers, not after its sweep (which
    could then never be resumed or gated). One rule for both: model.schema.is_backend_name."""
    from flashbench.backends import REGISTRY, register
    from flashbench.backends.naive import NaiveBackend

    backend = NaiveBackend()
    backend.name = name
    with pytest.raises(ValueError, match="name"):
        register(backend)
    assert name not in REGISTRY


def test_a_dry_run_shows_a_raising_unsupported_reason_as_an_error_not_a_skip(bad_plugins, tmp_path):
    """The plan settles such a backend's tasks as error rows; the dry run says so instead of "skip"."""
    cfg = tiny_config(tmp_path, ["naive", "bad_raising_reason"], causal=(False,))
    r = invoke("run", cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "0 skipped, 1 failed before running" in r.output and "  error bad_raising_reason" in r.output
    r = invoke("run", cfg, "--dry-run", "--format", "json")
    rows = json.loads(r.stdout)
    assert {(x["backend"], x["status"]) for x in rows} == {("naive", "planned"), ("bad_raising_reason", "error")}
