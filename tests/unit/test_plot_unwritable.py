"""`flashbench plot` to a place it cannot write: exit 2 with the path and the reason, no traceback
(issue 15, item 5)."""
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from flashbench.cli import app  # noqa: E402
from synthetic import case, record, write_run  # noqa: E402

runner = CliRunner()


def a_run(tmp_path):
    recs = [record(b, case(n), 0.001 * n, seed=i) for i, (b, n) in
            enumerate((b, n) for b in ("sdpa_flash", "triton_fa2") for n in (512, 1024, 2048))]
    return write_run(tmp_path / "run", recs)


def test_plots_directory_that_is_a_file_is_exit_2(tmp_path):
    """Item 5: RUN/plots is a file: exit 2 naming it, not a traceback and exit 1."""
    run = a_run(tmp_path)
    (run / "plots").write_text("not a directory")
    r = runner.invoke(app, ["plot", str(run)])
    assert r.exit_code == 2, r.output
    assert "cannot write" in r.output and str(run / "plots") in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_out_under_a_file_is_exit_2(tmp_path):
    """Item 5: --out inside a path that cannot be a directory: exit 2 with the reason."""
    run = a_run(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = runner.invoke(app, ["plot", str(run), "--out", str(blocker / "figs")])
    assert r.exit_code == 2, r.output
    assert "cannot write" in r.output and "Not a directory" in r.output.replace("\n", " ")


def test_run_plot_into_an_unwritable_place_is_a_warning(tmp_path):
    """Item 5: `run --plot` keeps its results and warns when the figures cannot be written."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "plots").write_text("a file")
    r = runner.invoke(app, ["run", "smoke", "-b", "naive", "--out", str(out), "--quiet", "--plot"])
    assert r.exit_code == 0, r.output
    assert "no figures: cannot write" in r.output and (out / "results.json").exists()
