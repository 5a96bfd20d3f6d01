"""lab/deterministic_backend.py, the plugin that times FA2's deterministic backward beside ``triton_fa2``: it
registers ``triton_fa2_deterministic``, takes dense cases (windows too) and packed batches, and its prepared call asks
for the Triton backward with the case's causal flag and window."""
import sys
from pathlib import Path

import pytest

from flashbench.backends import REGISTRY
from flashbench.model.case import Case

LAB = str(Path(__file__).resolve().parents[2] / "lab")


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(LAB)
    import deterministic_backend

    yield deterministic_backend
    REGISTRY.pop("triton_fa2_deterministic", None)
    sys.modules.pop("deterministic_backend", None)


@pytest.mark.parametrize("window", [(-1, -1), (64, 0)])
def test_registers_a_dense_backend_that_asks_for_the_deterministic_backward(plugin, monkeypatch, window):
    backend = REGISTRY["triton_fa2_deterministic"]
    assert isinstance(backend, plugin.DeterministicBackend) and backend.workloads == ("dense", "varlen")
    seen = {}

    def fake(q, k, v, causal, window, options, launch_log):
        seen.update(causal=causal, window=window, backward=options.backward, log=launch_log)
        return q

    monkeypatch.setattr(plugin, "flash_attn_v2", fake)
    case = Case(1, 2, 2, 128, 128, 64, "bfloat16", True, "fwd_bwd", window_left=window[0], window_right=window[1])
    assert backend.unsupported_reason(case, "cuda") is None
    assert backend.prepare(case, "cuda")("q", "k", "v") == "q"
    assert seen == dict(causal=True, window=window, backward="triton", log=backend._launch_log)


def test_packed_batches_call_the_varlen_function_with_the_deterministic_backward(plugin, monkeypatch):
    backend = REGISTRY["triton_fa2_deterministic"]
    seen = {}

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, options, launch_log, check_values):
        seen.update(cu=(cu_q, cu_k), longest=(max_q, max_k), causal=causal, window=window, backward=options.backward,
                    checked=check_values)
        return q

    monkeypatch.setattr(plugin, "flash_attn_varlen", fake)
    case = Case(1, 2, 2, 156, 156, 64, "bfloat16", True, "fwd", workload="varlen", lengths="list(100,156)",
                total_tokens=256)
    assert backend.unsupported_reason(case, "cuda") is None
    assert backend.prepare(case, "cuda")("q", "k", "v", "cu") == "q"
    assert seen == dict(cu=("cu", "cu"), longest=(156, 156), causal=True, window=(-1, -1), backward="triton",
                        checked=False)
