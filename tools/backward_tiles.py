"""The Triton FA2 backward's tiles pinned one at a time: which dK/dV and which dQ configuration is fastest at a shape.

The Triton backward (the dK/dV and dQ kernels: what runs where the Gluon Hopper backward does not, such as head dim
256, GPUs before Hopper and ``FA2Options(backward="triton")``, the deterministic path) is tuned on the first call of
a shape among its space's entries (``spaces.DKDV_SPACE``, ``spaces.DQ_SPACE``, per head-dim class). The tuner times
each candidate in short bursts; this tool times fwd_bwd calls with the backward's configurations pinned, with
flashbench's held timer, so that a space can be checked against pinned measurements and given better entries:

  1. each dK/dV candidate pinned, dQ left to the tuner (the configuration and tile path it picked for the case);
  2. each dQ candidate, beside the fastest dK/dV configuration of step 1.

Candidates are the space's entries for the case's head dim and the ones given by ``--dkdv`` and ``--dq``
(``BLOCK_M,BLOCK_N,warps,stages``; for dK/dV BLOCK_N is the key rows a program owns and BLOCK_M the query rows a
step, for dQ BLOCK_M the query rows a program owns). Every call runs ``FA2Options(backward="triton")``, the tuned
one too, so a head dim the Gluon backward takes can be measured as well; the forward and the tile path are what the
tuner and the launcher choose. Each call is made once (compiling it) and its gradients compared with the tuned
call's (the largest absolute difference of dq, dk and dv; dq differs by its reduction order); a configuration that
does not compile or does not fit is reported and not timed. ``--rounds`` interleaved rounds (default 4) time the
tuned call and every candidate of a step, each round in another rotation. The table gives, per case, step and
configuration, the median of the round medians, TFLOP/s (flashbench's count), the time against the tuned call and
the SM clock it ran at, and the tile path (TMA or pointers) each backward kernel ran on. A pinned configuration runs
on the TMA path where the inputs allow it, while the tuner offers each kernel the path of ``spaces.PREFERRED_PATH``,
so a pinned entry and the tuner's pick of the same tile can differ by path: the path column says which ran. The
tuned call's launch log names the configurations it ran.

    python tools/backward_tiles.py --cases B4,H8,N4096,D256 B4,H8,N4096,D256,causal --out tiles.json
    python tools/backward_tiles.py --cases B4,H32,N4096,D64 --dkdv 64,64,8,2 --dq 128,64,8,2

Needs a CUDA GPU. Exit status 0, or 2 on a bad case or configuration, an ``--out`` in a folder that does not exist,
or without a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from flashbench.attention.inputs import make_inputs
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, spaces, tuning
from flashbench.measure.timer import time_cuda
from flashbench.model.config import Timing
from flashbench.model.flops import attention_flops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_path import parse_case  # noqa: E402  (the tools' one case syntax)
from kernel_ab import clock_sampler, interleaved, round_figures  # noqa: E402  (rotated rounds, their figures)

DEFAULT_CASES = ["B4,H8,N4096,D256", "B4,H8,N4096,D256,causal"]  # the fa2_d256 sweep's N 4k cells
ROUNDS = 4
TIMING = Timing(warmup_ms=20, budget_ms=100, min_samples=10, max_samples=300)
KERNELS = {"bwd_dkdv": spaces.DKDV_SPACE, "bwd_dq": spaces.DQ_SPACE}


def read_case(text: str):
    """``parse_case`` of one ``--cases`` entry; its messages name host_path's own ``--case`` option."""
    try:
        case = parse_case(text)
    except ValueError as e:
        raise ValueError(f"--cases {text}: {str(e).removeprefix('--case').lstrip(': ')}") from None
    if case.workload != "dense":
        raise ValueError(f"--cases {text}: dense cases only (the tiles are pinned through flash_attn_v2)")
    return case


def parse_config(text: str, option: str) -> tuple:
    """``BLOCK_M,BLOCK_N,warps,stages`` as a tuple, checked as ``FA2Options`` checks a pinned configuration."""
    try:
        config = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected four integers BLOCK_M,BLOCK_N,warps,stages") from None
    kernel = "bwd_dkdv" if option == "--dkdv" else "bwd_dq"
    try:
        FA2Options(configs={kernel: config})  # a backward configuration has four fields: a fifth (a tag) is refused
    except ValueError as e:
        raise ValueError(f"{option} {text!r}: {e}") from None
    return config


def candidates(kernel: str, head_dim: int, extra: list[tuple]) -> list[tuple]:
    """The space's entries of ``kernel`` for the head dim's class, then the extra ones not already there."""
    space = list(KERNELS[kernel][tuning.head_dim_class(head_dim)])
    return space + [c for c in extra if c not in space]


def _fields(log_entry: str) -> dict:
    return dict(part.split("=", 1) for part in log_entry.split(",") if "=" in part)


def launched(log_entry: str) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a launch log entry ("BLOCK_M=128,BLOCK_N=32,num_warps=8,...")."""
    fields = _fields(log_entry)
    return tuple(int(fields[k]) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))


def paths(log: dict) -> dict:
    """The tile path each backward kernel of a launch log ran on: "tma" or "ptr"."""
    return {k: "tma" if _fields(log[k]).get("tma") == "True" else "ptr" for k in KERNELS}


def call_for(case, leaves, do, configs: dict | None, launch_log: dict | None = None):
    """A fwd_bwd call of the case on the Triton backward: its configurations pinned (``configs``), or tuned (None);
    each call fills ``launch_log``."""
    options = FA2Options(backward="triton", configs=configs or {})

    def call():
        o = flash_attn_v2(*leaves, causal=case.causal, window=case.window, options=options, launch_log=launch_log)
        return torch.autograd.grad(o, leaves, do)
    return call


def step(case, leaves, do, tuned_call, reference, tuned_paths: dict, kernel: str, pinned: list[dict], rounds: int,
         time_one) -> list[dict]:
    """One step's rows: the tuned call and each pinned pair of configurations that runs (``kernel``'s varies),
    timed in interleaved rounds, with the largest gradient difference from the tuned call and the tile paths the
    kernels ran on; a pair that raises is a row with its error."""
    rows, fns = [], {"tuned": tuned_call}
    for configs in pinned:
        label = ",".join(map(str, configs[kernel]))
        row = {"config": label, "pinned": {k: list(c) for k, c in configs.items()}}
        log: dict[str, str] = {}
        call = call_for(case, leaves, do, configs, launch_log=log)
        try:
            got = call()
            torch.cuda.synchronize()
        except Exception as e:  # out of shared memory, a compile error: reported, not timed
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            continue
        fns[label] = call
        rows.append({**row, "paths": paths(log),
                     "max_grad_diff": max((a - b).abs().max().item() for a, b in zip(got, reference))})
    _, _, ms, mhz = round_figures(interleaved(fns, rounds, time_one))
    flops = attention_flops(case)
    out = [{"config": "tuned", "paths": tuned_paths, "max_grad_diff": 0.0}] + rows
    for row in out:
        name = row["config"]
        if name in ms:
            row.update(ms=ms[name], tflops=flops / ms[name] * 1e-9, vs_tuned=ms[name] / ms["tuned"],
                       sm_clock_mhz=mhz[name])
    return out


def measure(case, extra_dkdv: list[tuple], extra_dq: list[tuple], rounds: int, time_one) -> dict:
    """Both steps for one case: {"case", "tuned_launch", "dkdv": rows, "dq": rows, "best": (dkdv, dq)}."""
    inputs = make_inputs(dataclasses.replace(case, mode="fwd_bwd"), "cuda", seed=0)
    leaves = [t.detach().clone().requires_grad_() for t in inputs.args[:3]]
    do = inputs.do
    log: dict[str, str] = {}
    tuned_call = call_for(case, leaves, do, None, launch_log=log)
    reference = tuned_call()  # tunes the shape; the log names what the tuner chose
    tuned = {k: launched(log[k]) for k in KERNELS}
    tuned_paths = paths(log)
    dkdv_rows = step(case, leaves, do, tuned_call, reference, tuned_paths, "bwd_dkdv",
                     [{"bwd_dkdv": c}
                      for c in candidates("bwd_dkdv", case.head_dim, extra_dkdv)],
                     rounds, time_one)
    best_dkdv = fastest(dkdv_rows, "bwd_dkdv") or tuned["bwd_dkdv"]
    dq_rows = step(case, leaves, do, tuned_call, reference, tuned_paths, "bwd_dq",
                   [{"bwd_dkdv": best_dkdv, "bwd_dq": c} for c in candidates("bwd_dq", case.head_dim, extra_dq)],
                   rounds, time_one)
    return {"case": case.label(), "tuned_launch": {k: log[k] for k in ("fwd", *KERNELS)}, "dkdv": dkdv_rows,
            "dq": dq_rows, "best": {"bwd_dkdv": list(best_dkdv), "bwd_dq": list(fastest(dq_rows, "bwd_dq") or ())}}


def fastest(rows: list[dict], kernel: str) -> tuple | None:
    """The pinned ``kernel`` configuration of the fastest timed row (not the tuned call's), or None."""
    timed = [r for r in rows if "ms" in r and "pinned" in r]
    return tuple(min(timed, key=lambda r: r["ms"])["pinned"][kernel]) if timed else None


def print_table(results: list[dict]) -> None:
    # paths: the tile path of dK/dV, then of dQ, in that row's call
    print(f"{'step':<5} {'config':<24} {'paths':<7} {'ms':>8} {'TFLOP/s':>8} {'/tuned':>7} {'MHz':>6} "
          f"{'grad diff':>10}")
    for res in results:
        print(f"== {res['case']}  (tuned: dkdv {res['tuned_launch']['bwd_dkdv']}; dq {res['tuned_launch']['bwd_dq']})")
        for name in ("dkdv", "dq"):
            for r in res[name]:
                if "error" in r:
                    print(f"{name:<5} {r['config']:<24} {r['error']}")
                elif "ms" in r:
                    mhz = f"{r['sm_clock_mhz']:6.0f}" if r.get("sm_clock_mhz") else f"{'-':>6}"
                    path = f"{r['paths']['bwd_dkdv']}/{r['paths']['bwd_dq']}"
                    print(f"{name:<5} {r['config']:<24} {path:<7} {r['ms']:8.3f} {r['tflops']:8.1f} "
                          f"{r['vs_tuned']:7.3f} {mhz} {r['max_grad_diff']:10.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                    help="cases as B4,H8,N4096,D256[,bf16][,causal] (fwd_bwd is what is timed)")
    ap.add_argument("--dkdv", nargs="*", default=[], help="more dK/dV configurations: BLOCK_M,BLOCK_N,warps,stages")
    ap.add_argument("--dq", nargs="*", default=[], help="more dQ configurations: BLOCK_M,BLOCK_N,warps,stages")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds (default {ROUNDS})")
    ap.add_argument("--out", help="write every row as JSON here")
    a = ap.parse_args(argv)
    try:
        if a.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {a.rounds}")
        cases = [dataclasses.replace(read_case(text), mode="fwd_bwd") for text in a.cases]
        extra_dkdv = [parse_config(t, "--dkdv") for t in a.dkdv]
        extra_dq = [parse_config(t, "--dq") for t in a.dq]
        if a.out and not Path(a.out).resolve().parent.is_dir():
            raise ValueError(f"--out {a.out}: its folder does not exist")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: backward_tiles.py needs a CUDA GPU", file=sys.stderr)
        return 2
    clock = clock_sampler()
    results = []
    for case in cases:
        results.append(measure(case, extra_dkdv, extra_dq, a.rounds, lambda fn: time_cuda(fn, TIMING, clock=clock)))
    print_table(results)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rounds": a.rounds, "timing": TIMING.model_dump(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
