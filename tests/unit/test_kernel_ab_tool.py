"""tools/kernel_ab.py: the snapshot of another revision's kernels, the cases it reads, its refusals on bad input
and without a GPU, and (GPU) one A/B of the tree against itself."""
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
                                         (["--cases", "B1,H1,N64,D32,int8"], "cannot read 'int8'"),
                                         (["--rounds", "0"], "--rounds must be at least 1, got 0"),
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
def test_gpu_the_tree_against_its_own_head_agrees(tmp_path):
    out = tmp_path / "ab.json"
    r = _run("--base", "HEAD", "--what", "fwd", "--cases", "B1,H2,N256,D64,causal", "--rounds", "1",
             "--budget-ms", "20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    row, = json.loads(out.read_text())["rows"]
    assert row["what"] == "fwd" and row["new_ms"] > 0 and row["base_ms"] > 0 and row["new_tflops"] > 0
    assert row["max_abs_diff"][0] < 1e-2  # the same source: the same output up to the tuner's choice


@pytest.mark.parametrize("what", ["fwd", "fwd_bwd"])
def test_a_windowed_case_reaches_both_revisions_with_its_window(kernel_ab, monkeypatch, what):
    """What each revision's flash_attn_v2 is called with (inputs made on the CPU here, as the harness makes them)."""
    real = kernel_ab.make_inputs
    monkeypatch.setattr(kernel_ab, "make_inputs", lambda case, device, seed: real(case, "cpu", seed))
    seen = []

    class Revision:
        def __init__(self, name):
            self.name = name

        def flash_attn_v2(self, q, k, v, causal=False, window=(-1, -1)):
            seen.append((self.name, causal, window))
            return q + 0.0 * (k + v).sum()  # depends on q, k and v, so that autograd has all three gradients

    case = kernel_ab.parse_case("B1,H2,N256,D64,causal,w100")
    fns = kernel_ab.calls(what, case, Revision("new"), Revision("base"))
    fns["new"](), fns["base"]()
    assert seen == [("new", True, (100, 0)), ("base", True, (100, 0))]
