"""Backends that misbehave inside their attention *call* (not in ``prepare``), for the sweep resilience
tests (tests/unit/test_sweep_resilience_audit.py). Registered through the plugin hook like
``fake_backends``: ``FLASHBENCH_PLUGINS=misbehaving_backends`` with tests/support on ``PYTHONPATH``.

Each backend's call first computes the right answer (naive attention), then does its one bad thing.
``backend_config`` reports the measuring pid (``pid=N``), like the fakes.
"""
from __future__ import annotations

import os
import time
from functools import partial

import torch

from flashbench.backends import register
from flashbench.backends.base import Backend, Unsupported
from flashbench.attention.reference import naive_attention


class _Bad(Backend):
    devices = ("cuda", "cpu")
    description = "misbehaving test backend"

    def __init__(self, name: str, call=None):
        self.name = name
        self._call = call

    def config_description(self) -> str:
        return f"pid={os.getpid()}"

    def prepare(self, case, device):
        good, call = partial(naive_attention, causal=case.causal), self._call
        return lambda *args: call(good, *args)


def _grad_off(good, *a):
    torch.set_grad_enabled(False)
    return good(*a)


def _chdir(good, *a):
    os.chdir("/")
    return good(*a)


def _threads(good, *a):
    torch.set_num_threads(3)
    return good(*a)


def _keyboard_interrupt(good, *a):
    raise KeyboardInterrupt()


def _fork_then_abort(good, *a):
    """A child forked (no exec) keeps the worker's pipe open; the worker then dies. The child's pid goes to
    the file named by MISBEHAVE_PID_FILE."""
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(1)
    path = os.environ.get("MISBEHAVE_PID_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")
    os.abort()


def _close_pipe_then_exit(good, *a):
    """Closes every descriptor above stderr (the worker's protocol pipes among them), then exits with code 5
    a moment later: the driver sees the end of its pipe before the process has ended."""
    os.closerange(3, 4096)
    time.sleep(0.2)
    os._exit(5)


def _print_a_lot(good, *a):
    os.write(2, b"x" * 100_000 + b"\n")
    return good(*a)


def _remove_results(good, *a):
    import shutil

    shutil.rmtree(os.environ["MISBEHAVE_RESULTS_DIR"], ignore_errors=True)
    return good(*a)


CALLS = {
    "bad_none": lambda good, *a: None,
    "bad_tuple": lambda good, *a: (good(*a), None),
    "bad_shape": lambda good, *a: good(*a)[..., :-1],
    "bad_dtype": lambda good, *a: good(*a).to(torch.float64),
    "bad_complex": lambda good, *a: good(*a).to(torch.complex64),
    "bad_detached": lambda good, *a: good(*a).detach(),
    "bad_grad_off": _grad_off,
    "bad_chdir": _chdir,
    "bad_threads": _threads,
    "bad_keyboard_interrupt": _keyboard_interrupt,
    "bad_fork_then_abort": _fork_then_abort,
    "bad_close_pipe_then_exit": _close_pipe_then_exit,
    "bad_print_a_lot": _print_a_lot,
    "bad_remove_results": _remove_results,
}


class PrepareReturnsNone(_Bad):
    def prepare(self, case, device):
        return None


class HugeUnsupported(_Bad):
    def prepare(self, case, device):
        raise Unsupported("u" * (1 << 20))


class HugeConfig(_Bad):
    def prepare(self, case, device):
        return partial(naive_attention, causal=case.causal)

    def config_description(self) -> str:
        return "c" * (1 << 20)


class FailingConfig(HugeConfig):
    def config_description(self) -> str:
        raise RuntimeError("config_description broke")


class RaisingReason(_Bad):
    def unsupported_reason(self, case, device):
        raise RuntimeError("unsupported_reason broke")


class OddReason(_Bad):
    """A huge reason for fwd, a non-str one for the other modes."""

    def unsupported_reason(self, case, device):
        return "r" * (1 << 20) if case.mode == "fwd" else 42


class RaisingCompileKey(HugeConfig):
    def config_description(self) -> str:
        return ""

    def compile_key(self, case):
        raise RuntimeError("compile_key broke")


BACKENDS = [_Bad(name, call) for name, call in CALLS.items()] + [
    PrepareReturnsNone("bad_prepare_none"), HugeUnsupported("bad_huge_unsupported"), HugeConfig("bad_huge_config"),
    FailingConfig("bad_failing_config"), RaisingReason("bad_raising_reason"), OddReason("bad_odd_reason"),
    RaisingCompileKey("bad_compile_key")]
for _b in BACKENDS:
    register(_b)
NAMES = tuple(b.name for b in BACKENDS)


def unregister() -> None:
    """Undo this plugin in the current process (tests call it on teardown)."""
    from plugin_teardown import unregister_plugin

    unregister_plugin(__name__, NAMES)
