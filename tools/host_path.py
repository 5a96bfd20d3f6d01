"""Where the host time of one backend's call goes: enqueue time per call, then a cProfile of the calls.

flashbench reports ``host_ms`` per row (the CPU time to enqueue one call while the GPU is held) and
flags ``launch_bound`` rows; this tool says what that time is made of. It builds the call exactly as
the harness does (``backends.get(NAME).prepare``, ``calling.bind``: fwd under ``no_grad``, fwd_bwd as
forward plus ``torch.autograd.grad``), warms it up (compiling and tuning), keeps the GPU busy with a
``torch.cuda._sleep`` kernel so that nothing waits for it, then

  1. times ``--calls`` enqueues with ``time.perf_counter`` (host ms per call, no profiler), and
  2. profiles the same number of enqueues with cProfile and prints the functions by own time and
     by cumulative time (the profiler slows Python code about twofold: read its shares, not its ms).

With ``--split`` (fwd_bwd cases) it times, instead of the profile, the parts of a fwd_bwd call side by side, in
interleaved holds: the whole call; its forward alone, with the graph recorded as in the call; its backward alone
(``torch.autograd.grad`` of a kept forward, as the ``bwd`` mode times it); and the floor of any attention written as a
Python ``torch.autograd.Function``: one whose forward only allocates its output and whose backward hands the gradient
on, through the same ``torch.autograd.grad`` (the autograd engine and the Function's Python calls, no kernel of its
own).  A backend in C++ (SDPA's) does not pay that floor; one in Python pays it on top of its launches.

Both enqueue in holds of ``--reps`` calls (12 by default): a sleep kernel is queued ahead of each batch and the
GPU synchronised after it.  One long hold for all the calls would not do: the GPU's launch queue holds about a
thousand kernels, and once it is full each launch waits for the GPU (200 fwd_bwd calls of seven launches each
read 20 ms a call).  A hold that ended before its batch was enqueued is counted and warned of.

    python tools/host_path.py --backend triton_fa2 --case B16,H16,N1024,D128,bf16,causal,fwd_bwd
    python tools/host_path.py --backend sdpa_flash --case B32,H16,N512,D128,bf16,fwd --top 20
    python tools/host_path.py --backend triton_fa2 --case B16,H16,N1024,D128,bf16,causal,fwd_bwd --split

Needs a CUDA GPU. Exit status 0, or 2 on a bad ``--case`` or ``--backend``, ``--split`` on a case that is not
fwd_bwd, a case the backend cannot run, or without a GPU.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import statistics
import sys
import time

import torch
from pydantic import TypeAdapter, ValidationError

from flashbench import backends
from flashbench.attention.inputs import make_inputs
from flashbench.backends.calling import bind
from flashbench.model.case import Case
from flashbench.model.fields import DTYPE_ALIASES, Batch, Heads, HeadDim, SeqLen, Tokens

_SIZES = {"B": Batch, "H": Heads, "Hkv": Heads, "N": SeqLen, "D": HeadDim, "T": Tokens}  # the config's domains
HOST_REPS = 12  # calls enqueued behind one hold: 12 fwd_bwd calls are under 100 launches, far from a full queue
HOLD_S, HOLD_S_A_CALL = 0.05, 0.01  # a hold's length: far above any host time a call (tens to hundreds of µs)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


_RANGE = re.compile(r"^(uniform|lognormal)(\d+)-(\d+)$")  # a packed case's lengths: uniform128-8192
_LIST = re.compile(r"^list(\d+(?:-\d+)*)$")                 # list128-512-2048 (list2048: equal lengths)
_EXAMPLES = "B16,H16,Hkv4,N1024,D128,bf16,causal,w4096,fwd_bwd or T16384,uniform128-8192,H16,D128,fwd_bwd"


def _lengths(part: str) -> str | None:
    """A packed case's length token as the ``lengths`` field (``flashbench.model.lengths``, seed 0), else None."""
    m = _RANGE.match(part)
    if m:
        return f"{m.group(1)}({m.group(2)}..{m.group(3)},seed=0)"
    m = _LIST.match(part)
    return f"list({m.group(1).replace('-', ',')})" if m else None


def parse_case(text: str) -> Case:
    """``B16,H16[,Hkv4],N1024,D128,bf16[,causal][,w4096],fwd_bwd``: a dense case (Nq = Nkv); ``wL`` with
    ``causal`` is the sliding window (L, 0) (each query sees itself and the L keys before it).

    ``T16384,uniform128-8192,H16,D128,...``: a packed (varlen) batch of T tokens, its sequences' lengths drawn as a
    ``varlen`` sweep draws them (seed 0) from ``uniformMIN-MAX``, ``lognormalMIN-MAX`` or ``listN-N-...`` (the
    lengths in turn; ``list2048``: equal lengths) until the T tokens are filled; B and N follow from them."""
    b = h = hkv = n = d = tokens = lengths = None
    dtype, causal, mode, left = "bfloat16", False, "fwd", -1
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in DTYPE_ALIASES:
            dtype = DTYPE_ALIASES[part]
        elif part == "causal":
            causal = True
        elif part[:1] == "w" and part[1:].isdigit():
            left = int(part[1:])
        elif part in ("fwd", "bwd", "fwd_bwd"):
            mode = part
        elif part.startswith("Hkv") and part[3:].isdigit():
            hkv = int(part[3:])
        elif part[:1] in "BHNDT" and part[1:].isdigit():
            value = int(part[1:])
            b, h, n, d, tokens = (value if part[0] == k else old for k, old in zip("BHNDT", (b, h, n, d, tokens)))
        elif (spec := _lengths(part)) is not None:
            lengths = spec
        else:
            raise ValueError(f"--case: cannot read {part!r} ({_EXAMPLES})")
    packed = tokens is not None or lengths is not None
    if packed and (tokens is None or lengths is None or b is not None or n is not None):
        raise ValueError("--case: a packed case takes T (its tokens) and its lengths (uniformMIN-MAX, lognormalMIN-MAX "
                         "or listN-N-...), and no B or N (they follow from them), e.g. T16384,uniform128-8192,H16,D128")
    if packed and None in (h, d):
        raise ValueError("--case needs H and D, e.g. T16384,uniform128-8192,H16,D128,fwd_bwd")
    if not packed and None in (b, h, n, d):
        raise ValueError("--case needs B, H, N and D, e.g. B16,H16,N1024,D128,bf16,causal,fwd_bwd")
    if left >= 0 and not causal:
        raise ValueError(f"--case: the window w{left} is a causal sliding window: add causal")
    for key, value in (("B", b), ("H", h), ("Hkv", hkv), ("N", n), ("D", d), ("T", tokens)):
        try:
            if value is not None:
                TypeAdapter(_SIZES[key]).validate_python(value)
        except ValidationError as e:
            raise ValueError(f"--case: {key}{value} {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    window = dict(window_left=left, window_right=0 if left >= 0 else -1)
    if packed:
        try:
            return Case.budgeted_varlen(lengths, tokens, h, hkv or h, d, dtype, causal, mode, **window)
        except ValueError as e:
            raise ValueError(f"--case: {e}") from None
    return Case(batch=b, heads=h, kv_heads=hkv or h, seq_len_q=n, seq_len_kv=n, head_dim=d, dtype=dtype,
                causal=causal, mode=mode, **window)


class Refused(Exception):
    """Why a tool cannot measure: it prints ``error: MESSAGE`` and exits with status 2."""


def case_and_backends(case_text: str, names: list[str]) -> tuple[Case, list]:
    """The case (``parse_case``) and the named backends, checked before anything touches the GPU; ``Refused`` for a
    bad case, an unknown backend, no CUDA GPU, or a case one of the backends cannot run (its reason)."""
    try:
        case = parse_case(case_text)
        chosen = [backends.get(n) for n in names]
    except (ValueError, KeyError) as e:
        raise Refused(e.args[0] if isinstance(e, KeyError) else str(e)) from None
    if not torch.cuda.is_available():
        raise Refused("needs a CUDA GPU")
    for name, backend in zip(names, chosen):
        why = backend.unsupported_reason(case, "cuda")
        if why:
            raise Refused(f"{name} cannot run {case.label()}: {why}")
    return case, chosen


def hold_gpu(seconds: float) -> None:
    """Queue a GPU kernel that spins for about ``seconds`` (1.98 GHz is the H100/H200 boost clock;
    a slower clock spins longer, which only helps)."""
    torch.cuda._sleep(int(seconds * 1.98e9))


def hold_seconds(reps: int) -> float:
    """How long one hold keeps the GPU busy: past the enqueueing of ``reps`` calls, with a wide margin."""
    return HOLD_S + reps * HOLD_S_A_CALL


def held_batch_us(fn, reps: int, profiler: cProfile.Profile | None = None) -> tuple[float, bool]:
    """Host µs a call of ``reps`` back-to-back calls of ``fn`` enqueued behind a GPU hold, and whether the hold had
    ended before the last one was enqueued (the GPU ran some of them: the batch may have waited for it).
    ``profiler``: enabled around the enqueues only (not the hold, nor the synchronisation after)."""
    hold_gpu(hold_seconds(reps))
    hold_done = torch.cuda.Event()
    hold_done.record()  # done when the hold is
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    us = (time.perf_counter() - t0) / reps * 1e6
    if profiler is not None:
        profiler.disable()
    short = hold_done.query()
    torch.cuda.synchronize()
    return us, short


def held_batches(fn, calls: int, reps: int, profiler: cProfile.Profile | None = None) -> tuple[list[float], int]:
    """``held_batch_us`` over holds of at most ``reps`` calls until ``calls`` are enqueued: (µs a call of each hold,
    the holds that ended early)."""
    us, short = [], 0
    for start in range(0, calls, reps):
        u, s = held_batch_us(fn, min(reps, calls - start), profiler)
        us.append(u)
        short += s
    return us, short


class _PassOn(torch.autograd.Function):
    """The least an attention written as a Python autograd Function costs the host: its forward allocates the
    output, its backward hands the incoming gradient on (``--split``'s floor)."""

    @staticmethod
    def forward(ctx, q):
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad):
        return grad


def split_calls(fn, inputs, case: Case) -> dict:
    """The parts of a fwd_bwd call, each a zero-argument call (see the module docstring), by label."""
    args, do, grads_of = inputs.args, inputs.do, inputs.differentiable()
    kept = fn(*args)  # the forward the backward-alone part differentiates again and again
    q = grads_of[0]
    return {
        "fwd_bwd (the call)": bind(fn, inputs, case),
        "forward, graph recorded": lambda: fn(*args),
        "backward (autograd.grad)": lambda: torch.autograd.grad(kept, grads_of, do, retain_graph=True),
        "floor: a Python autograd.Function": lambda: torch.autograd.grad(_PassOn.apply(q), (q,), do),
    }


def interleaved_medians(calls: dict, holds: int, reps: int) -> tuple[dict, int]:
    """Each call's median host µs a call over ``holds`` holds of ``reps`` calls, the calls taking turns hold by hold
    (the host's pace moves from one hold to the next), and the holds that ended early."""
    us = {name: [] for name in calls}
    short = 0
    for _ in range(holds):
        for name, call in calls.items():
            u, s = held_batch_us(call, reps)
            us[name].append(u)
            short += s
    return {name: statistics.median(v) for name, v in us.items()}, short


def print_split(label: str, medians: dict, holds: int, reps: int) -> None:
    print(f"{label}: host µs a call, GPU held (median of {holds} interleaved holds of {reps} calls)")
    width = max(map(len, medians))
    for name, us in medians.items():
        print(f"  {name:<{width}}  {us:8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="triton_fa2")
    ap.add_argument("--case", default="B16,H16,N1024,D128,bf16,causal,fwd_bwd")
    ap.add_argument("--calls", type=_positive, default=120, help="enqueues timed, then profiled")
    ap.add_argument("--reps", type=_positive, default=HOST_REPS, help="calls enqueued behind one GPU hold")
    ap.add_argument("--top", type=int, default=35, help="functions listed in each profile table")
    ap.add_argument("--split", action="store_true",
                    help="fwd_bwd: time its forward, its backward and a Python autograd Function's floor beside it")
    a = ap.parse_args()
    try:
        case, (backend,) = case_and_backends(a.case, [a.backend])
        if a.split and case.mode != "fwd_bwd":
            raise Refused(f"--split takes a fwd_bwd case, got {case.mode}")
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fn, inputs = backend.prepare(case, "cuda"), make_inputs(case, "cuda", seed=0)
    call = bind(fn, inputs, case)
    for _ in range(20):  # compile, tune, and fill the allocator's cache
        call()
    torch.cuda.synchronize()
    if a.split:
        calls = split_calls(fn, inputs, case)
        for part in calls.values():  # each part warmed up as the call was
            for _ in range(5):
                part()
        torch.cuda.synchronize()
        holds = max(1, a.calls // a.reps)
        medians, short = interleaved_medians(calls, holds, a.reps)
        print_split(f"{a.backend} {case.label()}", medians, holds, a.reps)
        if short:
            print(f"warning: {short} holds ended before their batch was enqueued: their figures may include waiting "
                  f"for the GPU", file=sys.stderr)
        return 0

    us, short = held_batches(call, a.calls, a.reps)
    print(f"{a.backend} {case.label()}: host {statistics.median(us) / 1e3:.3f} ms a call (median of {len(us)} holds "
          f"of up to {a.reps} calls; min {min(us) / 1e3:.3f}, max {max(us) / 1e3:.3f})")
    profiler = cProfile.Profile()
    _, short_profiled = held_batches(call, a.calls, a.reps, profiler)
    if short or short_profiled:
        print(f"warning: {short + short_profiled} holds ended before their batch was enqueued (a call that waits "
              f"for the GPU?): their figures may include waiting for it", file=sys.stderr)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(a.top)
    stats.sort_stats("cumulative").print_stats(a.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
