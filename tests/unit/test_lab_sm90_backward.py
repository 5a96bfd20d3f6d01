"""lab/sm90_backward_backend.py, the plugin that times the Gluon Hopper backward beside ``triton_fa2``: it
registers ``triton_fa2_bwd90``, takes dense cases only, and its prepared call asks for the Gluon backward."""
import sys
from pathlib import Path

import pytest

from flashbench.backends import REGISTRY
from flashbench.model.case import Case

LAB = str(Path(__file__).resolve().parents[2] / "lab")


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(LAB)
    import sm90_backward_backend

    yield sm90_backward_backend
    REGISTRY.pop("triton_fa2_bwd90", None)
    sys.modules.pop("sm90_backward_backend", None)


def test_registers_a_dense_backend_that_asks_for_the_gluon_backward(plugin, monkeypatch):
    backend = REGISTRY["triton_fa2_bwd90"]
    assert isinstance(backend, plugin.Sm90BackwardBackend) and backend.workloads == ("dense",)
    seen = {}

    def fake(q, k, v, causal, options, launch_log):
        seen.update(causal=causal, backward=options.backward, log=launch_log)
        return q

    monkeypatch.setattr(plugin, "flash_attn_v2", fake)
    case = Case(1, 2, 2, 128, 128, 64, "bfloat16", True, "fwd_bwd")
    assert backend.prepare(case, "cuda")("q", "k", "v") == "q"
    assert seen["causal"] is True and seen["backward"] == "sm90" and seen["log"] is backend._launch_log


def test_skips_packed_batches_with_the_reason(plugin):
    case = Case(2, 2, 2, 128, 128, 64, "bfloat16", True, "fwd", workload="varlen", lengths=(100, 156))
    reason = REGISTRY["triton_fa2_bwd90"].unsupported_reason(case, "cuda")
    assert reason and "varlen" in reason
