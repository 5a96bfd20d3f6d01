"""``flashbench profile``: kernels per call, HBM traffic (ncu) against the IO model, roofline.

Also ``env_ceilings``, the body of ``flashbench env --ceilings`` (registered in info_cmd).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from . import app
from .common import EXIT_ENV, backends_option, err, fail, out, print_skips_and_failures, user_errors, write_json

MAX_KERNEL_ROWS = 12
SWEEP_N = "1024,2048,4096,8192"  # --n when --sweep-n is given without it
# where the columns a narrow terminal leaves out of profile's tables can be read
_ELSEWHERE = "a wider terminal shows every column; the figures are in profile.json and results.json"


def _default_out(name: str, sweep: bool) -> Path:
    """results/runs/profile-NAME-TIME; a second profile started within the same second gets -2, -3, ...
    rather than the first one's directory (whose results it would replace)."""
    from ..results.files import held_results

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("results") / "runs" / f"profile{'-sweep' if sweep else ''}-{name or 'config'}-{stamp}"
    path, i = base, 1
    while held_results(path):
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def env_ceilings(fmt: str, refresh: bool) -> None:
    """``flashbench env --ceilings [--refresh]``: exit 3 without a GPU."""
    from dataclasses import asdict

    from ..profile.ceilings import BURST_MS, LOAD_S, NoGpu, READ_BYTES, SUSTAINED_MS, get_ceilings
    from ..profile.datasheet import datasheet_peak
    from ..report.format import fmt_num

    try:
        c, path, cached = get_ceilings(refresh=refresh)
    except NoGpu as e:
        fail(f"{e}; run `flashbench env --ceilings` on a machine with a CUDA GPU", code=EXIT_ENV)
    peak = datasheet_peak(c.gpu_name)
    if fmt == "json":
        write_json({**c.to_dict(), "ridge_flop_per_byte": c.ridge_flop_per_byte,
                    "datasheet": asdict(peak) if peak else None, "cache": str(path), "from_cache": cached})
        return

    def state(clock, power) -> str:
        return f"SM {fmt_num(clock)} MHz, {fmt_num(power)} W" if clock is not None or power is not None else "no NVML"

    def of_sheet(value, sheet_value) -> str:
        return f", {100 * value / sheet_value:.0f}% of the datasheet" if peak else ""

    t = Table(title=escape(f"roofline ceilings of {c.gpu_name}"), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("compute roof: sustained bf16 matmul",
              f"{fmt_num(c.sustained_tflops)} TFLOP/s{of_sheet(c.sustained_tflops, peak and peak.bf16_tflops)} "
              f"(8192³, median {fmt_num(c.sustained_ms)} ms over {SUSTAINED_MS:.0f} ms after {LOAD_S:.0f} s of load; "
              f"{state(c.sustained_sm_clock_mhz, c.sustained_power_w)})")
    t.add_row("burst bf16 matmul (idle GPU)",
              f"{fmt_num(c.burst_tflops)} TFLOP/s{of_sheet(c.burst_tflops, peak and peak.bf16_tflops)} "
              f"(first {BURST_MS:.0f} ms, median {fmt_num(c.burst_ms)} ms; {state(c.burst_sm_clock_mhz, c.burst_power_w)})")
    t.add_row("memory roof: streaming read",
              f"{fmt_num(c.read_gbps)} GB/s{of_sheet(c.read_gbps, peak and peak.hbm_gbps)} "
              f"(bytes read; median {fmt_num(c.read_ms)} ms per {READ_BYTES >> 30} GiB read)")
    t.add_row("device copy (read + written)", f"{fmt_num(c.copy_gbps)} GB/s (median {fmt_num(c.copy_ms)} ms per 1 GiB copy)")
    t.add_row("ridge point", f"{fmt_num(c.ridge_flop_per_byte)} FLOP/byte (sustained compute / read bandwidth)")
    t.add_row("datasheet peak", f"{peak.model}: {fmt_num(peak.bf16_tflops)} TFLOP/s dense bf16, "
              f"{fmt_num(peak.hbm_gbps)} GB/s ({peak.source})" if peak else "this GPU model is not in flashbench's table")
    t.add_row("gpu uuid", c.gpu_uuid)
    t.add_row("measured", f"{c.measured_utc} (torch {c.torch})")
    t.add_row("cache", f"{path} ({'cached; --refresh to measure again' if cached else 'measured now'})")
    out.print(t)
    out.print("[dim]% of peak FLOP/s (pct_peak_flops, profile) refers to the sustained compute roof, % of HBM "
              "(pct_hbm) to the read roof[/]", highlight=False, soft_wrap=True)


def _kernel_tables(report) -> None:
    from ..report.format import fit_table, fmt_num

    for tr in report.traces:
        title = f"{tr.backend} · {tr.case_label}: {tr.kind} per call ({tr.calls} profiled calls)"
        if tr.status != "ok":
            out.print(f"[dim]{escape(f'{title}: {tr.status}: {tr.reason}')}[/]", highlight=False, soft_wrap=True)
            continue
        name = "kernel" if tr.kind == "device kernels" else "CPU operator"

        def build(hidden, tr=tr, title=title, name=name) -> Table:
            t = Table(title=escape(title), box=box.SIMPLE_HEAD, header_style="bold", title_justify="left")
            t.add_column(name)  # a kernel's name wraps (folds), the figures beside it stay whole
            for c in ("count/call", "ms/call", "share"):
                t.add_column(c, justify="right", no_wrap=True)
            for k in tr.rows[:MAX_KERNEL_ROWS]:
                t.add_row(escape(k.short_name), fmt_num(float(k.count_per_call)), fmt_num(k.ms_per_call), _pct(k.share))
            if len(tr.rows) > MAX_KERNEL_ROWS:
                rest = tr.rows[MAX_KERNEL_ROWS:]
                t.add_row(f"… {len(rest)} more", fmt_num(float(sum(r.count_per_call for r in rest))),
                          fmt_num(sum(r.ms_per_call for r in rest)), _pct(sum(r.share for r in rest)))
            t.add_section()
            t.add_row("total", fmt_num(float(tr.launches_per_call)), fmt_num(tr.total_ms_per_call), "100%")
            return t

        out.print(fit_table(build, out.width, wrap={name: 24}))
        out.print(f"[dim]  trace: {escape(str(tr.trace_path))}[/]", highlight=False, soft_wrap=True)


def _traffic_tables(report) -> None:
    from ..model.flops import min_hbm_bytes
    from ..profile.io_model import BACKEND_MODEL, MODEL_TITLES
    from ..report.format import fit_table, fmt_bytes

    columns = ("source", "read", "written", "total", "vs model", "× minimum")
    for case in report.cases():
        recs = [r for r in report.records if r.case == case]
        model = report.models.get(case)
        minimum = min_hbm_bytes(case)
        rows: list[tuple | None] = []  # None: a section break
        if report.ncu_used:
            for r in recs:
                if r.status == "skipped":
                    continue
                tr = next((v for k, v in report.traffic.items() if k.backend == r.backend and k.case == case), None)
                if r.hbm_bytes_read is None or r.hbm_bytes_written is None:
                    why = tr.reason if tr is not None else r.reason or r.status
                    rows.append((escape(f"{r.backend} (ncu)"), "–", "–", "–", f"[dim]{escape(why[:80])}[/]", "–"))
                    continue
                total = r.hbm_bytes_read + r.hbm_bytes_written
                mkey = BACKEND_MODEL.get(r.backend)
                vs = f"{total / model[mkey].total:.2f}× {mkey}" if model and mkey else "–"
                nk = f", {len(tr.kernels)} kernels" if tr is not None else ""
                rows.append((escape(f"{r.backend} (ncu{nk})"), fmt_bytes(r.hbm_bytes_read),
                             fmt_bytes(r.hbm_bytes_written), fmt_bytes(total), escape(vs), f"{total / minimum:.2f}"))
            rows.append(None)
        if model:
            for key, tv in model.items():
                rows.append((f"model: {MODEL_TITLES[key]}", fmt_bytes(tv.read), fmt_bytes(tv.written),
                             fmt_bytes(tv.total), "", f"{tv.total / minimum:.2f}"))
        else:  # io_model's cases: dense forward without a window
            why = ("forward only; this case has a backward" if case.mode != "fwd" else
                   f"dense attention only; this case is {case.workload}" if case.workload != "dense" else
                   "no sliding window in the model")
            rows.append((f"model: ({why})", "–", "–", "–", "", ""))
        rows.append(("minimum: Q, K, V read, O written once", "", "", fmt_bytes(minimum), "", "1.00"))

        def build(hidden, case=case, rows=rows) -> Table:
            t = Table(title=escape(f"HBM traffic per call · {case.label()}"), box=box.SIMPLE_HEAD, header_style="bold",
                      title_justify="left")
            shown = [i for i, c in enumerate(columns) if c not in hidden]
            for i in shown:
                # the source and the comparison with the model wrap; byte counts are never cut
                t.add_column(columns[i], justify="left" if columns[i] == "source" else "right",
                             no_wrap=columns[i] not in ("source", "vs model"))
            for row in rows:
                if row is None:
                    t.add_section()
                else:
                    t.add_row(*(row[i] for i in shown))
            return t

        # the source, the total and its multiple of the minimum stay at any width
        out.print(fit_table(build, out.width, optional=["vs model", "read", "written"],
                            wrap={"source": 16, "vs model": 12}, elsewhere=_ELSEWHERE))
    out.print(f"[dim]IO model: M = {report.smem_bytes:,} bytes of shared memory per SM ({escape(report.smem_source)}); "
              "formulas in flashbench/profile/io_model.py[/]", highlight=False, soft_wrap=True)


def _roofline_table(report) -> None:
    from ..profile.datasheet import datasheet_peak
    from ..report.format import fit_table, fmt_bytes, fmt_num

    c = report.ceilings
    title = "roofline" + (f" · roof: {c.compute_tflops:.0f} TFLOP/s sustained bf16 matmul, {c.memory_gbps:.0f} GB/s "
                          f"streaming read, ridge {c.ridge_flop_per_byte:.0f} FLOP/B" if c else " · no ceilings")
    peaks = {p for r in report.records if (p := datasheet_peak(r.device_name))}
    for p in peaks:
        title += f" · datasheet {p.model}: {p.bf16_tflops:.0f} TFLOP/s, {p.hbm_gbps:.0f} GB/s"
    recs = {(r.backend, r.case.label()): r for r in report.records}
    columns = ("backend", "case", "median ms", "TFLOP/s", "bytes", "bytes from", "FLOP/B", "roof TFLOP/s", "% of roof",
               "% of datasheet", "bound")

    def build(hidden) -> Table:
        t = Table(title=escape(title), box=box.SIMPLE_HEAD, header_style="bold", title_justify="left")
        shown = [col for col in columns if col not in hidden]
        for col in shown:
            t.add_column(col, justify="left" if col in ("backend", "case", "bytes from", "bound") else "right",
                         no_wrap=col not in ("case", "bytes from"))
        for p in report.points:
            r = recs.get((p.backend, p.case_label))
            cells = dict(zip(columns, (
                escape(p.backend), escape(p.case_label), fmt_num(r.median_ms if r else None), fmt_num(p.tflops),
                fmt_bytes(p.bytes), escape(p.basis), fmt_num(p.intensity), fmt_num(p.attainable_tflops),
                fmt_num(p.pct_of_roof), fmt_num(p.pct_of_datasheet), escape(p.bound))))
            t.add_row(*(cells[col] for col in shown))
        return t

    # the backend, the case, its time and TFLOP/s stay at any width
    out.print(fit_table(build, out.width, optional=["% of datasheet", "roof TFLOP/s", "FLOP/B", "bytes from", "bound",
                                                    "% of roof", "bytes"], wrap={"bytes from": 10, "case": 16},
                        elsewhere=_ELSEWHERE))
    above = [p for p in report.points if p.above_roof]
    if above:
        names = ", ".join(f"{p.backend} {p.case_label}" for p in above[:5]) + (f" and {len(above) - 5} more" if len(above) > 5 else "")
        out.print(f"[yellow]warning:[/] {escape(names)}: {escape(above[0].note)}", highlight=False, soft_wrap=True)
    for note in dict.fromkeys(p.note for p in report.points if p.note and not p.above_roof):
        out.print(f"[dim]{escape(note)}[/]", highlight=False, soft_wrap=True)
    if report.ceilings_note:
        out.print(f"[dim]{escape(report.ceilings_note)}[/]", highlight=False, soft_wrap=True)


def _sweep_table(rows) -> None:
    """One table per swept case (rows of several cases in one table could not be told apart)."""
    from ..report.format import fit_table, fmt_bytes

    columns = ("backend", "N", "status", "measured", "model standard", "model FA1", "model FA2", "minimum")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)

    def build(hidden, group, sub) -> Table:
        n_name = "cache length" if sub[0]["workload"] == "decode" else "N"
        t = Table(title=escape(f"HBM bytes per call against {n_name} · {group}"), box=box.SIMPLE_HEAD,
                  header_style="bold", title_justify="left")
        shown = [c for c in columns if c not in hidden]
        for col in shown:
            t.add_column(n_name if col == "N" else col, justify="left" if col in ("backend", "status") else "right",
                         no_wrap=True)
        for r in sub:
            cells = dict(zip(columns, (escape(r["backend"]), str(r["n"]), escape(r["status"]), fmt_bytes(r["measured"]),
                                       fmt_bytes(r["standard"]), fmt_bytes(r["fa1"]), fmt_bytes(r["fa2"]),
                                       fmt_bytes(r["minimum"]))))
            t.add_row(*(cells[c] for c in shown))
        return t

    # the measured bytes and the FA2 model beside them stay at any width
    for group, sub in groups.items():
        out.print(fit_table(lambda hidden, group=group, sub=sub: build(hidden, group, sub), out.width,
                            optional=["model FA1", "model standard", "minimum"],
                            elsewhere="a wider terminal shows every column; the figures are in sweep_n.json"))


@contextlib.contextmanager
def _no_figures_is_a_warning():
    """A figure that cannot be drawn (no matplotlib, an unwritable file) costs the figure, not the profile,
    whose results are written by then (as with ``run --plot``)."""
    from ..report.figure_style import PlotError

    try:
        yield
    except PlotError as e:
        err.print(f"[yellow]warning:[/] no figures: {escape(str(e))}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _progress(verbose: bool):
    """What each step says: a line each with --verbose, else one transient status line on a terminal."""
    if verbose:
        yield lambda m: err.print(f"[dim]{escape(m)}[/]", highlight=False)
    elif sys.stderr.isatty():
        with err.status("profiling", spinner="dots") as status:
            yield lambda m: status.update(f"profiling: {escape(m)}")
    else:
        yield lambda m: None


@app.command()
def profile(
    config: Optional[str] = typer.Argument(None, help="YAML file or bundled config name; default: 'default' on a GPU, 'smoke' on a CPU"),
    backends: Optional[str] = typer.Option(None, "--backends", "-b", help="comma-separated backends (overrides the config)"),
    case: Optional[str] = typer.Option(None, "--case", "-c",
                                       help="select cases, e.g. seq_len=4096,head_dim=128,causal=true,mode=fwd (values may list alternatives: seq_len=1024|4096)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default results/runs/profile-NAME-TIME)"),
    calls: int = typer.Option(3, "--calls", min=1, help="calls profiled by torch.profiler after warm-up"),
    plot: bool = typer.Option(False, "--plot", help="write PNG figures (roofline; bytes against N with --sweep-n)"),
    sweep_n: bool = typer.Option(False, "--sweep-n", help="measure HBM traffic over --n sequence lengths and plot bytes against N"),
    n_list: Optional[str] = typer.Option(None, "--n", help=f"sequence lengths for --sweep-n (default {SWEEP_N})"),
    no_ncu: bool = typer.Option(False, "--no-ncu", help="do not run Nsight Compute even if it is on the PATH"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda | cpu (default: the config's, else auto)"),
    max_cases: int = typer.Option(16, "--max-cases", min=1, help="refuse to profile more cases than this"),
    ncu_timeout: float = typer.Option(300.0, "--ncu-timeout", help="seconds allowed to each ncu child process"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print every step and the profiler's own log lines "
                                 "(otherwise they go to profiler.log in the output directory)"),
) -> None:
    """Profile a few cases: kernels per call (torch.profiler trace), HBM bytes (ncu) against the
    FlashAttention IO model, and each backend on the device's roofline."""
    from ..model.case import Task
    from ..model.config import load_config
    from ..profile.ceilings import NoGpu, get_ceilings
    from ..model.filters import parse_case_option
    from ..profile.select import parse_n_list, select_backends, select_cases
    from ..profile.session import run_profile, sweep_rows, sweep_tasks
    from ..results.files import ResultsWriter
    from ..execute.plan import Plan, measure_settings, plan, split_runnable
    from ..execute.session import run_metadata
    from ..model.yaml_input import preview
    from ..results.files import held_results
    from .run_cmd import default_config_name

    if device not in (None, "cuda", "cpu"):
        fail(f"--device: {preview(device)} is not one of cuda, cpu")
    if not (math.isfinite(ncu_timeout) and ncu_timeout > 0):
        fail(f"--ncu-timeout: must be a number of seconds > 0, got {ncu_timeout}")
    if n_list is not None and not sweep_n:  # it would be ignored: the cases would be profiled at their own lengths
        fail("--n lists the sequence lengths of --sweep-n: give --sweep-n too")
    name = config if config is not None else default_config_name()
    with user_errors():
        loaded = load_config(name)
        p = plan(loaded, backends_option(backends), device)
        flt = parse_case_option(case) if case is not None else None
        planned = [t for t in p.runnable] + [r.task() for r in p.skipped]
        all_cases = list(dict.fromkeys(t.case for t in planned))
        chosen = select_cases(all_cases, flt, max_cases, source=loaded.path)
        ns = parse_n_list(SWEEP_N if n_list is None else n_list) if sweep_n else None
        names = select_backends(backends_option(backends) or loaded.config.backends, flt)
        swept = sweep_tasks(chosen, names, ns) if sweep_n else None
        held = held_results(out_dir) if out_dir is not None else None
    if held:  # a profile never replaces a run's (or an earlier profile's) results
        fail(f"--out {out_dir}: it already holds results ({held}): profile into a new directory")
    if p.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail("this config asks for a CUDA device, but none is available (use --device cpu)", code=EXIT_ENV)
    if sweep_n:
        tasks = swept
    else:
        planned_set = set(planned)
        tasks = [Task(c, b) for c in chosen for b in names if Task(c, b) in planned_set]
    directory = out_dir or _default_out(loaded.config.name or Path(loaded.path).stem, sweep_n)
    meta = run_metadata(Plan(loaded, p.device, *split_runnable(tasks, p.device)))
    meta["backends"] = list(names)
    meta["profile"] = {"case_filter": case, "sweep_n": ns, "calls": calls}
    try:
        writer = ResultsWriter(directory, meta)
    except OSError as e:
        fail(f"--out: cannot write results to {directory}: {e}")
    if p.device == "cpu":
        err.print("[yellow]note:[/] no GPU: profiling on the CPU. The kernel table shows CPU operators; "
                  "timings are CPU timings.")
    ceilings, note = None, ""
    if p.device.startswith("cuda"):
        try:
            err.print("ceilings: reading the cache or measuring (bf16 matmul burst and sustained, read and copy "
                      "bandwidth) ...")
            ceilings, path, cached = get_ceilings()
            note = f"ceilings {'from the cache' if cached else 'measured now'}: {path}"
        except NoGpu as e:
            note = str(e)
        except Exception as e:  # noqa: BLE001 - no ceilings is not a reason to lose the profile
            note = f"ceilings not measured: {type(e).__name__}: {e}"
    else:
        note = "no GPU: no roofline ceilings (flashbench env --ceilings measures them on a GPU)"
    with _progress(verbose) as on_event:
        report = run_profile(tasks, p.device, writer, measure_settings(loaded), calls=calls, use_ncu=not no_ncu,
                             trace=not sweep_n, ncu_timeout_s=ncu_timeout, ceilings=ceilings, ceilings_note=note,
                             on_event=on_event, verbose=verbose)
    writer.update_meta(finished=True)
    if not report.ncu_used:
        err.print(f"[yellow]note:[/] {report.ncu_note}: no measured HBM traffic; showing the analytic IO model alone.",
                  highlight=False, soft_wrap=True)
    from ..profile.ncu import PERMISSION_HINT

    if any(PERMISSION_HINT in tr.reason for tr in report.traffic.values()):  # once, whole (the table cuts reasons)
        err.print(f"[yellow]warning:[/] {escape(PERMISSION_HINT)}: no measured HBM traffic", highlight=False,
                  soft_wrap=True)
    from ..results.files import records_frame

    print_skips_and_failures(records_frame(report.records))
    if sweep_n:
        order = {b: i for i, b in enumerate(names)}
        rows = sorted(sweep_rows(report), key=lambda r: (r["group"], order.get(r["backend"], 99), r["n"]))
        _sweep_table(rows)
        from ..report.format import strict_json

        (Path(directory) / "sweep_n.json").write_text(strict_json(rows))  # no NaN literals: any parser reads it
        if plot:
            with _no_figures_is_a_warning():
                from ..profile.plots import plot_traffic_sweep

                groups: dict[str, list[dict]] = {}
                for r in rows:  # one figure per base case (the case with N left free)
                    groups.setdefault(r["group"], []).append(r)
                for i, (label, sub) in enumerate(groups.items()):
                    path = Path(directory) / ("traffic_vs_n.png" if len(groups) == 1 else f"traffic_vs_n_{i}.png")
                    xlabel = "cache length N" if sub[0]["workload"] == "decode" else "sequence length N"
                    report.figures.append(plot_traffic_sweep(sub, path, title=f"HBM bytes per call · {label}", xlabel=xlabel))
    else:
        _kernel_tables(report)
        _traffic_tables(report)
        _roofline_table(report)
        if plot:
            with _no_figures_is_a_warning():
                from ..profile.plots import plot_roofline

                report.figures.append(plot_roofline(report.points, report.ceilings, Path(directory) / "roofline.png",
                                                    title=f"roofline · {loaded.config.name or loaded.path} on {p.device}"))
    for f in report.figures:
        err.print(escape(f"figure: {f}"), highlight=False)
    n_ok = sum(r.status == "ok" for r in report.records)
    err.print(escape(f"{len(report.records)} records ({n_ok} ok) written to {directory}/results.json and results.csv; "
                     "profile.json and traces beside them"), highlight=False)
