"""Clock and power under sustained load: is a backend slower, or does it run at a lower clock?

A GPU at its power limit (700 W on an H100 SXM) lowers its SM clock until the board's draw fits. A kernel
that draws more power for its work is then clocked lower, and takes longer for the same number of cycles.
This tool measures each backend's call of one case under the same sustained load, and splits its time
into clock and cycles:

  * each backend in turn runs the call back to back (CUDA events around each call, no L2 flush, no gaps
    but a host synchronisation every ``--batch-ms``, with the next batch already queued) for ``--settle``
    seconds, so that the clock settles to this call's load, then for ``--seconds`` more, the window;
  * NVML's SM clock and board power are sampled every 20 ms (``flashbench.profile.ceilings.NvmlWindow``,
    the sampler of ``flashbench env --ceilings``); the window's medians are reported;
  * per backend and round: the median ms a call, the SM clock (MHz), the board power (W), megacycles a
    call (ms x MHz / 1000: the call's time at a fixed clock) and millijoules a call (W x ms);
  * ``--rounds`` rounds (default 2), the backends' order rotated by one place a round
    (``flashbench.execute.order.rotated``, the sweep's rule), then per backend the median of its rounds,
    and each figure against the first backend's.

A backend whose time is higher but whose megacycles are not runs slower because of its clock. NVML's
power is the board's, averaged by the driver over its own window; the settle time covers it.

    python tools/sustained_clock.py --case B1,H16,N16384,D128,bf16,fwd --backends sdpa_cudnn,triton_fa2
    python tools/sustained_clock.py --case B4,H32,N4096,D64,causal,fwd --seconds 3 --rounds 4 --out clocks.json

Needs a CUDA GPU; NVML (nvidia-ml-py) gives the clock and power, shown as ``-`` without it. Exit status 0, or 2
on a bad option (an ``--out`` whose folder does not exist included), an unknown backend, a case a backend cannot
run, without a GPU, or when ``--out`` cannot be written (the table is printed first).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from flashbench.analysis.clocks import megacycles
from flashbench.attention.inputs import make_inputs
from flashbench.backends.calling import bind
from flashbench.execute.order import rotated
from flashbench.measure.environment import cuda_uuid, nvml_index_of
from flashbench.profile.ceilings import NvmlWindow, back_to_back, event_window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_path import Refused, case_and_backends  # noqa: E402  (the tools' one case syntax and its checks)

FIGURES = ("ms", "sm_clock_mhz", "power_w", "mcycles", "mj")


def window_figures(samples_ms: list[float], clock_mhz: float | None, power_w: float | None) -> dict:
    """One window's figures: the median ms a call, the clock and power given, megacycles and millijoules a
    call (None where NVML gave no clock or power)."""
    ms = statistics.median(samples_ms)
    return {"ms": ms, "sm_clock_mhz": clock_mhz, "power_w": power_w, "calls": len(samples_ms),
            "mcycles": megacycles(ms, clock_mhz) if clock_mhz is not None else None,
            "mj": ms * power_w if power_w is not None else None}


def run_window(call, settle_s: float, seconds: float, batch: int, nvml, now=time.perf_counter,
               enqueue=back_to_back) -> dict:
    """Runs ``call`` back to back for ``settle_s`` then ``seconds`` of wall time, ``batch`` calls between host
    synchronisations, always one batch queued behind the one waited for (so the GPU does not wait for the host,
    unless the host enqueues a call more slowly than the GPU runs it: a launch-bound call); returns ``window_figures`` of the calls that ended in the last ``seconds``, with ``nvml``'s
    (an ``NvmlWindow`` running) clock and power over them."""
    start = now()
    pending = enqueue(call, batch)
    samples: list[float] = []
    t_first = None
    while True:
        queued = enqueue(call, batch)
        pending[-1][1].synchronize()
        got, t0, t1 = event_window(pending, now())
        pending = queued
        if t0 >= start + settle_s:
            t_first = t0 if t_first is None else t_first
            samples += got
        if t1 >= start + settle_s + seconds and samples:
            break
    pending[-1][1].synchronize()  # the queued batch, outside the window
    return window_figures(samples, *nvml.between(t_first, t1))


def summary(rows: list[dict], names: list[str]) -> dict:
    """Per backend the median of its rounds' figures, and each against the first backend's (None where a
    figure is missing)."""
    out: dict = {}
    for name in names:
        mine = [r for r in rows if r["backend"] == name]
        out[name] = {k: (statistics.median(v) if (v := [r[k] for r in mine if r[k] is not None]) else None)
                     for k in FIGURES}
    first = out[names[0]]
    for name in names:
        out[name]["vs_first"] = {k: (out[name][k] / first[k] if out[name][k] is not None and first[k] else None)
                                 for k in FIGURES}
    return out


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], summ: dict, names: list[str]) -> str:
    lines = [f"{'backend':<14} {'round':>5} {'ms':>8} {'SM MHz':>7} {'W':>6} {'Mcycles':>8} {'mJ':>7} {'calls':>6}"]
    for r in rows:
        lines.append(f"{r['backend']:<14} {r['round']:>5} {r['ms']:>8.3f} {_fmt(r['sm_clock_mhz'], '7.0f')} "
                     f"{_fmt(r['power_w'], '6.0f')} {_fmt(r['mcycles'], '8.3f')} {_fmt(r['mj'], '7.2f')} {r['calls']:>6}")
    lines.append(f"\nmedian of the rounds, against {names[0]}:")
    lines.append(f"{'backend':<14} {'ms':>8} {'SM MHz':>7} {'W':>6} {'Mcycles':>8} {'mJ':>7}   "
                 f"{'time':>6} {'clock':>6} {'cycles':>6} {'power':>6}")
    for name in names:
        s, v = summ[name], summ[name]["vs_first"]
        lines.append(f"{name:<14} {s['ms']:>8.3f} {_fmt(s['sm_clock_mhz'], '7.0f')} {_fmt(s['power_w'], '6.0f')} "
                     f"{_fmt(s['mcycles'], '8.3f')} {_fmt(s['mj'], '7.2f')}   "
                     + " ".join(_fmt(v[k], '6.3f') for k in ("ms", "sm_clock_mhz", "mcycles", "power_w")))
    return "\n".join(lines)


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _rounds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="B1,H16,N16384,D128,bf16,fwd", help="B1,H16[,Hkv4],N16384,D128,bf16[,causal],fwd")
    ap.add_argument("--backends", default="sdpa_cudnn,triton_fa2", help="comma-separated; the first is the reference")
    ap.add_argument("--seconds", type=_positive, default=3.0, help="the measured window a backend and round")
    ap.add_argument("--settle", type=_positive, default=1.5, help="seconds of the same load before the window")
    ap.add_argument("--rounds", type=_rounds, default=2)
    ap.add_argument("--batch-ms", type=_positive, default=100.0, help="GPU time between host synchronisations")
    ap.add_argument("--out", help="write every round and the summary as JSON")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and what is wrong
        return 2 if e.code else 0
    names = [n.strip() for n in a.backends.split(",") if n.strip()]
    try:
        if not names or len(set(names)) != len(names):
            raise Refused(f"--backends: give one or more different backends, got {a.backends!r}")
        if a.out and not Path(a.out).resolve().parent.is_dir():
            raise Refused(f"--out: the folder {str(Path(a.out).resolve().parent)!r} does not exist")
        case, chosen = case_and_backends(a.case, names)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    inputs = make_inputs(case, "cuda", seed=0)
    calls, batches = {}, {}
    for name, backend in zip(names, chosen):
        calls[name] = call = bind(backend.prepare(case, "cuda"), inputs, case)
        for _ in range(3):  # compile and tune outside every window
            call()
        pairs = back_to_back(call, 5)
        torch.cuda.synchronize()
        est_ms = max(min(x.elapsed_time(y) for x, y in pairs), 1e-3)
        batches[name] = max(2, round(a.batch_ms / est_ms))
    rows = []
    with NvmlWindow(nvml_index_of(torch.cuda.current_device())) as nvml:
        for r in range(a.rounds):
            for name in rotated(names, r):
                got = run_window(calls[name], a.settle, a.seconds, batches[name], nvml)
                rows.append({"backend": name, "round": r + 1, **got})
    summ = summary(rows, names)
    print(f"{torch.cuda.get_device_name()}: {case.label()}, {a.seconds:g} s a window after {a.settle:g} s of settling")
    print(table(rows, summ, names))
    if a.out:
        doc = {"device": torch.cuda.get_device_name(), "device_uuid": cuda_uuid(torch.cuda.current_device()),
               "case": case.label(), "backends": names,
               "settings": {"seconds": a.seconds, "settle_s": a.settle, "rounds": a.rounds, "batch_ms": a.batch_ms},
               "rows": rows, "summary": summ}
        try:
            Path(a.out).write_text(json.dumps(doc, indent=1))
        except OSError as e:
            print(f"error: --out: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
