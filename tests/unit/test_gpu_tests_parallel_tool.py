"""tools/gpu_tests_parallel.sh on a CPU, over a small suite of its own: the tests are split over the processes,
a test that fails beside the others and passes alone is told from one that fails alone too (the exit status
follows the second run), and every log lands in one file."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gpu_tests_parallel.sh"

SUITE = '''
import os

import pytest


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(4))
def test_passes(i):
    pass


@pytest.mark.gpu
def test_fails_beside_the_others_only():
    # the first run leaves the flag and fails (as a test short of GPU memory would); alone it passes
    flag = os.environ["FLAG_FILE"]
    if not os.path.exists(flag):
        open(flag, "w").close()
        raise AssertionError("out of memory beside the other processes")


def test_not_a_gpu_test_is_left_out():  # not marked: -m gpu leaves it out
    raise AssertionError("run without the gpu mark")
'''
ALWAYS_FAILS = '''
import pytest


@pytest.mark.gpu
def test_fails_always():
    raise AssertionError("a real failure")
'''

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def _suite(tmp_path: Path, always_fails: bool) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (suite / "test_suite.py").write_text(SUITE)
    if always_fails:
        (suite / "test_broken.py").write_text(ALWAYS_FAILS)
    return suite


def _run(tmp_path: Path, suite: Path, processes: int = 2):
    out = tmp_path / "out"
    env = dict(os.environ, FLAG_FILE=str(tmp_path / "flag"), PYTHONDONTWRITEBYTECODE="1")
    # the tool calls python3: the interpreter running these tests first on the PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", str(TOOL), str(processes), str(out), "."], cwd=suite, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, out


@needs_bash
def test_a_failure_beside_the_others_that_passes_alone_is_not_a_failure(tmp_path):
    proc, out = _run(tmp_path, _suite(tmp_path, always_fails=False))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu tests: 5 in 2 processes" in proc.stdout
    assert "failed beside the other processes: 1" in proc.stdout
    failed = (out / "failed_beside_others.txt").read_text().split()
    assert failed == ["test_suite.py::test_fails_beside_the_others_only"]
    assert "1 passed" in (out / "rerun_alone.txt").read_text()
    logs = (out / "all.txt").read_text()
    assert logs.count("=== gpu_tests_") == 2 and "=== rerun_alone.txt" in logs


@needs_bash
def test_a_test_that_fails_alone_too_fails_the_run(tmp_path):
    proc, out = _run(tmp_path, _suite(tmp_path, always_fails=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed beside the other processes: 2" in proc.stdout
    rerun = (out / "rerun_alone.txt").read_text()
    assert "1 failed, 1 passed" in rerun
    assert "FAILED test_broken.py::test_fails_always" in proc.stdout


@needs_bash
def test_nothing_failed_means_no_second_run(tmp_path):
    suite = _suite(tmp_path, always_fails=False)
    (tmp_path / "flag").touch()  # the flaky test passes from the start
    proc, out = _run(tmp_path, suite, processes=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed beside" not in proc.stdout and not (out / "rerun_alone.txt").exists()
    assert sorted(p.name for p in out.glob("gpu_tests_*.txt")) == [f"gpu_tests_{i}.txt" for i in range(3)]


@needs_bash
def test_a_process_killed_before_its_summary_fails_the_run(tmp_path):
    suite = _suite(tmp_path, always_fails=False)
    (tmp_path / "flag").touch()
    (suite / "test_killed.py").write_text(
        "import os, signal\n\nimport pytest\n\n\n@pytest.mark.gpu\n"
        "def test_dies():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc, _ = _run(tmp_path, suite)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "(no summary: the process did not finish)" in proc.stdout


@needs_bash
@pytest.mark.parametrize("args", [[], ["2", "out"], ["0", "out", "."], ["x", "out", "."]])
def test_bad_arguments_exit_2_with_the_usage(tmp_path, args):
    proc = subprocess.run(["bash", str(TOOL), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash tools/gpu_tests_parallel.sh N OUT_DIR" in proc.stderr
    assert proc.stdout == "" and len(proc.stderr) < 200
