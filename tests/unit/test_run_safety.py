"""`flashbench run` never loses results: an existing results directory is refused, SIGTERM stops a sweep
like Ctrl-C (hint included), resumes do not repeat warnings, files follow the umask; a dry run needs no
device (issue 15, items 3, 16, 17, 18, 20)."""
import os
import signal
import stat
import subprocess
import sys

from flashbench.results.files import load_run
from sweeps import invoke, plugin_path, tiny_config, wait_for_records

CLI = [sys.executable, "-c", "from flashbench.cli import main; main()"]


def test_existing_results_directory_is_refused_and_kept(tmp_path):
    """Item 3: running into a directory that holds results is exit 2 naming --resume and --force; the
    results are untouched. --force replaces them."""
    out = tmp_path / "run"
    assert invoke("run", "smoke", "-b", "naive", "--out", out, "--quiet").exit_code == 0
    before = (out / "results.json").read_text()
    r = invoke("run", "smoke", "-b", "naive,sdpa", "--out", out, "--quiet")
    assert r.exit_code == 2
    assert f"--resume {out}" in r.output and "--force" in r.output
    assert (out / "results.json").read_text() == before
    r = invoke("run", "smoke", "-b", "naive,sdpa", "--out", out, "--quiet", "--force")
    assert r.exit_code == 0, r.output
    assert len(load_run(out).records) == 22  # smoke: 11 cases x 2 backends


def test_force_keeps_the_old_results_until_its_first_row(tmp_path, monkeypatch):
    """--force replaced an earlier run's files with an empty results.json when it started, so a sweep stopped
    before its first row (Ctrl-C while compiling, no worker starts, a Ray cluster without GPUs) lost them: now
    they stay whole and the message says so (no resume hint pointing at the old run)."""
    from flashbench.measure.measurer import Measurer

    cfg, out = tiny_config(tmp_path, ["naive"]), tmp_path / "run"
    assert invoke("run", cfg, "--out", out, "--quiet", "-e", "inprocess").exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("results.json", "results.csv")}

    def interrupted(self, task):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Measurer, "measure", interrupted)  # Ctrl-C during the first measurement
        r = invoke("run", cfg, "--out", out, "--quiet", "-e", "inprocess", "--force")
    assert r.exit_code == 130, r.output
    assert f"the results already in {out} are left as they were" in r.output and "--resume" not in r.output
    assert {name: (out / name).read_bytes() for name in before} == before
    r = invoke("run", cfg, "--out", out, "--quiet", "-e", "inprocess", "--force")  # a sweep that ends replaces them
    assert r.exit_code == 0, r.output
    assert (out / "results.json").read_bytes() != before["results.json"] and load_run(out).meta["finished"] is True


def test_force_and_resume_together_are_refused(tmp_path):
    """Item 3: --force (replace) and --resume (finish) contradict each other."""
    r = invoke("run", "smoke", "--resume", tmp_path, "--force")
    assert r.exit_code == 2 and "--force" in r.output


def test_results_files_follow_the_umask(tmp_path):
    """Item 16: results.json and results.csv are created 0666 less the umask (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert invoke("run", "smoke", "-b", "naive", "--out", out, "--quiet").exit_code == 0
    finally:
        os.umask(old)
    for name in ("results.json", "results.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_resume_does_not_repeat_warnings(tmp_path):
    """Item 17: each --resume of a CPU run keeps one "CPU run" warning, not one more per resume."""
    out = tmp_path / "run"
    assert invoke("run", "smoke", "-b", "naive", "--out", out, "--quiet").exit_code == 0
    for _ in range(2):
        r = invoke("run", "smoke", "-b", "naive", "--resume", out, "--quiet")
        assert r.exit_code == 0, r.output
    warnings = load_run(out).meta["warnings"]
    assert sum("CPU run" in w for w in warnings) == 1, warnings


def test_sigterm_keeps_files_prints_the_resume_hint_and_stops_workers(tmp_path):
    """Item 18: SIGTERM (a cancelled CI job) ends the sweep like Ctrl-C: valid files, the "finish it with
    --resume DIR" hint, exit 143, and the worker processes shut down."""
    env = dict(os.environ, FLASHBENCH_PLUGINS="fake_backends", FAKE_SLOW_S="0.5", PYTHONPATH=plugin_path())
    cfg = tiny_config(tmp_path, ["naive", "fake_slow"], seq_len=(32, 64))  # 4 cases x 2 backends
    out = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["run", cfg, "--out", str(out), "--quiet", "--no-precompile"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(proc, out, 2)
    assert proc.poll() is None, "the sweep ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and f"--resume {out}" in stderr
    assert "Traceback" not in stderr
    run = load_run(out)
    assert 2 <= len(run.records) < 8 and run.meta["finished"] is False
    pids = {int(r.backend_config.split("=")[1]) for r in run.records if r.backend == "fake_slow"}
    assert pids, "no fake_slow row before SIGTERM: no worker to check"
    for pid in pids:
        try:
            alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        except FileNotFoundError:
            alive = False
        assert not alive, f"worker {pid} outlived the terminated sweep"


def test_dry_run_with_device_cuda_needs_no_gpu():
    """Item 20: a dry run measures nothing, so --device cuda is allowed on a CPU machine."""
    r = invoke("run", "smoke", "--dry-run", "--device", "cuda")
    assert r.exit_code == 0, r.output
    assert "on cuda" in r.output
