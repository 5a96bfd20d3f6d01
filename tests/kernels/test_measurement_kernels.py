"""The two measurement kernels of the harness, without a GPU: the streaming read of the bandwidth
ceiling (flashbench.profile.read_bandwidth) on Triton's interpreter, and both kernels compiled for
sm_90 (Triton's wheel carries ptxas), checking what their correctness on a GPU depends on: the
stream hold's loop reads the flag with volatile loads and the global timer, and the read kernel
loads 16 bytes per instruction, evict-first."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from flashbench.profile.read_bandwidth import CONFIGS, read_sum, read_sum_persistent  # noqa: E402

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def test_read_sum_reads_every_element_once():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5 * 256, generator=g)
    out = torch.full((5,), float("nan"))
    read_sum(x, out, block=256, num_warps=4)
    torch.testing.assert_close(out, x.view(5, 256).sum(dim=1), rtol=1e-5, atol=1e-4)


def test_persistent_read_sums_every_element_once_over_its_programs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7 * 128, generator=g)
    out = torch.full((3,), float("nan"))
    read_sum_persistent(x, out, block=128, num_warps=4, stages=2)
    blocks = x.view(7, 128).sum(dim=1)
    expected = torch.stack([blocks[i::3].sum() for i in range(3)])  # program i walks blocks i, i+3, ...
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="one per program"):
        read_sum_persistent(x, torch.empty(8), block=128)


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=torch.randn(512, dtype=torch.float64)), "x: must be a contiguous 1-D float32"),
    (dict(x=torch.randn(2, 256)), "x: must be a contiguous 1-D float32"),
    (dict(x=torch.randn(300)), r"x: its length \(300\) must be a positive multiple of block \(256\)"),
    (dict(block=200), "block: must be a power of two"),
    (dict(out=torch.empty(3)), r"out: must be float32 of shape \(2,\)"),
])
def test_read_sum_refuses_what_it_does_not_support(kwargs, match):
    args = dict(x=torch.randn(512), out=torch.empty(2), block=256)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        read_sum(args["x"], args["out"], block=args["block"])


COMPILE = r"""
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from flashbench.measure.stream_hold import _spin_until_released
from flashbench.profile.read_bandwidth import CONFIGS, _read_sum_kernel

SM90 = GPUTarget("cuda", 90, 32)
hold = triton.compile(ASTSource(fn=_spin_until_released, signature={"flag_ptr": "*i32", "timeout_us": "i32"},
                                constexprs={}), target=SM90, options=dict(num_warps=1))
reads = {}
for block, warps in CONFIGS:
    src = ASTSource(fn=_read_sum_kernel, signature={"x_ptr": "*fp32", "out_ptr": "*fp32", "BLOCK": "constexpr"},
                    constexprs={"BLOCK": block}, attrs={(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]})
    reads[f"{block}x{warps}"] = triton.compile(src, target=SM90, options=dict(num_warps=warps)).asm["ptx"]
print(json.dumps({"hold": hold.asm["ptx"], "reads": reads}))
"""


@pytest.fixture(scope="module")
def ptx():
    if not os.path.exists(os.path.join(_BIN, "ptxas")):
        pytest.skip("this Triton build carries no NVIDIA toolchain")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_stream_hold_polls_host_memory_with_volatile_loads_and_times_out(ptx):
    lines = [ln.strip() for ln in ptx["hold"].splitlines()]
    volatile = [ln for ln in lines if ln.startswith("ld.volatile.global")]
    assert len(volatile) >= 2  # before the loop and inside it: a plain load could be hoisted out
    assert sum("%globaltimer" in ln for ln in lines) >= 2  # the start, and every iteration
    assert any(ln.startswith(("st.global", "@")) and "st.global" in ln for ln in lines)  # the timed-out word


@pytest.mark.parametrize("block, warps", CONFIGS)
def test_read_kernel_loads_16_bytes_per_instruction(ptx, block, warps):
    loads = [ln for ln in ptx["reads"][f"{block}x{warps}"].splitlines() if "ld.global" in ln]
    assert loads and all(".v4.b32" in ln and "evict_first" in ln for ln in loads)
    assert len(loads) == block // (32 * warps * 4)  # every element loaded once, four per instruction
