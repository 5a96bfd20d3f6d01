"""tools/decode_grid.py: its arguments and its refusal without a GPU (the grid itself needs one)."""
import pytest
import torch
from tool_import import imported_tool  # tests/support


@pytest.fixture
def decode_grid(monkeypatch):
    yield from imported_tool(monkeypatch, "decode_grid", also=("decode_bench",))


def test_reads_shapes_pages_and_splits(decode_grid):
    a = decode_grid.parse_args(["--shapes", "1x4096,8X32768", "--pages", "16", "256", "--splits", "1", "64",
                                "--out", "g.json"])
    assert a.shapes == [(1, 4096), (8, 32768)] and a.pages == [16, 256] and a.splits == [1, 64]
    a = decode_grid.parse_args(["--out", "g.json"])
    assert a.shapes == [(1, 4096), (8, 4096)] and a.pages == [16] and a.splits == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("argv", [["--shapes", "1by4096"], ["--splits", "0"], ["--splits", "129"], []],
                         ids=["shape", "zero-splits", "too-many-splits", "no-out"])
def test_bad_arguments_exit_2(decode_grid, argv, capsys):
    out = [] if not argv else ["--out", "g.json"]
    with pytest.raises(SystemExit) as e:
        decode_grid.parse_args(argv + out)
    assert e.value.code == 2 and "error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_says_so(decode_grid, capsys, tmp_path):
    assert decode_grid.main(["--out", str(tmp_path / "g.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err and not (tmp_path / "g.json").exists()


def test_decode_bench_can_launch_the_combine_sequentially(decode_grid):
    import decode_bench  # imported by decode_grid, from tools/

    assert decode_bench.parse_args(["--out", "b.json"]).sequential_combine is False
    assert decode_bench.parse_args(["--sequential-combine", "--out", "b.json"]).sequential_combine is True
