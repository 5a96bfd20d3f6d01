"""A flashbench plugin: ``triton_fa2_deterministic``, the bundled FA2 with its deterministic backward
(``FA2Options(backward="triton")``: the Triton dK/dV and dQ kernels, no atomics, gradients plus O(N) buffers,
flash-attn's ``deterministic=True``), to time it beside the default (the Gluon Hopper backward, whose fp32 dQ
reduce-adds make dQ vary in its last bits and hold an accumulator twice dQ's size) in one run:

    FLASHBENCH_PLUGINS=deterministic_backend PYTHONPATH=lab flashbench run fa2_h100 \
        -b sdpa_cudnn,triton_fa2,triton_fa2_deterministic

Dense cases, with or without a window, and packed batches (``workload: varlen``, ``flash_attn_varlen``); the
launch log (the results' config column) says which kernels ran.
"""
from __future__ import annotations

from flashbench import FA2Options, flash_attn_v2, flash_attn_varlen
from flashbench.backends import TritonBackend, register

_OPTIONS = FA2Options(backward="triton")


class DeterministicBackend(TritonBackend):
    name = "triton_fa2_deterministic"
    description = "bundled FA2, deterministic Triton backward (FA2Options(backward='triton'))"
    module = "flashbench_kernels.flash_attn_v2"
    workloads = ("dense", "varlen")
    supports_window = True

    def prepare(self, case, device):
        log = self.new_launch_log()
        if case.workload == "varlen":
            longest = max(case.sequence_lengths()[0])
            # the harness made cu from the case (known good): unchecked, as the triton_fa2 backend calls it
            return lambda q, k, v, cu: flash_attn_varlen(q, k, v, cu, cu, longest, longest, causal=case.causal,
                                                         window=case.window, options=_OPTIONS, launch_log=log,
                                                         check_values=False)
        return lambda q, k, v: flash_attn_v2(q, k, v, causal=case.causal, window=case.window, options=_OPTIONS,
                                             launch_log=log)


register(DeterministicBackend())
