"""The warp-specialised FA2 forward, compiled for sm_90 on a machine without a GPU.

Its correctness can only be run on a Hopper GPU (tests marked ``gpu`` in test_flash_attn_v2.py), but
what Triton 3.6's warp-specialisation pass makes of it can be read anywhere: ``tools/
fa2_compile_report.py`` compiles each shipped warp-specialised configuration for sm_90 (Triton's
wheel carries ptxas and cuobjdump) in a process without the CPU interpreter, and these tests check
that the pass applied (one producer and two consumer warp groups, one ``ttg.warp_specialize`` op),
that nothing spills, and that the second consumer warp group does not build its query rows from the
Q load's shifted offset: the fault that wrote wrong rows on the H100 (kernels/DESIGN.md).  With
the Q load given ``m0`` itself instead of its own value, that check fails (tried when it was written).
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
