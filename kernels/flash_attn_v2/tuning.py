"""Configuration tuples as ``triton.Config``s, which of them the tuner may try for given inputs, and the tuners.

A configuration tuple (``spaces.py``) becomes one ``triton.Config`` per tile path it may take: the
pointer path (``USE_TMA=False``) and the TMA path; warp-specialised (``WS``) and Gluon (``GLUON``)
entries exist on the TMA path only.  The pruner keeps, for the inputs' tuning key, the entries of
the head-dim class on the allowed path, warp-specialised and Gluon entries only where they run, and
tiles no larger than the sequences.  The tuners (``_tuner.InterleavedTuner``) cache one choice per
key; the key holds every launch argument that changes which configurations are offered or how they
run (sequence buckets, allowed paths, head dim, causal, window, packed, fp32, the launch order, and for
the forward EVEN_KV and whether the Gluon forward may run).  A packed batch's program table depends on
the configuration's block size: the launchers here put the table for the configuration in place of
its ``SequenceBlocks`` argument.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import triton

from .._prepared import PreparedLaunch
from .._schedule import SequenceBlocks
from .._tuner import InterleavedTuner
from .._validate import interpreting
from . import sm90, sm90_persistent
from .kernels import bwd_dkdv_kernel, bwd_dq_kernel, fwd_kernel
from .spaces import DKDV_SPACE, DQ_SPACE, FWD_SKIP, FWD_SPACE, GLUON, GLUON_MIN_NQ, PREFERRED_PATH, WS

# TMA_OK, a tuning key: which tile paths the inputs allow
PTR_ONLY, BOTH, TMA_ONLY = 0, 1, 2


def head_dim_class(head_dim: int) -> str:
    return "small" if head_dim <= 64 else ("mid" if head_dim <= 128 else "large")


def is_ws(t) -> bool:
    return len(t) > 4 and t[4] == WS


def is_gluon(t) -> bool:
    return len(t) > 4 and t[4] == GLUON


def signature(cfg: triton.Config) -> tuple:
    """The configuration tuple a ``triton.Config`` was made from (its tile path left out)."""
    base = (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
    return base + ((WS,) if cfg.kwargs.get("WARP_SPEC") else (GLUON,) if cfg.kwargs.get("GLUON") else ())


def to_config(t, use_tma: bool) -> triton.Config:
    tma_only = is_ws(t) or is_gluon(t)
    kwargs = {"BLOCK_M": t[0], "BLOCK_N": t[1], "USE_TMA": bool(use_tma) or tma_only}
    if is_ws(t):
        kwargs["WARP_SPEC"] = True
    if is_gluon(t):
        kwargs["GLUON"] = True
    return triton.Config(kwargs, num_warps=t[2], num_stages=t[3])


def all_configs(space: dict) -> list:
    """Every entry of a space, once per tile path it may take."""
    seen, out = set(), []
    for lst in space.values():
        for t in lst:
            if tuple(t) not in seen:
                seen.add(tuple(t))
                one_path = is_ws(t) or is_gluon(t)
                out += [to_config(t, True)] if one_path else [to_config(t, False), to_config(t, True)]
    return out


def launch_label(cfg: triton.Config, persistent: bool = False) -> str:
    """What a launch log records for a configuration: its parameters, named (``persistent``: a Gluon forward
    configuration run by its persistent build, ``fwd_persistent``)."""
    if cfg.kwargs.get("GLUON"):
        return sm90.config_label(cfg.num_stages, cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_M"], persistent)
    ws = ",warp_specialize=True" if cfg.kwargs.get("WARP_SPEC") else ""
    return (f"BLOCK_M={cfg.kwargs['BLOCK_M']},BLOCK_N={cfg.kwargs['BLOCK_N']},num_warps={cfg.num_warps},"
            f"num_stages={cfg.num_stages},tma={bool(cfg.kwargs['USE_TMA'])}{ws}")


def short_label(t) -> str:
    """A configuration tuple as a short name, e.g. ``128x128_w4_s2_ws`` (for tables and file names)."""
    return f"{t[0]}x{t[1]}_w{t[2]}_s{t[3]}" + (f"_{t[4]}" if len(t) > 4 else "")


def ws_refusals(tma_ok: int, ieee: bool, causal: bool, window: bool = False, varlen: bool = False) -> list[str]:
    """Why the warp-specialised forward cannot run a call (empty: it can).

    It needs a dense non-causal forward without a window on the TMA path (Hopper, aligned inputs) with
    16-bit dots (a window or a packed batch needs loop bounds per block; not built).  Triton
    3.6 specialises a loop on sm_90 only with 4 warps (one producer warp group and two consumer warp
    groups of BLOCK_M / 2 rows each, 12 warps in all), and only when the kernel has no second loop.
    A causal forward would have to mask every block in that one loop (a branch to an unmasked body
    inside it does not compile); measured that way it lost to the two-loop kernel (DESIGN.md), so
    causal forwards are never warp-specialised.
    """
    why = []
    if tma_ok == PTR_ONLY:
        why.append("these tensors allow only the pointer path (TMA needs capability >= 9 and 16-byte aligned views)")
    if ieee:
        why.append("fp32 inputs (16-bit dots only)")
    if causal:
        why.append("a causal call (the warp-specialised forward is non-causal only)")
    if window:
        why.append("a sliding window")
    if varlen:
        why.append("a variable-length (packed) batch")
    if interpreting():
        why.append("the CPU interpreter")
    return why


def ws_allowed(tma_ok: int, ieee: bool, causal: bool, window: bool = False, varlen: bool = False) -> bool:
    return not ws_refusals(tma_ok, ieee, causal, window, varlen)


def gluon_tile_reason(t: tuple, meta: dict) -> str | None:
    """Why a Gluon configuration tuple cannot run this call's head dim and inputs (``sm90.config_reason``;
    None: it can).  The tuner's pruner and a pinned configuration's check both ask here."""
    return sm90.config_reason(meta["HEAD_DIM"], t[1], t[3], t[0], window=meta.get("WINDOW", False),
                              varlen=meta.get("VARLEN", False))


def make_pruner(space: dict, prefer_tma: dict, skip: dict | None = None):
    """The head-dim class's configurations on the allowed paths (where both are, the class's path in
    ``prefer_tma``), blocks no larger than the sequences, less the ``skip`` entries for (class, causal)
    at Nq buckets from the given one up."""

    def prune(configs, named_args, **kwargs):
        cls = head_dim_class(kwargs["HEAD_DIM"])
        allowed = {tuple(t) for t in space[cls]}
        for (s_cls, s_causal, s_nq), entries in (skip or {}).items():
            if (s_cls, s_causal) == (cls, kwargs["CAUSAL"]) and named_args["NQ_BUCKET"] >= s_nq:
                allowed -= set(entries)
        paths = {PTR_ONLY: (False,), BOTH: (prefer_tma[cls],), TMA_ONLY: (True,)}[named_args["TMA_OK"]]
        ws_ok = ws_allowed(named_args["TMA_OK"], kwargs["IEEE"], kwargs["CAUSAL"], kwargs.get("WINDOW", False),
                           kwargs.get("VARLEN", False))
        # only the forward has SM90_OK; GLUON_MIN_NQ: see there
        gluon_ok = bool(named_args.get("SM90_OK", 0)) and named_args["NQ_BUCKET"] >= GLUON_MIN_NQ
        cand = [c for c in configs if signature(c) in allowed
                and (gluon_ok and gluon_tile_reason(signature(c), kwargs) is None if c.kwargs.get("GLUON") else
                     ws_ok if c.kwargs.get("WARP_SPEC") else c.kwargs["USE_TMA"] in paths)]
        nq, nkv = named_args["NQ_BUCKET"], named_args["NKV_BUCKET"]
        fit = [c for c in cand if c.kwargs["BLOCK_M"] <= max(16, nq) and c.kwargs["BLOCK_N"] <= max(16, nkv)]
        if fit:
            return fit
        smallest = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in cand)
        return [c for c in cand if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == smallest][:len(paths)]

    return prune


TUNE_KEY = ["NQ_BUCKET", "NKV_BUCKET", "TMA_OK", "HEAD_DIM", "CAUSAL", "WINDOW", "VARLEN", "IEEE", "GROUP_PROGRAMS"]


def lead(kernel) -> int:
    """How many leading arguments of an FA2 Triton kernel are the call's own tensors (those before CU_Q): what its
    prepared launch takes on each call."""
    return kernel.arg_names.index("CU_Q")


def prepare_triton(kernel):
    """``prepare(cfg, grid_fn, args, meta)``: ``kernel`` in configuration ``cfg`` with the arguments after the leading
    tensors fixed (a packed batch's program table for the configuration's block size in place of its
    ``SequenceBlocks``), as a ``PreparedLaunch`` taking ``args[:lead(kernel)]``."""
    n = lead(kernel)

    def prepare(cfg: triton.Config, grid_fn, args: tuple, meta: dict) -> PreparedLaunch:
        fixed = tuple(a.for_config(cfg.kwargs) if isinstance(a, SequenceBlocks) else a for a in args[n:])
        return PreparedLaunch(kernel, grid_fn(cfg.kwargs), fixed,
                              dict(meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages))

    return prepare


_prepare_triton_fwd = prepare_triton(fwd_kernel)
_K_ARG = fwd_kernel.arg_names.index("K")  # where ``fwd_persistent`` finds the keys among the forward's arguments


def fwd_persistent(cfg: triton.Config, args: tuple, meta: dict) -> bool:
    """Whether ``prepare_fwd`` runs this configuration with these ``fwd_kernel`` arguments and constexprs by the
    persistent build of the Gluon forward: a dense Gluon configuration it builds, up to
    ``sm90_persistent.MAX_KEYS`` keys, where it measured faster than one program a tile.  (It reads the key
    count off ``args`` and the head dim off ``meta``, and names no other argument.)"""
    if not cfg.kwargs.get("GLUON") or meta["VARLEN"]:
        return False
    return sm90_persistent.reason(meta["HEAD_DIM"], cfg.num_stages, cfg.kwargs["BLOCK_M"], varlen=False,
                                  n_kv=args[_K_ARG].shape[2]) is None


def prepare_fwd(cfg: triton.Config, grid_fn, args: tuple, meta: dict):
    """One forward configuration for these ``fwd_kernel`` arguments, prepared: ``run(q, k, v, o, lse)``.  GLUON
    entries run the Gluon Hopper kernel (its persistent build where ``fwd_persistent``; a packed batch's program
    table built here, for this call), the others ``fwd_kernel``."""
    if not cfg.kwargs.get("GLUON"):
        return _prepare_triton_fwd(cfg, grid_fn, args, meta)
    a = dict(zip(fwd_kernel.arg_names, args))
    window_left = a["WIN_LEFT"] if meta["WINDOW"] else -1
    causal, scale, group, stages = meta["CAUSAL"], a["sm_scale"], meta["GROUP_PROGRAMS"], cfg.num_stages
    if meta["VARLEN"]:  # the table of 128-row query blocks, the Gluon kernel's block
        cu_q, cu_k, table = a["CU_Q"], a["CU_K"], a["TABLE"].table(sm90.BLOCK)
        return lambda q, k, v, o, lse: sm90.forward_varlen(q, k, v, o, lse, cu_q, cu_k, table, causal, scale, group,
                                                           stages, window_left)
    q, k = a["Q"], a["K"]
    dense = (tuple(q.shape), k.shape[1], k.shape[2], causal, scale, group, stages, window_left, cfg.kwargs["BLOCK_M"])
    if fwd_persistent(cfg, args, meta):
        return sm90_persistent.prepare_forward(*dense, q.device.index)
    return sm90.prepare_forward(*dense)


def launcher(prepare, n_lead: int):
    """A tuner's ``launch(cfg, grid_fn, args, meta)`` from a ``prepare``: prepare, then run on the leading tensors."""

    def launch(cfg: triton.Config, grid_fn, args: tuple, meta: dict) -> None:
        prepare(cfg, grid_fn, args, meta)(*args[:n_lead])

    return launch


def _tuner(kernel, space, name: str, prepare, extra_key=(), skip=None) -> InterleavedTuner:
    return InterleavedTuner(kernel, all_configs(space), make_pruner(space, PREFERRED_PATH[name], skip),
                            TUNE_KEY + list(extra_key), launcher(prepare, lead(kernel)))


class Kernel(NamedTuple):
    """One FA2 kernel of the launcher: its tuner (which holds the choices made in this process), its space of
    configurations, and ``prepare(cfg, grid_fn, args, meta)``, which returns the launch of a configuration taking
    the call's leading tensors (``lead``)."""
    tuner: InterleavedTuner
    space: dict
    prepare: Callable


def _kernel(kernel, space, name: str, prepare, **tuner_kw) -> Kernel:
    return Kernel(_tuner(kernel, space, name, prepare, **tuner_kw), space, prepare)


# kernel name -> its Kernel (a Gluon forward configuration is the "fwd" kernel's: prepare_fwd runs it)
TUNERS = {
    "fwd": _kernel(fwd_kernel, FWD_SPACE, "fwd", prepare_fwd, extra_key=["EVEN_KV", "SM90_OK"], skip=FWD_SKIP),
    "bwd_dkdv": _kernel(bwd_dkdv_kernel, DKDV_SPACE, "bwd_dkdv", prepare_triton(bwd_dkdv_kernel)),
    "bwd_dq": _kernel(bwd_dq_kernel, DQ_SPACE, "bwd_dq", prepare_triton(bwd_dq_kernel)),
}
