"""A sweep from request to finished results directory: what ``flashbench run`` does.

:func:`prepare_sweep` turns a :class:`SweepRequest` (what the user asked for) into a
:class:`Sweep`: the config loaded, the plan made, an interrupted run's rows taken into account,
the devices chosen. Nothing is measured yet, so ``--dry-run`` stops there. :meth:`Sweep.open`
creates the results directory, :meth:`Sweep.run` measures and writes every record the moment it
arrives (the files are valid after every row, whatever stops the sweep).

Problems of the user's input raise :class:`~flashbench.model.yaml_input.ConfigError` (exit 2);
problems of the machine raise :class:`EnvironmentProblem` (exit 3).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..measure.environment import collect_environment, gpu_state, nvml_index_of, throttle_warning
from ..measure.gpu_monitor import GpuMonitor, compute_processes
from ..model.config import load_config, with_timing
from ..model.schema import Record
from ..model.yaml_input import ConfigError
from ..results.files import ResultsWriter, held_results, os_error_text
from ..results.rounds import merge_rounds, rounds_to_go
from .devices import DeviceSpec, parse_devices
from .executors import EXECUTORS, Executor, make_executor
from .order import position_warning, round_order
from .plan import Plan, measure_settings, plan
from .resume import Resume, apply_resume, open_resume, results_signature, resumed_meta, resumed_rounds

RecordFn = Callable[[Record], None]
ActivityFn = Callable[[str, str], None]


class EnvironmentProblem(Exception):
    """The machine cannot run this sweep (no GPU, no worker starts, Ray unreachable): exit code 3."""


class DirectoryInUse(OSError):
    """The results directory is being written by another flashbench run, or changed since this one read it
    (the CLI: "--out: cannot write results to DIR: ...", exit 2). Two sweeps writing one directory
    rewrote each other's files: each said "N records written" and one run's rows were gone."""


def lock_directory(directory: Path) -> int | None:
    """Create ``directory`` and hold an exclusive lock on it for this process (``flock`` on the directory
    itself: no lock file is left behind); the descriptor holding it, closed to release. Raise
    :class:`DirectoryInUse` when another process holds it. None where the file system has no locks
    (some network mounts): the sweep goes on unguarded, as before."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryInUse(f"another flashbench run is writing results into {directory}: wait for it to end "
                             f"(or stop it), then finish the sweep with --resume {directory}") from None
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a cancelled CI job, ``kill``): the sweep stops as on Ctrl-C, its workers
    are shut down and the results files keep every finished record."""


@contextlib.contextmanager
def sigterm_stops_sweep():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (where the sweep runs),
    so the executors' clean-up runs as for Ctrl-C; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RayOptions:
    address: str | None = None     # cluster address (None: RAY_ADDRESS, else a local Ray)
    num_gpus: float = 1.0          # GPUs each task asks for
    resources: dict[str, float] = field(default_factory=dict)
    group_size: int = 1            # cases per Ray task
    max_retries: int = 3           # retries of a task lost with its worker or node


@dataclass
class SweepRequest:
    """Everything ``flashbench run`` was asked, already parsed (no defaults left to the CLI)."""

    config: str                          # a YAML path or a bundled config name
    backends: list[str] | None = None    # overrides the config's list
    device: str | None = None            # cuda | cpu; None: the config's, else auto
    executor: str = "local"
    devices: str | None = None           # local executor: "all" or "0,1,3"
    timeout_s: float | None = 600.0      # per case × backend; None: no limit
    out_dir: Path | None = None
    resume: Path | None = None
    retry_failed: bool = False
    force: bool = False                  # replace the results already in out_dir
    dry_run: bool = False                # nothing is measured: the device need not be present
    precompile: bool = True
    cuda_graph: bool | None = None       # overrides the config's timing.cuda_graph
    energy_ms: float | None = None       # overrides the config's timing.energy_ms
    rounds: int | None = None            # whole-sweep repetitions; None: the config's (on --resume: the directory's)
    ray: RayOptions = field(default_factory=RayOptions)


def default_out_dir(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / f"{name or 'sweep'}-{stamp}"


def _check_options(req: SweepRequest) -> None:
    """Combinations of options that cannot work together (ConfigError, exit 2)."""
    problems = []
    if req.executor not in EXECUTORS:
        problems.append(f"--executor: {req.executor!r} is not one of {', '.join(EXECUTORS)}")
    if req.device not in (None, "cuda", "cpu"):
        problems.append(f"--device: {req.device!r} is not one of cuda, cpu")
    if req.devices is not None and req.executor != "local":
        problems.append(f"--devices works with --executor local (the {req.executor} executor "
                        + ("places tasks itself: use --ray-num-gpus / --ray-resources)" if req.executor == "ray"
                           else "uses one device)"))
    if req.executor != "ray" and req.ray != RayOptions():  # any of them given: it would be silently ignored
        problems.append("--address and the --ray-* options need --executor ray")
    if req.retry_failed and req.resume is None:
        problems.append("--retry-failed needs --resume DIR")
    if req.force and req.resume is not None:
        problems.append("--force replaces the results in a directory and --resume DIR finishes them: give one")
    if req.resume is not None and req.out_dir is not None and Path(req.out_dir).resolve() != Path(req.resume).resolve():
        problems.append("--resume DIR writes into DIR: leave out --out (or give the same directory)")
    if req.rounds is not None and req.rounds < 1:
        problems.append(f"--rounds: {req.rounds} is not a number of rounds (1 or more)")
    if problems:
        raise ConfigError(problems)


@dataclass
class Sweep:
    """A prepared sweep: what will run, where, and into which directory."""

    request: SweepRequest
    plan: Plan                       # what is left to do (after --resume)
    full_total: int                  # tasks of the whole sweep, done or not
    directory: Path
    slots: list[DeviceSpec] | None   # local executor's worker slots
    resume: Resume | None = None
    rounds: int = 1                  # the sweep is measured this many times, round after round
    writer: ResultsWriter | None = None
    _lock: object | None = None      # the directory lock's finalizer (released by close(), or at the latest on exit)

    @property
    def already_done(self) -> int:
        return self.full_total - self.plan.total

    @property
    def measurements(self) -> int:
        """Records still to come: the skipped rows, and each runnable task once per round it lacks."""
        rows = {r.task().key(): r for r in self.resume.kept} if self.resume else {}
        return len(self.plan.skipped) + sum(rounds_to_go(rows.get(t.key()), self.rounds) for t in self.plan.runnable)

    def resume_hint(self) -> str:
        b = f" -b {','.join(self.request.backends)}" if self.request.backends else ""
        return f"finish it with: flashbench run {self.request.config} --resume {self.directory}{b}"

    def open(self) -> ResultsWriter:
        """Create (or reopen, with --resume) the results directory and lock it for this run; OSError when it
        cannot be written, :class:`DirectoryInUse` (an OSError) when another run writes it or wrote it
        after this one read it."""
        fd = lock_directory(self.directory)
        self._lock = weakref.finalize(self, _release, fd)
        try:
            self._check_unchanged()
            return self._open_writer()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the results directory (nothing more is written to its results files)."""
        if self._lock is not None:
            self._lock()

    def _check_unchanged(self) -> None:
        """Under the lock: the directory is still as :func:`prepare_sweep` found it. Another run may have
        written it in between (both checked before either wrote): a new sweep would replace its results, a
        resume would measure its tasks again and drop its rows."""
        if self.resume is None:
            if not self.request.force:
                try:
                    _refuse_existing_results(self.directory)
                except ConfigError as e:
                    raise DirectoryInUse(f"another flashbench run wrote results into {self.directory} after this "
                                         f"one started ({'; '.join(e.problems)})") from None
        elif results_signature(self.directory) != self.resume.signature:
            raise DirectoryInUse(f"{self.directory} changed after this run read it (another flashbench run wrote "
                                 "to it): run the same command again to finish what is left")

    def _open_writer(self) -> ResultsWriter:
        if self.resume is not None:
            meta = resumed_meta(self.resume, self.full_total, self.plan.total, self.request.executor)
        else:
            meta = run_metadata(self.plan, self.request.backends, self.request.executor)
        meta["rounds"] = self.rounds
        # --force replaces an earlier run's files with this run's first row, not before: a sweep stopped
        # before it (Ctrl-C while compiling, no worker starts) leaves them whole
        replacing = self.resume is None and self.request.force and held_results(self.directory) is not None
        self.writer = ResultsWriter(self.directory, meta, records=self.resume.kept if self.resume else None,
                                    deferred=replacing)
        return self.writer

    def precompile(self, on_start: Callable[[int], contextlib.AbstractContextManager] | None = None):
        """Fill Triton's compile cache in parallel processes before the (serial) measurements; the
        summary is recorded in results.json. None when nothing compiles (or for Ray: its nodes do)."""
        from .precompile import compile_groups, warm_caches

        if not self.request.precompile or self.request.executor == "ray":
            return None
        n = len(compile_groups(self.plan.runnable))
        if not n:
            return None
        visible = self.slots[0].visible if self.slots else None
        with (on_start(n) if on_start else contextlib.nullcontext()):
            summary = warm_caches(self.plan.runnable, self.plan.device, visible=visible,
                                  task_timeout=self.request.timeout_s)
        self.writer.update_meta(precompile=summary.to_dict())
        return summary

    def executor(self, on_activity: ActivityFn | None = None) -> Executor:
        req = self.request
        options: dict = {}
        if req.executor == "local":
            options = dict(devices=self.slots, timeout=req.timeout_s, log_dir=self.directory / "logs",
                           on_activity=on_activity)
        elif req.executor == "ray":
            r = req.ray
            options = dict(address=r.address, num_gpus=r.num_gpus, resources=r.resources, group_size=r.group_size,
                           max_retries=r.max_retries, timeout=req.timeout_s, on_activity=on_activity)
        return make_executor(req.executor, measure_settings(self.plan.loaded), self.plan.device, **options)

    def run(self, on_record: RecordFn | None = None, on_activity: ActivityFn | None = None) -> list[Record]:
        """Measure the plan into the open results directory. A worker or Ray failure that stops the
        whole sweep raises EnvironmentProblem; the rows written so far stay."""
        from .local import WorkerStartError
        from .ray_executor import RayUnavailable

        try:
            with sigterm_stops_sweep():
                return run_sweep(self.plan, self.writer, self.executor(on_activity), on_record, self.rounds)
        except (WorkerStartError, RayUnavailable) as e:
            raise EnvironmentProblem(str(e)) from None
        except OSError as e:  # the results files or worker logs cannot be written (disk full, directory gone)
            raise EnvironmentProblem(f"the sweep stopped: {os_error_text(e)} (the results files keep the rows "
                                     "written before it)") from None
        finally:
            self.close()


def prepare_sweep(req: SweepRequest) -> Sweep:
    """Load, plan and check a sweep; raise ConfigError (the input) or EnvironmentProblem (the machine)."""
    _check_options(req)
    loaded = load_config(req.config)
    overrides = {k: v for k, v in (("cuda_graph", req.cuda_graph), ("energy_ms", req.energy_ms)) if v is not None}
    if overrides:
        loaded = with_timing(loaded, **overrides)
    want = req.device
    if req.executor == "ray" and want is None and loaded.config.device == "auto":
        want = "cuda" if req.ray.num_gpus > 0 else "cpu"  # the GPUs are on the cluster, not necessarily here
    p = plan(loaded, req.backends, want)
    state = open_resume(req.resume, loaded, req.backends, req.retry_failed, p.device) if req.resume is not None else None
    if req.executor != "ray" and not req.dry_run and (req.device == "cuda" or p.device.startswith("cuda")):
        import torch

        if not torch.cuda.is_available():
            raise EnvironmentProblem("this config asks for a CUDA device, but none is available (use --device cpu)")
    slots = None
    if req.executor == "local" and req.dry_run and req.devices:  # the dry run checks what --devices says, not the GPUs
        try:
            parse_devices(req.devices, "cpu")
        except ValueError as e:
            raise ConfigError([str(e)]) from None
    if req.executor == "local" and not req.dry_run:
        try:
            slots = parse_devices(req.devices, p.device)
        except ValueError as e:
            if "sees" in str(e) or "visible" in str(e):
                raise EnvironmentProblem(str(e)) from None
            raise ConfigError([str(e)]) from None
    full_total = p.total
    rounds = req.rounds or loaded.config.rounds
    if state is not None:
        rounds = resumed_rounds(state, req.rounds)
        p = apply_resume(p, state, rounds)
    directory = Path(req.resume) if req.resume is not None else (
        req.out_dir or default_out_dir(loaded.config.name or Path(loaded.path).stem))
    if req.resume is None and not req.force:
        _refuse_existing_results(directory)
    return Sweep(req, p, full_total, directory, slots, state, rounds=rounds)


def _refuse_existing_results(directory: Path) -> None:
    """A new sweep never overwrites results: an interrupted one is finished with --resume."""
    held = held_results(directory)
    if held:
        raise ConfigError([f"--out {directory}: it already holds results ({held}): finish an interrupted sweep "
                           f"with --resume {directory}, write to a new directory, or replace them with --force"])


def run_metadata(p: Plan, backend_names: list[str] | None = None, executor: str | None = None) -> dict:
    cfg = p.loaded
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"path": cfg.path, "name": cfg.config.name, "sha256": cfg.sha256, "text": cfg.text},
        "backends": list(backend_names or cfg.config.backends),
        "executor": executor,
        "reference_backend": cfg.config.reference_backend,
        # the timing as run, defaults included: a default that changes between versions (timing.rest_ms) is not in
        # the config's text, and `check` and `compare` name what differs between two runs
        "timing": cfg.config.timing.as_run(p.device),
        "environment": collect_environment(p.device),
        "tasks_total": p.total,
        "finished": False,
        "warnings": [],
    }


def run_sweep(p: Plan, writer: ResultsWriter, executor: Executor, on_record: RecordFn | None = None,
              rounds: int = 1) -> list[Record]:
    """Run a plan, writing every record as it arrives; returns the rows this call wrote or merged into.

    With ``rounds`` > 1 the whole plan is measured again and again, interleaved (round 1 of every
    task, then round 2, ...), so slow drifts of the machine spread over all cases, each round
    through a fresh ``executor.run`` (the local executor starts new worker processes for it), with
    each case's backends in another order (:func:`~flashbench.execute.order.round_order`). Each
    round's record is merged into the task's row (:func:`~flashbench.results.rounds.merge_rounds`),
    which the files hold after every round: an interrupted sweep keeps one row per task with the
    rounds it finished, and ``--resume`` runs only the rounds still missing. Correctness is checked
    in a task's first round only (:func:`~flashbench.measure.measurer.for_run`); its row keeps those
    figures.
    """
    # GPUs whose state (clocks, throttling) is recorded: the executor's, none for a remote cluster
    indices = [i if i is not None else 0 for i in executor.device_indices]
    on_cuda = p.device.startswith("cuda") and bool(indices)
    # NVML numbers every GPU of the machine, CUDA those CUDA_VISIBLE_DEVICES shows: read the executor's GPUs
    nvml = {i: nvml_index_of(i) for i in indices} if on_cuda else {}
    before = gpu_state(nvml[indices[0]]) if on_cuda else {}
    extra_before = {str(i): gpu_state(nvml[i]) for i in indices[1:]} if on_cuda else {}
    writer.update_meta(gpu_state_before=before, **({"gpu_states_before": extra_before} if extra_before else {}))
    done: dict[tuple, Record] = {}

    def emit(records: Iterable[Record]):
        for r in records:
            earlier = writer.row(r.task().key())
            if earlier is not None:
                r = merge_rounds(earlier, r)
            writer.put(r)
            done[r.task().key()] = r
            if on_record:
                on_record(r)

    emit(p.skipped)
    monitor = GpuMonitor(nvml[indices[0]]) if on_cuda else None
    # processes on the GPU before the sweep, plus the one that measures (a worker or this process)
    expected = ((compute_processes(nvml[indices[0]]) or 0) + 1) if on_cuda else 0
    try:
        with monitor if monitor else contextlib.nullcontext():
            for n in range(1, rounds + 1):
                tasks = [t for t in p.runnable if rounds_to_go(writer.row(t.key()), n)]
                if tasks:
                    _run_round(executor, round_order(tasks, n), emit, check=n == 1)
    finally:
        if executor.identities:
            writer.update_meta(devices={k: dict(v) for k, v in executor.identities.items()})
        if monitor:
            writer.update_meta(gpu_monitor=monitor.summary())
    after = gpu_state(nvml[indices[0]]) if on_cuda else {}
    extra_after = {str(i): gpu_state(nvml[i]) for i in indices[1:]} if on_cuda else {}
    warnings = [w for w in (throttle_warning(before), throttle_warning(after)) if w]
    warnings += monitor.warnings(expected) if monitor else []
    order_note = position_warning(p.runnable, rounds, monitor.clock_fell()) if monitor else None
    warnings += [order_note] if order_note else []
    warnings += [w for st in (*extra_before.values(), *extra_after.values()) if (w := throttle_warning(st))]
    if p.device == "cpu":
        warnings.append("CPU run: these timings are CPU timings, not GPU timings")
    if extra_after:
        writer.update_meta(gpu_states_after=extra_after)
    # a resumed run keeps its warnings: one that holds again is not written twice
    warnings = list(dict.fromkeys(writer.meta.get("warnings", []) + warnings))
    writer.update_meta(gpu_state_after=after, finished=True, warnings=warnings)
    return list(done.values())


def _run_round(executor: Executor, tasks, emit, check: bool) -> None:
    records = executor.run(tasks, check=check)
    try:
        emit(records)
    finally:  # stop workers now (Ctrl-C, errors), not when the traceback is collected
        close = getattr(records, "close", None)
        if close:
            close()
