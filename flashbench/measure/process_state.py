"""The process state a backend's call may change, captured before a task and put back after it.

A measuring worker runs many tasks, one backend after another, and the inprocess executor runs
them in the driver itself. A backend that flips a process-wide switch and leaves it flipped
(``torch.set_grad_enabled(False)``, ``torch.set_default_dtype``, ``torch.set_num_threads``, the TF32
and determinism flags, ``os.chdir``) would change what every later task measures, or where the
driver writes its results: with grad mode left off, the next backend's ``fwd_bwd`` failed with
"element 0 of tensors does not require grad"; with the working directory changed, a relative
``--out`` no longer existed and the sweep stopped with a traceback.

:meth:`ProcessState.capture` reads the switches; :meth:`ProcessState.restore` sets back those that
changed and names them. Environment variables are not restored: libraries set them once, at import,
for the life of the process (a worker's replacement gets the driver's environment anew).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch


def _cuda_matmul_tf32() -> bool:
    return torch.backends.cuda.matmul.allow_tf32


def _set_cuda_matmul_tf32(v: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = v


def _cudnn(name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    return (lambda: getattr(torch.backends.cudnn, name)), (lambda v: setattr(torch.backends.cudnn, name, v))


def _matmul_flag(name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    return (lambda: getattr(torch.backends.cuda.matmul, name)), \
        (lambda v: setattr(torch.backends.cuda.matmul, name, v))


def _chdir(path: str) -> None:
    os.chdir(path)


# name -> (read, write); a switch this torch does not have is left out
_SWITCHES: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "working directory": (os.getcwd, _chdir),
    "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
    "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
    "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
    "torch.are_deterministic_algorithms_enabled()": (
        lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "torch.backends.cuda.matmul.allow_tf32": (_cuda_matmul_tf32, _set_cuda_matmul_tf32),
    "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction":
        _matmul_flag("allow_fp16_reduced_precision_reduction"),
    "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction":
        _matmul_flag("allow_bf16_reduced_precision_reduction"),
    "torch.backends.cudnn.allow_tf32": _cudnn("allow_tf32"),
    "torch.backends.cudnn.benchmark": _cudnn("benchmark"),
    "torch.backends.cudnn.deterministic": _cudnn("deterministic"),
    "torch.backends.cudnn.enabled": _cudnn("enabled"),
    "torch.is_anomaly_enabled()": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
}
if hasattr(torch, "get_default_device") and hasattr(torch, "set_default_device"):
    _SWITCHES["torch.get_default_device()"] = (torch.get_default_device, torch.set_default_device)


@dataclass
class ProcessState:
    values: dict[str, Any]

    @classmethod
    def capture(cls) -> "ProcessState":
        values = {}
        for name, (read, _) in _SWITCHES.items():
            try:
                values[name] = read()
            except Exception:  # noqa: BLE001 - a switch that cannot be read (a deleted cwd) is not restored
                continue
        return cls(values)

    def restore(self) -> list[str]:
        """Set back every switch that changed since :meth:`capture`; the names of those that had."""
        changed = []
        for name, before in self.values.items():
            read, write = _SWITCHES[name]
            try:
                now = read()
            except Exception:  # noqa: BLE001 - e.g. the working directory was removed
                now = None
            if now == before:
                continue
            changed.append(name)
            try:
                write(before)
            except Exception:  # noqa: BLE001 - restoring is best effort; the change is still reported
                pass
        return changed

