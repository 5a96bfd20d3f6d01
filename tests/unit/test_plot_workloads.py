"""`flashbench plot` for the varlen and decode workloads: varlen rows as bars by length distribution
(tflops_by_lengths.png) with the slots of non-ok rows labelled, decode rows as a bounded facet grid."""
import pytest

pytest.importorskip("matplotlib")

from synthetic import case, record, write_run  # noqa: E402
from flashbench.model.case import Case  # noqa: E402
from flashbench.model.flops import min_hbm_bytes  # noqa: E402
from flashbench.model.lengths import realise_budget  # noqa: E402
from flashbench.report import plot_decode, plot_grid, plot_varlen  # noqa: E402
from flashbench.report.plot_grid import lengths_label  # noqa: E402
from flashbench.report.plots import plot_frame  # noqa: E402
from flashbench.results.files import load_run  # noqa: E402

TOKENS = 16384
UNIFORM = "uniform(128..8192,seed=0)"
LIST = "list(128,512,2048,8192)"


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures plot_frame saves, by file name (drawn as usual, kept for inspection)."""
    saved = {}
    real = plot_grid.save_figure

    def keep(fig, path):
        saved[path.name] = fig
        return real(fig, path)

    monkeypatch.setattr(plot_grid, "save_figure", keep)
    return saved


def varlen_case(lengths: str, causal: bool, kv_heads: int = 16) -> Case:
    if not lengths:  # equal lengths: 8 sequences of 2048
        return Case(8, 16, kv_heads, 2048, 2048, 128, "bfloat16", causal, "fwd", workload="varlen")
    n = len(realise_budget(lengths, TOKENS))
    return Case(n, 16, kv_heads, 8192, 8192, 128, "bfloat16", causal, "fwd", workload="varlen", lengths=lengths,
                total_tokens=TOKENS)


def varlen_records():
    """3 backends × 3 distributions × full/causal; b is skipped on uniform, c mismatches on the list."""
    recs, seed = [], 0
    for causal in (False, True):
        for lengths in ("", UNIFORM, LIST):
            c = varlen_case(lengths, causal)
            for backend, ms in (("a", 1.0), ("b", 1.5), ("c", 2.0)):
                seed += 1
                if backend == "b" and lengths == UNIFORM:
                    recs.append(record(backend, c, status="skipped", reason="takes no such lengths"))
                elif backend == "c" and lengths == LIST:
                    recs.append(record(backend, c, status="mismatch", reason="dq: max abs err 1e30 > bound 0.03"))
                else:
                    recs.append(record(backend, c, ms, spread=0.05, seed=seed))
    return recs


def bars(ax):
    """The filled bars of a panel (the labelled empty slots are outlines without a face)."""
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_fill() and p.get_facecolor()[3] > 0]


def texts(ax):
    return [t.get_text() for t in ax.texts]


def test_lengths_labels_come_from_the_description():
    assert lengths_label(UNIFORM, 8192) == "uniform 128–8k"
    assert lengths_label("lognormal(128..8192,seed=3)", 8192) == "lognormal 128–8k"
    assert lengths_label(LIST, 8192) == "list 128…8k"
    assert lengths_label("list(512)", 512) == "list 512"
    assert lengths_label("", 2048) == "equal 2048"
    assert lengths_label("uniform(1000..1536,seed=0)", 1536) == "uniform 1000–1536"
    assert lengths_label("something else", 1) == "something else"
    # two seeds of one distribution in a figure are told apart
    labels = plot_varlen._group_labels([(UNIFORM, 8192), ("uniform(128..8192,seed=1)", 8192)])
    assert sorted(labels.values()) == ["uniform 128–8k seed 0", "uniform 128–8k seed 1"]


def test_varlen_rows_get_bars_by_length_distribution(tmp_path, figures):
    infos = plot_frame(load_run(write_run(tmp_path / "v", varlen_records())).frame(), tmp_path / "figs", "varlen")
    # varlen rows leave the sequence-length figures (one point per panel) and the memory figure
    assert [i.path.name for i in infos] == ["tflops_by_lengths.png"]
    info = infos[0]
    assert info.panels == 2 and info.titles == ("D128 bf16 full fwd", "D128 bf16 causal fwd")
    fig = figures["tflops_by_lengths.png"]
    assert len(fig.axes) == 2
    for ax in fig.axes:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        # equal lengths first, then the run's order; the sequence count under each label
        assert ticks == ["equal 2048\n8 seqs", f"uniform 128–8k\n{len(realise_budget(UNIFORM, TOKENS))} seqs",
                         "list 128…8k\n8 seqs"]
        assert len(bars(ax)) == 3 * 3 - 2  # one bar per ok row
        # the missing bars are explained where they would stand
        assert texts(ax).count("skipped") == 1 and texts(ax).count("mismatch") == 1
        heights = sorted(round(b.get_height()) for b in bars(ax))
        assert heights[-1] > heights[0]  # the bars are the rates, not a constant
    # the colours are the run's backend colours: a, b, c = C0, C1, C2
    from matplotlib.colors import to_rgba

    colors = {to_rgba(b.get_facecolor()) for b in bars(fig.axes[0])}
    assert colors == {to_rgba(c) for c in ("C0", "C1", "C2")}
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c"]


def test_varlen_error_bars_are_the_p20_p80_rates(tmp_path, figures):
    c = varlen_case(UNIFORM, False)
    recs = [record("a", c, 1.0, spread=0.2, seed=1), record("b", c, status="oom", reason="out of memory")]
    run = load_run(write_run(tmp_path / "v", recs))
    plot_frame(run.frame(), tmp_path / "figs")
    ax = figures["tflops_by_lengths.png"].axes[0]
    (bar,) = bars(ax)
    r = run.records[0]
    assert bar.get_height() == pytest.approx(r.tflops)
    from matplotlib.collections import LineCollection

    (segments,) = [c.get_segments() for c in ax.collections if isinstance(c, LineCollection)]
    (lo, hi) = segments[0][:, 1]
    assert lo == pytest.approx(r.flops / r.p80_ms / 1e9) and hi == pytest.approx(r.flops / r.p20_ms / 1e9)
    assert "oom" in texts(ax)


def test_varlen_panels_split_by_kv_heads(tmp_path):
    recs = [record(b, varlen_case(UNIFORM, False, kv), 1.0, seed=kv) for b in ("a", "b") for kv in (4, 16)]
    (info,) = plot_frame(load_run(write_run(tmp_path / "v", recs)).frame(), tmp_path / "figs")
    assert info.panels == 2 and [t.split()[-1] for t in info.titles] == ["Hkv4", "Hkv16"]


def test_dense_runs_get_no_varlen_figure_and_mixed_runs_get_both(tmp_path):
    dense = [record(b, case(n), 0.001 * n * k, seed=n) for b, k in (("a", 1), ("b", 2)) for n in (512, 1024, 2048)]
    names = [i.path.name for i in plot_frame(load_run(write_run(tmp_path / "d", dense)).frame(), tmp_path / "f1")]
    assert names == ["tflops_vs_seqlen.png", "peak_hbm_vs_seqlen.png"]
    infos = plot_frame(load_run(write_run(tmp_path / "m", dense + varlen_records())).frame(), tmp_path / "f2")
    assert [i.path.name for i in infos] == ["tflops_vs_seqlen.png", "peak_hbm_vs_seqlen.png", "tflops_by_lengths.png"]
    # the varlen rows stay out of the dense panels: one panel, as without them
    assert infos[0].panels == 1 and infos[1].panels == 1


def test_a_varlen_run_without_an_ok_row_has_nothing_to_plot(tmp_path):
    from flashbench.report.figure_style import PlotError

    recs = [record("a", varlen_case(UNIFORM, False), status="skipped", reason="no")]
    with pytest.raises(PlotError):
        plot_frame(load_run(write_run(tmp_path / "v", recs)).frame(), tmp_path / "figs")


# --- decode -------------------------------------------------------------------------------------------

LAYOUTS = (("contiguous", 0), ("paged", 16), ("paged", 256))
CACHE = {1: (4096, 32768, 131072), 32: (4096, 32768), 256: (4096,)}  # batch -> cache lengths, as the sweep


def decode_record(backend, c, ms, seed=0, roof=None):
    r = record(backend, c, ms, seed=seed)
    r.min_hbm_bytes = min_hbm_bytes(c)
    r.hbm_gbps = r.min_hbm_bytes / (r.median_ms * 1e-3) / 1e9
    if roof:
        r.pct_hbm = 100 * r.hbm_gbps / roof
    return r


def decode_sweep(roof=None):
    """Shaped like results/baselines/h200/decode: batch × heads × new tokens × layout × cache lengths, plus
    a uniform length distribution at 32k for B1 and B32; three backends."""
    recs, seed = [], 0
    for b, lens in CACHE.items():
        for h in (32, 64):
            for nq in (1, 4):
                for layout, page in LAYOUTS:
                    shapes = [(n, "") for n in lens] + ([(32768, "uniform(1024..32768,seed=0)")] if b < 256 else [])
                    for n, lengths in shapes:
                        c = Case(b, h, 8, nq, n, 128, "bfloat16", True, "fwd", workload="decode", kv_layout=layout,
                                 page_size=page, lengths=lengths)
                        for backend, speed in (("sdpa_cudnn", 1.0), ("sdpa_flash", 1.4), ("triton_decode", 1.1)):
                            seed += 1
                            recs.append(decode_record(backend, c, 0.01 * speed * b * n / 4096, seed=seed, roof=roof))
    return recs


def test_decode_sweep_fits_one_grid(tmp_path, figures):
    (info,) = plot_frame(load_run(write_run(tmp_path / "d", decode_sweep())).frame(), tmp_path / "figs", "decode")
    assert info.path.name == "gbps_vs_cache_len.png"
    # new tokens × heads rows, one column per layout: 12 panels, not one per batch × lengths (48)
    assert info.panels == 12
    fig = figures["gbps_vs_cache_len.png"]
    assert len(fig.axes) == 12
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(4, 3)}
    first_row = info.titles[:3]
    assert [t.split()[-2] for t in first_row] == ["contiguous", "paged16", "paged256"]
    assert "1 new token" in info.titles[0] and "4 new tokens" in info.titles[-1]
    # in a panel: a line per backend × batch × length distribution (3 × (3 + 2))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() in plot_decode.BATCH_MARKERS]
    assert len(lines) == 15
    assert {ln.get_marker() for ln in lines} == {"o", "s", "^"}  # a marker per batch
    # shared axes: one y range for every panel
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:6] == ["sdpa_cudnn", "sdpa_flash", "triton_decode", "B1", "B32", "B256"]
    assert "equal lengths" in labels and "uniform 1k–32k lengths" in labels
    assert not any(lab.startswith("read roof") for lab in labels)  # no pct_hbm: no roof


def test_decode_draws_the_read_roof(tmp_path, figures):
    recs = [r for r in decode_sweep(roof=4650.0) if r.case.batch == 1 and r.case.seq_len_q == 1]
    (info,) = plot_frame(load_run(write_run(tmp_path / "d", recs)).frame(), tmp_path / "figs")
    assert info.panels == 6  # heads × layout
    fig = figures["gbps_vs_cache_len.png"]
    roofs = [ln for ln in fig.axes[0].get_lines() if list(ln.get_ydata()) == [4650.0, 4650.0]]
    assert len(roofs) == 1
    assert "read roof 4,650 GB/s" in [t.get_text() for t in fig.legends[0].get_texts()]
