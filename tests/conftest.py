"""Test set-up shared by every test module.

Tests are grouped as unit/ (the harness, on a CPU), kernels/ (the bundled Triton kernels on Triton's CPU
interpreter) and gpu/ (GPU-only files); helpers shared between files live in support/, put on sys.path here.

Without a GPU, Triton kernels can only run through Triton's CPU interpreter, which is chosen
when a kernel is *decorated* (at import time): so TRITON_INTERPRET must be set before anything
imports ``flashbench_kernels``.  Tests marked ``gpu`` are skipped when CUDA is absent.
"""
import gc
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run them with `pytest -m gpu` on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_plugins(monkeypatch):
    """FLASHBENCH_PLUGINS=fake_backends (tests/support), importable by workers and subprocesses; undone afterwards."""
    from sweeps import plugin_path

    monkeypatch.setenv("FLASHBENCH_PLUGINS", "fake_backends")
    monkeypatch.setenv("PYTHONPATH", plugin_path())
    yield
    mod = sys.modules.get("fake_backends")
    if mod is not None:
        mod.unregister()


@pytest.fixture(autouse=True)
def _no_kept_plans():
    """``flash_attn_v2`` keeps a plan per call signature: a test that replaces a kernel or a decision of the launcher
    must not meet a plan that an earlier test made."""
    plans = sys.modules.get("flashbench_kernels.flash_attn_v2.plans")
    if plans is not None:
        plans.forget()


@pytest.fixture(autouse=True)
def _release_gpu_cache(request):
    """After a GPU test, hand the memory its tensors held back to the driver: PyTorch's caching allocator keeps
    freed blocks reserved for the process otherwise, and several pytest processes share one GPU under
    ``tools/gpu_tests_parallel.sh``.  On an 80 GB H100 in 8 processes, tests ran out of memory without this
    release and none did with it (results/evidence/h100/gpu_tests_release_cache/)."""
    yield
    if HAS_CUDA and "gpu" in request.keywords:
        gc.collect()
        torch.cuda.empty_cache()
