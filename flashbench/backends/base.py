"""The backend contract.

A backend is one small module holding one :class:`Backend` subclass that

- declares what it supports (devices, dtypes, head dims, causal, GQA, modes, and the workloads,
  KV-cache layouts and sliding windows it runs: by default dense attention only, no windows);
- says why it cannot run a case (:meth:`Backend.unsupported_reason`, or :class:`Unsupported`
  raised from :meth:`Backend.prepare`): that becomes a ``skipped`` row, never a crash;
- prepares an attention function for one case, outside any timed region (compilation, block
  masks, ...). The function takes the workload's tensors and returns the output in the workload's
  layout (:mod:`flashbench.attention.inputs` defines both):

  - dense: ``fn(q, k, v) -> o``;
  - varlen: ``fn(q, k, v, cu_seqlens) -> o``, the batch packed along the tokens;
  - decode: ``fn(q, k_cache, v_cache, cache_seqlens, block_table) -> o``.

  ``o`` is one tensor with the shape, dtype and device of ``q`` in all three layouts (checked on the
  first call of every task: :class:`BackendContractError` otherwise).

  Python-side facts of the case (the per-sequence lengths: ``case.sequence_lengths()``, the window:
  ``case.window``) are known in ``prepare``, so masks are built there, not in the timed call. The
  runner binds the function to inputs and a mode (fwd / bwd / fwd_bwd) to get the zero-argument
  call it times: that binding lives in one place (:mod:`.calling`), not in each backend.

A call runs in a measuring worker that measures other backends after it: whatever process state the
call changes (torch's grad mode, default dtype, thread count, TF32 and determinism flags, the working
directory) is put back after each task (:mod:`flashbench.measure.process_state`), so one backend
never changes what the next one measures. ``unsupported_reason`` returns a short text or None; one
that raises makes the task an ``error`` row, and a long text is cut to a bounded length.

Backends are registered explicitly in :mod:`flashbench.backends`.
"""
from __future__ import annotations

from typing import Callable

from ..model.case import DTYPES, MODES, Case

AttentionFn = Callable[..., "object"]


class Unsupported(Exception):
    """Raised by a backend that cannot run a case; the message is the reason shown to users."""


class BackendContractError(TypeError):
    """A backend broke this contract: ``prepare`` returned no function, or the function returned something
    other than the output tensor (not a tensor; a shape, dtype or device other than ``q``'s). The task is an
    ``error`` row saying which, never a traceback from deeper code that tripped over it."""


class Backend:
    name: str = ""
    description: str = ""
    devices: tuple[str, ...] = ("cuda",)
    dtypes: tuple[str, ...] = DTYPES
    head_dims: tuple[int, ...] | None = None  # None: any head dim
    supports_causal: bool = True
    supports_gqa: bool = True
    modes: tuple[str, ...] = MODES
    workloads: tuple[str, ...] = ("dense",)           # of flashbench.model.case.WORKLOADS
    kv_layouts: tuple[str, ...] = ("contiguous",)     # decode caches it reads
    supports_window: bool = False                     # sliding windows (window_left/right)

    def availability(self) -> str | None:
        """Why this backend cannot run at all in this environment (None when it can)."""
        return None

    def extra_reason(self, case: Case, device: str) -> str | None:
        """Backend-specific limits beyond the declared ones."""
        return None

    def unsupported_reason(self, case: Case, device: str) -> str | None:
        why = self.availability()
        if why:
            return why
        if device not in self.devices:
            return f"{self.name} does not run on {device} (runs on: {', '.join(self.devices)})"
        if case.workload not in self.workloads:
            return f"{self.name} does not run workload {case.workload} (runs: {', '.join(self.workloads)})"
        if case.dtype not in self.dtypes:
            return f"{self.name} does not support {case.dtype} (supports: {', '.join(self.dtypes)})"
        if self.head_dims is not None and case.head_dim not in self.head_dims:
            return f"{self.name} does not support head_dim {case.head_dim} (supports: {', '.join(map(str, self.head_dims))})"
        if case.causal and not self.supports_causal:
            return f"{self.name} does not support causal masking"
        if case.is_gqa and not self.supports_gqa:
            return f"{self.name} does not support GQA/MQA (kv_heads != heads)"
        if case.mode not in self.modes:
            return f"{self.name} does not support mode {case.mode} (supports: {', '.join(self.modes)})"
        if case.workload == "decode" and case.kv_layout not in self.kv_layouts:
            return f"{self.name} cannot read a {case.kv_layout} KV cache (reads: {', '.join(self.kv_layouts)})"
        if case.has_window and not self.supports_window:
            return f"{self.name} does not support sliding windows"
        return self.extra_reason(case, device)

    def prepare(self, case: Case, device: str) -> AttentionFn:
        """Return the attention function of this case's workload (module docstring). May raise
        :class:`Unsupported`."""
        raise NotImplementedError

    def compile_key(self, case: Case):
        """Cases with equal keys run the same compiled code (None: this backend compiles nothing
        worth doing ahead of time). :mod:`flashbench.execute.precompile` runs one case per key in parallel
        processes before a sweep, so that compilation is not paid serially in the measuring worker."""
        return None

    def config_description(self) -> str:
        """What the backend chose for the last call (e.g. autotuned block sizes); '' if nothing."""
        return ""
