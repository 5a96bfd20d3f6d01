"""The README's headline figures are the committed baselines' figures.

Each figure is derived here from `results/baselines/<gpu>/<name>/` with the library (`load_run`), formatted
as the README writes it, and looked up in the README: a table row as a whole line, a sentence's figures as a
phrase of the README with its line breaks folded into spaces. Nothing is parsed out of the README, so a
figure edited by hand, or a baseline measured again without the README following it, fails here.
"""
import json
import math
import statistics
from functools import lru_cache
from pathlib import Path

import pytest

from flashbench.execute.order import rotated
from flashbench.results.files import load_run

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
README_LINES = set(README.splitlines())
README_FLAT = " ".join(README.split())  # line breaks and indentation folded into single spaces


@lru_cache(maxsize=None)
def run_at(rel: str):
    """A run directory under results/ (a baseline, or a gate's earlier side kept as evidence)."""
    return load_run(ROOT / "results" / rel)


def record_at(rel: str, backend: str, **case_fields):
    """The one record of ``backend`` in ``run_at(rel)`` whose case has ``case_fields`` (its rounds and samples,
    which the frame does not hold)."""
    rec, = [r for r in run_at(rel).records
            if r.backend == backend and all(getattr(r.case, k) == v for k, v in case_fields.items())]
    return rec


@lru_cache(maxsize=None)
def frame_at(rel: str):
    """The records of ``run_at(rel)`` as a frame."""
    return run_at(rel).frame()


def frame(gpu: str, name: str):
    return frame_at(f"baselines/{gpu}/{name}")


def ok(gpu: str, name: str):
    d = frame(gpu, name)
    return d[d.status == "ok"]


def span(values, fmt="{:.2f}") -> str:
    """'a–b' as the README writes a range (one value when both ends round alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def one(d, **where):
    for key, value in where.items():
        d = d[d[key] == value]
    assert len(d) == 1, where
    return d.iloc[0]


def missing_rows(rows):
    return [row for row in rows if row not in README_LINES]


def missing_phrases(phrases):
    return [p for p in phrases if p not in README_FLAT]


def test_h100_default_table_is_the_baseline():
    """'What it shows on an H100': every bf16 row, TFLOP/s per backend and FA2 ÷ sdpa_flash."""
    d = frame("h100", "default")
    d = d[(d.dtype == "bfloat16") & (d.status == "ok")]
    backends = ["naive", "sdpa_math", "sdpa_efficient", "sdpa_flash", "sdpa_cudnn", "flex", "triton_fa1",
                "triton_fa2"]
    rows = []
    for mode in ("fwd", "fwd_bwd"):
        for dim in (64, 128):
            for causal in (False, True):
                for n in (1024, 4096, 16384):
                    cell = d[(d["mode"] == mode) & (d.head_dim == dim) & (d.causal == causal) & (d.seq_len_q == n)]
                    tf = {b: cell[cell.backend == b].tflops.iloc[0] if (cell.backend == b).any() else None
                          for b in backends}
                    text = " | ".join("–" if tf[b] is None else f"{tf[b]:.0f}" for b in backends)
                    rows.append(f"| {mode} | {dim} | {'yes' if causal else 'no'} | {n} | {text} | "
                                f"{tf['triton_fa2'] / tf['sdpa_flash']:.2f}× |")
    assert len(rows) == 24
    assert missing_rows(rows) == []


def test_h100_fa2_earlier_sentence_is_its_run():
    """The earlier `fa2_h100` sentence under the H100 table (that table's kernels): D128 against sdpa_flash, cuDNN
    and flex, from the run it was measured in, kept as the earlier side of the gate that replaced it."""
    d = frame_at("evidence/h100/fa2_gate_gluon_bwd/before")
    d = d[(d.status == "ok") & (d.head_dim == 128)]
    p = d.pivot_table(index=["mode", "causal", "seq_len_q"], columns="backend", values="tflops")

    def ratios(peer, mode, causal, ns):
        return [p.loc[(mode, causal, n), "triton_fa2"] / p.loc[(mode, causal, n), peer] for n in ns]

    big = (4096, 8192, 16384)
    every = sorted({n for (_, _, n) in p.index})
    flash_c = " / ".join(f"{r:.2f}×" for r in ratios("sdpa_flash", "fwd", True, big))
    flash_nc = " / ".join(f"{r:.2f}×" for r in ratios("sdpa_flash", "fwd", False, big))
    cudnn_c = span(ratios("sdpa_cudnn", "fwd", True, big))
    flex = span(ratios("flex", "fwd", True, every) + ratios("flex", "fwd", False, every))
    fb_flash = span(ratios("sdpa_flash", "fwd_bwd", True, big) + ratios("sdpa_flash", "fwd_bwd", False, big))
    fb_cudnn = span(ratios("sdpa_cudnn", "fwd_bwd", True, big) + ratios("sdpa_cudnn", "fwd_bwd", False, big))
    assert "`results/evidence/h100/fa2_gate_gluon_bwd/before/`" in README
    assert missing_phrases([
        f"forward {flash_c} sdpa_flash causal at N = 4k / 8k / 16k and {flash_nc} non-causal",
        f"ahead of `sdpa_cudnn` there ({cudnn_c}×)",
        f"ahead of `flex` everywhere ({flex}×)",
        f"fwd_bwd {fb_flash}× sdpa_flash and {fb_cudnn}× sdpa_cudnn",
    ]) == []


def test_h100_fa2_sentence_is_the_baseline():
    """The sentence on the H100 `fa2` baseline: ratios to cuDNN by head dim, mode and causality, the clock
    and the spread it names, the N 1k causal fwd_bwd against sdpa_flash, and peak memory (from 4k one chunk of the
    dQ accumulator; below, chunks of short programs hold more pairs)."""
    d = ok("h100", "fa2")
    p = d.pivot_table(index=["head_dim", "mode", "causal", "seq_len_q"], columns="backend", values="tflops")
    to_cudnn = p.triton_fa2 / p.sdpa_cudnn

    def r(head_dim, mode, causal, lo=0):
        cells = to_cudnn.loc[(head_dim, mode, causal)]
        return cells[cells.index >= lo]

    fb128c = r(128, "fwd_bwd", True)
    fb64 = list(r(64, "fwd_bwd", True)) + list(r(64, "fwd_bwd", False))
    slow = one(d, backend="triton_fa2", head_dim=128, mode="fwd", causal=False, seq_len_q=16384)
    cudnn_16k = one(d, backend="sdpa_cudnn", head_dim=128, mode="fwd", causal=False, seq_len_q=16384)
    fb = d[d["mode"] == "fwd_bwd"]
    peak = {b: fb[fb.backend == b].peak_hbm_bytes / 2**20 for b in ("triton_fa2", "sdpa_cudnn")}
    ours = fb[fb.backend == "triton_fa2"]
    long, short = (ours[cond].peak_hbm_bytes / 2**20 for cond in (ours.seq_len_q >= 4096, ours.seq_len_q < 4096))
    flash_1k = (p.loc[(128, "fwd_bwd", True, 1024), "triton_fa2"] / p.loc[(128, "fwd_bwd", True, 1024), "sdpa_flash"])
    assert missing_phrases([
        f"fwd_bwd {span(r(128, 'fwd_bwd', False))}× at D = 128 non-causal (N 1k–16k), "
        f"{fb128c.loc[1024]:.2f}× causal at 1k and {span(fb128c[fb128c.index >= 2048])}× from 2k, {span(fb64)}× at D = 64",
        f"the forward at D = 128 causal {span(r(128, 'fwd', True, 4096))}× from 4k but non-causal "
        f"{span(r(128, 'fwd', False))}× (our 16k row ran at {slow.sm_clock_mhz:,.0f} MHz against cuDNN's "
        f"{cudnn_16k.sm_clock_mhz:,.0f}, and its samples spread over {slow.p20_ms:.2f}–{slow.p80_ms:.2f} ms)",
        f"at D = 64 from 4k {span(r(64, 'fwd', False, 4096))}× non-causal and {span(r(64, 'fwd', True, 4096))}× causal",
        f"fwd_bwd D = 128 causal N 1k: {flash_1k:.2f}× `sdpa_flash`",
        f"Peak memory is {span(long, '{:.0f}')} MiB above the inputs from N 4k and {span(short, '{:.0f}')} at "
        f"N 1k–2k, against cuDNN's {span(peak['sdpa_cudnn'], '{:.0f}')}",
    ]) == []


def test_backend_order_figures_are_the_evidence_runs():
    """The known limit on a case's backend order and the sentence under the H100 fa2 baseline: the D128 N 4k
    forward of the four order runs (cuDNN first, ours first; each with the 25 ms and the 1 s warm-up)."""
    def tflops(run, backend):
        d = frame_at(f"evidence/h100/backend_order/{run}")
        return one(d, backend=backend, seq_len_q=4096).tflops

    first = {run: frame_at(f"evidence/h100/backend_order/{run}").backend.iloc[0] for run in "abcd"}
    assert first == {"a": "sdpa_cudnn", "b": "triton_fa2", "c": "sdpa_cudnn", "d": "triton_fa2"}
    ratio = {run: tflops(run, "triton_fa2") / tflops(run, "sdpa_cudnn") for run in "abcd"}
    assert missing_phrases([
        f"`sdpa_cudnn` ran at {tflops('a', 'sdpa_cudnn'):.0f} TFLOP/s timed first and {tflops('b', 'sdpa_cudnn'):.0f} "
        f"timed second, `triton_fa2` at {tflops('b', 'triton_fa2'):.0f} and {tflops('a', 'triton_fa2'):.0f}, so their "
        f"ratio was {ratio['a']:.2f}× or {ratio['b']:.2f}× by the order alone ({ratio['c']:.2f}× or {ratio['d']:.2f}× "
        "with a 1 s warm-up)",
        f"timed first, the same forward measured {tflops('b', 'triton_fa2'):.0f} TFLOP/s at N 4k against cuDNN's "
        f"{tflops('b', 'sdpa_cudnn'):.0f} timed second ({ratio['b']:.2f}×)",
    ]) == []


def test_rotated_rounds_figures_are_the_h100_fa2_baseline():
    """The known limit's sentence on the rotation: the D128 non-causal N 4k forward's ratio to cuDNN in each of the
    baseline's three rounds (round r starts each case with its r-th backend), by our forward's place; and over the
    whole sweep, the largest departure of any backend's geometric-mean round median at one place from its own
    medians."""
    run = run_at("baselines/h100/fa2")
    order = run.meta["backends"]
    assert run.meta["rounds"] == 3 and order == ["sdpa_flash", "sdpa_cudnn", "triton_fa2"]
    d = frame("h100", "fa2")

    rounds = {b: record_at("baselines/h100/fa2", b, head_dim=128, mode="fwd", causal=False,
                           seq_len_q=4096).round_medians_ms for b in ("triton_fa2", "sdpa_cudnn")}
    ratio = [c / ours for ours, c in zip(rounds["triton_fa2"], rounds["sdpa_cudnn"])]
    place = [rotated(order, r).index("triton_fa2") for r in range(3)]
    assert place == [2, 1, 0]  # third, second, first
    ours = one(d, backend="triton_fa2", head_dim=128, mode="fwd", causal=False, seq_len_q=4096)
    theirs = one(d, backend="sdpa_cudnn", head_dim=128, mode="fwd", causal=False, seq_len_q=4096)
    # every backend's round medians against its own median, by place, in the geometric mean of a mode's cases
    logs = {}
    for rec in run.records:
        mid = statistics.median(rec.round_medians_ms)
        for r, ms in enumerate(rec.round_medians_ms):
            key = (rec.backend, rotated(order, r).index(rec.backend), rec.case.mode)
            logs.setdefault(key, []).append(math.log(ms / mid))
    assert {len(v) for v in logs.values()} == {20}
    worst = max(abs(math.exp(sum(v) / len(v)) - 1) for v in logs.values())
    assert missing_phrases([
        f"at N 4k our D128 forward measured {ratio[0]:.2f}×, {ratio[1]:.2f}× and {ratio[2]:.2f}× cuDNN's timed "
        f"third, second and first, {theirs.median_ms / ours.median_ms:.2f}× from the median of the rounds",
        f"no backend's time at any place, in the geometric mean of a mode's 20 cases, was more than "
        f"{100 * worst:.1f}% off",
    ]) == []


def test_h200_decode_batches_table_is_the_baseline():
    """'Measured on an H200': the decode_batches table, GB/s, ratios and % of the sweep's fastest call."""
    d = ok("h200", "decode_batches")
    roof = d.hbm_gbps.max()
    assert f"`% roof` against {roof:,.0f} GB/s" in README_FLAT

    def gbps(backend, b, n, q, layout, page):
        cell = d[(d.backend == backend) & (d.batch == b) & (d.seq_len_kv == n) & (d.seq_len_q == q)
                 & (d.kv_layout == layout) & (d.page_size == page)]
        return None if cell.empty else cell.hbm_gbps.iloc[0]

    def cell(x):
        return "–" if x is None else f"{x:,.0f}"

    rows = []
    for b in (1, 8, 64):
        for n in (4096, 32768, 131072):
            for q in (1, 4):
                contiguous = gbps("triton_decode", b, n, q, "contiguous", 0)
                paged = [gbps("triton_decode", b, n, q, "paged", page) for page in (16, 256)]
                cudnn, flash = gbps("sdpa_cudnn", b, n, q, "contiguous", 0), gbps("sdpa_flash", b, n, q, "contiguous", 0)
                sdpa = [x for x in (cudnn, flash) if x is not None]
                vs_sdpa = f"{contiguous / max(sdpa):.2f}×" if sdpa else "–"
                vs_contiguous = span([x / contiguous for x in paged if x is not None]) if paged[0] else "–"
                rows.append(f"| {b} | {n // 1024}k | {q} | {cell(contiguous)} | {cell(paged[0])} | {cell(paged[1])} | "
                            f"{cell(cudnn)} | {cell(flash)} | {vs_sdpa} | {vs_contiguous} | {100 * contiguous / roof:.0f} |")
    assert missing_rows(rows) == []


UNIFORM = "uniform(1024..32768,seed=0)"  # the decode sweep's length distribution


def decode_gbps(d, backend, b, n, lengths, layout, page, heads=32, q=1):
    """One decode row's GB/s in run frame ``d`` (None where the backend has no ok row)."""
    cell = d[(d.backend == backend) & (d.batch == b) & (d.seq_len_kv == n) & (d.lengths == lengths)
             & (d.kv_layout == layout) & (d.page_size == page) & (d.heads == heads) & (d.seq_len_q == q)]
    return None if cell.empty else cell.hbm_gbps.iloc[0]


def decode_sweep_rows(d, roof: float) -> list[str]:
    """The README's rows for the decode sweep (32 heads, one new token), its last column against ``roof``."""
    def cell(x):
        return "–" if x is None else f"{x:,.0f}"

    rows = []
    for b, n, lengths in [(1, 4096, ""), (1, 32768, ""), (1, 131072, ""), (1, 32768, UNIFORM), (32, 4096, ""),
                          (32, 32768, ""), (32, 32768, UNIFORM), (256, 4096, "")]:
        contiguous = decode_gbps(d, "triton_decode", b, n, lengths, "contiguous", 0)
        paged = [decode_gbps(d, "triton_decode", b, n, lengths, "paged", page) for page in (16, 256)]
        cudnn = decode_gbps(d, "sdpa_cudnn", b, n, lengths, "contiguous", 0)
        flash = decode_gbps(d, "sdpa_flash", b, n, lengths, "contiguous", 0)
        best = max(x for x in (cudnn, flash) if x is not None)
        cache = "uniform 1k–32k" if lengths else f"{n // 1024}k"
        rows.append(f"| {b} | {cache} | {cell(contiguous)} | {cell(paged[0])} | {cell(paged[1])} | {cell(cudnn)} | "
                    f"{cell(flash)} | {contiguous / best:.2f}× | {100 * contiguous / roof:.0f} |")
    return rows


DECODE_KEY = ["heads", "seq_len_q", "batch", "seq_len_kv", "lengths"]


def decode_contiguous_and_paged_ratio(d):
    """``triton_decode``'s contiguous GB/s by DECODE_KEY, and each paged row's GB/s over its contiguous one."""
    ours = d[d.backend == "triton_decode"]
    contiguous = ours[ours.kv_layout == "contiguous"].set_index(DECODE_KEY).hbm_gbps
    paged = ours[ours.kv_layout == "paged"].set_index(DECODE_KEY + ["page_size"]).hbm_gbps
    return contiguous, paged / contiguous.reindex(paged.index.droplevel("page_size")).values


def test_h200_decode_table_is_the_baseline():
    """The wider decode sweep's table (32 heads, one new token) and the paged-cache sentence under it."""
    d = ok("h200", "decode")
    roof = d.hbm_gbps.max()
    assert f"`% roof` against {roof:,.0f} GB/s" in README_FLAT
    assert missing_rows(decode_sweep_rows(d, roof)) == []

    # paged against contiguous, triton_decode: every one-token row, and four new tokens at 64 heads
    _, ratio = decode_contiguous_and_paged_ratio(d)
    one_token = ratio[ratio.index.get_level_values("seq_len_q") == 1]
    four_64 = ratio[(ratio.index.get_level_values("seq_len_q") == 4) & (ratio.index.get_level_values("heads") == 64)]
    assert missing_phrases([f"in every one-token row ({span(one_token)}), {span(four_64)} with four new tokens"]) == []


def test_h100_decode_table_is_the_baseline():
    """The decode sweep's H100 table (32 heads, one new token), read against the H100's measured streaming read,
    and the sentences under it."""
    import json

    d = ok("h100", "decode")
    ceilings = json.loads((ROOT / "results" / "evidence" / "h100" / "ceilings" / "ceilings.json").read_text())
    read = ceilings["read_gbps"]
    assert f"streaming read of {read:,.0f} GB/s" in README_FLAT
    assert missing_rows(decode_sweep_rows(d, read)) == []

    b1_varied = d[(d.backend == "sdpa_cudnn") & (d.batch == 1) & (d.lengths == UNIFORM) & (d.kv_layout == "contiguous")
                  & (d.seq_len_q == 1)].hbm_gbps
    contiguous, ratio = decode_contiguous_and_paged_ratio(d)

    def to_cudnn(b, n, lengths, heads):
        return (decode_gbps(d, "triton_decode", b, n, lengths, "contiguous", 0, heads=heads)
                / decode_gbps(d, "sdpa_cudnn", b, n, lengths, "contiguous", 0, heads=heads))

    faster = [to_cudnn(1, 32768, UNIFORM, h) for h in (32, 64)]
    b32_4k = [to_cudnn(32, 4096, "", h) for h in (32, 64)]
    # "the one contiguous row behind": every other one-token contiguous row is at or above the best SDPA backend
    sdpa = d[d.backend.isin(["sdpa_cudnn", "sdpa_flash"]) & (d.kv_layout == "contiguous") & (d.seq_len_q == 1)]
    best_sdpa = sdpa.groupby(DECODE_KEY).hbm_gbps.max()
    ahead = contiguous.reindex(best_sdpa.index) / best_sdpa
    behind = ahead[ahead < 1]
    assert sorted(set(zip(behind.index.get_level_values("batch"), behind.index.get_level_values("seq_len_kv")))) == [(32, 4096)]
    assert missing_phrases([
        f"it reads {span(b1_varied, '{:,.0f}')} GB/s there (`triton_decode` is {span(faster)}× faster)",
        f"within 10% of its contiguous one ({span(ratio)};",
        f"B32 4k is again the one contiguous row behind cuDNN ({span(b32_4k)}×)",
    ]) == []
    assert ratio.min() >= 0.9


def test_h200_varlen_table_is_the_baseline():
    """Packed batches, MHA: TFLOP/s per backend and `triton_fa2` ÷ `sdpa_flash`; the GQA ranges below it."""
    d = ok("h200", "varlen")
    mha = d[d.kv_heads == d.heads]
    labels = {"uniform(128..8192,seed=0)": "uniform 128–8k", "lognormal(128..8192,seed=0)": "lognormal 128–8k",
              "list(128,512,2048,8192)": "128, 512, 2k, 8k repeated", "": "equal 2048"}
    rows = []
    for lengths, label in labels.items():
        for causal in (False, True):
            for mode in ("fwd", "fwd_bwd"):
                cell = mha[(mha.lengths == lengths) & (mha.causal == causal) & (mha["mode"] == mode)]
                tf = {b: one(cell, backend=b).tflops for b in ("triton_fa2", "torch_varlen", "sdpa_flash", "flex")}
                rows.append(f"| {label} ({cell.batch.iloc[0]}) | {'yes' if causal else 'no'} | {mode} | "
                            f"{tf['triton_fa2']:.0f} | {tf['torch_varlen']:.0f} | {tf['sdpa_flash']:.0f} | {tf['flex']:.0f} | "
                            f"{tf['triton_fa2'] / tf['sdpa_flash']:.2f}× |")
    assert missing_rows(rows) == []
    gqa = d[d.kv_heads < d.heads]
    fa2 = span(gqa[gqa.backend == "triton_fa2"].tflops, "{:.0f}")
    flex = span(gqa[gqa.backend == "flex"].tflops, "{:.0f}")
    assert missing_phrases([f"`triton_fa2` runs at {fa2} TFLOP/s and `flex` at {flex}"]) == []


def test_h200_window_table_is_the_baseline():
    """Sliding windows: `triton_fa2` window / full causal TFLOP/s, their ratio, and `flex`'s pair."""
    d = ok("h200", "window")
    prefixes = []
    for n in sorted(d.seq_len_q.unique()):
        for mode in ("fwd", "fwd_bwd"):
            cell = d[(d.seq_len_q == n) & (d["mode"] == mode)]
            ours_w, ours_f = (one(cell, backend="triton_fa2", window_left=w).tflops for w in (4096, -1))
            flex_w, flex_f = (one(cell, backend="flex", window_left=w).tflops for w in (4096, -1))
            prefixes.append((f"| {n // 1024}k ({cell.batch.iloc[0]}) | {mode} | {ours_w:.0f} / {ours_f:.0f} | "
                             f"{ours_w / ours_f:.2f} |", f"| {flex_w:.0f} / {flex_f:.0f} |"))
    lines = [line for line in README_LINES if line.startswith("| ") and "k (" in line]
    for prefix, flex in prefixes:
        assert any(line.startswith(prefix) and flex in line for line in lines), prefix


def test_h200_fa2_known_limits_are_the_baseline():
    """'Known limits': `triton_fa2` against `sdpa_cudnn` at N ≥ 4k and against `sdpa_flash` at every N."""
    d = ok("h200", "fa2")
    p = d.pivot_table(index=["head_dim", "mode", "causal", "seq_len_q"], columns="backend", values="tflops").reset_index()
    p["cudnn"] = p.triton_fa2 / p.sdpa_cudnn
    p["flash"] = p.triton_fa2 / p.sdpa_flash
    big = p[p.seq_len_q >= 4096]

    def vs_cudnn(dim, mode, causal=None):
        cells = big[(big.head_dim == dim) & (big["mode"] == mode)]
        return span(cells.cudnn if causal is None else cells[cells.causal == causal].cudnn)

    n1k = d[(d.head_dim == 128) & (d.seq_len_q == 1024) & d.causal & (d["mode"] == "fwd_bwd")]
    ours, flash = one(n1k, backend="triton_fa2"), one(n1k, backend="sdpa_flash")
    fb = d[(d.backend == "triton_fa2") & (d["mode"] == "fwd_bwd")]
    assert missing_phrases([
        f"forward D = 64 {vs_cudnn(64, 'fwd', False)}× non-causal and {vs_cudnn(64, 'fwd', True)}× causal",
        f"D = 128 {vs_cudnn(128, 'fwd', False)}× non-causal and {vs_cudnn(128, 'fwd', True)}× causal; "
        f"fwd_bwd D = 64 {vs_cudnn(64, 'fwd_bwd')}×, D = 128 {vs_cudnn(128, 'fwd_bwd', False)}× "
        f"non-causal and {vs_cudnn(128, 'fwd_bwd', True)}× causal",
        f"the forward is {span(p[p['mode'] == 'fwd'].flash)}× ahead and fwd_bwd "
        f"{span(p[p['mode'] == 'fwd_bwd'].flash)}× at every cell",
        f"fwd_bwd peak memory {span(fb.peak_hbm_bytes / 2**20, '{:.0f}')} MiB above the inputs",
        f"{ours.tflops / flash.tflops:.2f}× `sdpa_flash` in this sweep",
        f"the host took {ours.host_ms:.2f} ms a call in this sweep against {ours.median_ms:.2f} ms of GPU time "
        f"({'flagged' if ours.launch_bound else 'not flagged'} `launch_bound`",
    ]) == []


def _d256_ratios(d):
    p = d.pivot_table(index=["mode", "causal", "seq_len_q"], columns="backend", values="tflops").reset_index()
    p["cudnn"] = p.triton_fa2 / p.sdpa_cudnn
    p["flash"] = p.triton_fa2 / p.sdpa_flash
    return p


def test_h200_fa2_d256_is_the_baseline():
    """'Known limits', D = 256 on the H200: the baseline's forward and fwd_bwd TFLOP/s and ratios (the Gluon D256
    backward) and its gain over the sweep before it; that sweep's Triton backward and forward."""
    p = _d256_ratios(ok("h200", "fa2_d256"))
    before = _d256_ratios(frame_at("evidence/h200/gluon_bwd_d256/before_sweep"))
    phrases = []
    for d, fwd_words in ((p, "Gluon kernel with 128×64 tiles (the tuner's choice in every cell), "),
                         (before, "its forward ")):
        fwd = d[d["mode"] == "fwd"]
        nc, c = fwd[~fwd.causal], fwd[fwd.causal]
        phrases.append(f"{fwd_words}{span(nc.triton_fa2, '{:.0f}')} TFLOP/s non-causal and "
                       f"{span(c.triton_fa2, '{:.0f}')} causal, {span(nc.cudnn)}× and {span(c.cudnn)}× `sdpa_cudnn`")
    fb = p[p["mode"] == "fwd_bwd"]
    nc, c = fb[~fb.causal], fb[fb.causal]
    gain = fb.set_index(["causal", "seq_len_q"]).triton_fa2 / \
        before[before["mode"] == "fwd_bwd"].set_index(["causal", "seq_len_q"]).triton_fa2
    phrases.append(f"fwd_bwd {span(nc.triton_fa2, '{:.0f}')} TFLOP/s non-causal and {span(c.triton_fa2, '{:.0f}')} "
                   f"causal, {span(nc.cudnn)}× and {span(c.cudnn)}× `sdpa_cudnn`, {span(gain)}× the sweep with the Triton "
                   "backward")
    bfb = before[before["mode"] == "fwd_bwd"]
    phrases.append(f"The sweep with the Triton backward: {span(bfb.triton_fa2, '{:.0f}')} TFLOP/s, "
                   f"{span(bfb.cudnn)}× `sdpa_cudnn` and {span(bfb.flash)}× `sdpa_flash`")
    assert missing_phrases(phrases) == []


def test_h100_fa2_d256_is_the_baseline():
    """'Known limits', D = 256: the H100 sweep with the Gluon D256 backward, its ratios to cuDNN (forward; fwd_bwd
    non-causal and causal), fwd_bwd TFLOP/s and against the sweep before it (the Triton backward), and the peak
    memory of both sweeps and of the peers."""
    p, cudnn = ratios_to("h100", "fa2_d256", 256, "sdpa_cudnn")
    fwd = span([cudnn[k] for k in cudnn.index if k[0] == "fwd"])
    fb = {c: [k for k in cudnn.index if k[0] == "fwd_bwd" and k[1] == c] for c in (False, True)}
    before = frame_at("evidence/h100/gluon_bwd_d256/before_sweep")
    before = before[before.backend == "triton_fa2"].set_index(["mode", "causal", "seq_len_q"]).tflops
    gain = span([p.triton_fa2[k] / before[k] for c in (False, True) for k in fb[c]])

    def peak(rel, backend, n_lo=0, n_hi=1 << 30):
        d = frame_at(rel)
        rows = d[(d.backend == backend) & (d["mode"] == "fwd_bwd") & d.seq_len_q.between(n_lo, n_hi)]
        values = set(rows.peak_hbm_bytes / 2**20)
        assert len(values) == 1, (rel, backend, values)
        return values.pop()
    # from 4k one chunk of the dQ accumulator; at N 1k one launch into a whole one (chunks counted by their work)
    now, short = peak("baselines/h100/fa2_d256", "triton_fa2", 4096), peak("baselines/h100/fa2_d256", "triton_fa2",
                                                                            0, 1024)
    then = peak("evidence/h100/gluon_bwd_d256/before_sweep", "triton_fa2")
    assert missing_phrases([
        f"(`results/baselines/h100/fa2_d256/`, three rounds): forward {fwd}× `sdpa_cudnn`, fwd_bwd "
        f"{span([cudnn[k] for k in fb[False]])}× non-causal and {span([cudnn[k] for k in fb[True]])}× causal;",
        f"fwd_bwd {span([p.triton_fa2[k] for k in fb[False]], '{:.0f}')} TFLOP/s non-causal and "
        f"{span([p.triton_fa2[k] for k in fb[True]], '{:.0f}')} causal, {gain}× the sweep with the Triton backward",
        f"{now:.1f} MiB above the inputs against {then:.1f}",
        f"at N 1k, where the backward now runs one launch, {short:.1f}",
        f"cuDNN {peak('baselines/h100/fa2_d256', 'sdpa_cudnn'):.0f} MiB, `sdpa_flash` "
        f"{peak('baselines/h100/fa2_d256', 'sdpa_flash'):.0f})",
    ]) == []


@pytest.mark.parametrize("gpu, name", [("h100", "default"), ("h100", "fa2"), ("h100", "fa2_d256"), ("h100", "decode"),
                                       ("h200", "default"), ("h200", "fa2"),
                                       ("h200", "fa2_d256"), ("h200", "decode"), ("h200", "decode_batches"),
                                       ("h200", "varlen"), ("h200", "window")])
def test_cited_baselines_exist_and_are_cited(gpu, name):
    """Every baseline these tests read is committed and named in the README."""
    assert (ROOT / "results" / "baselines" / gpu / name / "results.json").is_file()
    assert f"results/baselines/{gpu}/{name}/" in README


DESIGN_FLAT = " ".join((ROOT / "kernels" / "DESIGN.md").read_text().split())


def ratios_to(gpu: str, name: str, head_dim: int, peer: str):
    d = ok(gpu, name)
    p = d[d.head_dim == head_dim].pivot_table(index=["mode", "causal", "seq_len_q"], columns="backend",
                                              values="tflops")
    return p, p.triton_fa2 / p[peer]


def test_design_h100_16k_forward_spread_is_the_baseline():
    """kernels/DESIGN.md, the D128 non-causal N 16k forward on the H100: both backends' samples over the baseline's
    rounds, how many lie within 1% of each one's fastest, and the ratio of the fastest samples."""
    def samples(backend):
        return record_at("baselines/h100/fa2", backend, head_dim=128, mode="fwd", causal=False,
                         seq_len_q=16384).samples_ms
    ours, theirs = samples("triton_fa2"), samples("sdpa_cudnn")

    def near(s):
        return sum(x <= 1.01 * min(s) for x in s)
    phrase = (f"our {len(ours)} samples spread over {min(ours):.2f}–{max(ours):.2f} ms and cuDNN's {len(theirs)} over "
              f"{min(theirs):.2f}–{max(theirs):.2f} ms, {near(theirs)} of cuDNN's within 1% of its fastest and "
              f"{near(ours)} of ours; at its fastest ours is {min(theirs) / min(ours):.2f}× cuDNN's at its fastest")
    assert phrase in DESIGN_FLAT


def test_design_d64_figures_are_the_h200_fa2_baseline():
    """kernels/DESIGN.md, the three-consumer D64 forward: its ratios to cuDNN in the `fa2_h100` sweep."""
    _, r = ratios_to("h200", "fa2", 64, "sdpa_cudnn")
    ns = (4096, 8192, 16384)
    fwd = {causal: " / ".join(f"{r[('fwd', causal, n)]:.2f}" for n in ns) for causal in (False, True)}
    fb = [r[("fwd_bwd", causal, n)] for causal in (False, True) for n in ns]
    phrase = (f"forward {fwd[False]}× `sdpa_cudnn` non-causal at 4k / 8k / 16k and {fwd[True]}× causal, "
              f"fwd_bwd {span(fb)}× (N ≥ 4k)")
    assert phrase in DESIGN_FLAT


def test_design_d256_figures_are_the_h200_fa2_d256_baseline():
    """kernels/DESIGN.md, the D256 forward's TFLOP/s and ratios, and its history line on fwd_bwd: the H200 sweep
    before the Gluon D256 backward."""
    d = frame_at("evidence/h200/gluon_bwd_d256/before_sweep")
    p = d[d.status == "ok"].pivot_table(index=["mode", "causal", "seq_len_q"], columns="backend", values="tflops")
    cudnn = p.triton_fa2 / p.sdpa_cudnn
    flash = p.triton_fa2 / p.sdpa_flash
    ns = (1024, 4096, 16384)
    tf = {c: [f"{p.triton_fa2[('fwd', c, n)]:.0f}" for n in ns] for c in (False, True)}
    rc = {c: ", ".join(f"{cudnn[('fwd', c, n)]:.2f}" for n in ns) for c in (False, True)}
    fb = [k for k in cudnn.index if k[0] == "fwd_bwd"]
    assert f"{tf[False][0]}, {tf[False][1]} and {tf[False][2]} TFLOP/s non-causal at N 1k, 4k, 16k ({rc[False]}× " \
           f"`sdpa_cudnn`), {', '.join(tf[True])} causal ({rc[True]}×)" in DESIGN_FLAT
    assert (f"fwd_bwd at D256 {span([cudnn[k] for k in fb])}× `sdpa_cudnn`, {span([flash[k] for k in fb])}× "
            "`sdpa_flash`") in DESIGN_FLAT


def sustained(case: str) -> dict:
    """``tools/sustained_clock.py``'s summary of one case in results/evidence/h100/sustained_clock/."""
    return json.loads((ROOT / "results/evidence/h100/sustained_clock" / f"{case}.json").read_text())["summary"]


def every_sustained_case() -> list[dict]:
    """Ours against cuDNN (``vs_first``) in every case of results/evidence/h100/sustained_clock/."""
    return [sustained(p.stem)["triton_fa2"]["vs_first"]
            for p in sorted((ROOT / "results/evidence/h100/sustained_clock").glob("*.json"))]


def test_design_sustained_clock_figures_are_the_evidence_runs():
    """kernels/DESIGN.md, "Under sustained load the cell is ahead": ours against cuDNN at a settled clock."""
    nc16k = sustained("B1_H16_N16384_D128_bf16_fwd")["triton_fa2"]["vs_first"]
    nc4k = sustained("B4_H16_N4096_D128_bf16_fwd")["triton_fa2"]["vs_first"]
    c8k = sustained("B2_H16_N8192_D128_bf16_causal_fwd")
    every = every_sustained_case()
    energy, times = [v["mj"] for v in every], [v["ms"] for v in every]
    phrases = [f"At 16k our forward took {nc16k['ms']:.3f} of cuDNN's time, at the same clock, in "
               f"{nc16k['mcycles']:.3f} of its cycles",
               f"At 4k it took {nc4k['ms']:.3f} of cuDNN's time",
               f"Over the {len(times)} forward and fwd_bwd cells measured (N 4k–16k, D64 and D128), ours took "
               f"{span(times)} of cuDNN's time.",
               f"Its energy a call was {span(energy)} of cuDNN's over the cases measured",
               f"in the causal forward at 8k, {c8k['triton_fa2']['sm_clock_mhz']:,.0f} MHz against "
               f"{c8k['sdpa_cudnn']['sm_clock_mhz']:,.0f}, and still {c8k['triton_fa2']['vs_first']['ms']:.2f} of the time"]
    assert [p for p in phrases if p not in DESIGN_FLAT] == []
    assert abs(nc16k["sm_clock_mhz"] - 1) < 0.01  # "at the same clock": within 1%


def test_readme_sustained_clock_figures_are_the_evidence_runs():
    """README, the H100 fa2 paragraph: the settled-clock ratios and the N 1k cell's three separate runs."""
    def vs(case):
        return sustained(case)["triton_fa2"]["vs_first"]["ms"]
    n1k = [record_at(f"evidence/h100/fa2_n1k_three_runs/run{i}", "triton_fa2").tflops /
           record_at(f"evidence/h100/fa2_n1k_three_runs/run{i}", "sdpa_flash").tflops for i in (1, 2, 3)]
    times = [v["ms"] for v in every_sustained_case()]
    phrases = [f"ours took {span(times)} of cuDNN's time over the {len(times)} forward and fwd_bwd cells measured "
               "(N 4k–16k).",
               f"At D = 128 non-causal, 16k, ours takes {vs('B1_H16_N16384_D128_bf16_fwd'):.3f} of cuDNN's time at the "
               f"same clock and power; at 4k, {vs('B4_H16_N4096_D128_bf16_fwd'):.3f}. At D = 64 causal, 4k, it takes "
               f"{vs('B4_H32_N4096_D64_bf16_causal_fwd'):.3f}.",
               f"fwd_bwd D = 128 causal N 1k cell measured {span(n1k)}× `sdpa_flash` in three separate runs"]
    assert missing_phrases(phrases) == []


def test_readme_settled_warmup_figures_are_the_evidence_run():
    """README, the power-limit bullet: the D128 forward cells swept with a 1.5 s warm-up."""
    rel = "evidence/h100/fa2_settled_warmup"

    def ratio(n, causal):
        return (record_at(rel, "sdpa_cudnn", seq_len_q=n, causal=causal).median_ms /
                record_at(rel, "triton_fa2", seq_len_q=n, causal=causal).median_ms)

    def ratios(causal):
        return " / ".join(f"{ratio(n, causal):.2f}" for n in (4096, 8192, 16384))
    phrase = (f"the D128 forward cells from N 4k measured {ratios(False)}× cuDNN non-causal and {ratios(True)}× causal "
              "(N 4k, 8k, 16k;")
    assert missing_phrases([phrase]) == []
    assert all(r.case.head_dim == 128 and r.case.mode == "fwd" for r in run_at(rel).records)


def cudnn_ratios(rel: str, mode: str = "fwd", least_n: int = 4096) -> list[tuple]:
    """(our speed, our clock, our cycles a call), each against `sdpa_cudnn`'s in the same case, over the run's
    ``mode`` cases from ``least_n``; and cuDNN's clock, last."""
    out = []
    for r in run_at(rel).records:
        if r.backend != "triton_fa2" or r.case.mode != mode or r.case.seq_len_q < least_n:
            continue
        c = record_at(rel, "sdpa_cudnn", **{k: getattr(r.case, k) for k in ("seq_len_q", "head_dim", "causal", "mode")})
        out.append((c.median_ms / r.median_ms, r.sm_clock_mhz / c.sm_clock_mhz,
                    (r.median_ms * r.sm_clock_mhz) / (c.median_ms * c.sm_clock_mhz), c.sm_clock_mhz))
    return out


def test_readme_row_clock_figures_are_the_evidence_runs():
    """README, the H100 fa2 paragraph: each row's SM clock, in the sweep and warmed up for 1.5 s."""
    sweep = cudnn_ratios("evidence/h100/sm_clock_rows/sweep")
    settled = cudnn_ratios("evidence/h100/sm_clock_rows/settled")
    assert len(sweep) == 12 and len(settled) == 9
    phrase = (f"at N ≥ 4k our forward ran at {span([s[1] for s in sweep])} of cuDNN's clock and took "
              f"{span([s[2] for s in sweep])} of its cycles a call, for {span([s[0] for s in sweep])}× its speed. "
              f"Warmed up for 1.5 s, cuDNN's clock fell too ({span([s[3] for s in settled], '{:,.0f}')} MHz) and the "
              f"two came within {span([s[1] for s in settled])} of each other, ours then at "
              f"{span([s[0] for s in settled])}× cuDNN's speed")
    assert missing_phrases([phrase]) == [], phrase


def test_readme_clock_ab_figure_is_the_evidence_run():
    """README, the SM clock bullet: the timings with the clock sampler against without it."""
    lines = (ROOT / "results/evidence/h100/sm_clock_rows/clock_ab.txt").read_text().splitlines()
    ratios = [float(line.split()[-1]) for line in lines if "with/without clock" in line]
    assert len(ratios) == 6
    phrase = (f"the same six tasks with the sampler and without, four interleaved rounds: {span(ratios, '{:.3f}')} "
              "of the time")
    assert missing_phrases([phrase]) == [], phrase
