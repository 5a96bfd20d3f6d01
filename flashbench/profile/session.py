"""``flashbench profile`` as a library call: selected tasks in, a report and a results directory out.

Per runnable task, in order:
1. :class:`flashbench.measure.measurer.Measurer` measures it exactly as ``flashbench run`` does
   (correctness, peak memory, timing): the record written to ``results.json``/``results.csv``;
2. :func:`flashbench.profile.torch_trace.trace_task` writes its trace and kernel table (not in
   ``--sweep-n``, which is about traffic);
3. with ncu and CUDA, :func:`flashbench.profile.ncu.measure_tasks` measures its DRAM bytes per
   call (one ncu child per backend), which fill the record's ``hbm_bytes_read`` / ``_written``.
Skipped tasks (unsupported backend/case) are written as ``skipped`` records like in ``run``.
``profile.json`` beside the results holds the kernel tables, per-kernel traffic, the IO models
and the roofline points.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..execute.plan import split_runnable
from ..model.flops import min_hbm_bytes
from ..model.case import Case, Task
from ..measure.measurer import MeasureSettings, Measurer
from ..report.format import strict_json
from ..results.files import ResultsWriter
from ..model.schema import Record
from . import ncu as ncu_mod
from .ceilings import Ceilings
from .datasheet import datasheet_peak
from .io_model import io_model
from .roofline import RooflinePoint, roofline_point
from .torch_trace import TraceResult, trace_task


@dataclass
class ProfileReport:
    device: str
    out_dir: Path
    records: list[Record] = field(default_factory=list)
    traces: list[TraceResult] = field(default_factory=list)
    traffic: dict = field(default_factory=dict)          # Task -> TaskTraffic
    ncu_used: bool = False
    ncu_note: str = ""
    smem_bytes: int = 0
    smem_source: str = ""
    models: dict = field(default_factory=dict)           # Case -> {model: Traffic} | None
    ceilings: Ceilings | None = None
    ceilings_note: str = ""
    points: list[RooflinePoint] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def cases(self) -> list[Case]:
        return list(dict.fromkeys(r.case for r in self.records))


def sweep_tasks(cases: list[Case], backend_names: list[str], ns: list[int]) -> list[Task]:
    from .select import with_seq_len

    out = []
    for c in cases:
        for n in ns:
            for b in backend_names:
                out.append(Task(with_seq_len(c, n), b))
    return list(dict.fromkeys(out))


def run_profile(tasks: list[Task], device: str, writer: ResultsWriter, settings: MeasureSettings, *,
                calls: int = 3, use_ncu: bool = True, trace: bool = True, ncu_timeout_s: float = 300.0,
                ceilings: Ceilings | None = None, ceilings_note: str = "",
                on_event: Callable[[str], None] | None = None, verbose: bool = False) -> ProfileReport:
    from .io_model import smem_per_sm

    say = on_event or (lambda msg: None)
    out_dir = Path(writer.dir)
    report = ProfileReport(device=device, out_dir=out_dir, ceilings=ceilings, ceilings_note=ceilings_note)
    report.smem_bytes, report.smem_source = smem_per_sm(device)
    runnable, skipped = split_runnable(tasks, device)
    skipped_by_task = {r.task(): r for r in skipped}
    measurer = Measurer(settings, device)
    measured: dict[Task, Record] = {}
    for t in tasks:  # records are written as they finish (a killed profile keeps them), in task order
        if t in skipped_by_task:
            writer.add(skipped_by_task[t])
            continue
        say(f"measuring {t.backend} {t.case.label()}")
        measured[t] = rec = measurer.measure(t)
        writer.add(rec)
        if trace:
            say(f"tracing {t.backend} {t.case.label()}")
            report.traces.append(trace_task(t, device, out_dir, calls=calls, seed=settings.seed, verbose=verbose))
    report.records = list(writer.records)
    write_profile_json(report)  # a first version, without measured traffic
    ok, why = ncu_mod.ncu_available()
    if not use_ncu:
        ok, why = False, "ncu disabled (--no-ncu)"
    report.ncu_used = ok
    report.ncu_note = why
    if ok:
        to_count = [t for t in runnable if measured[t].status in ("ok", "mismatch")]

        def backend_done(b: str, res: dict) -> None:
            for t, tr in res.items():
                measured[t].hbm_bytes_read, measured[t].hbm_bytes_written = tr.read, tr.written
                report.traffic[t] = tr
            writer.flush(reserialize=True)  # the same Record objects: results files now carry the bytes

        ncu_mod.measure_tasks(to_count, out_dir, seed=settings.seed, timeout_s=ncu_timeout_s,
                              on_backend=lambda b, n: say(f"ncu: {b} ({n} case{'s' if n != 1 else ''})"),
                              on_result=backend_done)
    report.records = list(writer.records)
    for c in report.cases():
        report.models[c] = io_model(c, report.smem_bytes)
    report.points = [roofline_point(r, ceilings, datasheet_peak(r.device_name))
                     for r in report.records if r.status in ("ok", "mismatch")]
    write_profile_json(report)
    return report


def swept_group(case: Case) -> str:
    """The case's label with the length --sweep-n sets left free (``N=var``; decode keeps its new tokens:
    ``N2xvar``): the cases of one figure and one block of the table share it."""
    n = f"N{case.seq_len_q}" if case.seq_len_q == case.seq_len_kv else f"N{case.seq_len_q}x{case.seq_len_kv}"
    free = f"N{case.seq_len_q}xvar" if case.workload == "decode" else "N=var"
    return case.label().replace(f"{n} ", f"{free} ", 1)


def sweep_rows(report: ProfileReport) -> list[dict]:
    """One row per (backend, N) for the bytes-against-N plot and table; ``n`` is the length --sweep-n set
    (:func:`flashbench.profile.select.with_seq_len`: a decode case's cache length, not its new tokens)."""
    rows = []
    for r in report.records:
        c = r.case
        model = report.models.get(c) or {}
        measured = (r.hbm_bytes_read + r.hbm_bytes_written) if r.hbm_bytes_read is not None and r.hbm_bytes_written is not None else None
        rows.append({"backend": r.backend, "n": c.seq_len_kv, "case": c.label(), "group": swept_group(c),
                     "workload": c.workload, "status": r.status,
                     "measured": measured, "read": r.hbm_bytes_read, "written": r.hbm_bytes_written,
                     "standard": model["standard"].total if model else None,
                     "fa1": model["fa1"].total if model else None,
                     "fa2": model["fa2"].total if model else None,
                     "minimum": min_hbm_bytes(c)})
    return rows


NO_IO_MODEL = "no IO model: it describes dense forward attention without a window"


def write_profile_json(report: ProfileReport) -> Path:
    doc = {
        "device": report.device,
        "smem_per_sm_bytes": report.smem_bytes,
        "smem_source": report.smem_source,
        "ncu_used": report.ncu_used,
        "ncu_note": report.ncu_note,
        "ceilings": report.ceilings.to_dict() if report.ceilings else None,
        "ceilings_note": report.ceilings_note,
        "datasheet": [asdict(p) for p in {datasheet_peak(r.device_name) for r in report.records} if p],
        "traces": [{"backend": t.backend, "case": t.case_label, "kind": t.kind, "status": t.status, "reason": t.reason,
                    "trace": t.trace_path, "calls": t.calls,
                    "rows": [{"name": k.name, "count_per_call": k.count_per_call, "ms_per_call": k.ms_per_call,
                              "share": k.share} for k in t.rows]} for t in report.traces],
        "traffic": [{"backend": t.backend, "case": t.case.label(), **tr.to_dict()} for t, tr in report.traffic.items()],
        "io_model": [{"case": c.label(), **({k: {"read": v.read, "written": v.written, "total": v.total}
                                             for k, v in m.items()} if m else {"note": NO_IO_MODEL}),
                      "minimum": min_hbm_bytes(c)} for c, m in report.models.items()],
        "roofline": [p.to_dict() for p in report.points],
    }
    path = report.out_dir / "profile.json"
    path.write_text(strict_json(doc))  # no NaN literals: jq and strict parsers read it
    return path
