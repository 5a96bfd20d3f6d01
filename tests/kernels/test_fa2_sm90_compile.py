"""The warp-specialised FA2 forward, compiled for sm_90 on a machine without a GPU.

Its correctness can only be run on a Hopper GPU (tests marked ``gpu`` in test_flash_attn_v2.py), but
what Triton 3.6's warp-specialisation pass makes of it can be read anywhere: ``tools/
fa2_compile_report.py`` compiles each shipped warp-specialised configuration for sm_90 (Triton's
wheel carries ptxas and cuobjdump) in a process without the CPU interpreter, and these tests check
that the pass applied (one producer and two consumer warp groups, one ``ttg.warp_specialize`` op),
that nothing spills, and that the second consumer warp group does not build its query rows from the
Q load's shifted offset: the fault that wrote wrong rows on the H100 (kernels/DESIGN.md).  With
the Q load given ``m0`` itself instead of its own value, that check fails (tried when it was written).
The Triton backward's kernels are compiled the same way: every entry of their spaces, on the tile path
the tuner offers it, must build and fit a block's shared memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "cuobjdump")),
                                reason="this Triton build carries no NVIDIA toolchain")


@pytest.fixture(scope="module")
def ws_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fa2_compile_report.py"), "--ws-only",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no rows (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return rows


def test_every_shipped_warp_specialised_config_is_compiled(ws_rows):
    from flashbench_kernels.flash_attn_v2 import spaces, tuning
    shipped = {(d, tuple(t)) for d in (64, 96, 128) for t in spaces.FWD_SPACE[tuning.head_dim_class(d)]
               if tuning.is_ws(t)}
    assert shipped, "the forward space ships no warp-specialised configuration"
    compiled = {(r["head_dim"], tuple(r["config"])) for r in ws_rows}
    assert compiled == shipped
    assert {r["even_kv"] for r in ws_rows} == {True, False}


def test_warp_specialised_forward_compiles_as_intended(ws_rows):
    for r in ws_rows:
        where = f"D={r['head_dim']} {r['config']} even_kv={r['even_kv']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["warp_specialize_ops"] == 1, f"{where}: the pass did not specialise the key loop"
        assert r["warps"] == 3 * r["config"][2], f"{where}: expected one producer and two consumer warp groups"
        assert r["spill_bytes"] == 0, f"{where}: spills {r['spill_bytes']} bytes"
        assert r["shared_bytes"] <= 232448, f"{where}: more shared memory than an H100 block may use"
        assert r["shifted_rows"] == [], f"{where}: consumer rows built from the shifted Q offset"


# ---------------------------------------------------------------------------------------------
# The Gluon forward at D256 (sm90.py, 64-key blocks): dense builds only, 2 stages
# ---------------------------------------------------------------------------------------------
def _gluon_rows(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fa2_compile_report.py"), "--gluon", "--json",
                           "--head-dims", "256", "--dtypes", "bf16,fp16", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no rows (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return rows


@pytest.fixture(scope="module")
def d256_rows():
    return _gluon_rows()


def test_d256_gluon_forward_builds_are_the_dense_ones_in_both_dtypes(d256_rows):
    assert sorted((r["causal"], r["window"], r["varlen"], r["dtype"]) for r in d256_rows) == \
        sorted((c, w, False, dt) for c, w in ((False, False), (True, False), (True, True)) for dt in ("bf16", "fp16"))


def test_d256_gluon_forward_compiles_with_64_key_blocks_within_registers_and_shared_memory(d256_rows):
    from flashbench_kernels.flash_attn_v2 import sm90
    for r in d256_rows:
        where = f"D256 causal={r['causal']} window={r['window']} {r['dtype']}"
        assert "error" not in r and "skipped" not in r, f"{where}: {r}"
        assert r["block_n"] == sm90.block_n(256) == 64 and r["stages"] == 2
        assert r["warps"] == 12, f"{where}: expected two consumer warp groups and the producer's"
        assert r["worker_regs"] == [sm90.CONSUMER_REGS, sm90.PRODUCER_REGS], f"{where}: worker registers"
        assert 240 in r["setmaxnreg"], f"{where}: consumers not given the producer's registers"
        assert r["wgmma_waits"] == [0, 1], f"{where}: no wait that leaves P V in flight"
        assert r["wgmma_serialized"] is False, f"{where}: ptxas serialised the wgmma instructions"
        # the causal window build spills one 8-byte value (cuobjdump STACK; the D128 window builds 56-64);
        # the others nothing
        assert r["spill_bytes"] <= (8 if r["window"] else 0), f"{where}: spills {r['spill_bytes']} bytes"
        # Q 64 KiB + 2 x (K 32 KiB + V 32 KiB), plus the mbarriers
        tiles = sm90.shared_tile_bytes(256, 2)
        assert tiles == 192 * 1024 and tiles <= r["shared_bytes"] < tiles + 1024, f"{where}: {r['shared_bytes']}"
        assert r["shared_bytes"] <= sm90.SHARED_BYTES == 232448, f"{where}: more than a block may use"


def test_d256_gluon_forward_with_3_stages_is_not_built():
    from flashbench_kernels.flash_attn_v2 import sm90
    rows = _gluon_rows("--stages", "3")
    assert rows and all("256 KiB" in r["skipped"] for r in rows)
    assert sm90.config_reason(256, 64, 3) is not None and sm90.config_reason(128, 128, 3) is None


# ---------------------------------------------------------------------------------------------
# The Triton backward (what runs at D256, before Hopper and with backward="triton")
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def triton_bwd_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fa2_compile_report.py"), "--triton-bwd",
                           "--json", "--head-dims", "64,128,256"], capture_output=True, text=True, env=env,
                          timeout=900)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no rows (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return rows


def test_every_triton_backward_config_compiles_on_its_offered_path_and_fits_shared_memory(triton_bwd_rows):
    from flashbench_kernels.flash_attn_v2 import spaces, tuning
    shipped = {(name, d, causal, tuple(t), spaces.PREFERRED_PATH[name][tuning.head_dim_class(d)])
               for name, space in (("bwd_dkdv", spaces.DKDV_SPACE), ("bwd_dq", spaces.DQ_SPACE))
               for d in (64, 128, 256) for causal in (False, True) for t in space[tuning.head_dim_class(d)]}
    assert {(r["kernel"], r["head_dim"], r["causal"], tuple(r["config"]), r["tma"]) for r in triton_bwd_rows} == shipped
    for r in triton_bwd_rows:
        where = f"{r['kernel']} D={r['head_dim']} causal={r['causal']} {r['config']} tma={r['tma']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["shared_bytes"] <= 232448, f"{where}: more shared memory than a Hopper block may use"
        assert r["warps"] == r["config"][2]
    # D256's dQ runs on the TMA path (measured faster there); D128's by pointers
    assert {r["tma"] for r in triton_bwd_rows if r["kernel"] == "bwd_dq"} == {True, False}
    assert all(r["tma"] == (r["head_dim"] == 256) for r in triton_bwd_rows if r["kernel"] == "bwd_dq")
