"""The analytic HBM-traffic (IO) model of the FlashAttention papers, made concrete in bytes.

References
----------
- [FA1] Dao, Fu, Ermon, Rudra, Ré. "FlashAttention: Fast and Memory-Efficient Exact Attention
  with IO-Awareness", NeurIPS 2022, arXiv:2205.14135. Algorithm 0 (standard attention),
  Algorithm 1 (FlashAttention forward), Theorem 2 (standard: Θ(Nd + N²) HBM accesses,
  FlashAttention: Θ(N²d²/M)).
- [FA2] Dao. "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
  arXiv:2307.08691. Algorithm 1 (forward): the loops are swapped, the outer loop runs over
  Q blocks, each Q block is loaded once and every K/V block is streamed past it.

Everything here is the **forward pass**, per (batch, query head), then multiplied by B·H
(heads of a GQA case load their K/V like any other head: fused kernels don't share it).
Modes with a backward have no model here (:func:`io_model` returns ``None`` for them).

Symbols (all integers; bytes unless said otherwise)
---------------------------------------------------
- ``Nq``, ``Nk``: query and key/value sequence lengths; ``d``: head dim;
- ``e``: bytes per element of Q, K, V, O, S, P (the case's dtype: 2 for fp16/bf16, 4 for fp32);
- ``s``: bytes per softmax statistic (``m``, ``l``, ``L``): 4 (fp32, as every real kernel keeps them);
- ``M``: on-chip SRAM in **bytes**, the shared memory of one SM
  (``torch.cuda.get_device_properties(i).shared_memory_per_multiprocessor``; without a GPU the
  H100 value, 228 KiB = 233,472 bytes, :data:`H100_SMEM_PER_SM`). The papers count M in
  elements, so the block sizes below use ``M_el = M // e`` elements.

Block sizes (FA1 Algorithm 1, line 1; used for FA2 too, whose paper keeps FA1's tiling):
``Bc = ceil(M_el / (4·d))``, ``Br = min(Bc, d)``; ``Tr = ceil(Nq / Br)`` query blocks and
``Tc = ceil(Nk / Bc)`` key/value blocks. A pair of blocks (i, j) is *visited* when at least one
of its (query, key) pairs is visible: all Tr·Tc pairs without a mask; with the (bottom-right)
causal mask only the pairs on or below the diagonal, so causal FA traffic is about half.
``rows(i)`` is the number of query rows of block i (Br, or less for the last one), ``cols(j)``
likewise for key blocks.

Standard attention (FA1 Algorithm 0; S and P materialised in HBM; causality saves nothing):
  1. read Q, K, write S = QKᵀ:          read e·(Nq·d + Nk·d),  write e·Nq·Nk
  2. read S, write P = softmax(S):       read e·Nq·Nk,          write e·Nq·Nk
  3. read P, V, write O = PV:            read e·(Nq·Nk + Nk·d), write e·Nq·d
  total read  = e·(Nq·d + 2·Nk·d + 2·Nq·Nk)
  total write = e·(2·Nq·Nk + Nq·d)                                  -> Θ(Nd + N²)
  (flashbench's ``naive`` backend also scales S in a separate pass, and masks it when causal:
  each such pass adds e·Nq·Nk read and written; the model is the paper's three passes.)

FlashAttention-1 forward (FA1 Algorithm 1: outer loop over K/V blocks j, inner over Q blocks i;
O, l, m live in HBM and are re-read and re-written once per visited (i, j) pair):
  init (line 2): write O = 0, l = 0, m = -inf:  write Nq·(e·d + 2·s)
  per K/V block j: read K_j, V_j once:          read 2·e·cols(j)·d           (sum: 2·e·Nk·d)
  per visited pair (i, j): read Q_i, O_i, l_i, m_i and write O_i, l_i, m_i:
                                                 read  rows(i)·(2·e·d + 2·s)
                                                 write rows(i)·(e·d + 2·s)
  non-causal: read = 2·e·Nk·d + Tc·Nq·(2·e·d + 2·s), write = (Tc + 1)·Nq·(e·d + 2·s);
  Tc ≈ 4·Nk·d·e / M, so the traffic is Θ(N²·d²/M) for M in elements.

FlashAttention-2 forward (FA2 Algorithm 1: outer loop over Q blocks i, inner over K/V blocks j;
O_i accumulated on chip and written once with the log-sum-exp L_i):
  per Q block i: read Q_i once, write O_i and L_i once:
                                                 read e·rows(i)·d, write rows(i)·(e·d + s)
  per visited pair (i, j): read K_j, V_j:        read 2·e·cols(j)·d
  non-causal: read = e·Nq·d + Tr·2·e·Nk·d, write = Nq·(e·d + s).
  With Br = Bc (small M: M_el ≤ 4·d²) Tr ≈ 4·Nq·d·e / M and the traffic is Θ(N²·d²/M) like FA1;
  with Br = d (large M, e.g. H100 bf16 at d ≤ 170) Tr = Nq/d and the K/V re-reads are 2·e·Nq·Nk,
  independent of M: the paper's Br = min(Bc, d) cap, which real kernels also respect (64–128 rows).

The minimum any implementation needs (read Q, K, V and write O once) is
:func:`flashbench.model.flops.min_hbm_bytes`, the one count the rest of flashbench uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.case import Case
from ..model.flops import dtype_bytes

H100_SMEM_PER_SM = 228 * 1024  # bytes: H100 (SXM/PCIe) shared memory per SM, CUDA C guide, compute capability 9.0
STAT_BYTES = 4  # fp32 softmax statistics

MODELS = ("standard", "fa1", "fa2")
MODEL_TITLES = {"standard": "standard attention (S, P in HBM)", "fa1": "FlashAttention-1 fwd", "fa2": "FlashAttention-2 fwd"}


@dataclass(frozen=True)
class Traffic:
    """HBM bytes read and written by one forward call (all batch·heads)."""

    read: int
    written: int

    @property
    def total(self) -> int:
        return self.read + self.written

    def __mul__(self, k: int) -> "Traffic":
        return Traffic(self.read * k, self.written * k)


@dataclass(frozen=True)
class Blocks:
    br: int
    bc: int
    tr: int
    tc: int


def smem_per_sm(device: str | None = None) -> tuple[int, str]:
    """(M in bytes, where it came from): the GPU's shared memory per SM, else the H100 value."""
    try:
        import torch

        if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            m = int(getattr(props, "shared_memory_per_multiprocessor", 0) or 0)
            if m > 0:
                return m, f"{props.name}: shared_memory_per_multiprocessor"
    except Exception:
        pass
    return H100_SMEM_PER_SM, "H100 documented value (228 KiB per SM; no GPU here)"


def block_sizes(n_q: int, n_k: int, d: int, m_bytes: int, elem_bytes: int) -> Blocks:
    """FA1 Algorithm 1, line 1, with M converted from bytes to elements."""
    m_el = m_bytes // elem_bytes
    bc = max(1, math.ceil(m_el / (4 * d)))
    br = max(1, min(bc, d))
    return Blocks(br, bc, math.ceil(n_q / br), math.ceil(n_k / bc))


def _visited_pairs(n_q: int, n_k: int, b: Blocks, causal: bool):
    """Yield (rows(i), cols(j)) for every visited block pair (i, j)."""
    offset = n_k - n_q  # bottom-right causal: query r sees keys c <= r + offset
    for i in range(b.tr):
        r0, r1 = i * b.br, min(n_q, (i + 1) * b.br)  # rows [r0, r1)
        rows = r1 - r0
        last_visible = (r1 - 1) + offset  # the largest key index any row of this block sees
        for j in range(b.tc):
            c0, c1 = j * b.bc, min(n_k, (j + 1) * b.bc)
            if causal and c0 > last_visible:
                break  # this and later key blocks are fully masked for the whole Q block
            yield rows, c1 - c0


def standard_traffic(n_q: int, n_k: int, d: int, e: int) -> Traffic:
    read = e * (n_q * d + 2 * n_k * d + 2 * n_q * n_k)
    written = e * (2 * n_q * n_k + n_q * d)
    return Traffic(read, written)


def fa1_traffic(n_q: int, n_k: int, d: int, e: int, m_bytes: int, causal: bool = False, s: int = STAT_BYTES) -> Traffic:
    b = block_sizes(n_q, n_k, d, m_bytes, e)
    read = 2 * e * n_k * d  # every K_j, V_j once (outer loop)
    written = n_q * (e * d + 2 * s)  # initialisation of O, l, m
    for rows, _cols in _visited_pairs(n_q, n_k, b, causal):
        read += rows * (2 * e * d + 2 * s)
        written += rows * (e * d + 2 * s)
    return Traffic(read, written)


def fa2_traffic(n_q: int, n_k: int, d: int, e: int, m_bytes: int, causal: bool = False, s: int = STAT_BYTES) -> Traffic:
    b = block_sizes(n_q, n_k, d, m_bytes, e)
    read = e * n_q * d  # every Q_i once (outer loop)
    written = n_q * (e * d + s)  # O_i and L_i once
    for _rows, cols in _visited_pairs(n_q, n_k, b, causal):
        read += 2 * e * cols * d
    return Traffic(read, written)


def io_model(case: Case, m_bytes: int) -> dict[str, Traffic] | None:
    """The three models for a case, in bytes for all B·H; None for modes with a backward, and for the
    workloads the models do not describe (decode, varlen, sliding windows)."""
    if case.mode != "fwd" or case.workload != "dense" or case.has_window:
        return None
    e = dtype_bytes(case.dtype)
    nq, nk, d = case.seq_len_q, case.seq_len_kv, case.head_dim
    bh = case.batch * case.heads
    return {
        "standard": standard_traffic(nq, nk, d, e) * bh,
        "fa1": fa1_traffic(nq, nk, d, e, m_bytes, case.causal) * bh,
        "fa2": fa2_traffic(nq, nk, d, e, m_bytes, case.causal) * bh,
    }


# which model a backend is expected to follow (for the "model" column of the traffic table)
BACKEND_MODEL = {"naive": "standard", "sdpa_math": "standard", "triton_fa1": "fa1", "triton_fa2": "fa2",
                 "sdpa_flash": "fa2", "sdpa_cudnn": "fa2", "sdpa_efficient": "fa2", "flex": "fa2"}
