"""The isolated local executor: crashes, hangs and errors become rows; --devices shards by case.

Test backends (tests/support/fake_backends.py) are registered in the driver and in every worker through
FLASHBENCH_PLUGINS (the ``fake_plugins`` fixture of tests/conftest.py).
"""
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.model.case import Case, Task
from flashbench.cli import app
from flashbench.model.yaml_input import ConfigError
from flashbench.measure.measurer import MeasureSettings
from flashbench.results.files import load_run
from flashbench.model.config import Timing
from sweeps import FAST, case, invoke, tiny_config  # noqa: F401
from flashbench.execute.devices import DeviceSpec, parse_devices
from flashbench.execute.failures import describe_exit, summarize_stderr
from flashbench.execute.local import LocalExecutor, WorkerStartError
from flashbench.execute.order import group_by_case

runner = CliRunner()


# --------------------------------------------------------------------------- units ----------

def test_parse_devices_and_describe_exit():
    assert parse_devices(None, "cpu") == [DeviceSpec(None, None, "cpu")]
    assert [d.index for d in parse_devices("0,1", "cpu")] == [0, 1]
    assert [d.label for d in parse_devices("0, 3", "cpu")] == ["cpu0", "cpu3"]
    assert parse_devices("all", "cpu") == [DeviceSpec(None, None, "cpu")]
    for bad in ("x", "0,0", "-1", ","):
        with pytest.raises(ValueError):
            parse_devices(bad, "cpu")
    assert describe_exit(-6) == "killed by signal 6 (SIGABRT)"
    assert describe_exit(3) == "exited with code 3"


def test_group_by_case_keeps_backend_order():
    a, b = case(32), case(64)
    tasks = [Task(a, "x"), Task(b, "x"), Task(a, "y"), Task(b, "y")]
    assert group_by_case(tasks) == [[Task(a, "x"), Task(a, "y")], [Task(b, "x"), Task(b, "y")]]


def test_stderr_summary_keeps_the_lines_before_a_faulthandler_dump():
    text = "warming up\nboom happened\nFatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n" \
           '  File "/x/backend.py", line 9 in prepare\n  File "/x/measure.py", line 1 in measure\n'
    s = summarize_stderr(text)
    assert s.startswith("warming up | boom happened | Fatal Python error: Aborted")
    assert 'File "/x/backend.py", line 9 in prepare' in s and "measure.py" not in s


def test_bad_plugin_is_a_config_error(monkeypatch):
    from flashbench.backends.plugins import load_plugins

    with pytest.raises(ConfigError, match="no_such_plugin_module"):
        load_plugins("no_such_plugin_module")
    monkeypatch.setenv("FLASHBENCH_PLUGINS", "no_such_plugin_module")
    r = invoke("run", "smoke", "-b", "naive", "--dry-run")
    assert r.exit_code == 2 and "cannot import plugin module 'no_such_plugin_module'" in r.output


# --------------------------------------------------------------------------- isolation ------

def test_crash_hang_and_raise_become_rows_and_the_sweep_goes_on(tmp_path, fake_plugins):
    """The default executor (one isolated worker): every failure costs its own task only."""
    cfg = tiny_config(tmp_path, ["naive", "fake_abort", "fake_exit", "fake_hang", "fake_raise", "fake_ok"],
                      causal=(False,))
    out = tmp_path / "run"
    r = invoke("run", cfg, "--timeout", "2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "crashed: fake_abort" in r.output and "timeout: fake_hang" in r.output
    run = load_run(out)
    assert [rec.backend for rec in run.records] == ["naive", "fake_abort", "fake_exit", "fake_hang", "fake_raise",
                                                     "fake_ok"]
    rows = {rec.backend: rec for rec in run.records}
    abort = rows["fake_abort"]
    assert abort.status == "crashed"
    assert "killed by signal 6 (SIGABRT)" in abort.reason and "fake_abort: something went badly wrong" in abort.reason
    assert abort.device_name and abort.wall_s is not None and abort.flops
    ex = rows["fake_exit"]
    assert ex.status == "crashed" and "exited with code 3" in ex.reason
    assert "last CUDA error: CUDA error: an illegal memory access" in ex.reason
    hang = rows["fake_hang"]
    assert hang.status == "timeout" and "timed out after 2 s" in hang.reason and "sleeping forever" in hang.reason
    assert rows["fake_raise"].status == "error" and "fake_raise: this backend always fails" in rows["fake_raise"].reason
    # the tasks after each failure still ran, on replacement workers
    assert rows["naive"].status == rows["fake_ok"].status == "ok"
    assert run.meta["finished"] is True and run.meta["executor"] == "local"
    assert (out / "logs" / "worker-cpu.log").exists()


def test_cuda_error_retires_the_worker_an_ordinary_error_does_not(fake_plugins):
    from flashbench.backends.plugins import load_plugins

    load_plugins()
    c = case()
    tasks = [Task(c, b) for b in ("fake_ok", "fake_raise", "fake_ok", "fake_cuda_error", "fake_ok")]
    ex = LocalExecutor(FAST, "cpu", timeout=60)
    recs = list(ex.run(tasks))
    assert [r.status for r in recs] == ["ok", "error", "ok", "error", "ok"]
    pids = [r.backend_config for r in recs]
    assert pids[0] == pids[2] != pids[4]  # the same worker survives an exception, not a CUDA error
    assert "worker retired" in recs[3].reason
    assert ex.stats["workers_started"] == 2


def test_devices_on_cpu_shard_by_case_and_merge_rows_once_each(tmp_path, fake_plugins, monkeypatch):
    cfg = tiny_config(tmp_path, ["naive", "fake_slow"], seq_len=(32, 64))
    out = tmp_path / "run"
    monkeypatch.setenv("FAKE_SLOW_S", "0.3")
    r = invoke("run", cfg, "--devices", "0,1", "--out", out, "--format", "csv", "--quiet")
    assert r.exit_code == 0, r.output
    run = load_run(out)
    keys = [rec.task().key() for rec in run.records]
    assert len(keys) == 8 and len(set(keys)) == 8
    assert {rec.status for rec in run.records} == {"ok"}
    per_case = {}
    for rec in run.records:
        per_case.setdefault(rec.case, set()).add((rec.device_index, rec.device_name))
    assert all(len(v) == 1 for v in per_case.values())  # all backends of a case on one device
    assert {i for v in per_case.values() for i, _ in v} == {0, 1}  # both devices measured
    assert set(run.meta["devices"]) == {"cpu0", "cpu1"}
    assert {d["device_index"] for d in run.meta["devices"].values()} == {0, 1}
    assert r.stdout.splitlines()[0].startswith("backend,")


def test_worker_that_cannot_start_is_an_environment_error(tmp_path):
    ex = LocalExecutor(FAST, "cpu", plugins=["no_such_plugin_module"], timeout=30)
    with pytest.raises(WorkerStartError, match="no_such_plugin_module"):
        list(ex.run([Task(case(), "naive")]))
    assert ex.stats["workers_started"] == 2  # one retry, then give up


def test_inprocess_executor_is_still_there(tmp_path):
    cfg = tiny_config(tmp_path, ["naive"])
    r = invoke("run", cfg, "--executor", "inprocess", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    run = load_run(tmp_path / "o")
    assert len(run.records) == 2 and run.records[0].device_index is None


def test_option_errors_exit_2(tmp_path):
    cfg = tiny_config(tmp_path, ["naive"])
    assert invoke("run", cfg, "--executor", "threads").exit_code == 2
    assert invoke("run", cfg, "--executor", "inprocess", "--devices", "0,1").exit_code == 2
    assert invoke("run", cfg, "--devices", "0,0").exit_code == 2
    assert invoke("run", cfg, "--timeout", "-1").exit_code == 2
    assert invoke("run", cfg, "--retry-failed").exit_code == 2
