"""The isolated local executor: measurements run in worker processes, one per device.

Each worker is a fresh interpreter (``python -m flashbench.execute.worker``) started with
``CUDA_VISIBLE_DEVICES`` already set in its environment, so it owns exactly one CUDA context on
one GPU. It keeps one :class:`~flashbench.measure.measurer.Measurer` for its whole life (the reference of
the current case is reused across backends) and measures the tasks the driver sends it, one at a
time, over a pipe (length-prefixed pickles on the worker's stdin/stdout; anything the worker or a
backend prints goes to its log file, never into the protocol).

What the driver guarantees:

- a worker that dies (segfault, abort, illegal memory access, ``os._exit``) costs exactly the
  task it was measuring: that task becomes a ``crashed`` row (how it died, the last CUDA error seen
  in its stderr, the stderr tail), a new worker replaces it and the sweep goes on;
- a task that runs past the per-task timeout has its worker (and the worker's children) killed
  and becomes a ``timeout`` row;
- a worker that dies while a child it forked still holds its pipe (so no end of file comes) is seen
  dead within about a second (the driver also polls its workers), not at the timeout; whatever a lost
  or stopped worker left in its process group is killed with it;
- a worker's log (``DIR/logs``) stays under ``WORKER_LOG_CAP`` however much a backend prints (its
  last megabyte is kept), and a lost worker's stderr tail is read from the end of the log only;
- a worker whose record reports a CUDA error (illegal memory access, device-side assert, ...) is
  retired after reporting, because such errors leave the CUDA context unusable: a broken context
  never costs more than one task;
- work is sharded by case: all backends of a case run in the same worker (same GPU), in order, so
  they are comparable and share the reference. Cases are handed to whichever device is free.

Workers run in their own session (Ctrl-C in the terminal reaches only the driver, which then kills
them), die with the driver (``PR_SET_PDEATHSIG`` on Linux, and EOF on their stdin), and dump a
Python traceback on fatal signals (``faulthandler``) into their log.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..measure.measurer import for_run
from ..model.case import Task
from ..model.schema import Record
from .devices import DeviceSpec, parse_devices
from .failures import STDERR_TAIL_CHARS, describe_exit, is_cuda_fatal, last_cuda_error, summarize_stderr
from .order import group_by_case
from .protocol import kill_group, recv_msg, send_msg

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_STARTUP_TIMEOUT_S = 300.0
# How often the driver looks at its workers besides their messages: whether a worker process has died while
# something it started (a forked child) still holds its pipe open, so no end of file ever comes; and
# whether a worker's log has outgrown WORKER_LOG_CAP.
POLL_S = 1.0
EXIT_GRACE_S = 2.0         # a worker that closed its pipe may take this long to exit by itself (its exit code)
ORPHANED_PIPE_S = 5.0      # a dead worker whose pipe stays open this long after its group was killed: lost
WORKER_LOG_CAP = 64 << 20  # bytes; a worker log past it keeps its last WORKER_LOG_KEEP bytes
WORKER_LOG_KEEP = 1 << 20
ActivityFn = Callable[[str, str], None]


class WorkerStartError(RuntimeError):
    """No worker could be started (every device failed twice in a row): an environment problem."""


def _exited(p: subprocess.Popen, timeout: float) -> bool:
    """Whether ``p`` has ended (waiting up to ``timeout`` s), without reaping it: until it is reaped its
    pid and process group id stay its own, so killing the group later cannot hit an unrelated process."""
    deadline = time.perf_counter() + timeout
    while True:
        if p.returncode is not None:
            return True
        try:
            if hasattr(os, "waitid"):
                if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            elif p.poll() is not None:
                return True
        except ChildProcessError:
            return True
        if time.perf_counter() >= deadline:
            return False
        time.sleep(0.02)


# --------------------------------------------------------------------------- driver side -----


@dataclass
class _Slot:
    n: int
    spec: DeviceSpec
    state: str = "new"  # new | starting | idle | busy | stopped | dead
    gen: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    log_offset: int = 0
    identity: dict = field(default_factory=dict)
    queue: deque = field(default_factory=deque)  # the rest of the current case's tasks
    current: Task | None = None
    current_id: int = 0
    sent_at: float = 0.0
    deadline: float | None = None
    started_at: float = 0.0
    start_failures: int = 0
    last_failure: str = ""
    dead_since: float | None = None  # when the driver saw the process dead with its pipe still open

    @property
    def label(self) -> str:
        return self.spec.label


class LocalExecutor:
    """Runs tasks in isolated worker processes, one persistent worker per device.

    ``devices``: worker slots (:func:`parse_devices`); default one worker on ``device``.
    ``timeout``: seconds one task may take (None or <= 0: no limit). ``log_dir``: where worker
    logs go (default: a temporary directory removed at the end). ``on_activity(label, text)`` is
    called when a device starts, finishes or changes task (for progress displays).
    """

    def __init__(self, settings, device: str, devices: list[DeviceSpec] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S, log_dir: str | Path | None = None,
                 on_activity: ActivityFn | None = None, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
                 plugins: list[str] | None = None):
        self.settings = settings
        self._run_settings = settings  # this run's (for_run): what the workers it starts get
        self.device = device
        self.devices = devices or parse_devices(None, device)
        self.timeout = timeout if timeout and timeout > 0 else None
        self.startup_timeout = startup_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.on_activity = on_activity
        self.plugins = plugins
        self.identities: dict[str, dict] = {}  # label -> identity reported by its worker
        # start-ups, and per task (key) the driver-observed seconds from sending it to its record
        self.stats: dict = {"workers_started": 0, "startup_s": [], "task_roundtrip_s": {}}

    @property
    def device_indices(self) -> list[int | None]:
        return [d.index for d in self.devices]

    # -- helpers ------------------------------------------------------------------------------
    def _activity(self, slot: _Slot, text: str) -> None:
        if self.on_activity:
            try:
                self.on_activity(slot.label, text)
            except Exception:
                pass

    def _cpu_threads(self) -> int | None:
        """CPU workers run torch on one thread. With several, OpenMP's barriers wait for a thread that
        another process holds: on a 2-core machine with other work running, a 0.03 ms call was timed
        at 8-48 ms in some runs (medians of unchanged runs 300-580x apart), against at most ~2x with
        one thread."""
        return None if self.device.startswith("cuda") else 1

    def _start(self, s: _Slot, events: queue.Queue, logs: Path) -> None:
        from ..backends.plugins import child_spec

        s.gen += 1
        s.state, s.identity, s.current, s.deadline = "starting", dict(s.identity), None, None
        s.dead_since = None
        s.log_path = logs / f"worker-{s.label}.log"
        with open(s.log_path, "ab") as f:
            f.write(f"--- flashbench worker {s.label} start {s.gen} ({time.strftime('%H:%M:%S')}) ---\n".encode())
            s.log_offset = f.tell()
        env = dict(os.environ)
        if s.spec.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = s.spec.visible
        env.setdefault("PYTHONFAULTHANDLER", "1")
        log = open(s.log_path, "ab")
        try:
            s.proc = subprocess.Popen([sys.executable, "-m", "flashbench.execute.worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        finally:
            log.close()
        s.started_at = time.perf_counter()
        s.deadline = s.started_at + self.startup_timeout
        self.stats["workers_started"] += 1
        init = {"settings": self._run_settings, "device": "cuda" if self.device.startswith("cuda") else self.device,
                "device_index": s.spec.index, **child_spec(self.plugins), "cpu_threads": self._cpu_threads()}
        try:
            send_msg(s.proc.stdin, init)
        except (BrokenPipeError, OSError):
            pass  # the reader sees EOF and reports the failed start
        threading.Thread(target=self._reader, args=(s.n, s.gen, s.proc, events), daemon=True,
                         name=f"flashbench-reader-{s.label}").start()
        self._activity(s, "starting worker")

    @staticmethod
    def _reader(n: int, gen: int, proc: subprocess.Popen, events: queue.Queue) -> None:
        try:
            while True:
                msg = recv_msg(proc.stdout)
                if msg is None:
                    break
                events.put((n, gen, "msg", msg))
        except Exception as e:  # a torn or unreadable message: treat the worker as gone
            events.put((n, gen, "error", f"{type(e).__name__}: {e}"))
        finally:
            try:
                proc.stdout.close()
            except Exception:
                pass
        events.put((n, gen, "eof", None))

    def _kill(self, s: _Slot, grace: float = 0.0) -> int | None:
        """Kill the worker and everything in its process group (a child it forked and left behind, which
        would otherwise live on, holding the worker's pipe); its exit code. ``grace``: seconds to let a
        worker that is already ending exit by itself first, so its own exit code is reported."""
        p = s.proc
        if p is None:
            return None
        if p.returncode is None and grace:
            _exited(p, grace)
        rc = kill_group(p)
        try:  # stdout belongs to the reader thread, which closes it at EOF
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        return rc

    def _tail(self, s: _Slot) -> str:
        keep = 16 * STDERR_TAIL_CHARS  # bytes: the tail is cut to 4x the characters below, after filtering
        try:
            with open(s.log_path, "rb") as f:
                f.seek(max(s.log_offset, f.seek(0, os.SEEK_END) - keep))  # never the whole log: it can be huge
                text = f.read(keep).decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("[flashbench worker] "))
        return text[-4 * STDERR_TAIL_CHARS:]

    def _identity(self, s: _Slot) -> dict:
        ident = dict(s.identity) if s.identity else {}
        if not ident:
            ident = {"device_name": "", "device_uuid": "", "device_index": s.spec.index}
        return {k: ident.get(k) for k in ("device_name", "device_uuid", "device_index")}

    def _failed_record(self, s: _Slot, status: str, what: str) -> Record:
        task = s.current
        tail = self._tail(s)
        cuda = last_cuda_error(tail)
        reason = what + (f"; last CUDA error: {cuda}" if cuda else "")
        if tail.strip():
            reason += f"; stderr tail: {summarize_stderr(tail)}"
        ident = self._identity(s)
        return Record.for_task(task, status=status, reason=reason, wall_s=time.perf_counter() - s.sent_at,
                               device_name=ident["device_name"] or "", device_uuid=ident["device_uuid"] or "",
                               device_index=ident["device_index"])

    def _send_next(self, s: _Slot, task_id: int) -> None:
        task = s.queue.popleft()
        s.current, s.current_id, s.state = task, task_id, "busy"
        s.sent_at = time.perf_counter()
        s.deadline = s.sent_at + self.timeout if self.timeout else None
        self._activity(s, f"{task.backend} · {task.case.label()}")
        try:
            send_msg(s.proc.stdin, {"type": "task", "id": task_id, "task": task})
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: its EOF arrives and the task becomes a crashed row

    # -- the loop -----------------------------------------------------------------------------
    def run(self, tasks: list[Task], check: bool = True) -> Iterator[Record]:
        self._run_settings = for_run(self.settings, check)
        groups: deque[list[Task]] = deque(group_by_case(tasks))
        slots = [_Slot(i, spec) for i, spec in enumerate(self.devices)]
        events: queue.Queue = queue.Queue()
        tmp = None
        if self.log_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="flashbench-workers-"))
            logs = tmp
        else:
            logs = self.log_dir
            logs.mkdir(parents=True, exist_ok=True)
        next_id = 0
        next_poll = time.perf_counter() + POLL_S
        try:
            for s in slots[:max(1, len(groups))] if groups else []:
                self._start(s, events, logs)
            while True:
                # hand out work: the rest of a slot's case first, then the next case
                for s in slots:
                    if s.state == "idle":
                        if not s.queue and groups:
                            s.queue = deque(groups.popleft())
                        if s.queue:
                            next_id += 1
                            self._send_next(s, next_id)
                        elif not groups:
                            self._stop(s)
                    elif s.state in ("new", "stopped") and len(groups) > sum(
                            x.state in ("starting", "idle", "busy") for x in slots):
                        self._start(s, events, logs)
                active = [s for s in slots if s.state in ("starting", "busy", "idle")]
                if not active:
                    if groups:
                        dead = "; ".join(f"{s.label}: {s.last_failure}" for s in slots if s.state == "dead")
                        raise WorkerStartError(f"no worker could be started ({dead})")
                    return
                deadlines = [s.deadline for s in active if s.deadline is not None]
                wait = max(0.0, min(deadlines) - time.perf_counter()) if deadlines else POLL_S
                try:
                    ev = events.get(timeout=min(wait, POLL_S))
                except queue.Empty:
                    ev = None
                out: list[Record] = []
                if ev is None:
                    now = time.perf_counter()
                    for s in active:
                        if s.deadline is not None and now >= s.deadline:
                            out.extend(self._on_overdue(s, groups, events, logs))
                else:
                    out.extend(self._on_event(ev, slots, groups, events, logs))
                if time.perf_counter() >= next_poll:  # at least every POLL_S, however busy the queue
                    next_poll = time.perf_counter() + POLL_S
                    for s in slots:
                        if s.state in ("starting", "busy", "idle"):
                            out.extend(self._check_alive(s, slots, groups, events, logs))
                yield from out
        finally:
            for s in slots:
                self._finish(s)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _stop(self, s: _Slot) -> None:
        try:
            send_msg(s.proc.stdin, {"type": "stop"})
            s.proc.stdin.close()
        except (BrokenPipeError, OSError, AttributeError):
            pass
        s.state, s.deadline = "stopped", None
        self._activity(s, "done")

    def _finish(self, s: _Slot) -> None:
        p = s.proc
        if p is None:
            return
        if s.state == "stopped":
            _exited(p, 5.0)  # a worker told to stop ends by itself; what it left in its group is killed below
        self._kill(s)
        self._cap_log(s)
        s.proc = None

    def _more_work(self, s: _Slot, groups) -> bool:
        return bool(s.queue) or bool(groups)

    def _check_alive(self, s: _Slot, slots, groups, events, logs) -> list[Record]:
        """Between messages: keep the worker's log bounded, and notice a worker that died while its pipe
        stays open (a child it forked holds it): its group is killed, which closes the pipe, and the
        reader reports the end as for any crash; should the pipe still stay open (a child that left the
        group), the end is declared here after ORPHANED_PIPE_S."""
        self._cap_log(s)
        p = s.proc
        if p is None or p.returncode is not None or not _exited(p, 0.0):
            return []
        now = time.perf_counter()
        if s.dead_since is None:
            s.dead_since = now
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            return []
        if now - s.dead_since < ORPHANED_PIPE_S:
            return []
        return self._on_event((s.n, s.gen, "eof", None), slots, groups, events, logs)

    def _cap_log(self, s: _Slot) -> None:
        """A worker log past WORKER_LOG_CAP keeps its last WORKER_LOG_KEEP bytes, after a line saying how much
        was dropped: a backend that prints megabytes per call must not fill the disk the results are on.
        The worker appends (O_APPEND), so its next write lands after the kept tail."""
        try:
            size = os.path.getsize(s.log_path)
            if size <= WORKER_LOG_CAP:
                return
            with open(s.log_path, "rb") as f:
                f.seek(size - WORKER_LOG_KEEP)
                tail = f.read(WORKER_LOG_KEEP)
            os.truncate(s.log_path, 0)
            with open(s.log_path, "ab") as f:
                f.write(f"[flashbench: {size - len(tail):,} bytes of worker output dropped here, to keep this log "
                        f"under {WORKER_LOG_CAP >> 20} MiB]\n".encode() + tail)
            s.log_offset = 0
        except (OSError, TypeError):
            pass

    def _on_overdue(self, s: _Slot, groups, events, logs) -> list[Record]:
        if s.state == "busy":
            self._kill(s)
            rec = self._failed_record(s, "timeout", f"timed out after {self.timeout:g} s "
                                                    "(worker killed and replaced)")
            self._after_loss(s, groups, events, logs)
            return [rec]
        if s.state == "starting":
            self._kill(s)
            self._start_failed(s, f"worker did not start within {self.startup_timeout:g} s", groups, events, logs)
        return []

    def _after_loss(self, s: _Slot, groups, events, logs) -> None:
        s.current, s.deadline = None, None
        if self._more_work(s, groups):
            self._start(s, events, logs)
        else:
            s.state = "stopped"
            s.proc = None
            self._activity(s, "done")

    def _start_failed(self, s: _Slot, what: str, groups, events, logs) -> None:
        tail = self._tail(s)
        s.start_failures += 1
        s.last_failure = what + (f"; stderr tail: {summarize_stderr(tail, 800)}" if tail.strip() else "")
        if s.start_failures >= 2:
            s.state, s.deadline, s.proc = "dead", None, None
            if s.queue:  # give the rest of its case to another device
                groups.appendleft(list(s.queue))
                s.queue.clear()
            self._activity(s, f"[red]failed to start[/]: {what}")
        else:
            self._start(s, events, logs)

    def _on_event(self, ev, slots, groups, events, logs) -> list[Record]:
        n, gen, kind, payload = ev
        s = slots[n]
        if gen != s.gen or s.proc is None:
            return []  # from a worker already killed and replaced
        if kind == "msg":
            mtype = payload.get("type")
            if mtype == "ready" and s.state == "starting":
                s.state, s.deadline, s.start_failures = "idle", None, 0
                s.identity = payload.get("identity") or {}
                self.identities[s.label] = dict(s.identity)
                self.stats["startup_s"].append(time.perf_counter() - s.started_at)
                self._activity(s, f"ready ({s.identity.get('device_name') or s.label})")
                return []
            if mtype == "record" and s.state == "busy" and payload.get("id") == s.current_id:
                rec: Record = payload["record"]
                self.stats["task_roundtrip_s"][s.current.key()] = time.perf_counter() - s.sent_at
                s.current, s.deadline, s.state = None, None, "idle"
                if is_cuda_fatal(rec):
                    # the context may be unusable: never let it cost a second task
                    rec.reason += " (worker retired: CUDA context assumed unusable)"
                    self._kill(s)
                    self._after_loss(s, groups, events, logs)
                else:
                    self._activity(s, "idle")
                return [rec]
            return []
        if kind == "error":
            return []  # followed by eof
        # eof: the worker is gone (or going: let it exit by itself, for its exit code)
        rc = self._kill(s, grace=EXIT_GRACE_S)
        if s.state == "starting":
            self._start_failed(s, f"worker {describe_exit(rc)} while starting", groups, events, logs)
            return []
        if s.state == "busy":
            rec = self._failed_record(s, "crashed", f"worker process {describe_exit(rc)} while measuring this task "
                                                    "(replaced; the sweep went on)")
            self._after_loss(s, groups, events, logs)
            return [rec]
        if s.state == "idle":
            self._after_loss(s, groups, events, logs) if self._more_work(s, groups) else None
        return []
