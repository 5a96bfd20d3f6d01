"""``triton_fa1`` and ``triton_fa2``: the Triton FlashAttention kernels bundled in ``kernels/``.

Without a GPU they are skipped, except under ``TRITON_INTERPRET=1`` where Triton's CPU
interpreter runs them (slowly: small shapes only).
"""
from __future__ import annotations

import importlib
import importlib.util

from flashbench_kernels._validate import interpreting

from .base import Backend


class TritonKernelBackend(Backend):
    dtypes = ("float16", "bfloat16", "float32")
    head_dims = (32, 64, 96, 128, 256)

    def __init__(self, name: str, module: str, function: str, description: str):
        self.name, self.module, self.function, self.description = name, module, function, description

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

    def prepare(self, case, device):
        fn = getattr(self._module(), self.function)
        causal = case.causal
        # each prepared call has its own log, filled by the kernels it launches (the forward's, and
        # the backward's when autograd runs it); config_description() reads the latest one
        log: dict[str, str] = {}
        self._launch_log = log
        return lambda q, k, v: fn(q, k, v, causal=causal, launch_log=log)

    def compile_key(self, case):
        """What selects a Triton specialisation: constexprs (dtype, head dim, causal, the kernels a
        mode runs), integer arguments equal to 1 (kv heads), the GQA group, and how the lengths
        divide into blocks (tails compile masked variants; lengths under one block prune tiles)."""
        if interpreting():
            return None  # the interpreter compiles nothing

        def length(n):  # 128 | n: the warp-specialised forward runs its key loop unmasked
            return (n % 256 == 0, n % 128 == 0, min(n, 256) if n < 256 else 256)

        return (case.dtype, case.head_dim, case.causal, case.has_backward, case.heads // case.kv_heads,
                case.kv_heads == 1, length(case.seq_len_q), length(case.seq_len_kv))

    def config_description(self) -> str:
        """The configurations the last prepared call's kernels ran with ('' before it has run)."""
        return "; ".join(f"{k}: {v}" for k, v in getattr(self, "_launch_log", {}).items())
