"""Test set-up shared by every test module.

Without a GPU, Triton kernels can only run through Triton's CPU interpreter, which is chosen
when a kernel is *decorated* (at import time): so TRITON_INTERPRET must be set before anything
imports ``flashbench_kernels``.  Tests marked ``gpu`` are skipped when CUDA is absent.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
