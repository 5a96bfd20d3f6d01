"""``flashbench run --resume DIR``: finish interrupted sweeps with every task exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

from flashbench.results.files import load_run
from sweeps import invoke, plugin_path, tiny_config, wait_for_records

CLI = [sys.executable, "-c", "from flashbench.cli import main; main()"]


def keys(run):
    return [r.task().key() for r in run.records]


def test_resume_after_sigkill_finishes_with_each_task_once(tmp_path):
    env = dict(os.environ, FLASHBENCH_PLUGINS="fake_backends", FAKE_SLOW_S="0.5",
               PYTHONPATH=plugin_path())
    cfg = tiny_config(tmp_path, ["naive", "fake_slow"], seq_len=(32, 64))  # 4 cases x 2 backends
    out = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["run", cfg, "--out", str(out), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_records(proc, out, 3)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_run(out)  # valid despite the kill
    assert 3 <= len(first.records) < 8 and first.meta["finished"] is False
    # the driver's workers died with it
    pids = {int(r.backend_config.split("=")[1]) for r in first.records if r.backend == "fake_slow"}
    assert pids, "no fake_slow row before the kill: no worker to check"
    time.sleep(1.0)
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = not open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        assert not alive, f"worker {pid} outlived its killed driver"

    r = subprocess.run(CLI + ["run", cfg, "--resume", str(out), "--quiet"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    done = load_run(out)
    assert len(done.records) == 8 and len(set(keys(done))) == 8
    assert keys(done)[:len(first.records)] == keys(first)  # the old rows are kept as they were
    assert {x.status for x in done.records} == {"ok"}
    assert done.meta["finished"] is True and done.meta["tasks_total"] == 8
    assert done.meta["resumed"][0]["rows_kept"] == len(first.records)
    assert done.meta["created_utc"] == first.meta["created_utc"]


def test_resume_checks_config_and_backends_and_fills_gaps(tmp_path, fake_plugins):
    cfg = tiny_config(tmp_path, ["naive", "fake_raise"], seq_len=(32, 64), causal=(False,))
    out = tmp_path / "run"
    assert invoke("run", cfg, "-e", "inprocess", "--out", out, "--quiet").exit_code == 0
    full = load_run(out)
    assert len(full.records) == 4

    # nothing left to do: no duplicates
    r = invoke("run", cfg, "-e", "inprocess", "--resume", out)
    assert r.exit_code == 0, r.output
    assert keys(load_run(out)) == keys(full)

    # an interrupted run (rows missing): only the missing tasks run
    doc = json.loads((out / "results.json").read_text())
    doc["records"] = doc["records"][:1]
    doc["finished"] = False
    (out / "results.json").write_text(json.dumps(doc))
    r = invoke("run", cfg, "--dry-run", "--resume", out)
    assert r.exit_code == 0 and "3 to run" in r.output
    r = invoke("run", cfg, "-e", "inprocess", "--resume", out, "--quiet")
    assert r.exit_code == 0, r.output
    again = load_run(out)
    assert sorted(keys(again)) == sorted(keys(full)) and keys(again)[0] == keys(full)[0]
    assert again.meta["finished"] is True

    # --retry-failed measures the error rows again and replaces them
    r = invoke("run", cfg, "-e", "inprocess", "--resume", out, "--retry-failed", "--quiet")
    assert r.exit_code == 0, r.output
    retried = load_run(out)
    assert sorted(keys(retried)) == sorted(keys(full))
    assert retried.meta["resumed"][-1]["rows_retried"] == 2

    # refused: the same directory with another config or another backend selection
    other = tmp_path / "other.yaml"
    other.write_text(open(cfg).read().replace("seq_len: [32, 64]", "seq_len: [32]"))
    r = invoke("run", other, "--resume", out)
    assert r.exit_code == 2 and "sha256" in r.output and "same config" in r.output
    r = invoke("run", cfg, "-b", "naive", "--resume", out)
    assert r.exit_code == 2 and "backends naive,fake_raise" in r.output
    r = invoke("run", cfg, "-b", "fake_raise,naive", "--resume", out, "-e", "inprocess", "--quiet")
    assert r.exit_code == 0  # the same selection in another order is compatible
    r = invoke("run", cfg, "--resume", out, "--out", tmp_path / "elsewhere")
    assert r.exit_code == 2
    r = invoke("run", cfg, "--resume", tmp_path / "missing")
    assert r.exit_code == 2 and "no results.json" in r.output

    # refused: a directory timed otherwise by the same config text (a default that the text leaves out changed
    # since): its rows would mix two methods
    doc = json.loads((out / "results.json").read_text())
    doc["timing"]["max_noise_pct"] = 5.0
    doc["finished"] = False
    (out / "results.json").write_text(json.dumps(doc))
    r = invoke("run", cfg, "--resume", out)
    assert r.exit_code == 2 and "timed with max_noise_pct 5.0, this version times with max_noise_pct 1.0" in r.output
    assert keys(load_run(out)) == keys(retried)  # refusals never touch the directory
