"""lab/ncu_forward_vs_cudnn.py refuses a malformed command line with its usage and exit 2, before touching a GPU."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "lab" / "ncu_forward_vs_cudnn.py"


def _main():
    spec = importlib.util.spec_from_file_location("ncu_forward_vs_cudnn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("argv", [
    ["2", "16", "8192"],                               # no head dim
    ["2", "16", "8192", "128", "bwd"],                 # an unknown word
    ["2", "16", "8192", "128", "causal", "causal"],    # a word twice
    ["2", "16", "8192", "0"],                          # not positive
    ["2", "16", "8k", "128", "fwd_bwd"],               # not an integer
])
def test_a_malformed_command_line_gets_the_usage_and_exit_2(argv, capsys):
    assert _main()(argv) == 2
    err = capsys.readouterr().err
    assert "usage: python lab/ncu_forward_vs_cudnn.py B H N D [causal] [fwd_bwd]" in err
    assert err.count("\n") <= 2
