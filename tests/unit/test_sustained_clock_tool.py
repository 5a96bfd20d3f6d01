"""tools/sustained_clock.py: its window on a faked GPU clock, its figures and summary, and its refusals on a CPU."""
import json
import subprocess
import sys

import pytest
import torch

from flashbench import backends
from tool_import import TOOLS, imported_tool  # tests/support


@pytest.fixture
def tool(monkeypatch):
    yield from imported_tool(monkeypatch, "sustained_clock", also=("host_path",))


class FakeGpu:
    """Calls of ``call_ms`` each, enqueued back to back; an event's synchronize moves the host's clock to the
    event's GPU time (the host waits for it), so ``now`` is the wall clock a synchronising host would read."""

    def __init__(self, call_ms: float):
        self.call_ms, self.t_ms, self.done_ms, self.calls = call_ms, 0.0, 0.0, 0

    def enqueue(self, call, count):
        pairs = []
        for _ in range(count):
            call()
            pairs.append((Event(self, self.t_ms), Event(self, self.t_ms + self.call_ms)))
            self.t_ms += self.call_ms
        return pairs

    def now(self):
        return self.done_ms / 1e3


class Event:
    def __init__(self, gpu, t_ms):
        self.gpu, self.t_ms = gpu, t_ms

    def elapsed_time(self, other):
        return other.t_ms - self.t_ms

    def synchronize(self):
        self.gpu.done_ms = max(self.gpu.done_ms, self.t_ms)


class FakeNvml:
    def __init__(self):
        self.asked = []

    def between(self, t0, t1):
        self.asked.append((t0, t1))
        return 1500.0, 650.0


def test_the_window_holds_the_calls_after_the_settling_and_reads_nvml_over_them(tool):
    gpu, nvml = FakeGpu(call_ms=2.0), FakeNvml()
    made = []
    got = tool.run_window(lambda: made.append(1), settle_s=0.055, seconds=0.09, batch=5, nvml=nvml,
                          now=gpu.now, enqueue=gpu.enqueue)
    # batches of 10 ms: [0.06, 0.07) is the first to start after the settling, [0.14, 0.15) the first to end past
    # 0.055 + 0.09 s; nine batches of five calls
    assert got["calls"] == 45 and got["ms"] == 2.0
    assert nvml.asked == [(pytest.approx(0.06), pytest.approx(0.15))]
    assert (got["sm_clock_mhz"], got["power_w"]) == (1500.0, 650.0)
    assert got["mcycles"] == pytest.approx(2.0 * 1500 / 1e3) and got["mj"] == pytest.approx(2.0 * 650)
    # one batch stays queued behind the last one read, and is waited for before the next backend's window
    assert len(made) == 16 * 5 and gpu.done_ms == gpu.t_ms == 160.0


def test_figures_without_nvml_are_none_not_zero(tool):
    f = tool.window_figures([3.0, 1.0, 2.0], None, None)
    assert f == {"ms": 2.0, "sm_clock_mhz": None, "power_w": None, "calls": 3, "mcycles": None, "mj": None}


def _row(backend, rnd, ms, clock, power):
    return {"backend": backend, "round": rnd, **{"ms": ms, "sm_clock_mhz": clock, "power_w": power, "calls": 10,
            "mcycles": ms * clock / 1e3 if clock else None, "mj": ms * power if power else None}}


def test_the_summary_takes_each_backends_median_round_and_divides_by_the_first(tool):
    rows = [_row("a", 1, 3.0, 1600, 700), _row("b", 1, 3.3, 1400, 700),
            _row("b", 2, 3.5, 1350, 700), _row("a", 2, 3.2, 1600, 690), _row("a", 3, 3.1, 1500, 680),
            _row("b", 3, 3.4, 1450, 700)]
    s = tool.summary(rows, ["a", "b"])
    assert s["a"]["ms"] == 3.1 and s["b"]["ms"] == 3.4 and s["b"]["sm_clock_mhz"] == 1400
    assert s["b"]["vs_first"]["ms"] == pytest.approx(3.4 / 3.1)
    assert s["b"]["vs_first"]["sm_clock_mhz"] == pytest.approx(1400 / 1600)
    assert s["a"]["vs_first"]["ms"] == 1.0
    text = tool.table(rows, s, ["a", "b"])
    assert "against a" in text and "0.875" in text  # b's clock against a's


def test_a_missing_clock_stays_missing_in_the_summary_and_the_table(tool):
    rows = [_row("a", 1, 3.0, None, None), _row("b", 1, 2.0, None, None)]
    s = tool.summary(rows, ["a", "b"])
    assert s["b"]["sm_clock_mhz"] is None and s["b"]["vs_first"]["mcycles"] is None
    assert s["b"]["vs_first"]["ms"] == pytest.approx(2 / 3)
    assert " - " in tool.table(rows, s, ["a", "b"])


@pytest.mark.parametrize("args, words", [(["--seconds", "0"], "must be a positive number"),
                                         (["--settle", "nan"], "must be a positive number"),
                                         (["--rounds", "0"], "must be at least 1"),
                                         (["--case", "B1,H1"], "needs B, H, N and D"),
                                         (["--backends", "sdpa_flash,sdpa_flash"], "one or more different backends"),
                                         (["--backends", "triton_fa3"], "unknown backend 'triton_fa3'"),
                                         (["--out", "/no/such/folder/clocks.json"], "does not exist")])
def test_bad_options_exit_2_naming_what_is_wrong(args, words):
    r = subprocess.run([sys.executable, str(TOOLS / "sustained_clock.py"), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a GPU")
def test_without_a_gpu_it_exits_2():
    r = subprocess.run([sys.executable, str(TOOLS / "sustained_clock.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr


def test_a_case_a_backend_cannot_run_exits_2_with_its_reason_before_the_gpu_is_touched(tool, monkeypatch, capsys):
    monkeypatch.setattr(tool.torch.cuda, "is_available", lambda: True)
    backend = backends.get("sdpa_cudnn")
    monkeypatch.setattr(backend, "unsupported_reason", lambda case, device: "head_dim 32 is not supported here")
    assert tool.main(["--backends", "triton_fa2,sdpa_cudnn", "--case", "B1,H1,N64,D32"]) == 2
    err = capsys.readouterr().err
    assert "sdpa_cudnn cannot run" in err and "head_dim 32 is not supported here" in err


@pytest.mark.gpu
def test_gpu_two_backends_get_a_window_each_round_and_write_json(tool, tmp_path, capsys):
    out = tmp_path / "clocks.json"
    assert tool.main(["--case", "B1,H8,N2048,D64,bf16,fwd", "--backends", "sdpa_flash,sdpa_math",
                      "--seconds", "0.3", "--settle", "0.2", "--rounds", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [(r["backend"], r["round"]) for r in doc["rows"]] == \
        [("sdpa_flash", 1), ("sdpa_math", 1), ("sdpa_math", 2), ("sdpa_flash", 2)]
    assert all(r["calls"] >= 2 and r["ms"] > 0 for r in doc["rows"]) and doc["device_uuid"].startswith("GPU-")
    assert doc["summary"]["sdpa_math"]["vs_first"]["ms"] > 1  # the unfused reference is slower
    assert "median of the rounds, against sdpa_flash" in capsys.readouterr().out
