"""Attention kernels bundled with flashbench (installed as ``flashbench_kernels``), in Triton and Gluon.

``flash_attn_v1``: FlashAttention-1 (Dao et al. 2022), forward and backward, loop order as published.
``flash_attn_v2``: FlashAttention-2 (Dao 2023), forward and backward, with sliding windows and packed
variable-length batches, and on Hopper a Gluon forward and backward in FlashAttention-3's layout.
``flash_decode``: Flash-Decoding, a few new tokens against a contiguous or paged KV cache, forward only.
Each module's docstring says exactly what it implements and what it does not support (none has dropout,
attention bias, top-left causal alignment or fp8); ``kernels/DESIGN.md`` is the longer account.

Only kernels and their launchers live here: no CLI, no printing, no module-level switches (every option
is an argument), and no knowledge of the benchmark harness (nothing here imports flashbench).  Public
entry points are re-exported by :mod:`flashbench`.
"""
