"""A measuring worker process: ``python -m flashbench.execute.worker``, started by the local executor.

It reads an init message (measurement settings, device, plugins), keeps one
:class:`~flashbench.measure.measurer.Measurer` for its whole life and measures the tasks the driver
sends, one at a time, answering each with its record (:mod:`flashbench.execute.protocol`). It runs
in its own session (Ctrl-C reaches only the driver), dies with the driver, and dumps a Python
traceback on fatal signals (``faulthandler``) into its log.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from .protocol import claim_stdio, die_with_parent, recv_msg, send_msg


def worker_main() -> int:
    """Entry point of a worker process."""
    t_start = time.perf_counter()
    proto_in, proto_out = claim_stdio()  # print() of any backend goes to the log, never into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    parent = os.getppid()
    die_with_parent()
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
    measurer.interrupts_are_errors = True  # SIGINT is ignored here: a KeyboardInterrupt is a backend's, an error row
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
            try:
                rec = measurer.measure(task)
            except BaseException as e:  # noqa: BLE001 - the measurer's own failure is this task's row too
                rec = _failed(task, e)
            send_msg(proto_out, {"type": "record", "id": msg["id"], "record": rec})


def _failed(task, e: BaseException):
    from ..measure.measurer import error_reason
    from ..model.schema import Record

    return Record.for_task(task, status="error", reason=f"the measuring worker failed: {error_reason(e)}")


if __name__ == "__main__":
    sys.exit(worker_main())
