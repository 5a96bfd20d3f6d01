"""Datasheet peaks per GPU model: the vendor's dense bf16/fp16 Tensor Core rate and memory bandwidth.

Shown beside the measured roofs (:mod:`flashbench.profile.ceilings`), never used as a roof: a GPU
sustains less than its datasheet rate (power and clocks), and a % of the datasheet says how far a
kernel is from the part's nominal limit. Figures are NVIDIA's; the datasheets give the Tensor Core
rate with 2:4 sparsity, and the dense rate is half of it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasheetPeak:
    model: str
    bf16_tflops: float      # dense bf16 (= fp16) Tensor Core TFLOP/s
    hbm_gbps: float         # memory bandwidth, GB/s (1e9)
    source: str             # the datasheet

    @property
    def ridge_flop_per_byte(self) -> float:
        return self.bf16_tflops * 1e12 / (self.hbm_gbps * 1e9)

    def attainable_tflops(self, intensity: float) -> float:
        return min(self.bf16_tflops, intensity * self.hbm_gbps * 1e9 / 1e12)


_H100 = "NVIDIA H100 Tensor Core GPU datasheet"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet"
_L40S = "NVIDIA L40S GPU datasheet"

# (substrings that must all occur in the lower-cased device name, peak); the first match wins, so
# the more specific names come first
PEAKS: tuple[tuple[tuple[str, ...], DatasheetPeak], ...] = (
    (("h200", "nvl"), DatasheetPeak("H200 NVL", 835.5, 4800.0, _H200)),       # 1,671 TFLOPS sparse, 4.8 TB/s
    (("h200",), DatasheetPeak("H200 SXM", 989.5, 4800.0, _H200)),             # 1,979 TFLOPS sparse, 4.8 TB/s
    (("h100", "pcie"), DatasheetPeak("H100 PCIe", 756.5, 2000.0, _H100)),     # 1,513 TFLOPS sparse, 2 TB/s
    (("h100", "hbm3"), DatasheetPeak("H100 SXM", 989.5, 3350.0, _H100)),      # 1,979 TFLOPS sparse, 3.35 TB/s
    (("h100", "sxm"), DatasheetPeak("H100 SXM", 989.5, 3350.0, _H100)),
    (("a100", "sxm", "80gb"), DatasheetPeak("A100 SXM 80GB", 312.0, 2039.0, _A100)),  # 624 sparse, 2,039 GB/s
    (("a100", "80gb", "pcie"), DatasheetPeak("A100 PCIe 80GB", 312.0, 1935.0, _A100)),  # 1,935 GB/s
    (("a100", "sxm"), DatasheetPeak("A100 SXM 40GB", 312.0, 1555.0, _A100)),  # 1,555 GB/s
    (("a100", "pcie"), DatasheetPeak("A100 PCIe 40GB", 312.0, 1555.0, _A100)),
    (("l40s",), DatasheetPeak("L40S", 362.05, 864.0, _L40S)),                 # 733 TFLOPS sparse, 864 GB/s
)


def datasheet_peak(gpu_name: str) -> DatasheetPeak | None:
    """The datasheet peak of the GPU PyTorch or NVML names ``gpu_name`` (e.g. "NVIDIA H100 80GB
    HBM3"); None for a model not in the table."""
    name = (gpu_name or "").lower()
    for needles, peak in PEAKS:
        if all(n in name for n in needles):
            return peak
    return None
