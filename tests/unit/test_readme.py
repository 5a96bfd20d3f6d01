"""The README's quick start works on a CPU-only machine without the CUDA build of PyTorch (issue 15, item 21)."""
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_quick_start_says_how_to_get_the_cpu_wheel():
    """Item 21: the CPU wheel's index is named in the quick start, and the one command for both stays."""
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in QUICK_START
    assert 'pip install -e ".[plot]" && flashbench run' in QUICK_START
    assert "torch==2.13.0" in QUICK_START
