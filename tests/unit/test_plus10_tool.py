"""tools/sdpa_flash_plus10.py, the plugin the GPU check of the gate uses: on a CPU, wrapping ``sdpa``
(``sdpa_flash`` needs CUDA): the same outputs and gradients, and the extra tenth really runs."""
import sys
from pathlib import Path

import pytest
import torch

from flashbench.backends import REGISTRY
from flashbench.attention.inputs import make_inputs
from flashbench.backends.calling import outputs_of
from flashbench.model.case import Case

TOOLS = str(Path(__file__).resolve().parents[2] / "tools")


@pytest.fixture
def plus10(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)
    builtin = REGISTRY["sdpa_flash"]
    import sdpa_flash_plus10

    yield sdpa_flash_plus10
    REGISTRY["sdpa_flash"] = builtin  # importing it replaced the built-in backend
    sys.modules.pop("sdpa_flash_plus10", None)


@pytest.mark.parametrize("kv_heads, mode", [(4, "fwd"), (4, "fwd_bwd"), (2, "fwd_bwd")])
def test_same_results_and_a_tenth_more_attention(plus10, monkeypatch, kv_heads, mode):
    assert REGISTRY["sdpa_flash"].__class__ is plus10.Plus10
    case = Case(5, 4, kv_heads, 32, 32, 16, "float32", True, mode)
    backend, plain = plus10.Plus10("sdpa"), REGISTRY["sdpa"]
    heads_seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, **kw):
        heads_seen.append(q.shape[0] * q.shape[1])
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    got = outputs_of(backend.prepare(case, "cpu"), make_inputs(case, "cpu", 0), case)
    assert heads_seen == [20, 2]  # then a tenth of the 20 (batch, head) pairs, each kv head with its query heads
    want = outputs_of(plain.prepare(case, "cpu"), make_inputs(case, "cpu", 0), case)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
