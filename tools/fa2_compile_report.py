"""Compile the FA2 forward for sm_90 on any machine (no GPU needed) and report what Triton made of it.

Triton compiles for a target it is told about, and its wheel ships ptxas and cuobjdump, so the
Hopper binary of each forward configuration can be built and read on a CPU-only machine: registers
per thread, local-memory spills, shared memory, the warp count after warp specialisation, and
whether the warp-specialisation pass produced a ``ttg.warp_specialize`` op.  It also checks the
Triton 3.6 pass fault described in kernels/DESIGN.md: the second consumer warp group must not
build its query rows from the Q load's shifted row offset.

The kernel is compiled with the constexprs the launcher passes (``launch.kernel_meta`` with the
default ``FA2Options``) and the specialisation the JIT gives benchmark shapes: 16-byte divisible
pointers and strides, GROUP == 1, contiguous bf16 inputs; N_Q and N_KV are not specialised.

    python tools/fa2_compile_report.py             # every forward config, D 64 and 128 (and 96 for WS)
    python tools/fa2_compile_report.py --ws-only --json   # machine-readable, as tests/ uses it
    python tools/fa2_compile_report.py --ttgir DIR  # also write each config's TTGIR there
    python tools/fa2_compile_report.py --gluon [--json] [--stages 3] [--dtypes bf16,fp16] [--head-dims 256]
                                                    # the Gluon Hopper forward (sm90.py): D64, D128 dense
                                                    # and packed (varlen), D256 dense; and its persistent
                                                    # build (sm90_persistent.py, kernel
                                                    # "gluon_sm90_persistent"): D64, D128 dense
    python tools/fa2_compile_report.py --gluon-bwd [--json]  # the Gluon Hopper backward (sm90_bwd.py)
    python tools/fa2_compile_report.py --gluon-bwd --schedule --json  # and each key loop's schedule
    python tools/fa2_compile_report.py --triton-bwd [--json] [--head-dims 256]
                                                    # the Triton backward's dK/dV and dQ kernels: every entry
                                                    # of their spaces, on the tile path the tuner offers
                                                    # each (spaces.PREFERRED_PATH), causal and not

Each Gluon row carries ``sass_digest``, a hash of its SASS: run the report on two revisions and the builds whose
digests match compile to the same machine code (a change meant for some builds only touched no other).
The Gluon rows also say whether ptxas serialised the wgmma instructions (``wgmma_serialized``: a value
carried into the next loop iteration while its product is in flight does it, and costs the overlap).  Per key loop
they give the exponentials before its second wgmma wait and its local-memory loads and stores
(``loop_local_accesses``: spilled registers read or written at every step; the spill bytes do not say where);
with ``--schedule`` each key loop's order of product issues, waits, exponentials and stores (``loop_schedule``).

Run it with TRITON_INTERPRET unset: the interpreter replaces kernels by Python functions that
cannot be compiled.  Exit status 1 when a configuration fails to compile or shows shifted rows.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flashbench_kernels.flash_attn_v2 import FA2Options, launch, sm90, sm90_persistent, spaces, tuning
from flashbench_kernels.flash_attn_v2.kernels import bwd_dkdv_kernel, bwd_dq_kernel, fwd_kernel

SM90 = GPUTarget("cuda", 90, 32)
NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")  # ptxas, cuobjdump
GROUP_PROGRAMS = FA2Options().causal_group_programs  # the shipped causal launch order


def compile_fwd(config: tuple, head_dim: int, causal: bool, dtype: str = "bf16", even_kv: bool = True):
    """The forward kernel compiled for sm_90 with ``config`` = (BLOCK_M, BLOCK_N, warps, stages[, WS]),
    on the pointer path unless the configuration is TMA-only (warp-specialised)."""
    fn = fwd_kernel
    consts = {**launch.kernel_meta(head_dim, causal, False, GROUP_PROGRAMS), "EVEN_KV": even_kv, "GROUP": 1,
              "WARP_SPEC": False, **tuning.to_config(config, use_tma=False).kwargs}
    return _compile_triton(fn, consts, {**dict.fromkeys(("Q", "K", "V", "O"), f"*{dtype}"), "LSE": "*fp32"}, config)


def triton_constexprs(fn, consts: dict) -> dict:
    """``consts`` with the kernel's defaulted constexpr parameters it leaves out at their defaults, as a launch takes
    them; ValueError naming any constexpr parameter without a default that it leaves out (compiled as an i32
    argument instead, a branch on it would be a run-time one: not the kernel a launch builds)."""
    # the Python function's parameters (the JIT's and the interpreter's wrappers both keep it as ``fn``), a
    # constexpr being annotated so, as Triton reads it
    params = [p for p in inspect.signature(fn.fn).parameters.values() if "constexpr" in str(p.annotation)]
    missing = [p.name for p in params if p.default is p.empty and p.name not in consts]
    if missing:
        raise ValueError(f"{fn.fn.__name__}: constexpr arguments not given: {', '.join(missing)}")
    return {**{p.name: p.default for p in params if p.default is not p.empty}, **consts}


def _compile_triton(fn, consts: dict, pointers: dict, config: tuple):
    """A Triton FA2 kernel compiled for sm_90 with the JIT's specialisation of benchmark shapes: ``pointers`` (name:
    type) and the head count 16-byte divisible, as are the strides; ``sm_scale`` fp32, every other argument i32
    unless ``consts`` makes it a constexpr (``triton_constexprs``: the kernel's defaulted ones at their defaults);
    ``config``'s warps and stages."""
    consts = triton_constexprs(fn, consts)
    sig = {name: "i32" for name in fn.arg_names}
    sig.update(pointers, sm_scale="fp32")
    sig.update({name: "constexpr" for name in consts})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in fn.arg_names if n in pointers or n == "H" or n.startswith("stride_")}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=SM90, options=dict(num_warps=config[2], num_stages=config[3]))


TRITON_BWD = {"bwd_dkdv": (bwd_dkdv_kernel, spaces.DKDV_SPACE), "bwd_dq": (bwd_dq_kernel, spaces.DQ_SPACE)}


def compile_triton_bwd(name: str, config: tuple, head_dim: int, causal: bool, use_tma: bool, dtype: str = "bf16"):
    """The Triton backward's dK/dV (``name`` "bwd_dkdv") or dQ ("bwd_dq") kernel compiled for sm_90 with ``config``
    on the TMA path or by pointers, as a dense call launches it (no program table: ``None`` constexprs)."""
    fn = TRITON_BWD[name][0]
    consts = {**launch.kernel_meta(head_dim, causal, False, GROUP_PROGRAMS), "CU_Q": None, "CU_K": None,
              "TABLE": None, **tuning.to_config(config, use_tma).kwargs}
    tensors = {n: f"*{dtype}" for n in ("Q", "K", "V", "DO", "DQ", "DK", "DV") if n in fn.arg_names}
    return _compile_triton(fn, consts, {**tensors, "LSE": "*fp32", "DELTA": "*fp32"}, config)


def triton_bwd_rows(head_dims: tuple) -> list[dict]:
    """One row per (kernel, head dim, causal, space entry) of the Triton backward, on the path the tuner offers
    that kernel at that head dim where both are allowed: resources or the error."""
    out = []
    for name, (_, space) in TRITON_BWD.items():
        for d, causal in itertools.product(head_dims, (False, True)):
            cls = tuning.head_dim_class(d)
            use_tma = spaces.PREFERRED_PATH[name][cls]
            for t in space[cls]:
                row = {"kernel": name, "head_dim": d, "causal": causal, "config": list(t), "tma": use_tma}
                try:
                    row.update(resource_usage(compile_triton_bwd(name, t, d, causal, use_tma)))
                except Exception as e:  # report, go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                out.append(row)
    return out


def resource_usage(compiled) -> dict:
    """Registers, spills and static shared memory from cuobjdump, dynamic shared from Triton.

    ``spill_bytes`` is the per-thread stack frame plus local arrays (cuobjdump's STACK + LOCAL): ptxas
    puts spilled registers in the stack frame, which cuobjdump does not count under LOCAL."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
    regs, stack, local = (int(re.search(rf"{key}:(\d+)", out).group(1)) for key in ("REG", "STACK", "LOCAL"))
    return {"registers": regs, "spill_bytes": stack + local,
            "shared_bytes": compiled.metadata.shared, "warps": compiled.metadata.num_warps,
            "warp_specialize_ops": compiled.asm["ttgir"].count("ttg.warp_specialize")}


def shifted_offsets_in_consumers(ttgir: str, block_m: int) -> list[str]:
    """Lines of consumer partitions that splat a row offset shifted by BLOCK_M / 2 (the pass fault).

    The pass gives the second consumer ``offset + BLOCK_M/2`` for its half of the Q load; when that
    value also feeds ``offs_m`` (already offset by the partitioned ``arange``), rows come out shifted
    twice.  A correct kernel keeps the shifted value in the producer's load only.
    """
    bad = []
    for part in re.split(r"\n\s*partition\d+\(", ttgir)[1:]:
        # SSA names are whatever the source location suggests ("%c64_i32", "%q", ...): match by value
        consts = {m.group(1) for m in re.finditer(r"(%[\w.]+) = arith\.constant(?: \{[^}]*\})? (-?\d+) : i32", part)
                  if int(m.group(2)) == block_m // 2}
        shifted = {m.group(1) for m in re.finditer(r"(%[\w.]+) = arith\.addi (%[\w.]+), (%[\w.]+)", part)
                   if m.group(2) in consts or m.group(3) in consts}
        bad += [line.strip() for line in part.splitlines()
                if "tt.splat" in line and any(re.search(rf"tt.splat {re.escape(v)}\b", line) for v in shifted)]
    return bad


def compile_sm90_gluon(head_dim: int, causal: bool, stages: int = 2, dtype=None, window: bool = False,
                       varlen: bool = False, block_rows: int = sm90.BLOCK, persistent: bool = False):
    """The Gluon Hopper forward (kernels/flash_attn_v2/sm90.py) compiled for sm_90 as its launcher runs it
    (``window``: with a causal sliding window; ``varlen``: the packed-batch build of ``forward_varlen``,
    descriptors over (total, heads * D) views, the output, offsets and program table by pointer;
    ``persistent``: the dense build of ``sm90_persistent.forward``)."""
    import torch
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    dtype = dtype or torch.bfloat16
    if varlen:
        tile = lambda rows: mangle_type(sm90.packed_descriptor(torch.empty(1, 1, head_dim, dtype=dtype), rows))
    else:
        tile = lambda rows: mangle_type(sm90.descriptor(torch.empty(1, 1, sm90.BLOCK, head_dim, dtype=dtype), rows))
    packed_args = ("o_ptr", "cu_q_ptr", "cu_k_ptr", "table_ptr")
    if persistent:
        fn = sm90_persistent.fwd_sm90_persistent_kernel
        consts = sm90_persistent.kernel_constexprs(causal, GROUP_PROGRAMS, stages, window, block_rows)
    else:
        fn = sm90.fwd_sm90_kernel
        consts = sm90.kernel_constexprs(causal, GROUP_PROGRAMS, stages, window, varlen, block_rows)
        if not varlen:
            consts.update(dict.fromkeys(packed_args, None))  # the dense launch passes None: constexprs
    sig = {name: "i32" for name in fn.arg_names}
    # the block shapes ``forward`` gives the descriptors: Q 128 rows, K and V block_n(D), O 64 (a consumer's)
    bn = sm90.block_n(head_dim)
    sig.update(q_desc=tile(sm90.q_tile_rows(block_rows)), k_desc=tile(bn), v_desc=tile(bn),
               o_desc=tile(sm90.CONSUMER_ROWS))
    sig.update(lse_ptr="*fp32", qk_scale="fp32", **{name: "constexpr" for name in consts})
    pointers = ["lse_ptr"]
    if persistent:
        sig.update(counter_ptr="*i32")  # the tile counter: a torch allocation, 16-byte aligned
        pointers.append("counter_ptr")
    if varlen:
        sig.update(o_ptr="*bf16" if dtype == torch.bfloat16 else "*fp16", cu_q_ptr="*i32", cu_k_ptr="*i32",
                   table_ptr="*i32")
        pointers += list(packed_args)  # torch allocations: 16-byte aligned, as the JIT specialises them
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts,
                         attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in pointers})
    return triton.compile(src, target=SM90, options=dict(num_warps=4, maxnreg=sm90.launch_maxnreg(block_rows)))


def ptxas_notes(ptx: str) -> str:
    """What ptxas says assembling ``ptx`` for sm_90a with ``-v`` (Triton does not show ptxas's notes, so the PTX
    is assembled again here)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([os.path.join(NVIDIA_BIN, "ptxas"), "-arch=sm_90a", "-v", path, "-o",
                               os.path.join(tmp, "kernel.o")], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def wgmma_serialized(notes: str) -> bool:
    """Whether ptxas serialises the kernel's wgmma instructions (its C7514 note: a non-wgmma instruction reads
    or writes an accumulator while its wgmma may be in flight; every wgmma then waits for the one before, which
    removes the overlap the asynchronous products exist for).  ``notes``: ``ptxas_notes``."""
    return "wgmma.mma_async instructions are serialized" in notes


def injected_waits(notes: str) -> int:
    """How many wgmma waits ptxas added that the source does not have (its C7517 note: "warpgroup.wait is injected
    ... to allow use of registers defined by GMMA"): an instruction reads a product's registers before the source
    waits for it, so ptxas waits there, and the products issued after that point no longer overlap the ones
    before."""
    return notes.count("C7517")


def sass(compiled) -> list[str]:
    """The kernel's SASS instructions in address order (``cuobjdump -sass`` of the cubin), one string each
    ("/*0a40*/ MUFU.EX2 R13, R13 ;")."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), "-sass", path], capture_output=True, text=True,
                             check=True).stdout
    return [m.group(0) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;", out)]


def _address(instr: str) -> int:
    return int(instr[2:instr.index("*/")], 16)


def key_loops(instrs: list[str]) -> list[list[str]]:
    """The bodies of the innermost loops that compute a softmax under tensor-core products: a loop is a conditional
    branch back to a lower address, its body the instructions from that address to the branch (the unconditional
    branches back are the returns of the out-of-line mbarrier retries); kept are those with both a wgmma (HGMMA)
    and an exponential (MUFU.EX2) and no smaller such loop inside."""
    loops = []
    for i, instr in enumerate(instrs):
        m = re.search(r"@!?U?P\w+\s+BRA\s+(?:`\()?0x([0-9a-f]+)", instr)
        if m and int(m.group(1), 16) < _address(instr):
            start = next(j for j, x in enumerate(instrs) if _address(x) >= int(m.group(1), 16))
            body = instrs[start:i + 1]
            if any("HGMMA" in x for x in body) and any("MUFU.EX2" in x for x in body):
                loops.append((start, i))
    inner = [(a, b) for a, b in loops if not any((a, b) != (c, d) and a <= c and d <= b for c, d in loops)]
    return [instrs[a:b + 1] for a, b in sorted(inner)]


def exps_before_second_wait(body: list[str]) -> tuple[int, int]:
    """(exponentials before the loop body's second wgmma wait, all its exponentials).  In the backward's step the
    first wait is for S^T, the second for dP^T: exponentials after it ran with the tensor cores idle on this warp
    group instead of under dP^T's product."""
    waits = [i for i, x in enumerate(body) if "WARPGROUP.DEPBAR" in x]
    exps = [i for i, x in enumerate(body) if "MUFU.EX2" in x]
    second = waits[1] if len(waits) > 1 else len(body)
    return sum(i < second for i in exps), len(exps)


LOCAL_ACCESS = r"\b(LDL|STL)(\.|\s)"  # a local-memory load or store (a spilled register), in any width


def local_accesses(body: list[str]) -> int:
    """Local-memory loads and stores (``LDL``, ``STL``) in a loop body: spilled registers read or written at every
    iteration.  A kernel's spill bytes say how much was spilled, not where; in a key loop each access is a round
    trip to L1 at every step."""
    return sum(bool(re.search(LOCAL_ACCESS, x)) for x in body)


# What a key loop's overlap depends on, as (SASS pattern, event); other instructions are left out of a schedule
SCHEDULE_EVENTS = (
    (r"WARPGROUP\.ARRIVE", "mma"),  # a product issued; its HGMMA instructions are counted into it
    (r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x([0-9a-f]+)", "wait<={}"),  # the wgmma groups that may still run after it
    (r"MUFU\.EX2", "exp"),
    (r"\bSTS(M\.\S+|\.\S+)?\s", "st.shared"),
    (LOCAL_ACCESS, "local"),
    (r"SYNCS\.PHASECHK", "mbar.wait"),
    (r"SYNCS\.ARRIVE", "mbar.arrive"),
    (r"\bBAR\.SYNC", "bar.sync"),
)


def loop_schedule(body: list[str]) -> str:
    """A key loop's instructions in issue order reduced to what its overlap depends on: product issues with the
    HGMMA instructions right after them ("mma(4)"; a product whose HGMMAs are spread among other instructions, as
    one with an operand in registers can be, is "mma" and then its "hgmma" runs), wgmma waits ("wait<=1"),
    exponentials, shared-memory stores, local-memory accesses, mbarrier waits and arrivals and named barriers,
    runs of one kind counted ("exp*12").  Where exponentials and ``st.shared`` alternate, the softmax runs
    interleaved with the stores (in the backward, dS^T's); where all ``exp`` come before a wait, they run under the
    products in flight."""
    events: list[list] = []  # [name, count]
    for instr in body:
        if "HGMMA" in instr:
            if events and events[-1][0] in ("mma", "hgmma"):
                events[-1][1] += 1
            else:
                events.append(["hgmma", 1])
            continue
        for pattern, name in SCHEDULE_EVENTS:
            m = re.search(pattern, instr)
            if not m:
                continue
            if name == "mma":
                events.append(["mma", 0])
            elif name.startswith("wait"):
                events.append([name.format(int(m.group(1), 16)), 1])
            elif events and events[-1][0] == name:
                events[-1][1] += 1
            else:
                events.append([name, 1])
            break
    return " ".join(("mma" if not n else f"mma({n})") if name == "mma" else f"{name}*{n}" if n > 1 else name
                    for name, n in events)


def sass_digest(instrs: list[str]) -> str:
    """The first 12 hex digits of the SHA-1 of the kernel's SASS instructions (addresses included, no line
    information): two revisions of a kernel whose build has the same digest compile to the same machine code, so
    its GPU tests and timings carry over from one to the other."""
    return hashlib.sha1("\n".join(instrs).encode()).hexdigest()[:12]


def loop_readings(compiled, wait: str, schedule: bool = False) -> dict:
    """The kernel's ``sass_digest``, and per key loop: the exponentials before its second wgmma wait and all of
    them (``exps_before_{wait}_wait``; ``wait`` names that product: "pv" in the forward, "dp" in the backward) and
    its local-memory accesses (``loop_local_accesses``); with ``schedule``, also its ``loop_schedule``
    (``key_loop_schedules``)."""
    instrs = sass(compiled)
    loops = key_loops(instrs)
    out = {"sass_digest": sass_digest(instrs),
           f"exps_before_{wait}_wait": [list(exps_before_second_wait(b)) for b in loops],
           "loop_local_accesses": [local_accesses(b) for b in loops]}
    if schedule:
        out["key_loop_schedules"] = [loop_schedule(b) for b in loops]
    return out


def setmaxnreg(ptx: str) -> list[int]:
    """The register counts the kernel's partitions set (``setmaxnreg``), sorted."""
    return sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})


def compile_sm90_gluon_bwd(head_dim: int, causal: bool, dtype=None, stages: int | None = None,
                           layout: str | None = None, window: bool = False, varlen: bool = False,
                           descending: bool = False):
    """The Gluon Hopper backward (kernels/flash_attn_v2/sm90_bwd.py) compiled for sm_90 as ``sm90_bwd.backward``
    launches it (dense inputs; descriptors over the (rows, D) views; ``descending``: each head's query blocks
    walked from the last down, ``sm90_bwd.descending_walk``), or with ``varlen`` as ``sm90_bwd.backward_varlen``
    does (packed inputs; descriptors over the (total, heads * D) views)."""
    import torch
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from flashbench_kernels.flash_attn_v2 import sm90_bwd

    fn = sm90_bwd.bwd_sm90_kernel
    dtype = dtype or torch.bfloat16
    layout = layout or sm90_bwd.dq_layout(head_dim)
    bm, bn = sm90_bwd.block_m(head_dim, layout), sm90_bwd.BLOCK_N
    if varlen:  # two heads: the column of a head is a multiple of D, as in a real launch
        tile = lambda r, dt=dtype: mangle_type(sm90.packed_descriptor(torch.empty(r, 2, head_dim, dtype=dt), r))
        dq_tile = mangle_type(sm90_bwd.dq_descriptor(torch.empty(bm, 2, head_dim, dtype=torch.float32), layout))
        ptr = "*bf16" if dtype == torch.bfloat16 else "*fp16"
        packed_args = {"dk_ptr": ptr, "dv_ptr": ptr, "cu_q_ptr": "*i32",
                       "cu_k_ptr": "*i32", "table_ptr": "*i32"}
        extra = {}
    else:
        tile = lambda r, dt=dtype: mangle_type(sm90.descriptor(torch.empty(1, 1, r, head_dim, dtype=dt), r))
        dq_tile = mangle_type(sm90_bwd.dq_descriptor(torch.empty(1, 1, bm, head_dim, dtype=torch.float32), layout))
        packed_args = {}
        extra = {name: None for name in ("dk_ptr", "dv_ptr", "cu_q_ptr", "cu_k_ptr", "table_ptr")}
    consts = {**sm90_bwd.kernel_constexprs(causal, GROUP_PROGRAMS, stages or sm90_bwd.ring_stages(head_dim, window,
                                                                                                   layout),
                                           window, varlen, descending), **extra}
    sig = {name: "i32" for name in fn.arg_names}
    # L and Delta: 1-D descriptors dense, pointers packed (as the launchers pass them)
    stat = "*fp32" if varlen else mangle_type(sm90_bwd.stat_descriptor(torch.empty(4 * bm, dtype=torch.float32), bm))
    sig.update(q_desc=tile(bm), do_desc=tile(bm), k_desc=tile(bn), v_desc=tile(bn), dk_desc=tile(bn // 2),
               dv_desc=tile(bn // 2), dq_desc=dq_tile, lse=stat, delta=stat,
               qk_scale="fp32", sm_scale="fp32", **packed_args, **{name: "constexpr" for name in consts})
    divisible = (("lse", "delta") if varlen else ()) + tuple(packed_args)
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts,
                         attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible})
    return triton.compile(src, target=SM90, options=dict(num_warps=4, maxnreg=sm90_bwd.MAXNREG))


def compile_sm90_gluon_bwd_d256(causal: bool, dtype=None, window: bool = False, varlen: bool = False):
    """The Gluon Hopper backward at D256 (kernels/flash_attn_v2/sm90_bwd_d256.py) compiled for sm_90 as
    ``sm90_bwd.backward`` launches it (dense inputs; descriptors over the (rows, 256) views; ``window``: a causal
    sliding window), or with ``varlen`` as ``sm90_bwd.backward_varlen`` does (packed inputs; descriptors over the
    (total, heads * 256) views)."""
    import torch
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from flashbench_kernels.flash_attn_v2 import sm90_bwd, sm90_bwd_d256 as d256

    fn = d256.bwd_sm90_d256_kernel
    dtype = dtype or torch.bfloat16
    D, layout = d256.HEAD_DIM, sm90_bwd.dq_layout(d256.HEAD_DIM)
    if varlen:  # two heads: the column of a head is a multiple of D, as in a real launch
        tile = lambda r: mangle_type(sm90.packed_descriptor(torch.empty(r, 2, D, dtype=dtype), r))
        half = mangle_type(d256.packed_half_descriptor(torch.empty(d256.BLOCK_N, 2, D, dtype=dtype)))
        dq_tile = mangle_type(sm90_bwd.dq_descriptor(torch.empty(d256.BLOCK_M, 2, D, dtype=torch.float32), layout))
        ptr = "*bf16" if dtype == torch.bfloat16 else "*fp16"
        packed_args = {"dk_ptr": ptr, "dv_ptr": ptr, "cu_q_ptr": "*i32", "cu_k_ptr": "*i32", "table_ptr": "*i32"}
        stat, extra = "*fp32", {}
    else:
        tile = lambda r: mangle_type(sm90.descriptor(torch.empty(1, 1, r, D, dtype=dtype), r))
        half = mangle_type(d256.half_descriptor(torch.empty(1, 1, d256.BLOCK_N, D, dtype=dtype)))
        dq_tile = mangle_type(sm90_bwd.dq_descriptor(torch.empty(1, 1, d256.BLOCK_M, D, dtype=torch.float32), layout))
        stat = mangle_type(sm90_bwd.stat_descriptor(torch.empty(4 * d256.BLOCK_M, dtype=torch.float32), d256.BLOCK_M))
        packed_args = {}
        extra = {name: None for name in ("dk_ptr", "dv_ptr", "cu_q_ptr", "cu_k_ptr", "table_ptr")}
    consts = {**d256.kernel_constexprs(causal, GROUP_PROGRAMS, window, varlen), **extra}
    sig = {name: "i32" for name in fn.arg_names}
    sig.update(q_desc=tile(d256.BLOCK_M), do_desc=tile(d256.BLOCK_M), k_desc=tile(d256.BLOCK_N),
               v_desc=tile(d256.BLOCK_N), dk_desc=half, dv_desc=half, dq_desc=dq_tile, lse=stat, delta=stat,
               qk_scale="fp32", sm_scale="fp32", **packed_args, **{name: "constexpr" for name in consts})
    divisible = (("lse", "delta") if varlen else ()) + tuple(packed_args)
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts,
                         attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible})
    return triton.compile(src, target=SM90, options=dict(num_warps=4, maxnreg=sm90_bwd.MAXNREG))


def gluon_bwd_rows(schedule: bool = False) -> list[dict]:
    """One row per build of the Gluon backward (head dim, masking: none, causal, causal with a sliding window;
    each dQ layout the head dim runs, dense; the default layout packed; D128 dense causal also walked downward;
    D256, its own kernel, dense and packed, which walks downward): resources and register split (with
    ``schedule``, each key loop's ``loop_schedule`` too)."""
    from flashbench_kernels.flash_attn_v2 import sm90_bwd

    builds = [(d, causal, window, layout, varlen, False) for varlen in (False, True) for d in (128, 64)
              for causal, window in ((False, False), (True, False), (True, True))
              for layout in sm90_bwd.DQ_LAYOUTS
              if d in sm90_bwd.layout_head_dims(layout) and (not varlen or layout == sm90_bwd.dq_layout(d))]
    builds += [(128, True, False, layout, False, True) for layout in sm90_bwd.DQ_LAYOUTS
               if 128 in sm90_bwd.layout_head_dims(layout)]
    builds += [(256, causal, window, sm90_bwd.dq_layout(256), varlen, True) for varlen in (False, True)
               for causal, window in ((False, False), (True, False), (True, True))]
    out = []
    for d, causal, window, layout, varlen, descending in builds:
        row = {"kernel": "gluon_sm90_bwd_d256" if d == 256 else "gluon_sm90_bwd", "head_dim": d, "causal": causal,
               "window": window, "dq_layout": layout, "varlen": varlen, "descending": descending}
        try:
            c = (compile_sm90_gluon_bwd_d256(causal, window=window, varlen=varlen) if d == 256 else
                 compile_sm90_gluon_bwd(d, causal, layout=layout, window=window, varlen=varlen,
                                        descending=descending))
            row.update(resource_usage(c))
            row["setmaxnreg"] = setmaxnreg(c.asm["ptx"])
            notes = ptxas_notes(c.asm["ptx"])
            row["wgmma_serialized"] = wgmma_serialized(notes)
            row["injected_waits"] = injected_waits(notes)
            row.update(loop_readings(c, "dp", schedule))  # the second wait of a backward step is dP^T's
        except Exception as e:  # report, go on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        out.append(row)
    return out


def gluon_rows(stages: int = 2, dtypes: tuple = ("bf16",), head_dims: tuple = sm90.HEAD_DIMS,
               schedule: bool = False) -> list[dict]:
    """One row per (head dim, masking, layout, dtype) of the Gluon forward: non-causal, causal and causal with
    a sliding window, each dense and packed (``varlen``; D64 and D128: D256 is built dense only), and the
    three-consumer build (``block_m`` 192: D64 dense, no window), for each of ``head_dims`` in each of
    ``dtypes`` ("bf16", "fp16"); resources, register split, wgmma waits (with ``schedule``, each key loop's
    ``loop_schedule`` too).  A head dim
    whose rings do not fit ``stages`` deep (D256 with 3) gets a row saying so (``skipped``) instead of a build."""
    import torch

    out = []
    builds = [(varlen, d, block_m) for varlen in (False, True) for d in sorted(head_dims, reverse=True)
              for block_m in (sm90.BLOCK, sm90.WIDE_BLOCK)
              if not (varlen and sm90.block_n(d) != sm90.BLOCK)]
    for varlen, d, block_m in builds:
        for causal, window in ((False, False), (True, False), (True, True)):
            if block_m == sm90.WIDE_BLOCK and sm90.config_reason(d, sm90.block_n(d), 2, block_m, window, varlen):
                continue  # the three-consumer build exists at D64, dense, without a window only
            for dt, persistent in itertools.product(dtypes, (False, True)):
                if persistent and sm90_persistent.reason(d, stages, block_m, varlen):
                    continue  # built where sm90_persistent.forward runs it only
                row = {"kernel": "gluon_sm90_persistent" if persistent else "gluon_sm90", "head_dim": d,
                       "causal": causal, "window": window, "varlen": varlen, "dtype": dt, "stages": stages,
                       "block_m": block_m, "block_n": sm90.block_n(d)}
                out.append(row)
                why = sm90.config_reason(d, sm90.block_n(d), stages, block_m, window, varlen)
                if why is not None:
                    row["skipped"] = why
                    continue
                try:
                    c = compile_sm90_gluon(d, causal, stages, {"bf16": torch.bfloat16, "fp16": torch.float16}[dt],
                                           window=window, varlen=varlen, block_rows=block_m, persistent=persistent)
                    ptx = c.asm["ptx"]
                    row.update(resource_usage(c))
                    req = re.search(r"requestedRegisters = array<i32: ([\d, ]+)>", c.asm["ttgir"])
                    row["worker_regs"] = [int(x) for x in req.group(1).split(",")] if req else []
                    row["setmaxnreg"] = setmaxnreg(ptx)
                    row["wgmma_waits"] = sorted({int(x) for x in
                                                 re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)})
                    notes = ptxas_notes(ptx)
                    row["wgmma_serialized"] = wgmma_serialized(notes)
                    row["injected_waits"] = injected_waits(notes)
                    row.update(loop_readings(c, "pv", schedule))  # the second wait of a forward step is P V's
                except Exception as e:  # report, go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def rows(only_ws: bool) -> list[dict]:
    """One row per (head dim, causal, config, EVEN_KV) of the D64/D96/D128 spaces: resources or the error."""
    out = []
    for d in (128, 96, 64):
        for causal in (False, True):
            for t in spaces.FWD_SPACE[tuning.head_dim_class(d)]:
                ws = tuning.is_ws(t)
                if tuning.is_gluon(t) or (causal and ws) or (only_ws and not ws) or (d == 96 and not ws):
                    continue
                for even_kv in ((True, False) if ws else (True,)):
                    row = {"head_dim": d, "causal": causal, "config": list(t), "even_kv": even_kv}
                    try:
                        c = compile_fwd(t, d, causal, even_kv=even_kv)
                        row.update(resource_usage(c))
                        row["shifted_rows"] = shifted_offsets_in_consumers(c.asm["ttgir"], t[0])
                        row["ttgir"] = c.asm["ttgir"]
                    except Exception as e:  # report, go on: one config never stops the table
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    out.append(row)
    return out


def head_dim_list(text: str) -> tuple:
    """``--head-dims``: comma-separated positive integers (argparse turns the error into exit status 2)."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"head dims must be positive, got {text!r}")
    return dims


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ws-only", action="store_true", help="only the warp-specialised configurations")
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    ap.add_argument("--ttgir", help="directory to write each config's TTGIR to")
    ap.add_argument("--gluon", action="store_true", help="the Gluon Hopper forward instead of the Triton configs")
    ap.add_argument("--stages", type=int, default=2, help="with --gluon: the K/V ring depth (2 or 3)")
    ap.add_argument("--dtypes", default="bf16", help="with --gluon: comma-separated, of bf16 and fp16")
    ap.add_argument("--head-dims", type=head_dim_list, default=",".join(map(str, sm90.HEAD_DIMS)),
                    help="with --gluon or --triton-bwd: comma-separated head dims (default: all the Gluon forward "
                         "runs)")
    ap.add_argument("--gluon-bwd", action="store_true", help="the Gluon Hopper backward (sm90_bwd.py)")
    ap.add_argument("--schedule", action="store_true",
                    help="with --gluon or --gluon-bwd: each key loop's schedule too (key_loop_schedules)")
    ap.add_argument("--triton-bwd", action="store_true",
                    help="the Triton backward's dK/dV and dQ kernels, every space entry (with --head-dims)")
    args = ap.parse_args()
    if args.schedule and not (args.gluon or args.gluon_bwd):
        ap.error("--schedule reads the Gluon kernels' key loops: give it with --gluon or --gluon-bwd")
    if args.gluon or args.gluon_bwd or args.triton_bwd:
        table = (gluon_bwd_rows(args.schedule) if args.gluon_bwd else triton_bwd_rows(args.head_dims)
                 if args.triton_bwd else gluon_rows(args.stages, tuple(args.dtypes.split(",")), args.head_dims,
                                                    args.schedule))
        for r in table:
            print(json.dumps(r) if args.json else
                  " ".join(f"{k}={v}" for k, v in r.items()
                           if k != "warp_specialize_ops" and (k != "kernel" or args.triton_bwd)))
        return 1 if any("error" in r for r in table) else 0
    table = rows(args.ws_only)
    bad = 0
    if not args.json:
        print(f"{'D':>3} {'causal':>6} {'config':<22} {'even':>5} {'regs':>4} {'spill':>5} {'smem':>7} {'warps':>5} ws  rows")
    for r in table:
        ttgir = r.pop("ttgir", "")
        t = r["config"]
        label = tuning.short_label(t)
        bad += "error" in r or bool(r.get("shifted_rows"))
        if args.ttgir and ttgir:
            os.makedirs(args.ttgir, exist_ok=True)
            name = f"fwd_d{r['head_dim']}_c{int(r['causal'])}_e{int(r['even_kv'])}_{label}.ttgir"
            with open(os.path.join(args.ttgir, name), "w") as f:
                f.write(ttgir)
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"{r['head_dim']:>3} {r['causal']!s:>6} {label:<22} {r['even_kv']!s:>5} FAILED {r['error'][:80]}")
        else:
            rows_ok = "ok" if not r["shifted_rows"] else "SHIFTED"
            print(f"{r['head_dim']:>3} {r['causal']!s:>6} {label:<22} {r['even_kv']!s:>5} {r['registers']:>4} "
                  f"{r['spill_bytes']:>5} {r['shared_bytes']:>7} {r['warps']:>5} {r['warp_specialize_ops']:>2}  {rows_ok}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
