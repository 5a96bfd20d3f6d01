"""A flashbench plugin: ``triton_fa2_bwd90``, the bundled FA2 with the Gluon Hopper backward turned on
(``FA2Options(backward="sm90")``), to time it beside ``triton_fa2`` and the SDPA backends in one run:

    FLASHBENCH_PLUGINS=sm90_backward_backend PYTHONPATH=lab flashbench run fa2_h100 \
        -b sdpa_cudnn,triton_fa2,triton_fa2_bwd90

Dense cases only; the launch log (the results' config column) says which backward ran: the Gluon one's
label starts with ``gluon_sm90_bwd``, inputs it does not take run the Triton backward.
"""
from __future__ import annotations

from flashbench import FA2Options, flash_attn_v2
from flashbench.backends import register
from flashbench.backends.triton_kernels import TritonBackend

_OPTIONS = FA2Options(backward="sm90")


class Sm90BackwardBackend(TritonBackend):
    name = "triton_fa2_bwd90"
    description = "bundled FA2, Gluon Hopper backward (FA2Options(backward='sm90'))"
    module = "flashbench_kernels.flash_attn_v2"
    workloads = ("dense",)

    def prepare(self, case, device):
        log = self.new_launch_log()
        return lambda q, k, v: flash_attn_v2(q, k, v, causal=case.causal, options=_OPTIONS, launch_log=log)


register(Sm90BackwardBackend())
