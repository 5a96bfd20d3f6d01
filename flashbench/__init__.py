"""flashbench: benchmark and profile attention kernels on GPUs.

The bundled Triton kernels are exported lazily (``flashbench.flash_attn_v2``, with its options
``flashbench.FA2Options``), so importing the package never compiles or imports Triton until a kernel
is asked for.
"""
from __future__ import annotations

__version__ = "0.1.0"

_KERNELS = {
    "flash_attn_v1": "flashbench_kernels.flash_attn_v1",
    "flash_attn_v2": "flashbench_kernels.flash_attn_v2",
    "FA2Options": "flashbench_kernels.flash_attn_v2",
    "flash_attn_varlen": "flashbench_kernels.flash_attn_v2",
    "flash_decode": "flashbench_kernels.flash_decode",
    "DecodeOptions": "flashbench_kernels.flash_decode",
}


def __getattr__(name: str):
    if name in _KERNELS:
        import importlib

        return getattr(importlib.import_module(_KERNELS[name]), name)
    raise AttributeError(f"module 'flashbench' has no attribute {name!r}")


__all__ = ["DecodeOptions", "FA2Options", "__version__", "flash_attn_v1", "flash_attn_v2", "flash_attn_varlen",
           "flash_decode"]
