"""Helpers shared by the sweep tests (workers, resume, Ray, precompile): a tiny config, the CLI, fast timing,
and ``SUPPORT``, the folder of the test plugin ``fake_backends`` that worker processes must be able to import."""
import os
from pathlib import Path

from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.model.case import Case
from flashbench.measure.measurer import MeasureSettings
from flashbench.model.config import Timing

SUPPORT = str(Path(__file__).resolve().parent)
FAST = MeasureSettings(timing=Timing(warmup_ms=1, budget_ms=5, min_samples=3, max_samples=20))
runner = CliRunner()


def plugin_path() -> str:
    """PYTHONPATH with the test plugin's folder first, for worker processes and subprocesses."""
    return os.pathsep.join(p for p in (SUPPORT, os.environ.get("PYTHONPATH")) if p)


def tiny_config(tmp_path, backends, seq_len=(32,), causal=(False, True), name="tiny") -> str:
    path = tmp_path / f"{name}.yaml"
    reference = "reference_backend: naive\n" if "naive" in backends else ""
    path.write_text(
        f"name: {name}\n"
        f"axes: {{batch: 1, heads: 2, seq_len: [{', '.join(map(str, seq_len))}], head_dim: 16, dtype: float32,\n"
        f"       causal: [{', '.join('true' if c else 'false' for c in causal)}], mode: fwd}}\n"
        f"backends: [{', '.join(backends)}]\n"
        + reference
        + "timing: {warmup_ms: 1, budget_ms: 5, min_samples: 3, max_samples: 20}\n")
    return str(path)


def wait_for_records(proc, directory, n: int, timeout: float = 90.0) -> int:
    """Poll ``directory/results.json`` until it holds ``n`` records or ``proc`` ends; the count seen."""
    import json
    import time

    deadline, seen = time.time() + timeout, 0
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = len(json.loads((Path(directory) / "results.json").read_text())["records"])
        except (OSError, ValueError, KeyError):
            seen = 0
        if seen >= n:
            break
        time.sleep(0.05)
    return seen


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def case(n=32, causal=False):
    return Case(1, 2, 2, n, n, 16, "float32", causal, "fwd")
