"""Triton attention kernels bundled with flashbench (installed as ``flashbench_kernels``).

Only Triton kernels and their launchers live here: no CLI, no printing, no knowledge of
the benchmark harness.  Public entry points are re-exported by :mod:`flashbench`.
"""
