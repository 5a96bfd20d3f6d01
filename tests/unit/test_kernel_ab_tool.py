"""tools/kernel_ab.py: the snapshot of another revision's kernels, the cases it reads, its refusals on bad input
and without a GPU, ``--host`` (and the GPU-time rounds) with CUDA, the clock and both revisions faked, and (GPU)
one A/B of the tree against itself."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "kernel_ab.py"
IN_GIT = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.fixture
def kernel_ab(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOL.parent))
    import kernel_ab

    yield kernel_ab
    for name in [m for m in sys.modules if m in ("kernel_ab", "host_path") or m.startswith(kernel_ab.BASE_PACKAGE)]:
        sys.modules.pop(name, None)


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def test_the_default_cases_are_the_fa2_sweeps_shapes_from_4k(kernel_ab):
    cases = [kernel_ab.parse_case(text) for text in kernel_ab.DEFAULT_CASES]
    assert {(c.head_dim, c.causal, c.seq_len_q) for c in cases} == \
        {(d, c, n) for d in (64, 128) for c in (False, True) for n in (4096, 8192, 16384)}
    assert all(c.batch * c.seq_len_q == 16384 and c.heads * c.head_dim == 2048 and c.dtype == "bfloat16"
               for c in cases)


@pytest.mark.skipif(not IN_GIT, reason="not a git checkout: no revision to snapshot")
def test_a_revisions_kernels_import_as_their_own_package(kernel_ab, tmp_path):
    kernel_ab.snapshot("HEAD", str(tmp_path))
    base = kernel_ab.import_base(str(tmp_path))
    assert Path(base.__file__).is_relative_to(tmp_path / kernel_ab.BASE_PACKAGE)
    assert callable(base.flash_attn_v2) and callable(base.sm90_bwd.backward)


def test_the_summary_is_the_geometric_mean_of_the_time_ratios(kernel_ab):
    rows = [{"new_over_base": 0.5}, {"new_over_base": 2.0}, {"new_over_base": 1.0}]
    assert kernel_ab.geomean_ratio(rows) == pytest.approx(1.0)
    assert kernel_ab.geomean_ratio([{"new_over_base": 0.9}, {"new_over_base": 0.9}]) == pytest.approx(0.9)


def test_a_folder_holding_a_copy_of_kernels_is_a_base(kernel_ab, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "kernels", copy / "kernels")
    dest = tmp_path / "dest"
    dest.mkdir()
    kernel_ab.snapshot(str(copy / "kernels"), str(dest))
    base = kernel_ab.import_base(str(dest))
    assert Path(base.__file__).is_relative_to(dest / kernel_ab.BASE_PACKAGE) and callable(base.flash_attn_v2)


def test_a_folder_that_is_not_a_copy_of_kernels_is_named(kernel_ab, tmp_path):
    with pytest.raises(ValueError, match="a folder, but not a copy of kernels/"):
        kernel_ab.snapshot(str(tmp_path), str(tmp_path / "dest"))


@pytest.mark.skipif(not IN_GIT, reason="not a git checkout")
def test_a_revision_git_cannot_read_is_named(kernel_ab, tmp_path):
    with pytest.raises(ValueError, match="--base no-such-revision: git cannot archive kernels/"):
        kernel_ab.snapshot("no-such-revision", str(tmp_path))


@pytest.mark.parametrize("args, words", [(["--cases", "B1,H1"], "--cases B1,H1: needs B, H, N and D"),
                                         (["--cases", "T4096,uniform64-1024,H2,D64"],
                                          "a packed case takes --what fwd or fwd_bwd"),
                                         (["--cases", "T4096,B2,H2,D64"], "a packed case takes T (its tokens) and its "
                                                                          "lengths"),
                                         (["--cases", "B1,H1,N64,D32,int8"], "cannot read 'int8'"),
                                         (["--rounds", "0"], "--rounds must be at least 1, got 0"),
                                         (["--host", "--host-reps", "0"], "--host-reps must be at least 1, got 0"),
                                         (["--what", "both"], "invalid choice: 'both'")])
def test_bad_input_exits_2_naming_it(args, words):
    r = _run(*args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(not IN_GIT, reason="not a git checkout")
def test_a_bad_revision_exits_2_naming_it():
    r = _run("--base", "no-such-revision", "--cases", "B1,H1,N128,D64")
    assert r.returncode == 2 and "--base no-such-revision: git cannot archive kernels/" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_it_exits_2():
    r = _run("--cases", "B1,H1,N128,D64")
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not IN_GIT, reason="not a git checkout")
@pytest.mark.parametrize("what, case, tol", [
    ("fwd", "B1,H2,N256,D64,causal", 1e-2),  # the same source: the same output up to the tuner's choice
    ("fwd_bwd", "T1000,list100-300,H2,D64,causal", 5e-2),  # packed, dQ, dK, dV: and the reduce order
])
def test_gpu_the_tree_against_its_own_head_agrees(tmp_path, what, case, tol):
    out = tmp_path / "ab.json"
    r = _run("--base", "HEAD", "--what", what, "--cases", case, "--rounds", "1", "--budget-ms", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    row, = json.loads(out.read_text())["rows"]
    assert row["what"] == what and row["new_ms"] > 0 and row["base_ms"] > 0 and row["new_tflops"] > 0
    assert max(row["max_abs_diff"]) < tol


class _Revision:
    """A revision's ``flash_attn_v2`` and ``FA2Options``, recording what each call is given in ``seen``."""

    def __init__(self, name, seen):
        self.name, self.seen = name, seen

    def FA2Options(self, **fields):
        return (self.name, {key: dict(value) if key == "configs" else value for key, value in fields.items()})

    def flash_attn_v2(self, q, k, v, causal=False, window=(-1, -1), **kw):
        self.seen.append((self.name, causal, window, kw.get("options")))
        return q + 0.0 * (k + v).sum()  # depends on q, k and v, so that autograd has all three gradients

    def flash_attn_varlen(self, q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window=(-1, -1), **kw):
        self.seen.append((self.name, "varlen", tuple(q.shape), cu_q.tolist(), cu_k is cu_q, max_q, max_k, causal,
                          window, kw.get("check_values"), kw.get("options")))
        return q + 0.0 * (k + v).sum()


def _called(kernel_ab, monkeypatch, what, case_text, fwd_config=None, new_options=None) -> list:
    """What each revision's flash_attn_v2 is called with for one case (inputs made on the CPU here, as the harness
    makes them)."""
    real = kernel_ab.make_inputs
    monkeypatch.setattr(kernel_ab, "make_inputs", lambda case, device, seed: real(case, "cpu", seed))
    seen = []
    fns = kernel_ab.calls(what, kernel_ab.parse_case(case_text), _Revision("new", seen), _Revision("base", seen),
                          fwd_config, new_options)
    fns["new"](), fns["base"]()
    return seen


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_a_windowed_case_reaches_both_revisions_with_its_window(kernel_ab, monkeypatch, what):
    seen = _called(kernel_ab, monkeypatch, what, "B1,H2,N256,D64,causal,w100")
    assert seen == [("new", True, (100, 0), None), ("base", True, (100, 0), None)]


class FakeGpu:
    """CUDA, the host's clock and both revisions, faked on the CPU. ``log`` records, in order, every hold
    (``("sleep", cycles)``), event record and query, clock read, synchronisation and revision call. A call of a
    revision advances the clock by its figure for the current round: ``us[name][round]`` µs, the round being
    counted from the holds (two a round, new's then base's)."""

    def __init__(self, kernel_ab, monkeypatch, us, short=False):
        self.log, self.us, self.short, self.clock_us, self.holds = [], us, short, 0.0, 0
        self.logged = []  # (revision, whether its call was given a launch log), call by call
        gpu = self

        class Revision:
            def __init__(self, name):
                self.name = name

            def flash_attn_v2(self, q, k, v, causal=False, window=(-1, -1), launch_log=None):
                gpu.log.append(("call", self.name))
                gpu.logged.append((self.name, launch_log is not None))
                if launch_log is not None:  # the tuners pick another forward tile and the same dQ tile
                    launch_log.update(fwd=f"BLOCK_M={64 if self.name == 'new' else 128}", bwd_dq="BLOCK_M=128")
                gpu.clock_us += gpu.us[self.name][max(gpu.holds - 1, 0) // 2]
                return q + 0.0 * (k + v).sum()  # depends on q, k and v: autograd has all three gradients

        class Event:
            def record(self):
                gpu.log.append("record")

            def query(self):
                gpu.log.append("query")
                return gpu.short

        def sleep(cycles):
            gpu.holds += 1
            gpu.log.append(("sleep", cycles))

        def perf_counter():
            gpu.log.append("clock")
            return gpu.clock_us * 1e-6

        self.new, self.base = Revision("new"), Revision("base")
        real = kernel_ab.make_inputs
        monkeypatch.setattr(kernel_ab, "make_inputs", lambda case, device, seed: real(case, "cpu", seed))
        monkeypatch.setattr(kernel_ab, "snapshot", lambda rev, dest: None)
        monkeypatch.setattr(kernel_ab, "import_base", lambda dest: self.base)
        monkeypatch.setitem(sys.modules, "flashbench_kernels", type(sys)("flashbench_kernels"))
        monkeypatch.setattr(sys.modules["flashbench_kernels"], "flash_attn_v2", self.new, raising=False)
        clock = type(sys)("time")
        clock.perf_counter = perf_counter
        # the holds are timed by tools/host_path.py's held_batch_us, which kernel_ab imports
        monkeypatch.setattr(sys.modules[kernel_ab.held_batch_us.__module__], "time", clock)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: self.log.append("sync"))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(torch.cuda, "_sleep", sleep)
        monkeypatch.setattr(torch.cuda, "Event", Event)

    def main(self, kernel_ab, monkeypatch, *args):
        monkeypatch.setattr(sys, "argv", ["kernel_ab.py", "--cases", "B1,H2,N256,D64,causal", *args])
        return kernel_ab.main()


# per-hold µs a call; sorted: new 10 20 30 40 50 (median 30, p20 18, min 10), base 40 60 70 80 100 (70, 56, 40)
US = {"new": [30.0, 10.0, 50.0, 20.0, 40.0], "base": [60.0, 80.0, 40.0, 100.0, 70.0]}


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_host_gives_each_revisions_host_us_a_call_over_interleaved_holds(kernel_ab, monkeypatch, capsys, tmp_path,
                                                                         what):
    gpu = FakeGpu(kernel_ab, monkeypatch, US)
    out = tmp_path / "host.json"
    assert gpu.main(kernel_ab, monkeypatch, "--what", what, "--host", "--rounds", "5", "--host-reps", "4",
                    "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["host"] == {"unit": "host µs a call, GPU held", "holds": 5, "reps": 4, "hold_s": pytest.approx(0.09),
                           "warmup_calls": 20}
    assert doc["geomean_new_over_base"] == pytest.approx(30 / 70)
    row, = doc["rows"]
    label = dataclasses.replace(kernel_ab.parse_case("B1,H2,N256,D64,causal"), mode=what).label()
    assert (row["case"], row["what"], row["max_abs_diff"]) == (label, what, [0.0] * (1 if what == "fwd" else 3))
    assert "new_ms" not in row and "round_medians_ms" not in row
    host = row["host_us"]
    assert host["new"] == pytest.approx(US["new"]) and host["base"] == pytest.approx(US["base"])
    assert host["median"] == pytest.approx({"new": 30.0, "base": 70.0})
    assert host["p20"] == pytest.approx({"new": 18.0, "base": 56.0})
    assert host["min"] == pytest.approx({"new": 10.0, "base": 40.0})
    assert host["short_holds"] == {"new": 0, "base": 0} and row["new_over_base"] == pytest.approx(30 / 70)
    printed = capsys.readouterr()
    assert "host µs a call with the GPU held: 5 interleaved holds a revision of 4 calls each" in printed.out
    line, = [t for t in printed.out.splitlines() if t.startswith(label)]
    assert line[len(label):].split()[:7] == ["70.0", "56.0", "40.0", "30.0", "18.0", "10.0", "0.429"]
    assert "geometric mean of new/base (host µs a call) over 1 cases: 0.429" in printed.out
    assert "warning" not in printed.err
    # the calls: compared once, warmed up 20 times, then the holds, each round starting with the other revision
    calls = [e[1] for e in gpu.log if e[0] == "call"]
    new_first, base_first = ["new"] * 4 + ["base"] * 4, ["base"] * 4 + ["new"] * 4
    assert calls == ["new", "base"] * 21 + (new_first + base_first) * 2 + new_first


def test_host_queues_a_hold_before_each_timed_batch(kernel_ab, monkeypatch):
    gpu = FakeGpu(kernel_ab, monkeypatch, US)
    assert gpu.main(kernel_ab, monkeypatch, "--what", "fwd", "--host", "--rounds", "3", "--host-reps", "12") == 0
    first = next(i for i, e in enumerate(gpu.log) if e[0] == "sleep")
    assert "clock" not in gpu.log[:first] and gpu.log[first - 1] == "sync"  # after the warm-up, synchronised
    sleeps = [e[1] for e in gpu.log if e[0] == "sleep"]
    assert sleeps == [sleeps[0]] * 6 and sleeps[0] / 1.98e9 == pytest.approx(0.05 + 12 * 0.01)  # far past 12 calls
    batch = lambda name: [("sleep", sleeps[0]), "record", "clock", *[("call", name)] * 12, "clock", "query", "sync"]
    new_first, base_first = batch("new") + batch("base"), batch("base") + batch("new")
    assert gpu.log[first:] == new_first + base_first + new_first


def test_host_holds_twenty_times_by_default_and_warns_of_a_hold_that_ended_early(kernel_ab, monkeypatch, capsys,
                                                                                 tmp_path):
    gpu = FakeGpu(kernel_ab, monkeypatch, {name: [25.0] * 20 for name in ("new", "base")}, short=True)
    out = tmp_path / "host.json"
    assert gpu.main(kernel_ab, monkeypatch, "--what", "fwd", "--host", "--out", str(out)) == 0
    assert gpu.holds == 2 * 20 and sum(e == ("call", "new") for e in gpu.log) == 1 + 20 + 20 * 12
    row, = json.loads(out.read_text())["rows"]
    assert len(row["host_us"]["new"]) == 20 and row["host_us"]["short_holds"] == {"new": 20, "base": 20}
    assert row["new_over_base"] == pytest.approx(1.0)
    err = capsys.readouterr().err
    assert "the GPU hold ended before the batch was enqueued in 20 holds of base and 20 of new" in err


def test_without_host_the_gpu_rounds_time_each_revision_with_the_held_timer(kernel_ab, monkeypatch, tmp_path, capsys):
    """Four rounds by default, new's first in rounds 0 and 2, base's first in 1 and 3 (each revision timed first
    as often as second), no sleep kernel and no host figures."""
    gpu = FakeGpu(kernel_ab, monkeypatch, US)
    # new, base; base, new; new, base; base, new: new's medians 2 1 3 2.5, base's 4 5 6 7
    medians = iter([2.0, 4.0, 5.0, 1.0, 3.0, 6.0, 7.0, 2.5])
    # the SM clock of each timing: new's 1500 1520 1480 1510, base's 1700 1690 1710 1705
    clocks = iter([1_500.0, 1_700.0, 1_690.0, 1_520.0, 1_480.0, 1_710.0, 1_705.0, 1_510.0])
    samplers = []

    def time_cuda(fn, timing, clock=None):
        samplers.append(clock)
        fn()
        return type("Result", (), {"samples_ms": [next(medians)], "sm_clock_mhz": next(clocks)})

    monkeypatch.setattr(kernel_ab, "time_cuda", time_cuda)
    sampler = object()
    monkeypatch.setattr(kernel_ab, "clock_sampler", lambda: sampler)
    out = tmp_path / "ab.json"
    assert gpu.main(kernel_ab, monkeypatch, "--what", "fwd", "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert "host" not in doc and gpu.holds == 0
    row, = doc["rows"]
    assert row["round_medians_ms"] == {"new": [2.0, 1.0, 3.0, 2.5], "base": [4.0, 5.0, 6.0, 7.0]}
    assert (row["new_ms"], row["base_ms"], row["new_over_base"]) == (2.25, 5.5, 2.25 / 5.5) and "host_us" not in row
    # each timing's SM clock, each revision's median of them and new/base in cycles a call (ms × MHz)
    assert row["round_sm_clock_mhz"] == {"new": [1_500.0, 1_520.0, 1_480.0, 1_510.0],
                                         "base": [1_700.0, 1_690.0, 1_710.0, 1_705.0]}
    assert (row["new_mhz"], row["base_mhz"]) == (1_505.0, 1_702.5)
    assert row["new_over_base_cycles"] == pytest.approx(2.25 * 1_505 / (5.5 * 1_702.5))
    assert all(x is sampler for x in samplers) and len(samplers) == 8  # the GPU's sampler, in every timing
    # compared once, then the rounds
    assert [e[1] for e in gpu.log if e[0] == "call"] == ["new", "base"] + ["new", "base", "base", "new"] * 2
    # each revision's launch log kept whole, and the kernel whose configuration differs printed below the row
    assert row["configs"] == {"new": {"fwd": "BLOCK_M=64", "bwd_dq": "BLOCK_M=128"},
                              "base": {"fwd": "BLOCK_M=128", "bwd_dq": "BLOCK_M=128"}}
    # only the first call of each revision (the comparison) is given a launch log, not the timed ones
    timed = [(name, False) for name in ["new", "base", "base", "new"] * 2]
    assert gpu.logged == [("new", True), ("base", True)] + timed
    out_lines = capsys.readouterr().out.splitlines()
    assert "  fwd: base BLOCK_M=128 | new BLOCK_M=64" in out_lines and not any("bwd_dq" in x for x in out_lines)


def test_config_changes_name_a_kernel_only_one_revision_launched(kernel_ab):
    configs = {"new": {"fwd": "A", "bwd_dkdv": "G", "bwd_dq": "G"}, "base": {"fwd": "A", "bwd_dkdv": "T1"}}
    assert kernel_ab.config_changes(configs) == ["  bwd_dkdv: base T1 | new G", "  bwd_dq: base - | new G"]
    assert kernel_ab.config_changes({"new": {}, "base": {}}) == []


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_a_pinned_forward_configuration_reaches_both_revisions(kernel_ab, monkeypatch, what):
    """--fwd-config: each revision is called with its own FA2Options pinning that forward configuration."""
    config = kernel_ab.parse_fwd_config("128,128,4,2,gluon_sm90")
    assert config == (128, 128, 4, 2, "gluon_sm90")
    seen = _called(kernel_ab, monkeypatch, what, "B1,H2,N256,D64", config)
    assert seen == [("new", False, (-1, -1), ("new", {"configs": {"fwd": config}})),
                    ("base", False, (-1, -1), ("base", {"configs": {"fwd": config}}))]


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_new_options_reach_the_new_revision_only(kernel_ab, monkeypatch, what):
    """--new-option: the new revision's calls take those FA2Options fields (with a pinned forward too); base runs
    its defaults, or only the pinned forward."""
    options = kernel_ab.parse_new_options(["dq_chunk_waves=4", "sm90_forward=false", "backward=sm90"])
    assert options == {"dq_chunk_waves": 4, "sm90_forward": False, "backward": "sm90"}
    seen = _called(kernel_ab, monkeypatch, what, "B1,H2,N256,D64", None, options)
    assert seen == [("new", False, (-1, -1), ("new", options)), ("base", False, (-1, -1), None)]
    config = (128, 128, 4, 2, "gluon_sm90")
    seen = _called(kernel_ab, monkeypatch, what, "B1,H2,N256,D64", config, {"dq_chunk_waves": 2})
    assert seen == [("new", False, (-1, -1), ("new", {"dq_chunk_waves": 2, "configs": {"fwd": config}})),
                    ("base", False, (-1, -1), ("base", {"configs": {"fwd": config}}))]


@pytest.mark.parametrize("args, words", [
    (["--new-option", "dq_chunk_waves"], "expected NAME=VALUE"),
    (["--new-option", "dq_chunk_waves=-1"], "dq_chunk_waves must be an int >= 0"),
    (["--new-option", "no_such=1"], "no_such"),
    (["--what", "bwd", "--new-option", "dq_chunk_waves=1"], "--what fwd or fwd_bwd")])
def test_a_bad_new_option_is_refused_with_exit_2(args, words):
    r = _run("--base", "HEAD", "--what", "fwd", *args)
    assert r.returncode == 2 and "--new-option" in r.stderr and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text", ["128,128,4", "128,x,4,2", "128,128,4,2,gluon_sm90,extra", "64,64,4,2,nonsense"])
def test_a_bad_forward_configuration_is_refused_with_exit_2(text):
    r = _run("--base", "HEAD", "--what", "fwd", "--fwd-config", text)
    assert r.returncode == 2 and "--fwd-config" in r.stderr and "Traceback" not in r.stderr, r.stderr



def test_the_gpu_line_shows_the_clocks_and_cycles_or_dashes_without_nvml(kernel_ab):
    row = {"case": "B4 H16 N4096 D128 bf16 fwd", "new_ms": 1.0, "base_ms": 1.1, "new_over_base": 1.0 / 1.1,
           "new_tflops": 550.0, "new_mhz": 1_470.0, "base_mhz": 1_695.0, "new_over_base_cycles": 1_470 / (1.1 * 1_695),
           "max_abs_diff": [0.0]}
    assert kernel_ab.gpu_line(row).split()[-5:] == ["550", "1470", "1695", "0.788", "0"]
    row.update(new_mhz=None, base_mhz=None, new_over_base_cycles=None)
    assert kernel_ab.gpu_line(row).split()[-5:] == ["550", "-", "-", "-", "0"]
    assert " ".join(kernel_ab.GPU_HEAD.split()).endswith("TFLOP/s new MHz base MHz cycles max |new - base|")


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_a_packed_case_reaches_both_revisions_flash_attn_varlen(kernel_ab, monkeypatch, what):
    """As the harness's triton_fa2 calls it: the packed tensors, the batch's offsets for queries and keys, its
    longest sequence, the offsets trusted (no host sync), the causal mask and window passed on."""
    case = kernel_ab.parse_case("T1000,list100-300,H2,Hkv1,D64,causal,w64")
    seen = _called(kernel_ab, monkeypatch, what, "T1000,list100-300,H2,Hkv1,D64,causal,w64")
    offsets = [0, 100, 400, 500, 800, 900, 1000]  # 100, 300, 100, 300, 100, then the 100 tokens left
    assert case.batch == 6 and case.seq_len_q == 300
    assert seen == [(name, "varlen", (1000, 2, 64), offsets, True, 300, 300, True, (64, 0), False, None)
                    for name in ("new", "base")]


def test_a_packed_case_cannot_time_the_dense_backward_alone(kernel_ab, monkeypatch):
    with pytest.raises(ValueError, match="a packed case takes --what fwd or fwd_bwd"):
        _called(kernel_ab, monkeypatch, "bwd", "T1000,list100-300,H2,D64")
