"""The process that ``ncu`` profiles: ``python -m flashbench.profile.ncu_child '<json>'``.

JSON: ``{"backend": NAME, "cases": [case dicts], "seed": 0, "warmup": 2, "result": PATH}``.
For each case: prepare, fresh inputs, bind the mode's call, warm up ``warmup`` times (outside
any profiled region), then ``cudaProfilerStart``, a marker kernel (``torch.cuda._sleep``: its
kernel ``spin_kernel`` separates tasks in ncu's output), **one** call, synchronize,
``cudaProfilerStop``. The marker is launched even when the task failed, so that the parent can
still attribute the kernels of the other tasks (see :mod:`flashbench.profile.ncu`).
``PATH`` receives ``{"tasks": [{"status", "reason"}]}``, rewritten after every task, so a crash
still leaves the tasks done so far. Exit status 0 unless the arguments are unusable.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _write(path: Path, tasks: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tasks": tasks}))
    tmp.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flashbench.profile.ncu_child '<json>'", file=sys.stderr)
        return 2
    args = json.loads(argv[0])
    import torch

    from .. import backends
    from ..backends.base import Unsupported
    from ..attention.inputs import make_inputs
    from ..backends.calling import bind
    from ..model.case import Case
    from ..measure.measurer import free_memory, is_oom

    try:  # backends registered by plugins (FLASHBENCH_PLUGINS) exist in the parent: load them here too
        from ..backends.plugins import load_plugins

        load_plugins()
    except ImportError:
        pass
    result = Path(args["result"])
    done: list[dict] = []
    backend = backends.get(args["backend"])
    device = "cuda"
    for cd in args["cases"]:
        case = Case(**cd)
        entry = {"status": "ok", "reason": ""}
        call = None
        try:
            why = backend.unsupported_reason(case, device)
            if why:
                raise Unsupported(why)
            fn = backend.prepare(case, device)
            inputs = make_inputs(case, device, int(args.get("seed", 0)))
            call = bind(fn, inputs, case)
            for _ in range(max(1, int(args.get("warmup", 2)))):
                call()
            torch.cuda.synchronize()
        except Unsupported as e:
            entry, call = {"status": "skipped", "reason": str(e)}, None
        except Exception as e:  # noqa: BLE001
            entry, call = {"status": "oom" if is_oom(e) else "error", "reason": f"{type(e).__name__}: {str(e)[:300]}"}, None
        torch.cuda.profiler.start()
        try:
            torch.cuda._sleep(1000)  # the task marker
            if call is not None:
                out = call()
                torch.cuda.synchronize()
                del out
        except Exception as e:  # noqa: BLE001
            entry = {"status": "oom" if is_oom(e) else "error", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        finally:
            try:
                torch.cuda.synchronize()
            finally:
                torch.cuda.profiler.stop()
        done.append(entry)
        _write(result, done)
        del call
        free_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
