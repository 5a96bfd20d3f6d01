"""tools/host_path.py: its case syntax, and its refusals on a CPU (the profile itself needs a GPU)."""
import re
import subprocess
import sys

import pytest
import torch
from tool_import import TOOLS, imported_tool  # tests/support


@pytest.fixture
def host_path(monkeypatch):
    yield from imported_tool(monkeypatch, "host_path")


def test_reads_a_case(host_path):
    c = host_path.parse_case("B16,H16,Hkv4,N1024,D128,fp16,causal,fwd_bwd")
    assert (c.batch, c.heads, c.kv_heads, c.seq_len_q, c.seq_len_kv, c.head_dim) == (16, 16, 4, 1024, 1024, 128)
    assert (c.dtype, c.causal, c.mode) == ("float16", True, "fwd_bwd")
    c = host_path.parse_case("N512, D64, B2, H8")  # any order; bf16, non-causal, fwd by default
    assert (c.batch, c.heads, c.kv_heads, c.seq_len_q, c.dtype, c.causal, c.mode) == \
        (2, 8, 8, 512, "bfloat16", False, "fwd")


@pytest.mark.parametrize("text, words", [("B16,H16,N1024", "needs B, H, N and D"),
                                         ("B16,H16,N1024,D128,int8", "cannot read 'int8'"),
                                         ("B16,H16,N1024,D128,causual", "cannot read 'causual'"),
                                         ("B0,H16,N1024,D128", "B0 must be a positive integer"),
                                         ("B1,H16,N1024,D4096", "D4096 must be at most 1,024")])
def test_a_bad_case_names_what_is_wrong(host_path, text, words):
    with pytest.raises(ValueError, match=words):
        host_path.parse_case(text)


def test_exit_2_with_a_message_on_bad_input_or_without_a_gpu():
    r = subprocess.run([sys.executable, str(TOOLS / "host_path.py"), "--case", "B1,H1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "needs B, H, N and D" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(TOOLS / "host_path.py"), "--case", "B1,H1,N64,D32"],
                       capture_output=True, text=True, timeout=120)
    if not torch.cuda.is_available():
        assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr


def test_an_unknown_backend_exits_2_naming_it():
    r = subprocess.run([sys.executable, str(TOOLS / "host_path.py"), "--backend", "triton_fa3", "--case", "B1,H1,N64,D32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown backend 'triton_fa3'" in r.stderr and "Traceback" not in r.stderr


def test_a_case_the_backend_cannot_run_exits_2_with_its_reason(host_path, monkeypatch, capsys):
    """Checked before anything touches the GPU (here: a GPU is pretended, the backend refuses)."""
    monkeypatch.setattr(host_path.torch.cuda, "is_available", lambda: True)
    backend = host_path.backends.get("sdpa_flash")
    monkeypatch.setattr(backend, "unsupported_reason", lambda case, device: "head_dim 32 is not supported here")
    monkeypatch.setattr(sys, "argv", ["host_path.py", "--backend", "sdpa_flash", "--case", "B1,H1,N64,D32"])
    assert host_path.main() == 2
    err = capsys.readouterr().err
    assert "sdpa_flash cannot run" in err and "head_dim 32 is not supported here" in err


def test_reads_a_causal_sliding_window(host_path):
    c = host_path.parse_case("B2,H16,N8192,D128,causal,w4096,fwd_bwd")
    assert (c.window_left, c.window_right, c.causal, c.mode) == (4096, 0, True, "fwd_bwd")
    assert "window(4096,0)" in c.label()
    assert host_path.parse_case("B2,H16,N8192,D128,causal").window == (-1, -1)
    with pytest.raises(ValueError, match="w4096 is a causal sliding window: add causal"):
        host_path.parse_case("B2,H16,N8192,D128,w4096")


def test_calls_are_enqueued_in_holds_of_at_most_reps_calls(host_path, monkeypatch):
    """One hold for every call filled the GPU's launch queue (about a thousand kernels), after which each launch
    waited for the GPU: 200 fwd_bwd calls read 20 ms a call. The calls go in holds of ``reps``, each followed by a
    synchronisation, and the profiler runs around the enqueues only."""
    log = []

    class Event:
        def record(self):
            log.append("record")

        def query(self):
            return len([e for e in log if e[0] == "hold"]) == 2  # the second hold ends early

    class Profiler:
        def enable(self):
            log.append("enable")

        def disable(self):
            log.append("disable")

    monkeypatch.setattr(host_path.torch.cuda, "_sleep", lambda cycles: log.append(("hold", cycles)))
    monkeypatch.setattr(host_path.torch.cuda, "Event", Event)
    monkeypatch.setattr(host_path.torch.cuda, "synchronize", lambda: log.append("sync"))
    us, short = host_path.held_batches(lambda: log.append("call"), 30, 12, Profiler())
    assert len(us) == 3 and short == 1
    batches = "".join("H" if e[0] == "hold" else {"call": "c", "sync": "|", "enable": "(", "disable": ")"}.get(e, "")
                      for e in log)
    assert batches == "H(" + "c" * 12 + ")|H(" + "c" * 12 + ")|H(" + "c" * 6 + ")|"
    holds = [e[1] for e in log if e[0] == "hold"]
    assert holds[0] == holds[1] > holds[2] == int(host_path.hold_seconds(6) * 1.98e9)


def test_calls_and_reps_must_be_positive():
    r = subprocess.run([sys.executable, str(TOOLS / "host_path.py"), "--reps", "0"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--reps: must be 1 or more, got 0" in r.stderr and "Traceback" not in r.stderr


def _attention(q, k, v):  # a CPU stand-in for a backend's function: differentiable torch operations
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def test_split_parts_are_the_call_its_forward_its_backward_and_the_floor(host_path):
    """Each part runs on its own and does what its label says: the backward alone differentiates a kept forward
    (again and again), and the floor hands dO on as q's gradient."""
    from flashbench.attention.inputs import make_inputs
    case = host_path.parse_case("B1,H2,N16,D8,fp32,fwd_bwd")
    inputs = make_inputs(case, "cpu", seed=0)
    parts = host_path.split_calls(_attention, inputs, case)
    assert list(parts) == ["fwd_bwd (the call)", "forward, graph recorded", "backward (autograd.grad)",
                           "floor: a Python autograd.Function"]
    whole = parts["fwd_bwd (the call)"]()
    assert parts["forward, graph recorded"]().grad_fn is not None
    for _ in range(2):  # the kept graph is retained: the backward part runs again
        alone = parts["backward (autograd.grad)"]()
        assert all(torch.equal(a, b) for a, b in zip(alone, whole))
    (floor,) = parts["floor: a Python autograd.Function"]()
    assert torch.equal(floor, inputs.do)


def test_split_parts_take_turns_hold_by_hold(host_path, monkeypatch, capsys):
    order = []

    def held(call, reps):
        order.append(call())
        return {"a": 10.0, "b": 20.0}[order[-1]] + len(order), len(order) == 3

    monkeypatch.setattr(host_path, "held_batch_us", held)
    medians, short = host_path.interleaved_medians({"a": lambda: "a", "b": lambda: "b"}, 3, 12)
    assert order == ["a", "b"] * 3 and short == 1
    assert medians == {"a": 13.0, "b": 24.0}  # a: 11, 13, 15; b: 22, 24, 26
    host_path.print_split("label", medians, 3, 12)
    out = capsys.readouterr().out
    assert "median of 3 interleaved holds of 12 calls" in out and "13.0" in out and "24.0" in out


def test_split_refuses_a_case_without_a_backward(host_path, monkeypatch, capsys):
    monkeypatch.setattr(host_path.torch.cuda, "is_available", lambda: True)  # as on a GPU: the case is checked first
    monkeypatch.setattr(host_path.backends.get("sdpa_flash"), "unsupported_reason", lambda case, device: None)
    monkeypatch.setattr(sys, "argv", ["host_path.py", "--backend", "sdpa_flash", "--case", "B1,H1,N64,D64,fwd",
                                      "--split"])
    assert host_path.main() == 2
    assert "--split takes a fwd_bwd case, got fwd" in capsys.readouterr().err



def test_reads_a_packed_case(host_path):
    """A packed batch's lengths drawn as the varlen sweep draws them (seed 0) until T tokens are filled; B and N
    follow (the longest length the distribution allows), and the label is the sweep's row label."""
    c = host_path.parse_case("T16384,uniform128-8192,H16,Hkv4,D128,causal,fwd_bwd")
    assert (c.workload, c.lengths, c.total_tokens) == ("varlen", "uniform(128..8192,seed=0)", 16384)
    assert (c.batch, c.seq_len_q, c.seq_len_kv, c.heads, c.kv_heads) == (3, 8192, 8192, 16, 4)
    assert sum(c.sequence_lengths()[0]) == 16384
    assert c.label() == "B3 H16/4kv N8192 D128 bfloat16 causal fwd_bwd varlen lengths=uniform(128..8192,seed=0) T16384"
    assert host_path.parse_case("T8192,lognormal128-8192,H8,D64").lengths == "lognormal(128..8192,seed=0)"
    c = host_path.parse_case("T16384,list2048,H16,D128")  # equal lengths: the dense shape, packed
    assert (c.lengths, c.batch, c.seq_len_q) == ("list(2048)", 8, 2048)
    assert host_path.parse_case("T1000,list100-300,H2,D64").sequence_lengths()[0] == (100, 300, 100, 300, 100, 100)


@pytest.mark.parametrize("text, words", [("T16384,H16,D128", "a packed case takes T (its tokens) and its lengths"),
                                         ("uniform128-8192,H16,D128", "a packed case takes T"),
                                         ("T16384,uniform128-8192,B2,H16,D128", "and no B or N"),
                                         ("T16384,list2048,N2048,H16,D128", "and no B or N"),
                                         ("T16384,uniform128-8192,D128", "needs H and D"),
                                         ("T0,list2048,H16,D128", "T0 must be a positive integer"),
                                         ("T16384,uniform8192-128,H16,D128", "max (128) must be >= min (8192)"),
                                         ("T16384,uniform128-,H16,D128", "cannot read 'uniform128-'")])
def test_a_bad_packed_case_names_what_is_wrong(host_path, text, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        host_path.parse_case(text)
