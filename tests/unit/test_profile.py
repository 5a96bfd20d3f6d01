"""`flashbench profile` and `env --ceilings` on the CPU: traces, kernel tables, the IO model,
ncu output parsing and attribution (with a fake ncu), and the error exits."""
from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from flashbench.model.case import Case
from flashbench.cli import app
from flashbench.model.yaml_input import ConfigError
from flashbench.profile import ncu as ncu_mod
from flashbench.profile.ceilings import Ceilings
from flashbench.profile.io_model import (H100_SMEM_PER_SM, block_sizes, fa1_traffic, fa2_traffic, io_model,
                                         standard_traffic)
from flashbench.profile.roofline import ANALYTIC_MIN, MEASURED, roofline_point
from flashbench.model.filters import parse_case_option
from flashbench.profile.select import parse_n_list, select_cases
from flashbench.profile.torch_trace import device_kernel_rows, short_kernel_name
from flashbench.results.files import load_run
from flashbench.model.schema import Record

runner = CliRunner()
SMOKE_CASE = ["profile", "smoke", "--case", "seq_len=64,causal=false,mode=fwd", "--backends", "naive,sdpa"]


@pytest.fixture
def no_ncu(monkeypatch):
    real = ncu_mod.shutil.which
    monkeypatch.setattr(ncu_mod.shutil, "which", lambda name, *a, **k: None if name == "ncu" else real(name, *a, **k))


# --------------------------------------------------------------------------------------------
# the command on the CPU
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_profile_smoke_writes_trace_table_and_results(tmp_path, no_ncu):
    out = tmp_path / "prof"
    r = runner.invoke(app, [*SMOKE_CASE, "--out", str(out), "--plot"])
    assert r.exit_code == 0, r.output
    traces = sorted(out.glob("trace_*.json"))
    assert [p.name.split("_")[1] for p in traces] == ["naive", "sdpa"]
    for p in traces:
        doc = json.loads(p.read_text())
        assert doc["traceEvents"], p
    # the kernel table: on the CPU it says it shows CPU operators; naive has matmul/bmm and softmax
    assert "CPU operators" in r.output
    naive_part = r.output.split("naive ·")[1].split("sdpa ·")[0]
    assert "aten::bmm" in naive_part or "aten::matmul" in naive_part
    assert "softmax" in naive_part
    assert "scaled_dot_product" in r.output.split("sdpa ·")[1]
    # results in the common schema, no measured bytes without ncu
    run = load_run(out)
    assert [(x.backend, x.status) for x in run.records] == [("naive", "ok"), ("sdpa", "ok")]
    assert all(x.hbm_bytes_read is None and x.hbm_bytes_written is None for x in run.records)
    assert all(x.median_ms and x.tflops for x in run.records)
    prof = json.loads((out / "profile.json").read_text())
    assert prof["ncu_used"] is False
    assert {t["backend"] for t in prof["traces"]} == {"naive", "sdpa"}
    assert (out / "roofline.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_missing_ncu_says_so_once_and_shows_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ncu anywhere
    r = runner.invoke(app, [*SMOKE_CASE, "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert r.output.count("not on the PATH") == 1
    assert "analytic IO model alone" in r.output
    for row in ("model: standard attention", "model: FlashAttention-1", "model: FlashAttention-2", "minimum: Q, K, V"):
        assert row in r.output
    # B1 H2 N64 D32 fp32: standard = 4·(2·64·32 + 2·64·32 + 4·64·64)·2 heads = 192 KiB
    assert "192.0 KiB" in r.output
    assert "analytic minimum" in r.output  # roofline intensity falls back to the minimum bytes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_sweep_n_on_cpu_plots_the_models(tmp_path, no_ncu):
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["profile", "smoke", "--case", "causal=false,mode=fwd", "--backends", "naive",
                            "--sweep-n", "--n", "32,64", "--plot", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "sweep_n.json").read_text())
    assert [(x["backend"], x["n"]) for x in rows] == [("naive", 32), ("naive", 64)]
    assert rows[1]["standard"] == 192 * 1024 and rows[1]["minimum"] == 64 * 1024
    assert (out / "traffic_vs_n.png").stat().st_size > 0
    assert not list(out.glob("trace_*.json"))  # the sweep is about traffic only


@pytest.mark.parametrize("flt, msg", [
    ("seq_len=64,foo=1", "unknown key 'foo'"),
    ("causal=maybe", "expected true or false"),
    ("seq_len=abc", "positive integer"),
    ("mode=bwdd", "expected one of fwd"),
    ("dtype=int8", "expected one of"),
    ("seq_len", "not KEY=VALUE"),
    ("seq_len=999", "no case of"),
])
def test_bad_case_filter_exits_2(tmp_path, flt, msg):
    r = runner.invoke(app, ["profile", "smoke", "--case", flt, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert msg in r.output


def test_too_many_cases_are_refused(tmp_path):
    r = runner.invoke(app, ["profile", "smoke", "--max-cases", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "at most 2" in r.output and "--case" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_env_ceilings_without_gpu_exits_3():
    r = runner.invoke(app, ["env", "--ceilings"])
    assert r.exit_code == 3
    assert "no GPU" in r.output


def test_env_without_ceilings_still_works():
    r = runner.invoke(app, ["env", "--format", "json"])
    assert r.exit_code == 0
    assert "environment" in json.loads(r.stdout)


# --------------------------------------------------------------------------------------------
# --case parsing
# --------------------------------------------------------------------------------------------

def test_parse_case_filter_values_and_aliases():
    f = parse_case_option("n=1024|4096, d=128,causal=TRUE,mode=fwd,dtype=bf16,b=1").allowed()
    assert f == {"seq_len": {1024, 4096}, "head_dim": {128}, "causal": {True}, "mode": {"fwd"},
                 "dtype": {"bfloat16"}, "batch": {1}}
    with pytest.raises(ConfigError) as e:
        parse_case_option("heads=0,foo=2")
    assert len(e.value.problems) == 2
    cases = [Case(1, 2, 2, n, n, 32, "float32", c, "fwd") for n in (64, 128) for c in (False, True)]
    assert select_cases(cases, parse_case_option("seq_len=128,causal=false")) == [cases[2]]
    assert parse_n_list("4096, 1024,1024") == [1024, 4096]
    with pytest.raises(ConfigError):
        parse_n_list("1024,x")


# --------------------------------------------------------------------------------------------
# the IO model, against hand-computed values
# --------------------------------------------------------------------------------------------

def test_block_sizes_follow_fa1_algorithm_1():
    # M = 32 bytes of fp16 = 16 elements; d = 2: Bc = ceil(16 / 8) = 2, Br = min(2, 2) = 2
    b = block_sizes(4, 4, 2, 32, 2)
    assert (b.br, b.bc, b.tr, b.tc) == (2, 2, 2, 2)
    b = block_sizes(4096, 4096, 128, H100_SMEM_PER_SM, 2)  # 116,736 elements / 512 -> 228
    assert (b.br, b.bc, b.tr, b.tc) == (128, 228, 32, 18)


def test_standard_attention_bytes():
    # N = 4, d = 2, e = 2: read 2·(4·2 + 2·4·2 + 2·16) = 112, write 2·(2·16 + 4·2) = 80
    t = standard_traffic(4, 4, 2, 2)
    assert (t.read, t.written) == (112, 80)


def test_fa1_bytes():
    # N = 4, d = 2, e = 2, s = 4, M = 32 B: Bc = Br = 2, Tr = Tc = 2, 4 visited pairs of 2 rows.
    # read: K, V once 2·e·N·d = 2·2·4·2 = 32; per pair Q_i, O_i, l_i, m_i:
    #   rows·(2·e·d + 2·s) = 2·(8 + 8) = 32, 4 pairs -> 128; total 160
    # write: init 4·(e·d + 2·s) = 4·12 = 48; per pair 2·(4 + 8) = 24, 4 pairs -> 96; total 144
    t = fa1_traffic(4, 4, 2, 2, 32)
    assert (t.read, t.written) == (160, 144)
    # causal: pair (0, 1) is above the diagonal: 3 pairs
    t = fa1_traffic(4, 4, 2, 2, 32, causal=True)
    assert (t.read, t.written) == (32 + 3 * 32, 48 + 3 * 24)


def test_fa2_bytes():
    # read: Q once 2·4·2 = 16; per pair K_j, V_j 2·e·cols·d = 2·2·2·2 = 16, 4 pairs -> 64; total 80
    # write: O and L once: 4·(e·d + s) = 4·8 = 32
    t = fa2_traffic(4, 4, 2, 2, 32)
    assert (t.read, t.written) == (80, 32)
    assert fa2_traffic(4, 4, 2, 2, 32, causal=True).read == 16 + 3 * 16


def test_fa_traffic_scales_as_n2_d2_over_m_and_standard_as_n2():
    # doubling N quadruples the dominant terms; doubling M halves the FA1 re-reads (small M)
    small = dict(d=64, e=2, m_bytes=16 * 1024)
    a, b = fa1_traffic(4096, 4096, **small), fa1_traffic(8192, 8192, **small)
    assert 3.5 < b.total / a.total < 4.1
    c = fa1_traffic(8192, 8192, d=64, e=2, m_bytes=32 * 1024)
    assert 0.45 < (c.total - 4 * 8192 * 64 * 2) / (b.total - 4 * 8192 * 64 * 2) < 0.6
    s1, s2 = standard_traffic(4096, 4096, 64, 2), standard_traffic(8192, 8192, 64, 2)
    assert 3.9 < s2.total / s1.total < 4.01


def test_io_model_is_per_batch_head_and_forward_only():
    case = Case(2, 3, 3, 4, 4, 2, "float16", False, "fwd")
    m = io_model(case, 32)
    assert m["standard"].read == 6 * 112 and m["fa2"].written == 6 * 32
    assert io_model(Case(2, 3, 3, 4, 4, 2, "float16", False, "fwd_bwd"), 32) is None


# --------------------------------------------------------------------------------------------
# ncu output: parsing and attribution
# --------------------------------------------------------------------------------------------

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _row(kid, kernel, metric, unit, value):
    return (f'"{kid}","4242","python3","127.0.0.1","{kernel}","1","7","(128, 1, 1)","(32, 16, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"')


SPIN = "at::cuda::(anonymous namespace)::spin_kernel(long)"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas"
SOFTMAX = "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, c10::BFloat16, float, c10::BFloat16>(c10::BFloat16*, const c10::BFloat16*, int)"
SAMPLE = "\n".join([
    "==PROF== Connected to process 4242 (/usr/bin/python3.12)",
    '==PROF== Profiling "spin_kernel": 0%....50%....100% - 1 pass',
    HEADER,
    _row(0, SPIN, "dram__bytes_read.sum", "byte", "0"),
    _row(0, SPIN, "dram__bytes_write.sum", "byte", "0"),
    _row(1, GEMM, "dram__bytes_read.sum", "Mbyte", "16.78"),
    _row(1, GEMM, "dram__bytes_write.sum", "Gbyte", "0.54"),
    _row(2, SOFTMAX, "dram__bytes_read.sum", "byte", "536,870,912"),
    _row(2, SOFTMAX, "dram__bytes_write.sum", "Kbyte", "524,288"),
    _row(3, SPIN, "dram__bytes_read.sum", "byte", "0"),
    _row(3, SPIN, "dram__bytes_write.sum", "byte", "0"),
    _row(4, "_attn_fwd", "dram__bytes_read.sum", "byte", "50,331,648"),
    _row(4, "_attn_fwd", "dram__bytes_write.sum", "byte", "16,777,216"),
    "==PROF== Disconnected from process 4242",
])


def test_parse_ncu_csv_units_and_separators():
    metrics = ncu_mod.parse_ncu_csv(SAMPLE)
    assert len(metrics) == 10
    kernels = ncu_mod.kernels_in_order(metrics)
    assert [k.kernel for k in kernels] == [SPIN, GEMM, SOFTMAX, SPIN, "_attn_fwd"]
    assert (kernels[1].read, kernels[1].written) == (16_780_000, 540_000_000)
    assert (kernels[2].read, kernels[2].written) == (536_870_912, 524_288_000)
    assert ncu_mod.to_bytes(2.0, "KiB") == 2048 and ncu_mod.parse_number("1,5") == 1.5
    with pytest.raises(ncu_mod.NcuError):
        ncu_mod.to_bytes(1.0, "cycle")
    assert ncu_mod.parse_ncu_csv("==PROF== No kernels were profiled.\n") == []


def test_parse_ncu_csv_minimal_columns_without_id():
    text = "\n".join(['"Kernel Name","Metric Name","Metric Unit","Metric Value"',
                      '"k1","dram__bytes_read.sum","byte","10"', '"k1","dram__bytes_write.sum","byte","5"',
                      '"k2","dram__bytes_read.sum","byte","7"', '"k2","dram__bytes_write.sum","byte","1"'])
    ks = ncu_mod.kernels_in_order(ncu_mod.parse_ncu_csv(text))
    assert [(k.kernel, k.read, k.written) for k in ks] == [("k1", 10, 5), ("k2", 7, 1)]


def test_split_by_marker_attributes_kernels_per_task():
    kernels = ncu_mod.kernels_in_order(ncu_mod.parse_ncu_csv(SAMPLE))
    seg = ncu_mod.split_by_marker(kernels, 2)
    assert [[k.kernel for k in s] for s in seg] == [[GEMM, SOFTMAX], ["_attn_fwd"]]
    with pytest.raises(ncu_mod.NcuError, match="markers"):
        ncu_mod.split_by_marker(kernels, 3)
    no_markers = [k for k in kernels if "spin" not in k.kernel]
    assert len(ncu_mod.split_by_marker(no_markers, 1)[0]) == 3
    with pytest.raises(ncu_mod.NcuError):
        ncu_mod.split_by_marker(no_markers, 2)


def test_ncu_command_never_touches_clocks():
    cmd = ncu_mod.ncu_command("ncu", "/tmp/log.csv", {"cases": []}, 2)
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--profile-from-start") + 1] == "off"
    assert "dram__bytes_read.sum,dram__bytes_write.sum" in cmd
    assert cmd[cmd.index("--launch-count") + 1] == str(2 * ncu_mod.CAP_PER_TASK + 2)
    assert cmd[-3:-1] == ["-m", "flashbench.profile.ncu_child"]


FAKE_NCU = textwrap.dedent('''\
    #!{python}
    """A stand-in for ncu: checks the arguments, writes what the child and ncu would write."""
    import json, sys
    args = sys.argv[1:]
    assert args[args.index("--clock-control") + 1] == "none"
    if "--print-units" in args:  # pretend to be an ncu without this option: the caller retries
        print("==ERROR== unrecognised option '--print-units'"); sys.exit(1)
    payload = json.loads(args[-1])
    log = args[args.index("--log-file") + 1]
    n = len(payload["cases"])
    tasks = [{{"status": "ok", "reason": ""}}] * (n - 1) + [{{"status": "skipped", "reason": "not here"}}]
    json.dump({{"tasks": tasks}}, open(payload["result"], "w"))
    rows, kid = [{header!r}], 0
    for i in range(n):
        for name, r, w in [("spin_kernel(long)", 0, 0)] + ([("gemm", 1000 * (i + 1), 10), ("softmax", 7, 3)] if i < n - 1 else []):
            rows.append(f'"{{kid}}","1","python","h","{{name}}","1","7","(1,1,1)","(1,1,1)","0","9.0","s","dram__bytes_read.sum","Kbyte","{{r}}"')
            rows.append(f'"{{kid}}","1","python","h","{{name}}","1","7","(1,1,1)","(1,1,1)","0","9.0","s","dram__bytes_write.sum","byte","{{w}}"')
            kid += 1
    open(log, "w").write("==PROF== Connected\\n" + "\\n".join(rows) + "\\n")
''')


def test_measure_backend_with_a_fake_ncu(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "ncu"
    fake.write_text(FAKE_NCU.format(python=sys.executable, header=HEADER))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    cases = [Case(1, 2, 2, n, n, 32, "float16", False, "fwd") for n in (64, 128, 256)]
    res = ncu_mod.measure_backend("naive", cases, tmp_path / "out")
    assert [r.status for r in res] == ["ok", "ok", "skipped"]
    assert (res[0].read, res[0].written) == (1_000_000 + 7000, 13)
    assert (res[1].read, res[1].written) == (2_000_000 + 7000, 13)
    assert [k.kernel for k in res[1].kernels] == ["gemm", "softmax"]
    assert res[2].read is None and res[2].reason == "not here"


def test_measure_backend_without_ncu(no_ncu, tmp_path):
    res = ncu_mod.measure_backend("naive", [Case(1, 1, 1, 8, 8, 8, "float32", False, "fwd")], tmp_path)
    assert res[0].status == "no_data" and "not on the PATH" in res[0].reason
    assert ncu_mod.ncu_available()[0] is False


# --------------------------------------------------------------------------------------------
# kernel tables and the roofline
# --------------------------------------------------------------------------------------------

def test_device_kernel_rows_group_by_name_per_call():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": GEMM, "dur": 100.0},
        {"ph": "X", "cat": "kernel", "name": GEMM, "dur": 100.0},
        {"ph": "X", "cat": "kernel", "name": SOFTMAX, "dur": 50.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::bmm", "dur": 999.0},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "dur": 50.0},
    ]}
    rows = device_kernel_rows(trace, calls=2)
    assert [(r.name, r.count_per_call) for r in rows] == [(GEMM, 1.0), (SOFTMAX, 0.5), ("Memset (Device)", 0.5)]
    assert rows[0].ms_per_call == pytest.approx(0.1) and rows[0].share == pytest.approx(200 / 300)
    assert short_kernel_name(SOFTMAX) == "at::native::(anon)::cunn_SoftMaxForward<…>"


def test_roofline_point_uses_measured_bytes_then_the_minimum():
    # the roofs are the sustained matmul rate and the read bandwidth, not the burst rate or the copy
    c = Ceilings("gpu", "GPU-x", sustained_tflops=800.0, burst_tflops=950.0, read_gbps=3000.0, copy_gbps=2500.0)
    assert c.ridge_flop_per_byte == pytest.approx(800e12 / 3000e9)
    rec = Record(backend="b", case=Case(1, 1, 1, 8, 8, 8, "float16", False, "fwd"), flops=1e12, tflops=100.0,
                 min_hbm_bytes=10 ** 9)
    p = roofline_point(rec, c)
    assert p.basis == ANALYTIC_MIN and p.intensity == pytest.approx(1000.0)
    assert p.attainable_tflops == pytest.approx(800.0) and p.bound == "compute"
    rec.hbm_bytes_read, rec.hbm_bytes_written = 5 * 10 ** 9, 5 * 10 ** 9
    p = roofline_point(rec, c)
    assert p.basis == MEASURED and p.intensity == pytest.approx(100.0)
    assert p.attainable_tflops == pytest.approx(300.0) and p.bound == "memory"
    assert p.pct_of_roof == pytest.approx(100 * 100 / 300)
    assert roofline_point(rec, None).attainable_tflops is None


def test_sweep_n_sets_a_decode_cache_and_refuses_cases_without_one_n():
    """--sweep-n: a dense case gets Nq = Nkv = n; a decode case keeps its new tokens and gets a cache of n keys
    (Nq = n would not be decode); a packed batch or decode caches of varied lengths have no one N: exit 2."""
    from flashbench.model.yaml_input import ConfigError
    from flashbench.profile.select import with_seq_len

    dense = Case(1, 2, 2, 64, 64, 32, "float32", False, "fwd")
    assert (with_seq_len(dense, 256).seq_len_q, with_seq_len(dense, 256).seq_len_kv) == (256, 256)
    decode = Case(4, 8, 2, 2, 1024, 64, "float16", True, "fwd", workload="decode")
    swept = with_seq_len(decode, 4096)
    assert (swept.seq_len_q, swept.seq_len_kv, swept.workload) == (2, 4096, "decode")
    for bad in (Case(2, 2, 2, 128, 128, 32, "float32", False, "fwd", workload="varlen", lengths="list(100,156)",
                     total_tokens=256),
                Case(4, 8, 2, 1, 1024, 64, "float16", False, "fwd", workload="decode",
                     lengths="uniform(40..1024,seed=0)")):
        with pytest.raises(ConfigError, match="no one N to sweep"):
            with_seq_len(bad, 4096)


def test_sweep_n_over_a_packed_batch_is_exit_2(tmp_path):
    r = runner.invoke(app, ["profile", "smoke", "--case", "workload=varlen", "--backends", "naive", "--sweep-n",
                            "--n", "32,64", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "no one N to sweep" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_case_filter_backend_key_chooses_the_backends(tmp_path, no_ncu):
    """--case backend=X profiles X alone (the key had been read for cases only: every backend ran)."""
    out = tmp_path / "one"
    r = runner.invoke(app, ["profile", "smoke", "--case", "seq_len=64,causal=false,mode=fwd,backend=sdpa",
                            "--backends", "naive,sdpa", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert [p.name.split("_")[1] for p in sorted(out.glob("trace_*.json"))] == ["sdpa"]


def test_case_filter_backend_not_profiled_is_refused(tmp_path):
    r = runner.invoke(app, ["profile", "smoke", "--case", "seq_len=64,backend=sdpaa", "--backends", "naive,sdpa",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "backend=sdpaa: not a backend of this profile" in r.output
    assert "did you mean 'sdpa'" in r.output and not (tmp_path / "x").exists()
