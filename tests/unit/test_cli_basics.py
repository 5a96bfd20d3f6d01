"""The command line's basics: --version, -h, what each backend runs here, and commands that import only
what they need (issue 15, items 15, 20, 22)."""
import json
import os
import subprocess
import sys

from sweeps import invoke

HEAVY = ("torch", "pandas", "triton", "matplotlib", "ray")


def test_version_and_short_help():
    """Item 20: --version (and -V) print the version; -h is --help, for the app and its commands."""
    from flashbench import __version__

    for flag in ("--version", "-V"):
        r = invoke(flag)
        assert r.exit_code == 0 and r.output.strip() == f"flashbench {__version__}"
    r = invoke("-h")
    assert r.exit_code == 0 and "Usage: " in r.output and "--version" in r.output and "run" in r.output
    r = invoke("run", "-h")
    assert r.exit_code == 0 and "--dry-run" in r.output


def test_list_says_what_each_backend_runs_here():
    """Item 15: on a CPU, `list` says sdpa_efficient skips every case (needs CUDA) instead of calling it
    available, and says which modes and dtypes the others take (Triton's interpreter: no bfloat16)."""
    doc = json.loads(invoke("list", "--format", "json").stdout)
    assert doc["device"] == "cpu"
    b = {r["backend"]: r for r in doc["backends"]}
    eff = b["sdpa_efficient"]
    assert eff["available"] is False and eff["runs_here"].startswith("skips every case here") and "cuda" in eff["runs_here"]
    assert b["naive"]["available"] is True and b["naive"]["runs_here"] == "fwd, bwd, fwd_bwd · float16, bfloat16, float32"
    if os.environ.get("TRITON_INTERPRET") == "1":  # set by tests/conftest.py on a machine without CUDA
        assert b["triton_fa2"]["runs_here"].startswith("fwd, bwd, fwd_bwd · float16, float32 · head_dim 32")
    r = invoke("list")
    assert r.exit_code == 0 and "runs here" in r.output and "skips every case here" in r.output


def test_dry_run_skips_sdpa_efficient_on_a_cpu():
    """Item 15: the plan agrees with `list`: sdpa_efficient is a skip on a CPU, before anything runs."""
    r = invoke("run", "smoke", "-b", "naive,sdpa_efficient", "--dry-run")
    assert r.exit_code == 0 and "skip sdpa_efficient" in r.output and "11 skipped" in r.output


def imported_by(*argv):
    """The heavy top-level packages a fresh interpreter has imported after running the CLI with argv."""
    code = ("import sys; from flashbench.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, {list(argv)!r}); assert r.exit_code == 0, r.output; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}), "
            "sorted(m for m in sys.modules if m.startswith('flashbench_kernels.flash')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_help_and_version_import_no_torch_pandas_or_kernels():
    """Item 22: --help and --version import none of torch, pandas, triton, matplotlib, ray or the kernels."""
    assert imported_by("--help") == "[] []"
    assert imported_by("--version") == "[] []"


def test_list_imports_torch_but_not_pandas_triton_or_the_kernels():
    """Item 22: `list` needs torch (is there a GPU?) and nothing else heavy."""
    assert imported_by("list") == "['torch'] []"
