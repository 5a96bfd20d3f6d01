"""The backend registry. Backends are registered here explicitly: no discovery by name or path."""
from __future__ import annotations

from ..model.schema import BACKEND_NAME_RULE, is_backend_name
from .base import Backend, Unsupported
from .flex import FlexBackend
from .naive import NaiveBackend
from .sdpa import SdpaBackend
from .triton_decode import TritonDecodeBackend
from .torch_varlen import TorchVarlenBackend
from .triton_kernels import TritonBackend, TritonKernelBackend

REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (tests register fakes this way). A name is unique and a backend name by
    :func:`~flashbench.model.schema.is_backend_name`: results files refuse other names on reading (a sweep of
    such a backend could never be resumed or gated), ``-b a,b`` lists names, tables and file names show them."""
    name = backend.name
    if not is_backend_name(name):
        raise ValueError(f"backend name {name!r:.60}: {BACKEND_NAME_RULE}")
    REGISTRY[name] = backend
    return backend


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


for _b in (
    NaiveBackend(),
    SdpaBackend("sdpa"),
    SdpaBackend("sdpa_flash"),
    SdpaBackend("sdpa_efficient"),
    SdpaBackend("sdpa_cudnn"),
    SdpaBackend("sdpa_math"),
    FlexBackend(),
    TorchVarlenBackend(),
    TritonKernelBackend("triton_fa2", "flashbench_kernels.flash_attn_v2", "flash_attn_v2",
                        "bundled Triton FlashAttention-2 (kernels/flash_attn_v2/)",
                        varlen_function="flash_attn_varlen", workloads=("dense", "decode", "varlen")),
    TritonKernelBackend("triton_fa1", "flashbench_kernels.flash_attn_v1", "flash_attn_v1",
                        "bundled Triton FlashAttention-1 (kernels/flash_attn_v1.py)"),
    TritonDecodeBackend(),
):
    register(_b)

# the plugin API: ``Backend`` (and ``TritonBackend``, for a backend that launches Triton kernels: the interpreter on a
# CPU, the launch log that fills the results' config column), ``Unsupported``, ``register``
__all__ = ["Backend", "TritonBackend", "Unsupported", "REGISTRY", "register", "get"]
