"""Hold a CUDA stream until the host lets it go: nvbench's blocking kernel.

One Triton program spins on a flag in pinned host memory. The host launches it, enqueues a whole
batch of work behind it on the same stream (the GPU runs none of it yet), then sets the flag; the
GPU then runs the batch back to back, so CUDA events inside the batch time the GPU alone, however
slowly the host enqueued it.

The flag is a ``torch.empty(..., pin_memory=True)`` tensor: page-locked host memory, mapped into the
device's address space under unified virtual addressing. Triton 3.6's launcher accepts it as a
pointer argument: its ``getPointer`` (python/triton/backends/nvidia/driver.py) takes the tensor's
``data_ptr()`` and translates it with ``cuPointerGetAttribute(CU_POINTER_ATTRIBUTE_DEVICE_POINTER)``,
which succeeds for page-locked host memory (pageable memory is refused: "cpu tensor?"). The loop
reads the flag with a volatile load, so every iteration goes to host memory again.

Guard: the kernel gives up after ``timeout_ms`` by itself (``%globaltimer``) and records that it did
(the flag's second word), so a host that stalls while the stream is held (a call that synchronises,
a launch queue that is full, a host that died) cannot hang the GPU; the caller reads
:meth:`StreamHold.timed_out` after synchronising and discards that batch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import globaltimer

# timeouts are passed in µs, so the argument's type (i32) never depends on its value: one compile
MAX_TIMEOUT_MS = 10_000.0


@triton.jit(do_not_specialize=["timeout_us"])
def _spin_until_released(flag_ptr, timeout_us):
    start = globaltimer()
    limit_ns = timeout_us.to(tl.int64) * 1000
    released = tl.load(flag_ptr, volatile=True)
    waited = start - start
    while (released == 0) & (waited < limit_ns):
        released = tl.load(flag_ptr, volatile=True)
        waited = globaltimer() - start
    if released == 0:
        tl.store(flag_ptr + 1, 1)  # released by the timeout, not by the host


class StreamHold:
    """``hold(timeout_ms)`` on the current stream, enqueue work, ``release()``, synchronise, then
    ``timed_out()`` says whether the kernel gave up before the host released it."""

    _by_device: dict[str, "StreamHold"] = {}

    def __init__(self, device):
        self.device = torch.device(device)
        # word 0: set by the host to release; word 1: set by the kernel when it timed out
        self.flag = torch.zeros(2, dtype=torch.int32, pin_memory=True)

    @classmethod
    def for_device(cls, device) -> "StreamHold":
        key = str(torch.device(device))
        if key not in cls._by_device:
            cls._by_device[key] = cls(device)
        return cls._by_device[key]

    def hold(self, timeout_ms: float) -> None:
        """Enqueue the spinning kernel on the current stream. The previous hold must be over (the
        caller synchronised after releasing it)."""
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms: must be in (0, {MAX_TIMEOUT_MS:.0f}], got {timeout_ms}")
        self.flag.zero_()
        with torch.cuda.device(self.device):
            _spin_until_released[(1,)](self.flag, int(timeout_ms * 1000), num_warps=1)

    def release(self) -> None:
        self.flag[0] = 1

    def timed_out(self) -> bool:
        """After a synchronisation: did the last hold end by its timeout?"""
        return bool(self.flag[1].item())
