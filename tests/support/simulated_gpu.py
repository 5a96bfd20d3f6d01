"""A simulated GPU for the timer's tests (no CUDA needed).

Every enqueued operation (flush, event record, kernel) gets a start time on one GPU timeline, at the
earliest when it is enqueued (real ``time.perf_counter``) and after the previous one; while the
stream is held nothing starts before the release. Events read their start times.
"""
import time

import torch

from flashbench.measure import timer
from flashbench.measure.stream_hold import StreamHold

HOST_S = 0.002      # the host's cost of one call
KERNEL_MS = 0.05    # the GPU's
FLUSH_MS = 0.02


def now_ms() -> float:
    return time.perf_counter() * 1e3


class FakeGpu:
    def __init__(self):
        self.free = 0.0
        self.held = False
        self.pending = []

    def enqueue(self, duration_ms, event=None):
        if self.held:
            self.pending.append((duration_ms, event))
        else:
            self._run(duration_ms, event, now_ms())

    def _run(self, duration_ms, event, t):
        start = max(self.free, t)
        self.free = start + duration_ms
        if event is not None:
            event.t = start

    def release(self):
        self.held = False
        t = now_ms()
        for duration_ms, event in self.pending:
            self._run(duration_ms, event, t)
        self.pending = []

    def synchronize(self, *_):
        if self.held:
            raise AssertionError("synchronize while the stream is held would hang a real GPU")
        wait = self.free - now_ms()
        if wait > 0:
            time.sleep(wait / 1e3)


class FakeHold:
    def __init__(self, gpu):
        self.gpu, self.timeout_ms, self.expired, self.holds = gpu, None, False, 0

    def hold(self, timeout_ms):
        self.gpu.held, self.timeout_ms, self.expired = True, timeout_ms, False
        self.holds += 1

    def expire(self):
        """What the kernel's timeout does: the GPU starts on its own."""
        self.expired = True
        self.gpu.release()

    def release(self):
        if self.gpu.held:
            self.gpu.release()

    def timed_out(self):
        return self.expired


def simulated_gpu(monkeypatch) -> "FakeGpu":
    """torch.cuda's events and synchronisation, the timer's L2 flush and the stream hold, on a FakeGpu."""
    g = FakeGpu()
    g.hold = FakeHold(g)

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            g.enqueue(0.0, self)

        def elapsed_time(self, other):
            return other.t - self.t

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", g.synchronize)
    monkeypatch.setattr(timer, "_L2Flusher", lambda device: (lambda: g.enqueue(FLUSH_MS)))
    monkeypatch.setattr(StreamHold, "for_device", classmethod(lambda cls, device: g.hold))
    return g


def slow_host_call(g):
    def call():
        time.sleep(HOST_S)
        g.enqueue(KERNEL_MS)
    return call
