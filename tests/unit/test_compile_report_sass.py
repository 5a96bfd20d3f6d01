"""The compile report's readings of ptxas notes and SASS (``tools/fa2_compile_report.py``), on hand-written text:
injected waits, key loops, the exponentials before a loop's second wgmma wait and a loop's schedule; and its refusal
of bad --head-dims and of --schedule without a Gluon mode."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_import import imported_tool  # tests/support


@pytest.fixture
def report(monkeypatch):
    yield from imported_tool(monkeypatch, "fa2_compile_report")


def _sass(*ops: str) -> list[str]:
    """Instructions 16 bytes apart from address 0, as ``sass`` returns them."""
    return [f"/*{16 * i:04x}*/ {op} ;" for i, op in enumerate(ops)]


def test_ptxas_notes_are_counted(report):
    notes = ("ptxas info : (C7517) warpgroup.wait is injected in around line 10 ...\n"
             "ptxas info : (C7517) warpgroup.wait is injected in around line 90 ...\n")
    assert report.injected_waits(notes) == 2 and report.injected_waits("") == 0
    assert report.wgmma_serialized("... wgmma.mma_async instructions are serialized ...")
    assert not report.wgmma_serialized(notes)


def test_key_loops_are_the_innermost_conditional_loops_with_a_product_and_an_exponential(report):
    instrs = _sass(
        "MOV R1, R2",                                   # 0x00
        "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24",  # 0x10: the key loop starts here
        "WARPGROUP.DEPBAR.LE gsb0, 0x1",                # 0x20
        "MUFU.EX2 R3, R3",                              # 0x30
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",                # 0x40
        "MUFU.EX2 R4, R4",                              # 0x50
        "@P0 BRA 0x10",                                 # 0x60: closes the key loop
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R0]",      # 0x70: an mbarrier retry, out of line
        "@!P0 BRA 0x70",                                # 0x80: a spin loop without a product
        "BRA 0x20",                                     # 0x90: the retry's return (unconditional: no loop)
        "@P1 BRA 0x0",                                  # 0xa0: an outer loop around the key loop
    )
    loops = report.key_loops(instrs)
    assert [[report._address(x) for x in body] for body in loops] == [[0x10, 0x20, 0x30, 0x40, 0x50, 0x60]]
    assert report.exps_before_second_wait(loops[0]) == (1, 2)


def test_a_loop_with_one_wait_counts_every_exponential_before_it(report):
    body = _sass("WARPGROUP.DEPBAR.LE gsb0, 0x1", "MUFU.EX2 R3, R3", "MUFU.EX2 R4, R4", "@P0 BRA 0x0")
    assert report.exps_before_second_wait(body) == (2, 2)


@pytest.mark.parametrize("args, words", [
    (["--triton-bwd", "--head-dims", "x,128"], "expected comma-separated integers"),
    (["--triton-bwd", "--head-dims", "0"], "head dims must be positive"),
    (["--triton-bwd", "--schedule"], "--schedule reads the Gluon kernels"),
    (["--schedule"], "give it with --gluon or --gluon-bwd"),
])
def test_bad_arguments_are_a_message_and_exit_status_2(args, words):
    tool = Path(__file__).resolve().parents[2] / "tools" / "fa2_compile_report.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_constexprs_left_out_take_their_defaults_and_one_without_a_default_is_named(report):
    """A constexpr parameter the caller does not give must not compile as an i32 argument (a branch on it would then
    be a run-time one, not the kernel a launch builds): a defaulted one takes its default, another is refused."""
    kernel = report.bwd_dkdv_kernel
    given = {name: 1 for name in ("HEAD_DIM", "BLOCK_D", "CAUSAL", "IEEE", "GROUP_PROGRAMS", "USE_TMA", "BLOCK_M",
                                  "BLOCK_N")}
    filled = report.triton_constexprs(kernel, given)
    assert filled["WINDOW"] is False and filled["VARLEN"] is False and filled["HEAD_DIM"] == 1
    assert report.triton_constexprs(kernel, {**given, "WINDOW": True})["WINDOW"] is True
    del given["BLOCK_N"]
    with pytest.raises(ValueError, match="bwd_dkdv_kernel: constexpr arguments not given: BLOCK_N"):
        report.triton_constexprs(kernel, given)


def test_local_memory_accesses_of_a_loop_are_its_spill_loads_and_stores(report):
    body = _sass("LDL.64 R6, [R1+0x10]", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24", "STL [R1], R180",
                 "LDL.LU R12, [R1]", "LDS R3, [R2]", "STS [R2], R3", "LDG.E R4, desc[UR4][R6.64]", "MUFU.EX2 R3, R3",
                 "@P0 BRA 0x0")
    assert report.local_accesses(body) == 3  # shared (LDS, STS) and global (LDG) accesses are not spills
    assert report.local_accesses(_sass("MUFU.EX2 R3, R3", "@P0 BRA 0x0")) == 0


def test_a_loop_schedule_keeps_issues_waits_exponentials_and_stores_in_order_and_counts_runs(report):
    body = _sass("WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R88, gdesc[UR48], R88",
                 "HGMMA.64x128x16.F32.BF16 R88, gdesc[UR28], R88, gsb0",
                 "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR7+0x30980], R13", "WARPGROUP.DEPBAR.LE gsb0, 0x1",
                 "FMUL R3, R3, R4", "MUFU.EX2 R3, R3", "MUFU.EX2 R4, R4", "STSM.16.M88.4 [R34+0x2000], R84",
                 "MUFU.EX2 R5, R5", "STS.64 [R7+UR4+0x2c000], R20", "STS [R2], R3", "LDL R4, [R1+0x4]",
                 "STL [R1], R180", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MEMBAR.ALL.CTA",
                 "BAR.SYNC.DEFER_BLOCKING 0x2, 0x80",
                 "@!P2 SYNCS.ARRIVE.TRANS64.A1T0 RZ, [UR7+0x309a0], RZ", "HGMMA.64x64x16.F32.BF16 R24, R88, R24",
                 "@P0 BRA 0x0")
    assert report.loop_schedule(body) == ("mma(2) mbar.wait wait<=1 exp*2 st.shared exp st.shared*2 local*2 wait<=0 "
                                          "bar.sync mbar.arrive hgmma")
    assert report.loop_schedule(_sass("MOV R1, R2", "@P0 BRA 0x0")) == ""
    # a product issued among the exponentials: its issue, then its HGMMA runs where they stand
    spread = _sass("WARPGROUP.ARRIVE", "MUFU.EX2 R3, R3", "HGMMA.64x64x16.F32.BF16 R24, R88, gdesc[UR4], R24",
                   "MUFU.EX2 R4, R4", "HGMMA.64x64x16.F32.BF16 R24, R92, gdesc[UR4], R24",
                   "HGMMA.64x64x16.F32.BF16 R24, R96, gdesc[UR4], R24, gsb0", "@P0 BRA 0x0")
    assert report.loop_schedule(spread) == "mma exp hgmma exp hgmma*2"
    assert report.loop_schedule(_sass("WARPGROUP.DEPBAR.LE gsb0, 0xa", "@P0 BRA 0x0")) == "wait<=10"  # hex count


def test_the_sass_digest_tells_identical_machine_code_from_any_change(report):
    code = _sass("MOV R1, R2", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24", "EXIT")
    digest = report.sass_digest(code)
    assert len(digest) == 12 and set(digest) <= set("0123456789abcdef")
    assert report.sass_digest(list(code)) == digest
    assert report.sass_digest(_sass("MOV R1, R3", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24", "EXIT")) != digest
    assert report.sass_digest(_sass("NOP", "MOV R1, R2", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24",
                                    "EXIT")) != digest  # moved by one slot: the addresses differ
