"""Where the host time of one backend's call goes: enqueue time per call, then a cProfile of the calls.

flashbench reports ``host_ms`` per row (the CPU time to enqueue one call while the GPU is held) and
flags ``launch_bound`` rows; this tool says what that time is made of. It builds the call exactly as
the harness does (``backends.get(NAME).prepare``, ``calling.bind``: fwd under ``no_grad``, fwd_bwd as
forward plus ``torch.autograd.grad``), warms it up (compiling and tuning), keeps the GPU busy with a
``torch.cuda._sleep`` kernel so that nothing waits for it, then

  1. times ``--calls`` enqueues with ``time.perf_counter`` (host ms per call, no profiler), and
  2. profiles the same number of enqueues with cProfile and prints the functions by own time and
     by cumulative time (the profiler slows Python code about twofold: read its shares, not its ms).

    python tools/host_path.py --backend triton_fa2 --case B16,H16,N1024,D128,bf16,causal,fwd_bwd
    python tools/host_path.py --backend sdpa_flash --case B32,H16,N512,D128,bf16,fwd --top 20

Needs a CUDA GPU. Exit status 0, or 2 on a bad ``--case`` or ``--backend``, a case the backend cannot run,
or without a GPU.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import torch
from pydantic import TypeAdapter, ValidationError

from flashbench import backends
from flashbench.attention.inputs import make_inputs
from flashbench.backends.calling import bind
from flashbench.model.case import Case
from flashbench.model.fields import DTYPE_ALIASES, Batch, Heads, HeadDim, SeqLen

_SIZES = {"B": Batch, "H": Heads, "Hkv": Heads, "N": SeqLen, "D": HeadDim}  # the config's domains


def parse_case(text: str) -> Case:
    """``B16,H16[,Hkv4],N1024,D128,bf16[,causal][,w4096],fwd_bwd``: a dense case (Nq = Nkv); ``wL`` with
    ``causal`` is the sliding window (L, 0) (each query sees itself and the L keys before it)."""
    b = h = hkv = n = d = None
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
        elif part[:1] in "BHND" and part[1:].isdigit():
            value = int(part[1:])
            b, h, n, d = (value if part[0] == k else old for k, old in zip("BHND", (b, h, n, d)))
        else:
            raise ValueError(f"--case: cannot read {part!r} (B16,H16,Hkv4,N1024,D128,bf16,causal,w4096,fwd_bwd)")
    if None in (b, h, n, d):
        raise ValueError("--case needs B, H, N and D, e.g. B16,H16,N1024,D128,bf16,causal,fwd_bwd")
    if left >= 0 and not causal:
        raise ValueError(f"--case: the window w{left} is a causal sliding window: add causal")
    for key, value in (("B", b), ("H", h), ("Hkv", hkv), ("N", n), ("D", d)):
        try:
            if value is not None:
                TypeAdapter(_SIZES[key]).validate_python(value)
        except ValidationError as e:
            raise ValueError(f"--case: {key}{value} {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return Case(batch=b, heads=h, kv_heads=hkv or h, seq_len_q=n, seq_len_kv=n, head_dim=d, dtype=dtype,
                causal=causal, mode=mode, window_left=left, window_right=0 if left >= 0 else -1)


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="triton_fa2")
    ap.add_argument("--case", default="B16,H16,N1024,D128,bf16,causal,fwd_bwd")
    ap.add_argument("--calls", type=int, default=100, help="enqueues timed, then profiled")
    ap.add_argument("--top", type=int, default=35, help="functions listed in each profile table")
    a = ap.parse_args()
    try:
        case, (backend,) = case_and_backends(a.case, [a.backend])
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    call = bind(backend.prepare(case, "cuda"), make_inputs(case, "cuda", seed=0), case)
    for _ in range(20):  # compile, tune, and fill the allocator's cache
        call()
    torch.cuda.synchronize()

    hold_gpu(2.0 + a.calls * 0.01)  # the calls queue behind it: the host never waits for the GPU
    t0 = time.perf_counter()
    for _ in range(a.calls):
        call()
    host_ms = (time.perf_counter() - t0) / a.calls * 1e3
    torch.cuda.synchronize()
    print(f"{a.backend} {case.label()}: host {host_ms:.3f} ms a call ({a.calls} enqueues, GPU held)")

    profiler = cProfile.Profile()
    hold_gpu(4.0 + a.calls * 0.02)
    profiler.enable()
    for _ in range(a.calls):
        call()
    profiler.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(a.top)
    stats.sort_stats("cumulative").print_stats(a.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
