"""Worker slots: which GPUs (or fake CPU devices) a sweep runs on (``--devices all|0,1,3``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

MAX_DEVICES = 256  # worker slots a sweep may ask for: more GPUs than one node holds


@dataclass(frozen=True)
class DeviceSpec:
    """One worker slot: which GPU (or fake CPU device) it runs on."""

    index: int | None          # recorded as the rows' device_index (the index given in --devices)
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for the worker; None: inherit the driver's
    label: str = ""            # for progress and log names: gpu0, cpu1, ...


def parse_devices(spec: str | None, device: str) -> list[DeviceSpec]:
    """``--devices``: None (one worker, as the in-process path), ``all`` or ``0,1,3``.

    On CUDA the indices are those the driver sees (through its own ``CUDA_VISIBLE_DEVICES`` if
    set); each worker gets ``CUDA_VISIBLE_DEVICES`` of its one GPU. On the CPU the indices name
    fake devices (one CPU worker each), for tests and CPU-only machines. Raises ``ValueError``.
    """
    cuda = device.startswith("cuda")
    if spec is None or not spec.strip():
        if cuda and ":" in device:  # --device cuda:N is not offered by the CLI, but keep it right
            n = int(device.split(":", 1)[1])
            return [DeviceSpec(n, _visible_for(n), f"gpu{n}")]
        return [DeviceSpec(None, None, "gpu" if cuda else "cpu")]
    spec = spec.strip().lower()
    if spec == "all":
        if not cuda:
            return [DeviceSpec(None, None, "cpu")]
        indices = list(range(_cuda_count()))
        if not indices:
            raise ValueError("--devices all: no CUDA device is visible")
    else:
        try:
            indices = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--devices: {spec!r} is not 'all' or a comma-separated list of device indices") from None
        if not indices or any(i < 0 for i in indices):
            raise ValueError(f"--devices: {spec!r}: indices must be non-negative integers")
        if len(set(indices)) != len(indices):
            raise ValueError(f"--devices: {spec!r} lists a device twice")
        if len(indices) > MAX_DEVICES:  # a worker process each: thousands of fake CPU devices would fork thousands
            raise ValueError(f"--devices: {len(indices):,} devices listed; at most {MAX_DEVICES} (one worker each)")
        if cuda:
            n = _cuda_count()
            bad = [i for i in indices if i >= n]
            if bad:
                raise ValueError(f"--devices: no CUDA device {', '.join(map(str, bad))} (this machine sees {n})")
    if cuda:
        return [DeviceSpec(i, _visible_for(i), f"gpu{i}") for i in indices]
    return [DeviceSpec(i, None, f"cpu{i}") for i in indices]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _visible_for(i: int) -> str:
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent:
        ids = [x.strip() for x in parent.split(",") if x.strip()]
        if i < len(ids):
            return ids[i]
    return str(i)
