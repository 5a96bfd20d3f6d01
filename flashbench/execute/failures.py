"""What a lost worker left behind, in words: how the process ended, the last CUDA error in its
stderr, and a one-line tail of that stderr. Also which errors leave a CUDA context unusable.

Used by the local executor to write ``crashed``/``timeout`` rows and to retire a worker whose
context may be broken (sticky CUDA errors), so a broken context never costs more than one task.
"""
from __future__ import annotations

import re
import signal

from ..model.schema import Record

STDERR_TAIL_CHARS = 1500
# Errors after which a CUDA context must be assumed unusable (sticky errors): the worker is retired.
CUDA_FATAL = re.compile(
    r"CUDA error|illegal memory access|illegal instruction|device-side assert|unspecified launch failure|"
    r"misaligned address|CUDA_ERROR_|cudaError[A-Z]|uncorrectable ECC|launch timed out|"
    r"CUBLAS_STATUS_EXECUTION_FAILED|CUDNN_STATUS_EXECUTION_FAILED|hardware exception|"
    r"an illegal|Triton Error \[CUDA\]", re.IGNORECASE)
_CUDA_ERROR_LINE = re.compile(r"[^\n]*(CUDA error|cudaError|CUDA_ERROR_|illegal memory access|device-side assert|"
                              r"Triton Error \[CUDA\])[^\n]*", re.IGNORECASE)


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
