"""The isolated local executor: measurements run in worker processes, one per device.

Each worker is a fresh interpreter (``python -m flashbench.execute.local``) started with
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
import pickle
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..model.case import Case, Task
from ..model.schema import Record

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_STARTUP_TIMEOUT_S = 300.0
STDERR_TAIL_CHARS = 1500
# Errors after which a CUDA context must be assumed unusable (sticky errors): the worker is retired.
CUDA_FATAL = re.compile(
    r"CUDA error|illegal memory access|illegal instruction|device-side assert|unspecified launch failure|"
    r"misaligned address|CUDA_ERROR_|cudaError[A-Z]|uncorrectable ECC|launch timed out|"
    r"CUBLAS_STATUS_EXECUTION_FAILED|CUDNN_STATUS_EXECUTION_FAILED|hardware exception|"
    r"an illegal|Triton Error \[CUDA\]", re.IGNORECASE)
_CUDA_ERROR_LINE = re.compile(r"[^\n]*(CUDA error|cudaError|CUDA_ERROR_|illegal memory access|device-side assert|"
                              r"Triton Error \[CUDA\])[^\n]*", re.IGNORECASE)
ActivityFn = Callable[[str, str], None]


class WorkerStartError(RuntimeError):
    """No worker could be started (every device failed twice in a row): an environment problem."""


# --------------------------------------------------------------------------- devices ---------


@dataclass(frozen=True)
class DeviceSpec:
    """One worker slot: which GPU (or fake CPU device) it runs on."""

    index: int | None          # recorded as the rows' device_index (the index given in --devices)
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for the worker; None: inherit the driver's
    label: str = ""            # for progress and log names: gpu0, cpu1, ...


def parse_devices(spec: str | None, device: str) -> list[DeviceSpec]:
    """``--devices``: None (one worker, as the in-process path), ``all`` or ``0,1,3``.

    On CUDA the indices are those the driver sees (through its own ``CUDA_VISIBLE_DEVICES`` if
    set); each worker gets ``CUDA_VISIBLE_DEVICES`` of its one GPU. On the CPU the indices name
    fake devices (one CPU worker each), for tests and CPU-only machines. Raises ``ValueError``.
    """
    cuda = device.startswith("cuda")
    if spec is None or not spec.strip():
        if cuda and ":" in device:  # --device cuda:N is not offered by the CLI, but keep it right
            n = int(device.split(":", 1)[1])
            return [DeviceSpec(n, _visible_for(n), f"gpu{n}")]
        return [DeviceSpec(None, None, "gpu" if cuda else "cpu")]
    spec = spec.strip().lower()
    if spec == "all":
        if not cuda:
            return [DeviceSpec(None, None, "cpu")]
        indices = list(range(_cuda_count()))
        if not indices:
            raise ValueError("--devices all: no CUDA device is visible")
    else:
        try:
            indices = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--devices: {spec!r} is not 'all' or a comma-separated list of device indices") from None
        if not indices or any(i < 0 for i in indices):
            raise ValueError(f"--devices: {spec!r}: indices must be non-negative integers")
        if len(set(indices)) != len(indices):
            raise ValueError(f"--devices: {spec!r} lists a device twice")
        if cuda:
            n = _cuda_count()
            bad = [i for i in indices if i >= n]
            if bad:
                raise ValueError(f"--devices: no CUDA device {', '.join(map(str, bad))} (this machine sees {n})")
    if cuda:
        return [DeviceSpec(i, _visible_for(i), f"gpu{i}") for i in indices]
    return [DeviceSpec(i, None, f"cpu{i}") for i in indices]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _visible_for(i: int) -> str:
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent:
        ids = [x.strip() for x in parent.split(",") if x.strip()]
        if i < len(ids):
            return ids[i]
    return str(i)


def group_by_case(tasks: list[Task]) -> list[list[Task]]:
    """Tasks grouped by case, groups in order of first appearance, tasks in their given order."""
    groups: dict[Case, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.case, []).append(t)
    return list(groups.values())


def is_cuda_fatal(rec: Record) -> bool:
    return rec.status == "error" and bool(CUDA_FATAL.search(rec.reason or ""))


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def last_cuda_error(text: str) -> str:
    lines = [m.group(0).strip() for m in _CUDA_ERROR_LINE.finditer(text)]
    return lines[-1][:300] if lines else ""


def summarize_stderr(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """The stderr tail on one line. A faulthandler dump ("Fatal Python error: ...") is cut down
    to its first line and innermost frame, so the lines printed before it stay in the tail."""
    marker = text.find("Fatal Python error")
    if marker < 0:
        return one_line(text, limit)
    before, dump = text[:marker], text[marker:].splitlines()
    keep = [dump[0]] + [ln.strip() for ln in dump[1:] if ln.strip().startswith("File ")][:1]
    fault = " | ".join(keep)
    return (one_line(before, max(200, limit - len(fault))) + " | " if before.strip() else "") + fault


def one_line(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    s = " | ".join(lines)
    return s if len(s) <= limit else "…" + s[-limit:]


# --------------------------------------------------------------------------- protocol --------


def send_msg(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def recv_msg(f):
    """The next message, or None at end of file (the other side is gone)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


# --------------------------------------------------------------------------- worker side -----


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the driver dies (so a killed sweep leaves no workers)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def worker_main() -> int:
    """Entry point of a worker process (``python -m flashbench.execute.local``)."""
    t_start = time.perf_counter()
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # print() of any backend goes to the log, never into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the driver died before prctl took effect
        return 1
    import faulthandler

    faulthandler.enable(all_threads=True)
    init = recv_msg(proto_in)
    if init is None:
        return 0
    from ..backends.plugins import adopt_child_spec

    adopt_child_spec(init)
    import torch

    if init.get("cpu_threads"):
        torch.set_num_threads(init["cpu_threads"])
    from ..measure.measurer import Measurer

    measurer = Measurer(init["settings"], init["device"])
    if init.get("device_index") is not None:
        measurer.identity["device_index"] = init["device_index"]
    send_msg(proto_out, {"type": "ready", "pid": os.getpid(), "identity": dict(measurer.identity),
                         "startup_s": time.perf_counter() - t_start})
    while True:
        msg = recv_msg(proto_in)
        if msg is None or msg.get("type") == "stop":
            return 0
        if msg.get("type") == "task":
            task = msg["task"]
            print(f"[flashbench worker] {task.backend} {task.case.label()}", file=sys.stderr, flush=True)
            rec = measurer.measure(task)
            send_msg(proto_out, {"type": "record", "id": msg["id"], "record": rec})


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
        if self.device.startswith("cuda") or len(self.devices) < 2:
            return None
        return max(1, (os.cpu_count() or 1) // len(self.devices))

    def _start(self, s: _Slot, events: queue.Queue, logs: Path) -> None:
        from ..backends.plugins import child_spec

        s.gen += 1
        s.state, s.identity, s.current, s.deadline = "starting", dict(s.identity), None, None
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
            s.proc = subprocess.Popen([sys.executable, "-m", "flashbench.execute.local"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        finally:
            log.close()
        s.started_at = time.perf_counter()
        s.deadline = s.started_at + self.startup_timeout
        self.stats["workers_started"] += 1
        init = {"settings": self.settings, "device": "cuda" if self.device.startswith("cuda") else self.device,
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

    def _kill(self, s: _Slot) -> int | None:
        p = s.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                try:
                    p.kill()
                except OSError:
                    pass
        try:
            rc = p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        try:  # stdout belongs to the reader thread, which closes it at EOF
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        return rc

    def _tail(self, s: _Slot) -> str:
        try:
            with open(s.log_path, "rb") as f:
                f.seek(s.log_offset)
                text = f.read().decode("utf-8", "replace")
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
        from ..model.flops import attention_flops, min_hbm_bytes

        task = s.current
        tail = self._tail(s)
        cuda = last_cuda_error(tail)
        reason = what + (f"; last CUDA error: {cuda}" if cuda else "")
        if tail.strip():
            reason += f"; stderr tail: {summarize_stderr(tail)}"
        ident = self._identity(s)
        return Record.for_task(task, status=status, reason=reason, wall_s=time.perf_counter() - s.sent_at,
                               flops=attention_flops(task.case), min_hbm_bytes=min_hbm_bytes(task.case),
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
    def run(self, tasks: list[Task]) -> Iterator[Record]:
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
                wait = max(0.0, min(deadlines) - time.perf_counter()) if deadlines else None
                try:
                    ev = events.get(timeout=wait)
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
        if s.state == "stopped" and p.poll() is None:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._kill(s)
        s.proc = None

    def _more_work(self, s: _Slot, groups) -> bool:
        return bool(s.queue) or bool(groups)

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
        # eof: the worker is gone
        rc = self._kill(s)
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


if __name__ == "__main__":
    sys.exit(worker_main())
