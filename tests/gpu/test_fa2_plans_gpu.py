"""GPU tests of ``flash_attn_v2``'s kept plans (marked ``gpu``; Hopper): a repeated call runs the launches its first
call prepared, deciding nothing again and enqueueing its compiled kernels without Triton's JIT
(``_prepared.PreparedLaunch``), and gets the first call's results (outputs poisoned before each call)."""
from __future__ import annotations

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, plans, sm90, sm90_bwd, sm90_persistent, spaces
from flashbench_kernels.flash_attn_v2 import kernels as triton_kernels
from kernel_checks import check_against_reference, make_inputs, on_hopper, poisoned_empty

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not on_hopper(), reason="the Gluon kernels run on Hopper only")]

GLUON = (128, 128, 4, 2, spaces.GLUON)
JIT_KERNELS = [sm90.fwd_sm90_kernel, sm90_persistent.fwd_sm90_persistent_kernel, sm90_bwd.bwd_sm90_kernel,
               sm90_bwd._dq_convert_kernel, triton_kernels.fwd_kernel, triton_kernels.bwd_preprocess_kernel,
               triton_kernels.bwd_dkdv_kernel, triton_kernels.bwd_dq_kernel]


def _count_jit(monkeypatch) -> list:
    """Names of the kernels launched through Triton's JIT (``kernel[grid](...)`` calls ``kernel.run``)."""
    seen = []
    for kernel in JIT_KERNELS:
        real = kernel.run
        monkeypatch.setattr(kernel, "run", lambda *a, _real=real, _name=kernel.__name__, **kw: (seen.append(_name),
                                                                                                 _real(*a, **kw))[1])
    return seen


@pytest.mark.parametrize("n, d, dtype, causal, options", [
    (1024, 128, torch.bfloat16, True, FA2Options(configs={"fwd": GLUON})),  # the persistent forward
    (4096, 128, torch.bfloat16, False, FA2Options(configs={"fwd": GLUON})),
    (1024, 64, torch.float16, True, FA2Options(autotune=False, backward="triton")),  # the Triton kernels
], ids=["persistent-gluon_bwd", "gluon-gluon_bwd", "triton"])
def test_gpu_a_repeated_call_decides_nothing_and_repeats_the_first_calls_results(n, d, dtype, causal, options,
                                                                                monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    q, k, v, do = make_inputs(2, 4, 2, n, n, d, dtype, seed=n + d)
    prepared = []
    real = launch._prepare
    monkeypatch.setattr(launch, "_prepare", lambda name, *a, **kw: (prepared.append(name), real(name, *a, **kw))[1])
    jit = _count_jit(monkeypatch)
    results = []
    for call in range(3):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o = flash_attn_v2(*leaves, causal=causal, options=options)
        results.append([o.detach()] + list(torch.autograd.grad(o, leaves, do)))
        torch.cuda.synchronize()
        if call == 0:
            assert jit, "the first call launches through the JIT"
            jit.clear()
    assert jit == [], f"later calls went through the JIT: {jit}"
    assert prepared == ["fwd"] + (["bwd_dkdv", "bwd_dq"] if options.backward == "triton" else [])
    first = results[0]
    for later in results[1:]:
        assert torch.equal(later[0], first[0]) and torch.equal(later[2], first[2]) and torch.equal(later[3], first[3])
        # dQ: reduce-adds in whatever order the programs run (Gluon backward)
        assert torch.allclose(later[1].float(), first[1].float(), rtol=2e-2, atol=1e-2)
    assert not any(t.isnan().any() for t in results[-1])


def test_gpu_a_kept_plan_meets_the_reference_on_its_later_calls(monkeypatch):
    """Each call of one signature on its own inputs (another seed each, then the first again), outputs and gradients
    poisoned: the later calls run the kept plan, and each meets the reference for its inputs. With one set of inputs
    and unpoisoned buffers, a kept plan that launched nothing could hand back the first call's results, left in the
    memory the allocator reuses, and pass."""
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    first, second = (make_inputs(2, 8, 2, 1024, 1024, 128, torch.bfloat16, seed=seed) for seed in (11, 12))
    for q, k, v, do in (first, second, first):  # the second and third calls run the kept plan
        check_against_reference(q, k, v, do, True)
    assert len(plans.kept()) == 1
