"""``flashbench run``: execute a sweep and write a results directory.

Measurements run in isolated worker processes by default (``--executor local``: one worker per
device, ``--devices all|0,1,3`` to shard cases over several GPUs); ``--executor inprocess`` keeps
everything in this process (debugging); ``--executor ray`` runs cases as Ray tasks on a cluster.
``--resume DIR`` finishes an interrupted sweep in place. ``--rounds N`` measures the whole sweep N
times, interleaved, each round in fresh workers (``--executor inprocess``: rounds share this process).
"""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import app
from .common import (EXIT_ENV, backends_option, err, fail, out, print_clock_gaps, print_skips_and_failures, split_list,
                     user_errors, write_machine)


def default_config_name() -> str:
    import torch

    return "default" if torch.cuda.is_available() else "smoke"


def _print_dry_run(sweep, fmt: str = "table") -> None:
    """The plan: on stdout for people (``table``), else its summary and notes on stderr and a
    document of the tasks on stdout (:func:`_dry_run_frame`)."""
    p = sweep.plan
    cases = {t.case for t in p.runnable} | {r.case for r in p.skipped}
    done = f" ({sweep.already_done} already in the results directory)" if sweep.already_done else ""
    rounds = f" in {sweep.rounds} rounds ({sweep.measurements - len(p.skipped)} measurements)" if sweep.rounds > 1 else ""
    skipped = sum(r.status == "skipped" for r in p.skipped)
    failed = f", {len(p.skipped) - skipped} failed before running" if len(p.skipped) > skipped else ""
    console = out if fmt == "table" else err
    console.print(escape(f"{p.loaded.path}: {len(cases)} case{'' if len(cases) == 1 else 's'}, "
                         f"{p.total} case×backend task{'' if p.total == 1 else 's'} on {p.device}{done}: "
                         f"{len(p.runnable)} to run{rounds}, {skipped} skipped{failed}"), highlight=False, soft_wrap=True)
    for note in p.notes:
        console.print(escape(f"  note: {note}"), highlight=False, soft_wrap=True)


def _dry_run_frame(sweep):
    """``run --dry-run --format json|csv|markdown``: a row per task, named as in the results
    (``backend``, the case fields, ``status``: planned, skipped, or error where the backend's
    ``unsupported_reason`` raised; ``reason``)."""
    import pandas as pd

    from ..model.case import CASE_FIELDS

    p = sweep.plan
    rows = [{"backend": t.backend, **t.case.as_dict(), "status": "planned", "reason": ""} for t in p.runnable]
    rows += [{"backend": r.backend, **r.case.as_dict(), "status": r.status, "reason": r.reason} for r in p.skipped]
    return pd.DataFrame(rows, columns=["backend", *CASE_FIELDS, "status", "reason"])


def _print_skips(sweep) -> None:
    for r in sweep.plan.skipped:
        # settled before measuring: skipped, or an error where the backend's unsupported_reason raised
        word = "skip" if r.status == "skipped" else r.status
        out.print(escape(f"  {word} {r.backend:<15} {r.case.label()}: {r.reason}"), highlight=False, soft_wrap=True)


def _kept(writer, sweep) -> str:
    """What a sweep that stopped early leaves in its directory, and how to finish it."""
    if writer.deferred:  # --force stopped before its first row: nothing was replaced
        return f"no record measured; the results already in {sweep.directory} are left as they were"
    return f"{len(writer.records)} finished records kept in {sweep.directory}; {sweep.resume_hint()}"


def _parse_resources(text: str | None) -> dict[str, float]:
    res: dict[str, float] = {}
    for item in split_list(text) or []:
        name, sep, amount = item.partition("=")
        try:
            res[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            fail(f"--ray-resources: {item!r} is not NAME=AMOUNT")
        if not name.strip() or not _amount(res[name.strip()]):
            fail(f"--ray-resources: {item!r} is not NAME=AMOUNT (a finite amount >= 0)")
    return res


def _amount(x: float) -> bool:
    # NaN compares false with everything: `x < 0` would let it through
    return math.isfinite(x) and x >= 0


def _check_numbers(timeout: float, energy_ms: float | None, rounds: int | None, ray_num_gpus: float,
                   ray_group_size: int, ray_max_retries: int) -> None:
    from ..model.config import MAX_ENERGY_MS, MAX_ROUNDS

    if not _amount(timeout):
        fail(f"--timeout: must be a number of seconds >= 0 (0: no limit), got {timeout}")
    if energy_ms is not None and not (_amount(energy_ms) and energy_ms <= MAX_ENERGY_MS):
        fail(f"--energy-ms: must be between 0 and {MAX_ENERGY_MS}")
    if rounds is not None and rounds > MAX_ROUNDS:
        fail(f"--rounds: {rounds} is more rounds than a sweep may have ({MAX_ROUNDS:,})")
    if ray_group_size < 1 or ray_max_retries < 0 or not _amount(ray_num_gpus):
        fail("--ray-group-size must be >= 1, --ray-max-retries and --ray-num-gpus >= 0")


class SweepProgress:
    """One bar over all workers (counts, ETA) and a line per device saying what it is running."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.main = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=err)
        self.devices = Progress(TextColumn("  [cyan]{task.fields[label]:>8}[/] {task.description}"), console=err)
        self.bar = self.main.add_task(self._summary(), total=total)
        self.rows: dict[str, int] = {}
        self.live = Live(Group(self.main, self.devices), console=err, transient=True, refresh_per_second=8) \
            if enabled else None

    def _summary(self) -> str:
        c = self.counts
        return f"sweep [green]{c['ok']} ok[/] [dim]{c['skipped']} skipped[/] [red]{c['failed']} failed[/]"

    def activity(self, label: str, text: str) -> None:
        if label not in self.rows:
            self.rows[label] = self.devices.add_task(text, label=label, total=None)
        else:
            self.devices.update(self.rows[label], description=text)

    def record(self, r) -> None:
        self.counts["ok" if r.status == "ok" else "skipped" if r.status == "skipped" else "failed"] += 1
        self.main.update(self.bar, advance=1, description=self._summary())

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)


def _print_tables(df, loaded, title: str, mix_devices: bool) -> None:
    from ..report.format import run_table

    # rows arrive in completion order, interleaved across devices: show them case by case again
    from ..model.case import CASE_FIELDS
    from ..model.grid import expand_cases

    grid = {tuple(c.as_dict().values()): i for i, c in enumerate(expand_cases(loaded.config, loaded.path))}
    case_keys = list(zip(*(df[c] for c in CASE_FIELDS)))
    order = {b: i for i, b in enumerate(loaded.config.backends)}
    df = df.assign(_case=[grid.get(k, len(grid)) for k in case_keys],
                   _backend=[order.get(b, len(order)) for b in df["backend"]])
    df = df.sort_values(["_case", "_backend"], kind="stable").drop(columns=["_case", "_backend"]).reset_index(drop=True)
    measured = df[df["status"] != "skipped"]
    if measured.empty:  # every row skipped: the skip lines below say why; an empty table says nothing
        return
    names = sorted({n for n in measured["device_name"].dropna() if n})
    ref = loaded.config.reference_backend
    if len(names) > 1 and not mix_devices:
        # only rows measured on the same GPU model are compared in one table
        for name in names:
            out.print(run_table(df[df["device_name"] == name], ref, title=escape(f"{title} — {name}"), width=out.width))
    else:
        out.print(run_table(df, ref, title=escape(title), width=out.width))


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="YAML file or bundled config name (see `flashbench list`); "
                                                      "default: 'default' on a GPU, 'smoke' on a CPU"),
    backends: Optional[str] = typer.Option(None, "--backends", "-b", help="comma-separated backends (overrides the config)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="results directory (default results/runs/NAME-TIME)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="expand the grid, print cases and skips, run nothing"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no table"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | markdown"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda | cpu (default: the config's, else auto)"),
    plot: bool = typer.Option(False, "--plot", help="write PNG figures into the results directory at the end (needs matplotlib)"),
    executor: str = typer.Option("local", "--executor", "-e",
                                 help="local: isolated worker processes, one per device (crashes and hangs become rows); "
                                      "inprocess: measure in this process (debugging); ray: Ray tasks on a cluster"),
    devices: Optional[str] = typer.Option(None, "--devices", help="local executor: GPUs to shard cases over, 'all' or "
                                          "e.g. '0,1,3' (default: one GPU); on a CPU, fake devices (one CPU worker each)"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds one case × backend may take before its worker is "
                                  "killed (a 'timeout' row); 0: no limit. Includes compilation and autotuning"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="finish the interrupted sweep in this results directory "
                                          "(same config and backends): run only the tasks without a row, append their rows"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="with --resume: measure crashed, timeout and error rows again"),
    force: bool = typer.Option(False, "--force", help="replace the results already in the --out directory (without it, "
                               "a directory holding results is refused: finish it with --resume DIR)"),
    mix_devices: bool = typer.Option(False, "--mix-devices", help="one table even when rows come from different GPU models"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (default RAY_ADDRESS, else a local Ray)"),
    ray_num_gpus: float = typer.Option(1.0, "--ray-num-gpus", help="ray: GPUs each task asks for (0 on CPU-only clusters)"),
    ray_resources: Optional[str] = typer.Option(None, "--ray-resources", help="ray: custom resources per task, NAME=AMOUNT,..."),
    ray_group_size: int = typer.Option(1, "--ray-group-size", help="ray: cases per Ray task"),
    ray_max_retries: int = typer.Option(3, "--ray-max-retries", help="ray: retries of a task lost with its worker or node"),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                              help="time CUDA-graph replays of each call, or not (default: the config's "
                                                   "timing.cuda_graph); the L2 is flushed before each replay unless "
                                                   "timing.flush_l2 is false"),
    energy_ms: Optional[float] = typer.Option(None, "--energy-ms",
                                              help="after sampling a row, keep running its call (not as samples) "
                                                   "until NVML's energy counter can be read over it, for at most this "
                                                   "many ms (default: the config's timing.energy_ms, 0: energy only "
                                                   "where the samples cover the counter's steps)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="measure the whole sweep N times, interleaved (round 1 "
                                         "of every task, then round 2, ...), each round in fresh worker processes; "
                                         "one row per task keeps every round (default: the config's `rounds`, 1; "
                                         "3 recommended for baselines)"),
    precompile: bool = typer.Option(True, "--precompile/--no-precompile",
                                    help="compile the Triton kernels of the sweep in parallel processes before measuring "
                                         "(local and inprocess executors)"),
) -> None:
    """Run a benchmark sweep: every case × backend ends as a row (ok, skipped, oom, error, mismatch, crashed, timeout)."""
    from ..execute.session import EnvironmentProblem, RayOptions, SweepRequest, Terminated, prepare_sweep, \
        sigterm_stops_sweep
    from ..report.format import FORMATS, SUMMARY_COLUMNS, format_frame
    from ..results.files import records_frame

    if fmt not in FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    _check_numbers(timeout, energy_ms, rounds, ray_num_gpus, ray_group_size, ray_max_retries)
    request = SweepRequest(
        config=config if config is not None else default_config_name(),  # "" is a name, and a wrong one
        backends=backends_option(backends), device=device, executor=executor,
        devices=devices, timeout_s=timeout or None, out_dir=out_dir, resume=resume, retry_failed=retry_failed,
        force=force, dry_run=dry_run, precompile=precompile, cuda_graph=cuda_graph, energy_ms=energy_ms,
        rounds=rounds,
        ray=RayOptions(address=address, num_gpus=ray_num_gpus, resources=_parse_resources(ray_resources),
                       group_size=ray_group_size, max_retries=ray_max_retries))
    with user_errors():
        try:
            sweep = prepare_sweep(request)
        except EnvironmentProblem as e:
            fail(str(e), code=EXIT_ENV)
    p = sweep.plan
    if dry_run:
        _print_dry_run(sweep, fmt)
        if fmt != "table":
            write_machine(format_frame(_dry_run_frame(sweep), fmt))
        elif not quiet:
            _print_skips(sweep)
        return
    if p.device == "cpu" and not quiet:
        err.print("[yellow]note:[/] no GPU: running on the CPU. CPU timings are not GPU timings.")
    for note in [] if quiet else p.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if sweep.resume is not None:
        for w in sweep.resume.warnings:
            err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        if not quiet:
            err.print(f"resuming {sweep.directory}: {len(sweep.resume.kept)} rows kept"
                      + (f", {len(sweep.resume.dropped)} failed rows measured again" if sweep.resume.dropped else "")
                      + f", {p.total} tasks to go")
    try:
        writer = sweep.open()
    except OSError as e:
        fail(f"--out: cannot write results to {sweep.directory}: {e}")
    show_progress = not quiet and sys.stderr.isatty()
    progress = SweepProgress(sweep.measurements, show_progress)

    def compiling(n: int):
        if quiet or not sys.stderr.isatty():
            return contextlib.nullcontext()
        return err.status(f"compiling kernels: {n} groups in parallel processes", spinner="dots")

    try:
        with sigterm_stops_sweep():
            summary = sweep.precompile(compiling)
            if summary is not None and not quiet:
                err.print(f"compiled kernels for {summary.ok} of {summary.groups} groups in {summary.seconds:.0f} s "
                          f"({summary.processes} processes)"
                          + (f"; {len(summary.failed)} left to the worker" if summary.failed else ""))
            with progress:
                sweep.run(progress.record, progress.activity)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        err.print(f"[yellow]{what}:[/] {escape(_kept(writer, sweep))}", highlight=False,
                  soft_wrap=True)  # one line: the command stays copyable
        raise typer.Exit(143 if isinstance(e, Terminated) else 130)
    except EnvironmentProblem as e:
        fail([str(e), _kept(writer, sweep)], code=EXIT_ENV)
    loaded = p.loaded
    df = records_frame(writer.records)
    if fmt == "table":
        if not quiet:
            title = f"{loaded.config.name or loaded.path} on {writer.meta['environment'].get('gpu_name') or p.device}"
            _print_tables(df, loaded, title, mix_devices)
            print_skips_and_failures(df)
            print_clock_gaps(df, loaded.config.reference_backend)
    else:
        write_machine(format_frame(df[SUMMARY_COLUMNS], fmt))
    for w in writer.meta.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if plot:
        from ..report.plots import PlotError, plot_run_dir

        try:
            for path in plot_run_dir(sweep.directory):
                err.print(escape(f"figure: {path}"), highlight=False)
        except PlotError as e:
            err.print(f"[yellow]warning:[/] no figures: {escape(str(e))}", highlight=False)
    ok = int((df["status"] == "ok").sum())
    skipped = int((df["status"] == "skipped").sum())
    failed = len(df) - ok - skipped
    err.print(escape(f"{len(writer.records)} records ({ok} ok, {skipped} skipped, {failed} failed) "
                     f"written to {sweep.directory}/results.json and results.csv"), highlight=False)
