"""`flashbench plot` and flashbench.report.plots (PNG figures; matplotlib on the Agg canvas)."""
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from synthetic import case, record, write_run  # noqa: E402
from flashbench.cli import app  # noqa: E402
from flashbench.report.figure_style import PlotDependencyError, PlotError  # noqa: E402
from flashbench.report.plots import plot_frame, plot_run_dir  # noqa: E402
from flashbench.results.files import load_run  # noqa: E402

runner = CliRunner()
SEQ = (512, 1024, 2048, 4096)


def _sweep(tmp_path, name="run"):
    recs = []
    seed = 0
    for d in (64, 128):
        for causal in (False, True):
            for n in SEQ:
                c = case(n, d, causal=causal)  # fixed tokens: batch = 16384 // n
                seed += 1
                flash_ms = 0.001 * n / 1024 * (0.5 if causal else 1)
                recs.append(record("sdpa_flash", c, flash_ms, spread=0.05, seed=seed,
                                   peak_hbm=c.batch * c.heads * n * d * 2))
                recs.append(record("triton_fa2", c, flash_ms * 0.8, spread=0.05, seed=seed + 1000,
                                   peak_hbm=c.batch * c.heads * n * d * 2))
                if n <= 2048:
                    recs.append(record("naive", c, flash_ms * 8, spread=0.05, seed=seed + 2000,
                                       peak_hbm=c.batch * c.heads * n * n * 4))
                else:
                    recs.append(record("naive", c, status="oom", reason="out of memory"))
    return write_run(tmp_path / name, recs)


def _imread(path):
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_plot_frame_panels(tmp_path):
    run = load_run(_sweep(tmp_path))
    infos = plot_frame(run.frame(), tmp_path / "figs", "test")
    assert [i.path.name for i in infos] == ["tflops_vs_seqlen.png", "peak_hbm_vs_seqlen.png"]
    # one panel per head_dim x dtype x causal x mode: 2 x 1 x 2 x 1
    assert [i.panels for i in infos] == [4, 4]
    assert "D64 bf16 full fwd" in infos[0].titles and "D128 bf16 causal fwd" in infos[0].titles
    for i in infos:
        assert i.path.is_file()
        _imread(i.path)


def test_plot_cli_writes_into_run_dir(tmp_path):
    d = _sweep(tmp_path)
    r = runner.invoke(app, ["plot", str(d)])
    assert r.exit_code == 0, r.output
    assert f"figure: {d / 'plots' / 'tflops_vs_seqlen.png'}" in r.stdout
    for name in ("tflops_vs_seqlen.png", "peak_hbm_vs_seqlen.png"):
        assert (d / "plots" / name).is_file()
        _imread(d / "plots" / name)
    r = runner.invoke(app, ["plot", str(d), "--out", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "elsewhere" / "tflops_vs_seqlen.png").is_file()


def test_extra_panel_field_when_heads_vary(tmp_path):
    recs = [record("sdpa_flash", case(n, 64, batch=1, heads=h), 0.1 * n / 512, seed=n + h)
            for n in SEQ for h in (8, 16)]
    infos = plot_frame(load_run(write_run(tmp_path / "h", recs)).frame(), tmp_path / "figs")
    assert infos[0].panels == 2 and any("H16" in t for t in infos[0].titles)


def test_nothing_to_plot(tmp_path):
    d = write_run(tmp_path / "bad", [record("naive", case(512), status="oom")])
    with pytest.raises(PlotError):
        plot_run_dir(d)
    r = runner.invoke(app, ["plot", str(d)])
    assert r.exit_code == 2 and r.stdout == ""  # the reason goes to stderr, and only there
    assert "no ok records" in r.stderr and "Traceback" not in r.stderr
    assert runner.invoke(app, ["plot", str(tmp_path / "missing")]).exit_code == 2


def test_missing_matplotlib_exit_3(tmp_path, monkeypatch):
    import flashbench.report.figure_style as figure_style

    def no_mpl():
        raise PlotDependencyError("matplotlib is not installed: pip install 'flashbench[plot]'")

    monkeypatch.setattr(figure_style, "require_matplotlib", no_mpl)
    r = runner.invoke(app, ["plot", str(_sweep(tmp_path))])
    assert r.exit_code == 3
    assert "flashbench[plot]" in r.stderr


# --- one style for every figure (report and profile) ------------------------------------------------

def test_backend_colors_keep_first_appearance_order():
    from flashbench.report.figure_style import backend_colors

    assert backend_colors(["b", "a", "b", "c"]) == {"b": "C0", "a": "C1", "c": "C2"}
    assert backend_colors(f"x{i}" for i in range(11))["x10"] == "C0"  # the cycle wraps after ten


PROFILE_FIGURES = r"""
import sys
from flashbench.profile.plots import plot_roofline, plot_traffic_sweep
from flashbench.profile.roofline import MEASURED, ANALYTIC_MIN, RooflinePoint

out = sys.argv[1]
pts = [RooflinePoint("sdpa_flash", "c", 400.0, 1, MEASURED, 300.0, None, None, ""),
       RooflinePoint("naive", "c", 20.0, 1, ANALYTIC_MIN, 30.0, None, None, "")]
rows = [dict(backend=b, n=n, measured=n * k, standard=n * n, fa1=n * 3, fa2=n * 2, minimum=n)
        for n in (512, 1024) for b, k in (("sdpa_flash", 2), ("naive", n))]
plot_roofline(pts, None, out + "/roofline.png", "t")
plot_traffic_sweep(rows, out + "/traffic_vs_n.png", "t")
print("matplotlib.pyplot" in sys.modules)
"""


def test_profile_figures_use_the_agg_canvas_without_pyplot(tmp_path):
    # pyplot would switch the process-wide backend and keep figures alive: a fresh interpreter shows
    # whether drawing the profile figures imported it
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", PROFILE_FIGURES, str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
    for name in ("roofline.png", "traffic_vs_n.png"):
        _imread(tmp_path / name)
