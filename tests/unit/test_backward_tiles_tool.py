"""tools/backward_tiles.py: the candidates it pins, its refusals on bad input and without a GPU, and both steps of a
measurement on a CPU with the kernel, the GPU and the timer faked: the fastest dK/dV configuration carried into the
dQ step, a configuration that raises reported and not timed, each row against the tuned Triton backward."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "backward_tiles.py"


@pytest.fixture
def tiles(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOL.parent))
    import backward_tiles

    yield backward_tiles
    for name in ("backward_tiles", "kernel_ab", "host_path"):
        sys.modules.pop(name, None)


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["--cases", "B4,H8,N4096"], "--cases B4,H8,N4096: needs B, H, N and D"),
    (["--cases", "B4,H8,N4096,D256,sideways"], "cannot read 'sideways'"),
    (["--cases", "T4096,uniform64-1024,H8,D256"], "--cases T4096,uniform64-1024,H8,D256: dense cases only"),
    (["--dkdv", "64,64,8"], "--dkdv '64,64,8'"),
    (["--dkdv", "64,64,8,2,1"], "the tag must be"),  # a backward configuration has no fifth field
    (["--dq", "48,64,8,2"], "powers of two"),
    (["--dq", "64,64,8,x"], "four integers"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--out", "/no/such/folder/tiles.json"], "its folder does not exist"),
])
def test_bad_input_is_a_message_and_exit_status_2(args, words):
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so_and_exits_2():
    proc = _run("--cases", "B1,H2,N256,D256")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_candidates_are_the_spaces_entries_then_the_extra_ones(tiles):
    from flashbench_kernels.flash_attn_v2 import spaces
    assert tiles.candidates("bwd_dkdv", 256, []) == spaces.DKDV_SPACE["large"]
    first = spaces.DQ_SPACE["mid"][0]
    assert tiles.candidates("bwd_dq", 128, [first, (16, 16, 4, 1)]) == [*spaces.DQ_SPACE["mid"], (16, 16, 4, 1)]


def test_a_launch_log_entry_reads_as_a_configuration(tiles):
    assert tiles.launched("BLOCK_M=128,BLOCK_N=32,num_warps=8,num_stages=1,tma=False") == (128, 32, 8, 1)


class FakeKernel:
    """flash_attn_v2 on a CPU: attention by matmuls (so autograd gives gradients), a launch log naming the tuned
    Triton backward, and per pinned configuration a time (ms) the faked timer returns; RAISES fails to launch."""
    TUNED = {"bwd_dkdv": (64, 64, 8, 2), "bwd_dq": (128, 32, 8, 1)}
    DKDV_MS = {(32, 64, 4, 2): 1.2, (64, 64, 8, 2): 1.0, (32, 128, 8, 1): 1.1, (64, 32, 4, 2): 0.8}
    DQ_MS = {(128, 64, 8, 1): 0.35, (128, 32, 8, 2): 0.45, (128, 32, 8, 1): 0.4, (64, 64, 8, 2): 0.3}
    RAISES = (16, 64, 4, 2)

    def __init__(self):
        self.last = None
        self.backwards = set()

    def __call__(self, q, k, v, causal=False, window=None, options=None, launch_log=None):
        configs = dict(options.configs)
        self.backwards.add(options.backward)
        if configs.get("bwd_dkdv") == self.RAISES:
            raise RuntimeError("out of resource: shared memory\nmore")
        self.last = {**self.TUNED, **configs}
        if launch_log is not None:  # as the launcher logs: a pinned kernel on TMA, the tuned dQ by pointers
            launch_log["fwd"] = "gluon_sm90"
            for kernel, (m, n, w, s) in self.last.items():
                tma = kernel in configs or kernel == "bwd_dkdv"
                launch_log[kernel] = f"BLOCK_M={m},BLOCK_N={n},num_warps={w},num_stages={s},tma={tma}"
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    def ms(self):
        return self.DKDV_MS[self.last["bwd_dkdv"]] + self.DQ_MS[self.last["bwd_dq"]]


@pytest.fixture
def faked(tiles, monkeypatch):
    kernel = FakeKernel()
    real = tiles.make_inputs
    monkeypatch.setattr(tiles, "make_inputs", lambda case, device, seed: real(case, "cpu", seed))
    monkeypatch.setattr(tiles, "flash_attn_v2", kernel)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def time_one(fn):
        fn()
        return SimpleNamespace(samples_ms=[kernel.ms()] * 3, sm_clock_mhz=1500.0)
    return kernel, time_one


def test_the_fastest_dkdv_is_carried_into_the_dq_step_and_a_failing_one_is_reported(tiles, faked):
    kernel, time_one = faked
    case = tiles.read_case("B1,H2,N64,D256,fp32,fwd_bwd")
    res = tiles.measure(case, [FakeKernel.RAISES, (64, 32, 4, 2)], [(64, 64, 8, 2)], 2, time_one)
    dkdv = {r["config"]: r for r in res["dkdv"]}
    assert dkdv["tuned"]["ms"] == pytest.approx(1.0 + 0.4)
    assert dkdv["64,32,4,2"]["ms"] == pytest.approx(0.8 + 0.4)  # beside the tuned dQ
    assert dkdv["64,32,4,2"]["vs_tuned"] == pytest.approx(1.2 / 1.4)
    assert "out of resource: shared memory" in dkdv["16,64,4,2"]["error"] and "ms" not in dkdv["16,64,4,2"]
    assert res["best"]["bwd_dkdv"] == [64, 32, 4, 2]
    dq = {r["config"]: r for r in res["dq"]}
    assert all(r["pinned"]["bwd_dkdv"] == [64, 32, 4, 2] for r in res["dq"] if "pinned" in r)
    assert set(dq) == {"tuned"} | {",".join(map(str, t)) for t in tiles.spaces.DQ_SPACE["large"]} | {"64,64,8,2"}
    assert dq["64,64,8,2"]["ms"] == pytest.approx(0.8 + 0.3)
    assert res["best"]["bwd_dq"] == [64, 64, 8, 2]
    assert all(r["max_grad_diff"] == 0.0 and r["sm_clock_mhz"] == 1500.0 for r in res["dq"] if "ms" in r)
    assert res["tuned_launch"]["bwd_dq"].startswith("BLOCK_M=128")
    # each row names the tile path its kernels ran: the tuned dQ by pointers, every pinned one on TMA
    assert dq["tuned"]["paths"] == {"bwd_dkdv": "tma", "bwd_dq": "ptr"} == dkdv["tuned"]["paths"]
    assert all(r["paths"] == {"bwd_dkdv": "tma", "bwd_dq": "tma"} for r in res["dq"] if "pinned" in r and "ms" in r)
    # step 1 leaves dQ to the tuner: its configuration and path as in the tuned call
    assert dkdv["64,32,4,2"]["paths"] == {"bwd_dkdv": "tma", "bwd_dq": "ptr"}
    assert dkdv["64,32,4,2"]["pinned"] == {"bwd_dkdv": [64, 32, 4, 2]}
    assert kernel.backwards == {"triton"}  # the tuned call too: the Gluon backward is never what is compared
    json.dumps(res)  # --out writes it as it is
