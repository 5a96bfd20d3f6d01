"""Test backends that misbehave on purpose (crash, hang, raise), registered explicitly.

Worker processes import flashbench fresh, so these are registered through the plugin hook: run
with ``FLASHBENCH_PLUGINS=fake_backends`` and this directory on ``PYTHONPATH`` (the local
executor also passes the driver's ``sys.path`` to its workers). Importing this module calls
``flashbench.backends.register`` for each backend below.

Every backend reports the pid of the process that measured it in ``backend_config``, so tests
can tell which worker ran what.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from functools import partial

from flashbench.backends import register
from flashbench.backends.base import Backend
from flashbench.attention.reference import naive_attention


class _Fake(Backend):
    devices = ("cuda", "cpu")
    description = "test backend"

    def __init__(self, name: str):
        self.name = name

    def config_description(self) -> str:
        return f"pid={os.getpid()}"

    def ok_fn(self, case):
        return partial(naive_attention, causal=case.causal)


class FakeOk(_Fake):
    """Correct and quick: naive attention."""

    def prepare(self, case, device):
        return self.ok_fn(case)


class FakeSlow(_Fake):
    """Correct, but prepare() sleeps FAKE_SLOW_S seconds (default 0.4) per task."""

    def prepare(self, case, device):
        time.sleep(float(os.environ.get("FAKE_SLOW_S", "0.4")))
        return self.ok_fn(case)


class FakeSleep(_Fake):
    """Correct, and every call lasts FAKE_SLEEP_MS milliseconds (default 2): it sleeps, then waits out
    the last half millisecond, and computes attention only once (its inputs do not change within a
    task). Its time is a deadline's, which other load on the machine barely moves, unlike CPU-bound
    attention (for tests of the gate on real runs)."""

    def prepare(self, case, device):
        pause = float(os.environ.get("FAKE_SLEEP_MS", "2")) / 1e3
        attention, out = self.ok_fn(case), []

        def call(*args, **kw):
            deadline = time.perf_counter() + pause
            if not out:
                out.append(attention(*args, **kw))
            time.sleep(max(0.0, deadline - time.perf_counter() - 5e-4))
            while time.perf_counter() < deadline:
                pass
            return out[0]

        return call


class FakeAbort(_Fake):
    """os.abort(): the process dies of SIGABRT, after a line on stderr."""

    def prepare(self, case, device):
        print("fake_abort: something went badly wrong, aborting", file=sys.stderr, flush=True)
        os.abort()


class FakeExit(_Fake):
    """os._exit(3) without a word on stdout, one line on stderr."""

    def prepare(self, case, device):
        print("CUDA error: an illegal memory access was encountered (fake)", file=sys.stderr, flush=True)
        os._exit(3)


class FakeSegv(_Fake):
    """Reads address 0: SIGSEGV."""

    def prepare(self, case, device):
        ctypes.string_at(0)


class FakeHang(_Fake):
    """Never returns (for the timeout)."""

    def prepare(self, case, device):
        print("fake_hang: sleeping forever", file=sys.stderr, flush=True)
        while True:
            time.sleep(1)


class FakeRaise(_Fake):
    """An ordinary Python exception: an ``error`` row, the worker lives on."""

    def prepare(self, case, device):
        raise ValueError("fake_raise: this backend always fails")


class FakeCudaError(_Fake):
    """An exception that reads like a sticky CUDA error: the worker must be retired after it."""

    def prepare(self, case, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (fake)")


class FakeCompiling(_Fake):
    """Declares a compile key (the head dim) for flashbench.execute.precompile. prepare() appends
    "pid label" to the file named by FAKE_COMPILE_LOG; seq_len_q 24 raises, 40 hangs."""

    def compile_key(self, case):
        return (case.head_dim, case.causal)

    def prepare(self, case, device):
        log = os.environ.get("FAKE_COMPILE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {case.label()}\n")
        if case.seq_len_q == 24:
            raise ValueError("fake_compiling: this shape does not compile")
        if case.seq_len_q == 40:
            while True:
                time.sleep(1)
        return self.ok_fn(case)


for _b in (FakeCompiling("fake_compiling"), FakeOk("fake_ok"), FakeSlow("fake_slow"), FakeSleep("fake_sleep"),
           FakeAbort("fake_abort"), FakeExit("fake_exit"),
           FakeSegv("fake_segv"), FakeHang("fake_hang"), FakeRaise("fake_raise"), FakeCudaError("fake_cuda_error")):
    register(_b)

FAKE_NAMES = tuple(n for n in ("fake_compiling", "fake_ok", "fake_slow", "fake_sleep", "fake_abort", "fake_exit", "fake_segv", "fake_hang",
                               "fake_raise", "fake_cuda_error"))


def unregister() -> None:
    """Undo this plugin in the current process (tests call it on teardown)."""
    from plugin_teardown import unregister_plugin

    unregister_plugin(__name__, FAKE_NAMES)
