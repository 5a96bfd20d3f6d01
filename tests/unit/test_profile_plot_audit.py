"""Audit of `flashbench profile` and `flashbench plot` on the CPU: ncu values it could not read, a hung or
crashed ncu child, ncu without permission, the roofline's percentages, the decode --sweep-n rows, and the
rows a figure leaves out. Fake ncu executables stand in for Nsight Compute (as in test_profile.py)."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time

import pytest

from synthetic import case, record, write_run

from flashbench.model.case import Case
from flashbench.profile import ncu as ncu_mod

HEADER = '"ID","Process ID","Process Name","Host Name","Kernel Name","Metric Name","Metric Unit","Metric Value"'
SPIN = "at::cuda::(anonymous namespace)::spin_kernel(long)"


def _row(kid, kernel, metric, unit, value):
    return f'"{kid}","1","python3","h","{kernel}","{metric}","{unit}","{value}"'


def _fake_ncu(tmp_path, monkeypatch, body: str):
    """An executable named ncu on the PATH running ``body`` (Python) with ``args`` (its argv), ``payload``
    (the child's JSON), ``log`` (the --log-file path) and ``write_log(rows)`` defined."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "ncu"
    prelude = textwrap.dedent(f'''\
        #!{sys.executable}
        import json, os, subprocess, sys, time
        args = sys.argv[1:]
        payload = json.loads(args[-1])
        log = args[args.index("--log-file") + 1]
        HEADER = {HEADER!r}
        def write_log(rows):
            open(log, "w").write("==PROF== Connected\\n" + "\\n".join([HEADER] + rows) + "\\n")
        def row(kid, kernel, metric, unit, value):
            return f'"{{kid}}","1","python3","h","{{kernel}}","{{metric}}","{{unit}}","{{value}}"'
        def done(tasks):
            json.dump({{"tasks": tasks}}, open(payload["result"], "w"))
        ''')
    fake.write_text(prelude + textwrap.dedent(body))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))


CASES = [Case(1, 2, 2, n, n, 32, "float16", False, "fwd") for n in (64, 128, 256)]


# --------------------------------------------------------------------------------------------
# ncu values that are not numbers are unknown bytes, never 0 bytes
# --------------------------------------------------------------------------------------------

def test_an_n_a_byte_count_is_unknown_not_zero():
    """ncu prints "n/a" for a metric it could not collect: that kernel's bytes are unknown. Counting them as 0
    under-reported the call's traffic and still showed it as measured."""
    text = "\n".join([HEADER, _row(0, "gemm", "dram__bytes_read.sum", "byte", "1,000"),
                      _row(0, "gemm", "dram__bytes_write.sum", "byte", "n/a")])
    (k,) = ncu_mod.kernels_in_order(ncu_mod.parse_ncu_csv(text))
    assert (k.read, k.written) == (1000, None) and k.missing == ["dram__bytes_write.sum"]
    task = ncu_mod.TaskTraffic("naive", {}, kernels=[k, ncu_mod.KernelTraffic("softmax", 5, 5)])
    assert task.read == 1005 and task.written is None


def test_a_kernel_without_a_value_makes_the_task_no_data(tmp_path, monkeypatch):
    _fake_ncu(tmp_path, monkeypatch, '''
        done([{"status": "ok", "reason": ""}] * 2)
        write_log([row(0, "spin_kernel", "dram__bytes_read.sum", "byte", "0"),
                   row(0, "spin_kernel", "dram__bytes_write.sum", "byte", "0"),
                   row(1, "gemm", "dram__bytes_read.sum", "Mbyte", "2"),
                   row(1, "gemm", "dram__bytes_write.sum", "byte", "n/a"),
                   row(2, "spin_kernel", "dram__bytes_read.sum", "byte", "0"),
                   row(2, "spin_kernel", "dram__bytes_write.sum", "byte", "0"),
                   row(3, "gemm", "dram__bytes_read.sum", "Mbyte", "2"),
                   row(3, "gemm", "dram__bytes_write.sum", "Kbyte", "1.5")])
        ''')
    res = ncu_mod.measure_backend("naive", CASES[:2], tmp_path / "out")
    assert res[0].status == "no_data" and res[0].read is None and res[0].written is None
    assert "dram__bytes_write.sum of gemm" in res[0].reason
    assert (res[1].status, res[1].read, res[1].written) == ("ok", 2_000_000, 1500)


# --------------------------------------------------------------------------------------------
# a hung, a crashed, a refused ncu child
# --------------------------------------------------------------------------------------------

def _gone(pid: int, within_s: float = 5.0) -> bool:
    """The process ended (a zombie waiting for a reaper counts as ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(ln.startswith("State:") and "Z" in ln.split()[1] for ln in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_timeout_kills_the_profiled_child_too(tmp_path, monkeypatch):
    """A hung child: ncu is killed at --ncu-timeout, and so is the child it launched (before, only ncu was
    killed: the hung child stayed, holding the GPU, after flashbench had moved on)."""
    pidfile = tmp_path / "child.pid"
    _fake_ncu(tmp_path, monkeypatch, f'''
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        child.wait()
        ''')
    t0 = time.monotonic()
    res = ncu_mod.measure_backend("naive", CASES[:1], tmp_path / "out", timeout_s=1.5)
    assert time.monotonic() - t0 < 30
    assert res[0].status == "no_data" and "timed out after 2 s" in res[0].reason
    pid = int(pidfile.read_text())
    try:
        assert _gone(pid), "the profiled child outlived the ncu timeout"
    finally:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def test_a_child_that_dies_inside_a_case_keeps_the_cases_before_it(tmp_path, monkeypatch):
    """The child finished case 0, launched case 1's marker and died: case 0's bytes are whole and kept (before,
    the extra marker discarded every case of the backend as "cannot tell which kernel belongs to which task")."""
    _fake_ncu(tmp_path, monkeypatch, '''
        done([{"status": "ok", "reason": ""}])
        rows = []
        for kid, (name, r, w) in enumerate([("spin_kernel", 0, 0), ("gemm", 4096, 1024), ("spin_kernel", 0, 0),
                                            ("gemm", 8192, 7)]):
            rows += [row(kid, name, "dram__bytes_read.sum", "byte", r), row(kid, name, "dram__bytes_write.sum", "byte", w)]
        write_log(rows)
        print("Segmentation fault", file=sys.stderr)
        sys.exit(139)
        ''')
    res = ncu_mod.measure_backend("naive", CASES, tmp_path / "out")
    assert (res[0].status, res[0].read, res[0].written) == ("ok", 4096, 1024)
    assert res[1].status == "no_data" and "died during this case" in res[1].reason and "exit 139" in res[1].reason
    assert res[2].status == "no_data" and "stopped before this case" in res[2].reason


def test_markers_that_match_no_count_still_report_nothing(tmp_path, monkeypatch):
    """Attribution stays strict otherwise: two markers more than the finished cases is not a crash inside one."""
    _fake_ncu(tmp_path, monkeypatch, '''
        done([{"status": "ok", "reason": ""}])
        write_log([row(k, "spin_kernel", m, "byte", 0) for k in range(3)
                   for m in ("dram__bytes_read.sum", "dram__bytes_write.sum")])
        sys.exit(1)
        ''')
    res = ncu_mod.measure_backend("naive", CASES, tmp_path / "out")
    assert all(r.status == "no_data" and r.read is None for r in res)
    assert "3 task markers" in res[0].reason


def test_ncu_without_permission_says_what_to_do(tmp_path, monkeypatch):
    _fake_ncu(tmp_path, monkeypatch, '''
        done([{"status": "ok", "reason": ""}] * len(payload["cases"]))
        open(log, "w").write("==PROF== Connected to process 1\\n==ERROR== ERR_NVGPUCTRPERM - The user does not have "
                             "permission to access NVIDIA GPU Performance Counters on the target device 0.\\n")
        sys.exit(1)
        ''')
    res = ncu_mod.measure_backend("naive", CASES[:2], tmp_path / "out")
    assert all(r.status == "no_data" for r in res)
    assert "ERR_NVGPUCTRPERM" in res[0].reason and "run as root" in res[0].reason
    assert res[0].reason.index("ERR_NVGPUCTRPERM") < 80  # the traffic table shows a reason's first 80 characters


# --------------------------------------------------------------------------------------------
# the roofline: a roof of the case's dtype, and percentages above 100% flagged
# --------------------------------------------------------------------------------------------

def _ceilings():
    from flashbench.profile.ceilings import Ceilings

    return Ceilings("NVIDIA H200", "GPU-x", sustained_tflops=800.0, burst_tflops=950.0, read_gbps=4000.0,
                    copy_gbps=3500.0)


def _rec(dtype="bfloat16", tflops=100.0, read=None, written=None):
    from flashbench.model.schema import Record

    return Record(backend="b", case=Case(1, 1, 1, 8, 8, 8, dtype, False, "fwd"), flops=1e12, tflops=tflops,
                  min_hbm_bytes=10 ** 9, hbm_bytes_read=read, hbm_bytes_written=written, device_name="NVIDIA H200")


def test_a_float32_case_gets_no_bf16_roof():
    """The roofs are bf16 Tensor Core rates: a float32 case measured against them showed a % (and a bound)
    of a roof it can never reach."""
    from flashbench.profile.datasheet import datasheet_peak
    from flashbench.profile.roofline import roofline_point

    p = roofline_point(_rec("float32"), _ceilings(), datasheet_peak("NVIDIA H200"))
    assert p.intensity == pytest.approx(1000.0) and p.tflops == 100.0
    assert (p.attainable_tflops, p.pct_of_roof, p.bound, p.datasheet_tflops, p.pct_of_datasheet) == (None, None, "", None, None)
    assert "float32" in p.note and not p.above_roof
    for dtype in ("float16", "bfloat16"):
        q = roofline_point(_rec(dtype), _ceilings(), datasheet_peak("NVIDIA H200"))
        assert q.pct_of_roof == pytest.approx(12.5) and q.bound == "compute" and q.note == ""


def test_a_point_above_the_roof_is_flagged():
    from flashbench.profile.roofline import roofline_point

    p = roofline_point(_rec(tflops=900.0), _ceilings())
    assert p.pct_of_roof == pytest.approx(112.5) and p.above_roof and "above 100%" in p.note
    assert "cold-cache" not in p.note
    # measured 19e9 bytes: 52.6 FLOP/B, roof 52.6 * 4 TB/s = 210 TFLOP/s: a memory-bound point beyond its roof
    q = roofline_point(_rec(tflops=250.0, read=9 * 10 ** 9, written=10 ** 10), _ceilings())
    assert q.bound == "memory" and q.pct_of_roof > 100 and "cold-cache" in q.note
    assert not roofline_point(_rec(tflops=799.0), _ceilings()).above_roof


def test_the_roofline_table_warns_about_a_point_above_the_roof(tmp_path):
    from flashbench.cli import common
    from flashbench.cli.profile_cmd import _roofline_table
    from flashbench.profile.roofline import roofline_point
    from flashbench.profile.session import ProfileReport

    recs = [_rec(tflops=900.0), _rec("float32")]
    report = ProfileReport("cuda", tmp_path, records=recs, ceilings=_ceilings(),
                           points=[roofline_point(r, _ceilings()) for r in recs])
    with common.out.capture() as cap:
        _roofline_table(report)
    text = " ".join(cap.get().split())
    assert "warning: b B1 H1 N8 D8 bfloat16 full fwd: above 100% of a roof" in text
    assert "no roof for float32" in text


# --------------------------------------------------------------------------------------------
# --sweep-n over a decode case: N is the cache length
# --------------------------------------------------------------------------------------------

DECODE_YAML = """\
name: dec
grids:
  - {workload: decode, batch: 1, heads: 2, seq_len: 1, seq_len_kv: 64, head_dim: 32, dtype: float32}
backends: [naive]
timing: {warmup_ms: 1, budget_ms: 5, min_samples: 3, max_samples: 10}
"""


def test_sweep_n_over_a_decode_case_tabulates_and_plots_the_cache_length(tmp_path, monkeypatch):
    """Before, every row's N was the new-token count (1): the table showed N = 1 three times and each cache
    length became a figure of its own with one point."""
    import json

    from typer.testing import CliRunner

    from flashbench.cli import app

    pytest.importorskip("matplotlib")
    monkeypatch.setattr(ncu_mod.shutil, "which", lambda name, *a, **k: None)
    cfg = tmp_path / "dec.yaml"
    cfg.write_text(DECODE_YAML)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["profile", str(cfg), "--sweep-n", "--n", "32,64,128", "--plot", "--device", "cpu",
                                 "--out", str(out)], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "sweep_n.json").read_text())
    assert [row["n"] for row in rows] == [32, 64, 128]
    assert {row["group"] for row in rows} == {"B1 H2 N1xvar D32 float32 causal fwd decode"}
    assert sorted(p.name for p in out.glob("*.png")) == ["traffic_vs_n.png"]
    assert "against cache length" in r.output


# --------------------------------------------------------------------------------------------
# flashbench plot: rows no figure shows are named
# --------------------------------------------------------------------------------------------

def _mixed_run(tmp_path):
    recs = [record("sdpa_flash", case(n), 0.001 * n, seed=n) for n in (512, 1024, 2048)]
    recs += [record("naive", case(n), 0.01 * n, seed=n) for n in (512, 1024)]
    recs += [record("naive", case(2048), status="oom", reason="out of memory")]
    recs += [record("flex", case(n), status="skipped", reason="no triton") for n in (512, 1024, 2048)]
    recs += [record("triton_fa2", case(512), status="mismatch", reason="dq off")]
    no_value = record("triton_fa1", case(512), 0.3)
    no_value.tflops, no_value.peak_hbm_bytes = None, None
    return write_run(tmp_path / "run", recs + [no_value])


def test_plot_names_the_rows_no_figure_shows(tmp_path):
    """Failed, skipped and valueless rows were dropped from the figures without a word."""
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from flashbench.cli import app

    r = CliRunner().invoke(app, ["plot", str(_mixed_run(tmp_path))])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "figure:" in text and "rows in no figure" in text
    for line in ("1 × naive: oom", "3 × flex: skipped", "1 × triton_fa2: mismatch", "1 × triton_fa1: ok without a value"):
        assert line in text, text
    assert "sdpa_flash:" not in text


def test_not_plotted_is_bounded_and_empty_when_everything_is_drawn(tmp_path):
    from flashbench.report.plots import MAX_NOT_PLOTTED_LINES, not_plotted
    from flashbench.results.files import load_run

    good = [record("sdpa_flash", case(n), 0.001 * n, seed=n) for n in (512, 1024)]
    assert not_plotted(load_run(write_run(tmp_path / "a", good)).frame()) == []
    bad = [record(f"b{i}", case(512), status="error", reason="x") for i in range(3 * MAX_NOT_PLOTTED_LINES)]
    lines = not_plotted(load_run(write_run(tmp_path / "b", good + bad)).frame())
    assert len(lines) == MAX_NOT_PLOTTED_LINES
    assert lines[-1].split("×")[0].strip() == str(3 * MAX_NOT_PLOTTED_LINES - (MAX_NOT_PLOTTED_LINES - 1))


def test_a_profile_never_writes_into_an_earlier_profiles_default_directory(tmp_path, monkeypatch):
    """Two profiles started within the same second shared results/runs/profile-NAME-TIME: the second replaced
    the first one's results.json (an explicit --out that holds results is refused; the default was not checked)."""
    import datetime as dt
    from types import SimpleNamespace

    from flashbench.cli import profile_cmd

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(profile_cmd, "_dt", SimpleNamespace(datetime=Frozen))  # this module's clock only
    monkeypatch.chdir(tmp_path)
    first = profile_cmd._default_out("smoke", False)
    assert first == profile_cmd.Path("results/runs/profile-smoke-20260102-030405")
    assert profile_cmd._default_out("smoke", False) == first  # nothing there yet: the plain name
    first.mkdir(parents=True)
    (first / "results.json").write_text("{}")
    second = profile_cmd._default_out("smoke", False)
    assert second.name == "profile-smoke-20260102-030405-2"
    second.mkdir()
    (second / "results.csv").write_text("")
    assert profile_cmd._default_out("smoke", False).name.endswith("-3")


def test_profile_plot_without_matplotlib_is_a_warning_not_a_traceback(tmp_path, monkeypatch):
    """profile --plot without matplotlib raised PlotDependencyError out of the command (a traceback, exit 1)
    after the results were written; like run --plot it now warns and keeps the profile."""
    from typer.testing import CliRunner

    import flashbench.report.figure_style as figure_style
    from flashbench.cli import app
    from flashbench.report.figure_style import PlotDependencyError
    from flashbench.results.files import load_run

    def no_mpl():
        raise PlotDependencyError("matplotlib is not installed: pip install 'flashbench[plot]'")

    monkeypatch.setattr(figure_style, "require_matplotlib", no_mpl)
    monkeypatch.setattr(ncu_mod.shutil, "which", lambda name, *a, **k: None)
    out = tmp_path / "p"
    r = CliRunner().invoke(app, ["profile", "smoke", "--case", "seq_len=64,causal=false,mode=fwd", "--backends", "naive",
                                 "--device", "cpu", "--out", str(out), "--plot"])
    assert r.exit_code == 0 and r.exception is None, r.output
    assert "no figures: matplotlib is not installed" in " ".join(r.output.split())
    assert [rec.status for rec in load_run(out).records] == ["ok"] and not list(out.glob("*.png"))


def test_profile_says_once_and_whole_what_to_do_when_ncu_may_not_read_the_counters(tmp_path, monkeypatch):
    """The traffic table cuts a reason to 80 characters; the permission fix is printed once, whole."""
    from typer.testing import CliRunner

    from flashbench.cli import app

    def refused(tasks, out_dir, seed=0, timeout_s=300.0, on_backend=None, on_result=None):
        res = {t: ncu_mod.TaskTraffic(t.backend, t.case.as_dict(), status="no_data",
                                      reason=f"ncu profiled no kernel: {ncu_mod.PERMISSION_HINT}") for t in tasks}
        on_result("naive", res)
        return res

    monkeypatch.setattr(ncu_mod, "ncu_available", lambda: (True, ""))
    monkeypatch.setattr(ncu_mod, "measure_tasks", refused)
    r = CliRunner().invoke(app, ["profile", "smoke", "--case", "seq_len=64,causal=false,mode=fwd", "--backends", "naive",
                                 "--device", "cpu", "--out", str(tmp_path / "p")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert text.count("warning: " + ncu_mod.PERMISSION_HINT) == 1


def test_the_traffic_table_says_why_a_forward_decode_case_has_no_io_model(tmp_path):
    """A decode (or windowed) forward case was told "this case has a backward"."""
    from flashbench.cli import common
    from flashbench.cli.profile_cmd import _traffic_tables
    from flashbench.model.schema import Record
    from flashbench.profile.io_model import io_model
    from flashbench.profile.session import ProfileReport

    dec = Case(1, 2, 2, 1, 64, 32, "float32", True, "fwd", workload="decode")
    win = Case(1, 2, 2, 64, 64, 32, "float32", True, "fwd", window_left=16, window_right=0)
    bwd = Case(1, 2, 2, 64, 64, 32, "float32", False, "fwd_bwd")
    report = ProfileReport("cpu", tmp_path, records=[Record(backend="naive", case=c, status="ok") for c in (dec, win, bwd)],
                           models={c: io_model(c, 228 * 1024) for c in (dec, win, bwd)})
    with common.out.capture() as cap:
        _traffic_tables(report)
    text = " ".join(cap.get().split())
    assert text.count("this case has a backward") == 1
    assert "dense attention only; this case is decode" in text and "no sliding window in the model" in text


def test_an_infinite_rate_is_listed_not_drawn(tmp_path):
    """matplotlib drops an infinite point silently; the figure now leaves it out and says so."""
    import math

    from flashbench.report.plots import not_plotted
    from flashbench.results.files import load_run

    bad = record("a", case(1024), 0.5)
    bad.tflops = math.inf
    df = load_run(write_run(tmp_path / "r", [bad, record("a", case(2048), 0.9)])).frame()
    df["peak_hbm_bytes"] = None  # only the TFLOP/s figure
    assert not_plotted(df) == ["   1 × a: ok without a value"]
