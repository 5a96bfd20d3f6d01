"""The environment a run was measured in: software versions, GPU identity and state (NVML).

Every function here degrades to "unknown"/None instead of raising: a machine without a GPU, or
without NVML, is a normal environment for flashbench (CPU sweeps, CI).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

# NVML throttle ("clock event") reason bits; GpuIdle is benign, the others slow the clocks.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
BENIGN_THROTTLE = {"gpu_idle", "applications_clocks_setting", "sw_power_cap"}


def decode_throttle(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _s(x):
    return x.decode() if isinstance(x, bytes) else x


def cuda_uuid(index: int) -> str:
    """CUDA device ``index``'s UUID as NVML writes it ("GPU-..."); "" when torch cannot say."""
    try:
        import torch

        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    except Exception:
        return ""
    return uuid if not uuid or uuid.startswith("GPU-") else f"GPU-{uuid}"


def nvml_index(uuid: str) -> int | None:
    """NVML's index of the GPU with this UUID (NVML numbers every GPU of the machine, whatever
    ``CUDA_VISIBLE_DEVICES`` hides from CUDA); None when NVML does not know it."""
    nv = _nvml()
    if nv is None or not uuid:
        return None
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            if _s(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))) == uuid:
                return i
    except Exception:
        pass
    return None


def nvml_index_of(cuda_index: int) -> int:
    """NVML's index of CUDA device ``cuda_index``: CUDA numbers the GPUs ``CUDA_VISIBLE_DEVICES`` shows, NVML
    all of them, so under ``CUDA_VISIBLE_DEVICES=3`` CUDA's device 0 is NVML's 3. Matched by UUID; the CUDA
    index itself when the UUID is not known to both (the two agree when the variable is not set)."""
    found = nvml_index(cuda_uuid(cuda_index))
    return cuda_index if found is None else found


def nvml_reader(device_uuid: str, query: Callable) -> Callable[[], "int | None"] | None:
    """A reader of one NVML figure of the GPU with this UUID, ``query(nvml, handle)``, tried once here:
    None where NVML, the GPU (a CPU has no UUID) or the figure is missing. The reader returns None
    when a later read fails."""
    nv = _nvml()
    if nv is None or not device_uuid:
        return None
    try:
        handle = nv.nvmlDeviceGetHandleByUUID(device_uuid)
        query(nv, handle)
    except Exception:
        return None

    def read() -> int | None:
        try:
            return int(query(nv, handle))
        except Exception:
            return None
    return read


def gpu_state(index: int = 0) -> dict:
    """Clocks, temperature, power and throttle reasons of one GPU now (``index``: NVML's, see
    :func:`nvml_index_of`); {} without NVML/GPU."""
    nv = _nvml()
    if nv is None:
        return {}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return {}
    state: dict = {}

    def read(key, f):
        try:
            state[key] = f()
        except Exception:
            state[key] = None

    read("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
    read("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
    read("max_sm_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
    read("max_mem_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM))
    read("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
    read("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
    read("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
    getter = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons")
    read("throttle_reasons", lambda: decode_throttle(getter(h)))
    return state


def throttle_warning(state: dict) -> str | None:
    bad = [r for r in (state.get("throttle_reasons") or []) if r not in BENIGN_THROTTLE]
    if bad:
        return (f"GPU clocks were throttled ({', '.join(bad)}): timings may be low; "
                "let the GPU cool down or stop other jobs on it, then rerun")
    return None


def gpu_identity(index: int = 0) -> dict:
    """Name, UUID, driver, memory and compute capability of CUDA device ``index``."""
    info: dict = {}
    nv = _nvml()
    if nv is not None:
        try:
            h = nv.nvmlDeviceGetHandleByIndex(nvml_index_of(index))
            info["gpu_name"] = _s(nv.nvmlDeviceGetName(h))
            info["gpu_uuid"] = _s(nv.nvmlDeviceGetUUID(h))
            info["driver_version"] = _s(nv.nvmlSystemGetDriverVersion())
            info["gpu_memory_bytes"] = nv.nvmlDeviceGetMemoryInfo(h).total
        except Exception:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(index)
            info.setdefault("gpu_name", p.name)
            info["compute_capability"] = f"{p.major}.{p.minor}"
            info["multiprocessors"] = p.multi_processor_count
            info.setdefault("gpu_memory_bytes", p.total_memory)
    except Exception:
        pass
    return info


def git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except Exception:
        return {"git_commit": None, "git_dirty": None}


def software_versions() -> dict:
    from .. import __version__

    v: dict = {"flashbench": __version__, "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        v["torch"] = torch.__version__
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        v["cuda_available"] = torch.cuda.is_available()
    except Exception:
        v["torch"] = None
    try:
        import triton

        v["triton"] = triton.__version__
    except Exception:
        v["triton"] = None
    return v


def collect_environment(device: str = "cpu", index: int = 0) -> dict:
    env = {**software_versions(), **git_state(), "hostname": platform.node(), "device": device,
           "command_line": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    if device.startswith("cuda"):
        env.update(gpu_identity(int(device.split(":")[1]) if ":" in device else index))  # "cuda:1": device 1
    return env
