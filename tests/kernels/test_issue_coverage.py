"""Interpreter cases that issue #18's test list asks for and the per-kernel files leave out.

- ``flash_decode``: every Nq from 1 to 5 with 16-key pages in shuffled order, in both interpreter dtypes
  (fp16 and fp32), over one batch of caches of 1, 17 and 129 keys, GQA.
- ``flash_attn_varlen`` and ``flash_attn_v2``: sliding windows wider than the sequences (one reach or both,
  causal or not, reaches far past int32), packed batches made of one-token sequences: forward and the three
  gradients.

Each case meets flash-attention's rule against the fp64 reference (``kernel_checks``), with every buffer
the launchers allocate NaN-poisoned so that an element left unwritten fails the finiteness check.
"""
from __future__ import annotations

import pytest
import torch

import flashbench_kernels.flash_decode.run as fd_run
from decode_reference import gather_pages, page_cache, random_tensor
from flashbench_kernels.flash_attn_v2 import launch
from flashbench_kernels.flash_decode import flash_decode
from kernel_checks import (DEV, assert_decode_within_rule, check_against_reference, check_varlen_against_reference,
                           make_inputs, make_packed_inputs, poisoned_empty, window_case_id)

DTYPES = [torch.float16, torch.float32]  # the interpreter has no bf16: tests/gpu runs it


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    monkeypatch.setattr(fd_run, "new_buffer", poisoned_empty)


# ---------------------------------------------------------------------------------------------
# flash_decode: Nq 1-5 x 16-key shuffled pages x both dtypes
# ---------------------------------------------------------------------------------------------
DECODE_LENGTHS = [1, 17, 129]  # one key, one 16-key page plus one, eight pages plus one


@pytest.mark.parametrize("num_splits", [0, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("nq", [1, 2, 3, 4, 5])
def test_decode_every_nq_over_shuffled_16_key_pages(nq, dtype, num_splits):
    """The contiguous cache and a paged copy in a random page order (unused table entries -1, spare pages of
    noise), GQA 8/2: both within the rule of the reference over the keys each sequence's table names.
    Tokens at positions before the cache start (the 1-key sequence with Nq > 1) give zero rows."""
    g = torch.Generator(device=DEV).manual_seed(100 * nq + num_splits + (dtype == torch.float32))
    B, H, Hkv, D = len(DECODE_LENGTHS), 8, 2, 32
    q = random_tensor((B, nq, H, D), dtype, g)
    k = random_tensor((B, max(DECODE_LENGTHS) + 3, Hkv, D), dtype, g)
    v = random_tensor((B, max(DECODE_LENGTHS) + 3, Hkv, D), dtype, g)
    seqlens = torch.tensor(DECODE_LENGTHS, dtype=torch.int32, device=DEV)
    k_pages, v_pages, table = page_cache(k, v, DECODE_LENGTHS, 16, g)
    assert sorted(table[table >= 0].tolist()) != table[table >= 0].tolist()  # the pages really are shuffled

    dense = flash_decode(q, k, v, seqlens, num_splits=num_splits)
    assert_decode_within_rule(dense, q, [k[b, :n] for b, n in enumerate(DECODE_LENGTHS)],
                              [v[b, :n] for b, n in enumerate(DECODE_LENGTHS)])
    paged = flash_decode(q, k_pages, v_pages, seqlens, block_table=table, num_splits=num_splits)
    assert_decode_within_rule(paged, q, gather_pages(k_pages, table, DECODE_LENGTHS),
                              gather_pages(v_pages, table, DECODE_LENGTHS))
    assert (paged[0, :nq - 1] == 0).all()  # the 1-key sequence: only its last new token sees a key


# ---------------------------------------------------------------------------------------------
# Windows wider than the sequences; one-token sequences (forward and the three gradients)
# ---------------------------------------------------------------------------------------------
VARLEN_CASES = [
    # lengths_q, lengths_k, H, H_kv, D, causal, window
    ([1, 17, 5, 33, 1], [1, 17, 5, 33, 1], 4, 2, 32, False, (40, 40)),  # both reaches past the longest sequence
    ([1, 17, 5, 33, 1], [1, 17, 5, 33, 1], 4, 2, 32, True, (34, -1)),  # causal, left reach past every sequence
    ([3, 1, 40, 9], [20, 1, 7, 45], 4, 1, 32, False, (2**40, 2**31)),  # MQA, reaches beyond int32; Nq_b != Nkv_b
    ([3, 1, 40, 9], [20, 1, 7, 45], 4, 2, 64, True, (45, 3)),  # causal caps the right reach; rows that see no key
    ([1, 2, 33, 17], [30, 2, 33, 17], 2, 2, 32, False, (-1, 64)),  # right reach only, wider than every sequence
    ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1], 4, 2, 32, True, (-1, -1)),  # nothing but one-token sequences
    ([1, 1, 1, 1, 1], [1, 3, 17, 1, 40], 4, 1, 32, True, (100, -1)),  # one query each over longer caches
    ([1, 1, 1], [5, 1, 33], 2, 2, 32, False, (1, 1)),  # one query each, a window narrower than the keys
]


def varlen_case_id(c) -> str:
    lq, lk, H, Hkv, D, causal, (left, right) = c
    return (f"q{'-'.join(map(str, lq))}-kv{'-'.join(map(str, lk))}-H{H}-Hkv{Hkv}-D{D}-"
            f"{'causal' if causal else 'full'}-w{left}_{right}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=varlen_case_id)
def test_varlen_wide_windows_and_one_token_sequences(case, dtype):
    lq, lk, H, Hkv, D, causal, window = case
    q, k, v, do, cu_q, cu_k = make_packed_inputs(lq, lk, H, Hkv, D, dtype, seed=sum(lq) + 3 * sum(lk) + D)
    check_varlen_against_reference(q, k, v, do, cu_q, cu_k, causal, window)


DENSE_CASES = [
    # B, H, Hkv, Nq, Nkv, D, causal, window
    (1, 4, 2, 33, 40, 32, True, (100, -1)),  # causal, left reach past the keys, GQA, Nq < Nkv
    (1, 4, 2, 40, 33, 32, True, (33, 0)),  # Nq > Nkv: the first 7 rows see no key, the left reach Nkv exactly
    (2, 2, 1, 17, 17, 64, True, (2**40, -1)),  # MQA, a reach beyond int32
    (1, 2, 2, 1, 129, 32, False, (200, 200)),  # one query row over 129 keys, both reaches wider
    (1, 4, 1, 5, 17, 32, False, (11, 2**31)),  # the first row misses key 0 by one, right reach beyond int32
    (1, 2, 2, 129, 1, 32, False, (129, 129)),  # one key: a window as wide as the queries
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", DENSE_CASES, ids=window_case_id)
def test_dense_windows_wider_than_the_sequence(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, window = case
    q, k, v, do = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq * 7 + Nkv + D)
    check_against_reference(q, k, v, do, causal, window=window)
