"""GPU tests of the tuners' held timing (``_tuner.held_bench``; marked ``gpu``, skipped without CUDA)."""
from __future__ import annotations

import time

import pytest
import torch

from flashbench_kernels import _tuner

pytestmark = pytest.mark.gpu


def _sleep_ms(ms: float) -> int:
    return int(_tuner._sleep_cycles_per_ms(torch.cuda.current_device()) * ms)


def test_held_bench_leaves_the_hosts_enqueue_time_out():
    """A call whose host path (2 ms) is far longer than its kernel (~0.05 ms): do_bench's figure is the host's,
    held_bench's the kernel's."""
    x = torch.zeros(1 << 20, device="cuda")

    def slow_host_call():
        time.sleep(0.002)
        x.add_(1)

    held = _tuner.held_bench(slow_host_call)
    plain = _tuner._bench(slow_host_call)
    assert held < 0.5, held
    assert plain > 1.5, plain


def test_held_bench_measures_a_known_gpu_duration():
    cycles = _sleep_ms(1.0)
    got = _tuner.held_bench(lambda: torch.cuda._sleep(cycles))
    assert 0.7 < got < 1.4, got
