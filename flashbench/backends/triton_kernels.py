"""``triton_fa1`` and ``triton_fa2``: the Triton FlashAttention kernels bundled in ``kernels/``.

Without a GPU they are skipped, except under ``TRITON_INTERPRET=1`` where Triton's CPU
interpreter runs them (slowly: small shapes only).

Beyond dense attention (``triton_fa2``): sliding windows go to ``flash_attn_v2(..., window=(l, r))``
and varlen batches to ``flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
max_seqlen_k, causal, sm_scale, window, check_values=False)`` (offsets the harness built), where the
kernels offer them (found by signature and attribute, so a kernels build without them skips those
cases with the reason); a decode case whose
caches are all full is a dense call on views of the contiguous cache (FA2's own grid,
without the split over keys that ``triton_decode`` adds).
"""
from __future__ import annotations

import importlib
import importlib.util

from flashbench_kernels._validate import interpreting

from .base import Backend


class TritonBackend(Backend):
    """What every bundled-kernel backend shares: the kernel module, the interpreter on a CPU, the
    launch log each prepared call fills."""

    dtypes = ("float16", "bfloat16", "float32")
    head_dims = (32, 64, 96, 128, 256)
    module = ""

    def _module(self):
        return importlib.import_module(self.module)

    @property
    def devices(self):
        return ("cuda", "cpu") if interpreting() else ("cuda",)

    def availability(self):
        # found, not imported: importing Triton and the kernels costs a second, paid by the process
        # that runs them (an import error there is the task's error row), not by `list` or the plan
        try:
            missing = [m for m in ("triton", self.module) if importlib.util.find_spec(m) is None]
        except (ImportError, ValueError) as e:
            return f"{self.module} cannot be found: {type(e).__name__}: {e}"
        return f"{' and '.join(missing)} not installed" if missing else None

    def extra_reason(self, case, device):
        if device == "cpu" and case.dtype == "bfloat16":
            return "Triton's CPU interpreter has no bfloat16"
        return None

    def unsupported_reason(self, case, device):
        if device == "cpu" and not interpreting():
            return f"{self.name} needs a CUDA GPU (set TRITON_INTERPRET=1 to run it slowly on Triton's CPU interpreter)"
        return super().unsupported_reason(case, device)

    def new_launch_log(self) -> dict[str, str]:
        """A log for one prepared call, filled by the kernels it launches (the forward's, and the
        backward's when autograd runs it); config_description() reads the latest one."""
        self._launch_log: dict[str, str] = {}
        return self._launch_log

    def config_description(self) -> str:
        """The configurations the last prepared call's kernels ran with ('' before it has run)."""
        return "; ".join(f"{k}: {v}" for k, v in getattr(self, "_launch_log", {}).items())


class TritonKernelBackend(TritonBackend):
    def __init__(self, name: str, module: str, function: str, description: str,
                 varlen_function: str | None = None, workloads: tuple[str, ...] = ("dense",)):
        self.name, self.module, self.function, self.description = name, module, function, description
        self.varlen_function = varlen_function
        self.workloads = workloads
        self.supports_window = varlen_function is not None  # the FA2 family; FA1 has no window form

    def extra_reason(self, case, device):
        why = super().extra_reason(case, device)
        if why:
            return why
        if case.workload == "decode" and not case.full_caches:
            return (f"{self.name} runs decode as one dense call over the whole cache, so every cache must be full "
                    f"(hold seq_len_kv keys; triton_decode reads caches of any length)")
        return None

    def prepare(self, case, device):
        log = self.new_launch_log()
        causal = case.causal
        kw = {"window": case.window} if case.has_window else {}
        if case.workload == "varlen":
            fn = getattr(self._module(), self.varlen_function)
            longest = max(case.sequence_lengths()[0])
            # the harness made cu from the case, so its values are known good: check_values=False
            # trusts them as flash-attn's varlen API does, and the call then never waits for the GPU
            # (the timer measures the kernels, not a host sync of the offsets)
            return lambda q, k, v, cu: fn(q, k, v, cu, cu, longest, longest, causal=causal, launch_log=log,
                                          check_values=False, **kw)
        fn = getattr(self._module(), self.function)
        if case.workload == "decode":
            causal = case.causal and case.seq_len_q > 1  # one new token sees its whole cache

            def decode(q, k_cache, v_cache, cache_seqlens, block_table):
                o = fn(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2), causal=causal,
                       launch_log=log, **kw)
                return o.transpose(1, 2)

            return decode
        return lambda q, k, v: fn(q, k, v, causal=causal, launch_log=log, **kw)

    def compile_key(self, case):
        """What selects a Triton specialisation: constexprs (dtype, head dim, causal, windows, the
        kernels a mode runs), integer arguments equal to 1 (kv heads), the GQA group, and how the
        lengths divide into blocks (tails compile masked variants; lengths under one block prune tiles)."""
        if interpreting():
            return None  # the interpreter compiles nothing

        def length(n):  # 128 | n: the warp-specialised forward runs its key loop unmasked
            return (n % 256 == 0, n % 128 == 0, min(n, 256) if n < 256 else 256)

        return (case.dtype, case.head_dim, case.causal, case.has_backward, case.heads // case.kv_heads,
                case.kv_heads == 1, length(case.seq_len_q), length(case.seq_len_kv), case.workload,
                case.window_left >= 0, case.window_right >= 0)
