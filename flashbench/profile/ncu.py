"""Measured HBM (DRAM) traffic per call with Nsight Compute (``ncu``).

How one call is isolated
------------------------
The tasks of one backend run in a child process (:mod:`flashbench.profile.ncu_child`) under::

    ncu --clock-control none --cache-control all --profile-from-start off
        --metrics dram__bytes_read.sum,dram__bytes_write.sum --csv --print-units base
        --target-processes all --launch-count CAP --log-file ncu_<backend>.csv
        python -m flashbench.profile.ncu_child '<json>'

- ``--clock-control none``: ncu must never lock or change the GPU's clocks (shared machines).
- ``--profile-from-start off``: nothing is profiled until the child calls ``cudaProfilerStart``
  (``torch.cuda.profiler.start()``). The child prepares each task, warms it up (compilation,
  Triton autotuning: thousands of launches that must not be replayed), synchronizes, then
  starts the profiler, launches a **marker kernel** (``torch.cuda._sleep``, whose kernel is
  ``at::cuda::spin_kernel``), runs **one** call, synchronizes and stops the profiler.
  Kernels are profiled in launch order, so the kernels between two markers are exactly one
  call of one task; the markers themselves are dropped. A task that fails still emits its
  marker, so the segments stay aligned; a child that dies inside a task leaves one marker more than
  the tasks it finished, whose segments are still whole calls; any other mismatch between markers and
  tasks reports no bytes (never misattributed ones). A kernel whose bytes ncu gave no value for
  ("n/a") makes its task ``no_data``: it is never counted as 0 bytes.
- a timeout kills ncu's whole process group: the profiled child too, which would otherwise keep the
  GPU busy after ncu is gone.
- ``--cache-control all`` (ncu's default, stated): caches are flushed before every kernel, so
  each kernel's DRAM bytes are cold-cache bytes. For small problems whose intermediates would
  stay in L2 (50 MB on H100) this is an upper bound of the traffic of an uninterrupted call.
- ``--launch-count``: a cap on profiled kernels (``CAP_PER_TASK`` per task), so a runaway
  backend cannot make ncu replay for minutes.
- One child per backend: a backend that crashes its process loses only its own numbers.

Parsing
-------
``ncu --csv`` prints one row per (kernel, metric) with the columns ``"ID","Process ID",
"Process Name","Host Name","Kernel Name",...,"Metric Name","Metric Unit","Metric Value"``
(the columns in between vary with the version). Columns are found by name; values may carry
thousands separators; units are ``byte``, ``Kbyte``, ``Mbyte``, ``Gbyte``, ``Tbyte`` (decimal,
ncu's default auto-scaling) or binary ``KiB``-style ones; ``--print-units base`` asks for bytes
(retried without it if an ncu does not know the option).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..model.case import Case, Task

METRIC_READ = "dram__bytes_read.sum"
METRIC_WRITE = "dram__bytes_write.sum"
MARKER_SUBSTRING = "spin_kernel"
CAP_PER_TASK = 64

UNIT_SCALE = {
    "byte": 1, "bytes": 1, "b": 1,
    "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kibyte": 1 << 10, "mibyte": 1 << 20, "gibyte": 1 << 30, "tibyte": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}


class NcuError(Exception):
    """ncu output that cannot be read or attributed."""


@dataclass
class NcuMetric:
    kernel_id: int
    kernel: str
    metric: str
    unit: str
    value: float | None


@dataclass
class KernelTraffic:
    kernel: str
    read: int | None      # None: ncu gave no value ("n/a", missing row): never counted as 0 bytes
    written: int | None

    @property
    def missing(self) -> list[str]:
        return [m for m, v in ((METRIC_READ, self.read), (METRIC_WRITE, self.written)) if v is None]


@dataclass
class TaskTraffic:
    backend: str
    case: dict
    status: str = "ok"         # ok | error | skipped | no_data
    reason: str = ""
    kernels: list[KernelTraffic] = field(default_factory=list)

    @property
    def read(self) -> int | None:
        return _total(k.read for k in self.kernels) if self.status == "ok" else None

    @property
    def written(self) -> int | None:
        return _total(k.written for k in self.kernels) if self.status == "ok" else None

    def to_dict(self) -> dict:
        return {**asdict(self), "read": self.read, "written": self.written}


def _total(values) -> int | None:
    """The sum, or None when any part is unknown: a kernel without a value is not a kernel of 0 bytes."""
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def ncu_path() -> str | None:
    return shutil.which("ncu")


def ncu_available() -> tuple[bool, str]:
    """(usable, why not): ncu on the PATH and a CUDA device."""
    path = ncu_path()
    if not path:
        return False, "ncu (Nsight Compute) is not on the PATH"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device (ncu needs a GPU)"
    except Exception:
        return False, "torch cannot see a CUDA device"
    return True, ""


# ---------------------------------------------------------------------------------------------
# CSV parsing
# ---------------------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text: str) -> float | None:
    t = text.strip().replace("\u202f", "").replace(" ", "")
    if not t or t.lower() in ("n/a", "nan", "-"):
        return None
    if _THOUSANDS.match(t):
        t = t.replace(",", "")
    elif t.count(",") == 1 and "." not in t:  # a decimal comma (some locales)
        t = t.replace(",", ".")
    try:
        return float(t)
    except ValueError:
        return None


def to_bytes(value: float | None, unit: str) -> float | None:
    if value is None:
        return None
    scale = UNIT_SCALE.get(unit.strip().lower())
    if scale is None:
        raise NcuError(f"unknown unit {unit!r} for a byte metric")
    return value * scale


def parse_ncu_csv(text: str) -> list[NcuMetric]:
    """Rows of ``ncu --csv`` (``==PROF==`` and other non-CSV lines around them are skipped)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"') and '"Metric Name"' in ln), None)
    if start is None:
        return []
    body = [ln for ln in lines[start:] if ln.startswith('"')]
    reader = csv.reader(io.StringIO("\n".join(body)))
    header = next(reader)
    col = {name: i for i, name in enumerate(header)}
    for need in ("Kernel Name", "Metric Name", "Metric Value"):
        if need not in col:
            raise NcuError(f"ncu CSV has no {need!r} column (columns: {', '.join(header)})")
    out: list[NcuMetric] = []
    seen_metrics: set[str] = set()
    synthetic_id = -1
    for row in reader:
        if len(row) < len(header):
            continue
        metric = row[col["Metric Name"]]
        if "ID" in col:
            try:
                kid = int(row[col["ID"]].replace(",", ""))
            except ValueError:
                continue
        else:  # no ID column: a new kernel starts when a metric repeats
            if metric in seen_metrics or synthetic_id < 0:
                synthetic_id, seen_metrics = synthetic_id + 1, set()
            seen_metrics.add(metric)
            kid = synthetic_id
        unit = row[col["Metric Unit"]] if "Metric Unit" in col else "byte"
        out.append(NcuMetric(kid, row[col["Kernel Name"]], metric, unit, parse_number(row[col["Metric Value"]])))
    return out


def kernels_in_order(metrics: list[NcuMetric]) -> list[KernelTraffic]:
    """One entry per profiled kernel (by ID, in launch order) with its DRAM bytes; a metric that ncu
    did not give a value for ("n/a", no row, a number it printed in a form not understood) stays None."""
    by_id: dict[int, KernelTraffic] = {}
    for m in metrics:
        k = by_id.setdefault(m.kernel_id, KernelTraffic(m.kernel, None, None))
        if m.metric in (METRIC_READ, METRIC_WRITE):
            b = to_bytes(m.value, m.unit)
            if b is None:
                continue
            if m.metric == METRIC_READ:
                k.read = int(round(b))
            else:
                k.written = int(round(b))
    return [by_id[i] for i in sorted(by_id)]


def split_by_marker(kernels: list[KernelTraffic], n_tasks: int, marker: str = MARKER_SUBSTRING) -> list[list[KernelTraffic]]:
    """Kernels between markers, one list per task. Raises NcuError when the counts disagree."""
    segments: list[list[KernelTraffic]] = []
    for k in kernels:
        if marker in k.kernel:
            segments.append([])
        elif segments:
            segments[-1].append(k)
        elif n_tasks == 1 and not any(marker in x.kernel for x in kernels):
            segments.append([k])  # a single task profiled without a marker
        else:
            raise NcuError(f"kernel {k.kernel!r} was profiled before the first marker")
    if len(segments) != n_tasks:
        raise NcuError(f"found {len(segments)} task markers in the ncu output for {n_tasks} tasks: "
                       "cannot tell which kernel belongs to which task (was --launch-count reached?)")
    return segments


# ---------------------------------------------------------------------------------------------
# running ncu
# ---------------------------------------------------------------------------------------------

def ncu_command(ncu: str, log_file: str, payload: dict, n_tasks: int, print_units: bool = True) -> list[str]:
    cmd = [ncu, "--clock-control", "none", "--cache-control", "all", "--profile-from-start", "off",
           "--metrics", f"{METRIC_READ},{METRIC_WRITE}", "--csv"]
    if print_units:
        cmd += ["--print-units", "base"]
    cmd += ["--target-processes", "all", "--launch-count", str(CAP_PER_TASK * n_tasks + n_tasks),
            "--log-file", log_file, sys.executable, "-m", "flashbench.profile.ncu_child", json.dumps(payload)]
    return cmd


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding the flashbench package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


PERMISSION_ERROR = "ERR_NVGPUCTRPERM"
PERMISSION_HINT = ("ncu may not read this GPU's performance counters (ERR_NVGPUCTRPERM): run as root, or let every "
                   "user read them (NVreg_RestrictProfilingToAdminUsers=0, see https://developer.nvidia.com/ERR_NVGPUCTRPERM)")


def _errors_in(text: str) -> str:
    if PERMISSION_ERROR in text:  # the one ncu error a user must act on outside flashbench: say what to do
        return PERMISSION_HINT
    lines = [ln.strip() for ln in text.splitlines() if "==ERROR==" in ln or "Traceback" in ln or "Error" in ln]
    return " | ".join(lines[-4:])[:600]


def _run_in_own_group(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run ncu in a process group of its own. On timeout the whole group is killed: ncu and the profiled
    child it launched (killing ncu alone would leave a hung child holding the GPU), then
    ``subprocess.TimeoutExpired`` is raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def measure_backend(backend: str, cases: list[Case], out_dir: str | Path, seed: int = 0,
                    warmup: int = 2, timeout_s: float = 300.0) -> list[TaskTraffic]:
    """Run one backend's cases under ncu in one child process; one TaskTraffic per case."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"ncu_{backend}.csv"
    sidecar = out_dir / f"ncu_{backend}.child.json"
    payload = {"backend": backend, "cases": [c.as_dict() for c in cases], "seed": seed, "warmup": warmup,
               "result": str(sidecar)}
    results = [TaskTraffic(backend, c.as_dict(), status="no_data") for c in cases]

    def fail_all(reason: str) -> list[TaskTraffic]:
        for r in results:
            r.status, r.reason = "no_data", reason
        return results

    ncu = ncu_path()
    if ncu is None:
        return fail_all("ncu is not on the PATH")
    proc = None
    for print_units in (True, False):
        for p in (log, sidecar):
            if p.exists():
                p.unlink()
        try:
            proc = _run_in_own_group(ncu_command(ncu, str(log), payload, len(cases), print_units), timeout_s)
        except subprocess.TimeoutExpired:
            return fail_all(f"ncu timed out after {timeout_s:.0f} s (--ncu-timeout)")
        log_text = log.read_text(errors="replace") if log.exists() else ""
        if proc.returncode != 0 and print_units and "print-units" in (proc.stdout + proc.stderr + log_text):
            continue  # an ncu without --print-units: retry with its default units
        break
    log_text = log.read_text(errors="replace") if log.exists() else ""
    child = json.loads(sidecar.read_text()) if sidecar.exists() else {"tasks": []}
    reached = child.get("tasks", [])
    for r, t in zip(results, reached):
        if t.get("status") != "ok":
            r.status, r.reason = t.get("status", "error"), t.get("reason", "")
    try:
        kernels = kernels_in_order(parse_ncu_csv(log_text))
    except NcuError as e:
        return fail_all(f"ncu output not readable: {e}")
    if not reached:
        why = _errors_in(log_text + "\n" + proc.stdout + "\n" + proc.stderr) if proc else ""
        return fail_all(f"the ncu child did not run (exit {proc.returncode if proc else '?'}): {why or 'no output'}")
    if not kernels:
        why = _errors_in(log_text + "\n" + proc.stdout + "\n" + proc.stderr)
        return fail_all(f"ncu profiled no kernel: {why or 'see ' + str(log)}")
    # a child that died inside a case (after that case's marker) leaves one marker more than the cases it
    # finished: the segments before that marker are still whole calls of the cases it finished
    markers = sum(MARKER_SUBSTRING in k.kernel for k in kernels)
    died_inside = len(reached) < len(cases) and markers == len(reached) + 1
    try:
        segments = split_by_marker(kernels, markers if died_inside else len(reached))[:len(reached)]
    except NcuError as e:
        return fail_all(str(e))
    for r, t, seg in zip(results, reached, segments):
        if t.get("status") == "ok":
            r.status, r.kernels = "ok", seg
            missing = [f"{m} of {k.kernel[:60]}" for k in seg for m in k.missing]
            if not seg:
                r.status, r.reason = "no_data", "no kernel was profiled for this call"
            elif missing:
                r.status, r.reason = "no_data", f"ncu gave no value for {', '.join(missing[:3])}" + \
                    (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    stopped = f"(exit {proc.returncode}): " + (_errors_in(proc.stdout + proc.stderr) or "crashed?")
    for i, r in enumerate(results[len(reached):]):
        r.status, r.reason = "no_data", (f"the ncu child died during this case {stopped}" if i == 0 and died_inside
                                         else f"the ncu child stopped before this case {stopped}")
    return results


def measure_tasks(tasks: list[Task], out_dir: str | Path, seed: int = 0, timeout_s: float = 300.0,
                  on_backend=None, on_result=None) -> dict[Task, TaskTraffic]:
    """Group tasks by backend, one ncu child per backend; {task: traffic}.

    ``on_backend(name, n_cases)`` is called before a backend's child starts, ``on_result(name,
    {task: traffic})`` when it has finished."""
    by_backend: dict[str, list[Case]] = {}
    for t in tasks:
        by_backend.setdefault(t.backend, []).append(t.case)
    out: dict[Task, TaskTraffic] = {}
    for backend, cases in by_backend.items():
        if on_backend:
            on_backend(backend, len(cases))
        mine = {Task(case, backend): res
                for case, res in zip(cases, measure_backend(backend, cases, out_dir, seed, timeout_s=timeout_s))}
        out.update(mine)
        if on_result:
            on_result(backend, mine)
    return out
