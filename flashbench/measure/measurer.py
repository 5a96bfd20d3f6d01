"""Measure one task (a case run by one backend) and return its record.

This is the only module that runs attention on a device. Order per task:
prepare (compile, masks) -> fresh inputs -> the first call (it pays for compilation and
autotuning), checked for correctness unless that is off -> an untimed peak-memory pass -> timing.
Every failure ends as a record (skipped, oom, error, mismatch); the caller's sweep goes on.
"""
from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field, replace

import torch

from .. import backends
from ..backends.base import BackendContractError, Unsupported
from ..attention.inputs import make_inputs
from ..backends.calling import bind, outputs_of
from ..model.case import Case, Task
from ..model.config import DEFAULT_TOLERANCES, Tolerance
from .correctness import Reference, check, compute_reference
from ..model.schema import MAX_REASON_CHARS, Record, printable_line
from ..model.yaml_input import cut
from .stats import noise_pct, summarize
from ..model.config import Timing
from .ceilings_cache import load_cached, percent_of_roofs
from .energy import EnergyMeter, energy_per_call_j, meter_for, tflop_per_j
from .environment import cuda_uuid
from .process_state import ProcessState
from .sm_clock import ClockSampler, sampler_for
from .timer import TIMING_METHODS, GraphCaptureError, time_call

IDENTITY_FIELDS = ("device_name", "device_index", "device_uuid")  # the identity's keys a record carries
# A backend's own texts in a record are bounded: a skip reason (the longest real one, PyTorch's refusal of an
# SDPA kernel, runs to ~450 characters) to MAX_REASON_CHARS, the bound results files read reasons with, and
# config_description (a Triton launch log, ~850) to CONFIG_CHARS: a plugin that returns a megabyte would
# otherwise write it into every row of results.json/csv and onto the terminal.
CONFIG_CHARS = 4000


@dataclass
class MeasureSettings:
    timing: Timing = field(default_factory=Timing)
    correctness: bool = True
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    seed: int = 0


def for_run(settings: MeasureSettings, check: bool) -> MeasureSettings:
    """The settings of one executor run: ``check`` False times only (the later rounds of a sweep).

    Correctness is a property of the code and the inputs (the same seed every round), checked in a
    task's first round; the rounds after it exist to measure run-to-run timing noise, and the
    reference (an fp32 attention with its gradients: up to a second a case at N = 16k) would
    otherwise cost more than their timing."""
    return settings if check or not settings.correctness else replace(settings, correctness=False)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


# where a library's message turns into stack frames: C++ frames (PyTorch's "Exception raised from ...
# frame #0: ..."), a Python traceback pasted into a message
_FRAMES = re.compile(r"Exception raised from |^\s*frame #\d+|Traceback \(most recent call last\)", re.MULTILINE)


def error_reason(e: BaseException, limit: int = 500) -> str:
    """A failure as a record's reason: one line, the exception's type and message, never stack frames."""
    text = str(e)
    m = _FRAMES.search(text)
    if m:
        text = text[:m.start()]
    text = printable_line(text).strip()  # the message's lines, joined as results files hold a reason
    reason = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return cut(reason, limit)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory(call, device: str) -> tuple[int | None, int | None]:
    """(peak above what was allocated before the call, absolute peak) in bytes; CUDA only."""
    if not str(device).startswith("cuda"):
        return None, None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - before, peak


def device_identity(device: str) -> dict:
    if not str(device).startswith("cuda"):
        import platform

        return {"device_name": f"cpu ({platform.processor() or platform.machine()})", "device_index": None, "device_uuid": ""}
    idx = torch.cuda.current_device()
    return {"device_name": torch.cuda.get_device_properties(idx).name, "device_index": idx,
            "device_uuid": cuda_uuid(idx)}


def _add_note(rec: Record, note: str) -> None:
    """A note appended to the row's reason (the column a reader of the table looks at)."""
    rec.reason = f"{rec.reason}; {note}" if rec.reason else note


class Measurer:
    """Measures tasks on one device, keeping the reference of the current case between backends."""

    def __init__(self, settings: MeasureSettings, device: str | None = None):
        self.settings = settings
        self.device = device or default_device()
        self.identity = device_identity(self.device)
        # the roofs of pct_peak_flops and pct_hbm: the GPU's cached ceilings (never measured here)
        self.ceilings = load_cached(self.identity["device_uuid"]) if self.device.startswith("cuda") else None
        if self.ceilings is not None:
            self.identity["roofs"] = self.ceilings.roofs_label()
        self._energy: EnergyMeter | None = None
        self._clock: ClockSampler | None = None
        self._nvml_looked = False
        self._ref_case: Case | None = None
        self._ref: Reference | None = None
        self._ref_error: str = ""
        self.interrupts_are_errors = False  # a worker sets it: no Ctrl-C reaches it, a KeyboardInterrupt is the backend's

    def _reference(self, case: Case, inputs) -> Reference | None:
        if self._ref_case != case:
            self._ref, self._ref_case, self._ref_error = None, None, ""
            free_memory()
            try:
                self._ref = compute_reference(inputs, case, self.device)
            except Exception as e:  # the reference itself may not fit: say so, keep timing
                self._ref_error = f"correctness not checked: reference failed ({'out of memory' if is_oom(e) else error_reason(e, 200)})"
                free_memory()
            self._ref_case = case
        return self._ref

    def _nvml_watchers(self) -> tuple[EnergyMeter | None, ClockSampler | None]:
        """The energy meter and the SM clock sampler of this GPU (None where NVML cannot read them)."""
        if not self._nvml_looked and self.device.startswith("cuda"):
            self._nvml_looked = True
            self._energy = meter_for(self.identity["device_uuid"])
            self._clock = sampler_for(self.identity["device_uuid"])
        return self._energy, self._clock

    def measure(self, task: Task) -> Record:
        """The task's record; every failure of the backend is its status. ``KeyboardInterrupt`` propagates
        (Ctrl-C stops an inprocess sweep) unless :attr:`interrupts_are_errors` (a worker, where Ctrl-C never
        arrives: one raised there is the backend's). The process state a backend changes is put back."""
        t0 = time.perf_counter()
        rec = Record.for_task(task, **{k: v for k, v in self.identity.items() if k in IDENTITY_FIELDS})
        state = ProcessState.capture()
        try:
            self._measure_into(rec, task)
        except Unsupported as e:
            rec.status, rec.reason = "skipped", printable_line(e, MAX_REASON_CHARS)
        except BaseException as e:  # noqa: BLE001 - every failure is data
            if isinstance(e, KeyboardInterrupt) and not self.interrupts_are_errors:
                state.restore()
                raise
            rec.status = "oom" if is_oom(e) else "error"
            if rec.status == "oom":
                rec.reason = f"out of memory: {str(e).splitlines()[0][:200]}" if str(e).strip() else "out of memory"
            else:
                rec.reason = error_reason(e)
            # a failure's traceback holds its frames' tensors: drop them and return cached blocks now.
            # After a success nothing is held, and PyTorch's allocator frees its cache by itself
            # before it would run out, so the (slow) collection is skipped on the happy path.
            del e
            free_memory()
        changed = state.restore()
        if changed:
            _add_note(rec, f"the backend changed {', '.join(changed)} (put back after the task)")
        rec.wall_s = time.perf_counter() - t0
        return rec

    def _measure_into(self, rec: Record, task: Task) -> None:
        case, dev = task.case, self.device
        backend = backends.get(task.backend)
        why = backend.unsupported_reason(case, "cuda" if dev.startswith("cuda") else dev)
        if why:
            raise Unsupported(why)
        fn = backend.prepare(case, dev)
        if not callable(fn):
            raise BackendContractError(f"{task.backend}.prepare() returned {type(fn).__name__}, not the attention function")
        inputs = make_inputs(case, dev, self.settings.seed)
        # the reference first, while nothing of the backend's is held (it frees memory before its fp32 pass)
        ref = self._reference(case, inputs) if self.settings.correctness else None
        # the first call, checked or not (a sweep's later rounds time without checking, in fresh workers): it pays
        # for compilation and autotuning, whose buffers (an autotuner's L2 flush, its candidates' outputs) must not
        # land in the peak-memory pass below
        outputs = outputs_of(fn, inputs, case)
        if self.settings.correctness:
            if ref is None:
                rec.reason = self._ref_error
            else:
                tol = self.settings.tolerances.get(case.dtype, DEFAULT_TOLERANCES[case.dtype])
                verdict = check(outputs, ref, tol.atol, tol.factor)
                rec.max_abs_err, rec.rel_err, rec.tolerance_abs = verdict.max_abs_err, verdict.rel_err, verdict.tolerance_abs
                if not verdict.ok:
                    rec.status, rec.reason = "mismatch", verdict.detail
        del outputs
        call = bind(fn, inputs, case)
        rec.peak_hbm_bytes, rec.peak_hbm_abs_bytes = peak_memory(call, dev)
        stream = None
        if self.settings.timing.cuda_graph and dev.startswith("cuda"):
            # autograd runs each backward op on the stream its forward ran on: a backward captured in
            # a graph needs its forward on the capture stream (for bwd, bind runs the forward)
            del call
            stream = torch.cuda.Stream(device=dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                call = bind(fn, inputs, case)
        try:
            timing = time_call(call, self.settings.timing, dev, stream, *self._nvml_watchers())
        except GraphCaptureError as e:
            raise Unsupported(f"{e}; time it with CUDA events (timing.cuda_graph: false)") from None
        s = summarize(timing.samples_ms)
        rec.median_ms, rec.p20_ms, rec.p80_ms, rec.min_ms, rec.mean_ms, rec.samples = (
            s.median_ms, s.p20_ms, s.p80_ms, s.min_ms, s.mean_ms, s.samples)
        rec.samples_ms = [round(x, 6) for x in timing.samples_ms]
        rec.timing_method = timing.method
        if timing.method.endswith(("_unheld", "_call_syncs")):
            # asked to hold the stream, the timer could not: say so where a reader of the table looks, since
            # the samples now hold whatever time the host adds between the events
            _add_note(rec, f"timed {timing.method}: {TIMING_METHODS[timing.method]}")
        elif timing.hold_timeouts:  # the samples stand (those batches were discarded), but the host struggled
            _add_note(rec, f"{timing.hold_timeouts} held batch{'es' if timing.hold_timeouts > 1 else ''} timed out "
                           "and were discarded (a slow or busy host)")
        rec.set_rates()
        rec.noise_pct = noise_pct(timing.samples_ms)
        rec.host_ms = timing.host_ms
        rec.launch_bound = None if timing.host_ms is None else timing.host_ms > s.median_ms
        rec.pct_peak_flops, rec.pct_hbm = percent_of_roofs(rec.tflops, rec.hbm_gbps, self.ceilings, rec.case.dtype)
        rec.avg_power_w = timing.avg_power_w
        rec.energy_j = energy_per_call_j(timing.avg_power_w, s.median_ms)
        rec.tflop_per_j = tflop_per_j(rec.flops, rec.energy_j)
        rec.sm_clock_mhz = timing.sm_clock_mhz
        try:  # a description that fails (or runs long) costs the description, not the measurement
            rec.backend_config = cut(backend.config_description() or "", CONFIG_CHARS)
        except Exception as e:  # noqa: BLE001
            rec.backend_config = f"config_description() failed: {error_reason(e, 200)}"
