"""`flashbench profile` keeps the terminal readable: the profiler's native log lines go to profiler.log
unless --verbose, and skips are grouped by backend and reason (issue 15, item 19)."""
import os
import subprocess
import sys

import pytest
import torch

CLI = [sys.executable, "-c", "from flashbench.cli import main; main()"]
ARGS = ["profile", "smoke", "--case", "seq_len=64,mode=fwd", "--backends", "naive,sdpa_flash", "--no-ncu"]


def profile(tmp_path, *extra):
    r = subprocess.run(CLI + ARGS + ["--out", str(tmp_path / "p"), *extra], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path (sdpa_flash skips there)")
def test_profile_is_quiet_and_groups_skips(tmp_path):
    """Item 19: without --verbose no profiler chatter and no per-step lines reach the terminal (the
    chatter goes to profiler.log); the two sdpa_flash skips are one line with a count."""
    r = profile(tmp_path)
    assert "profiler_start" not in r.stderr and "USDT" not in r.stderr
    assert "tracing naive" not in r.stderr and "measuring naive" not in r.stderr
    assert (tmp_path / "p" / "profiler.log").exists()
    assert "skipped (2):" in r.stdout
    assert "   2 × sdpa_flash: sdpa_flash does not run on cpu" in r.stdout
    assert "skipped sdpa_flash B1" not in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_profile_verbose_prints_every_step(tmp_path):
    """Item 19: --verbose prints each step (and leaves the profiler's own lines on stderr)."""
    r = profile(tmp_path, "--verbose")
    assert "tracing naive" in r.stderr and "measuring naive" in r.stderr
    assert not (tmp_path / "p" / "profiler.log").exists()
