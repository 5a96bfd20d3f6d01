"""The one protocol between the driver and its child processes (measuring workers, compile
processes): length-prefixed pickles over the child's stdin and stdout.

Children keep their own stdout for the protocol only: :func:`claim_stdio` moves it aside and points
file descriptor 1 at stderr, so whatever a library or a backend prints goes to the child's log,
never into the protocol. :func:`die_with_parent` makes a child die with the driver, and
:func:`kill_group` ends a child with whatever it started.
"""
from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys

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


def claim_stdio() -> tuple:
    """(protocol in, protocol out) for a child: the original stdin/stdout; fd 1 then writes to
    stderr and fd 0 reads nothing, so stray prints and reads never touch the protocol."""
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    return proto_in, proto_out


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the driver dies (so a killed sweep leaves no workers)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def kill_group(p: subprocess.Popen, wait_s: float = 10.0) -> int | None:
    """Kill a child started in its own session (``start_new_session=True``) and everything in its process
    group (a process it forked and left behind would live on, holding its pipes), then reap it; its exit
    code, None if it did not end within ``wait_s``. The group is killed only while the child is unreaped:
    until then its pid, and so its group id, cannot be another process's."""
    if p.returncode is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            try:
                p.kill()
            except OSError:
                pass
    try:
        return p.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None
