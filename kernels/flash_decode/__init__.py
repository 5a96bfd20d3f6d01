"""Flash-Decoding in Triton: a few new tokens attending to a KV cache, contiguous or paged, with GQA packing.

What is implemented
-------------------
``flash_decode(q, k_cache, v_cache, cache_seqlens, block_table=None, sm_scale=None, num_splits=0,
launch_log=None, *, check_values=True, options=None)`` computes, for every sequence b of a batch,
``softmax(sm_scale * Q K^T + causal) V`` of its Nq (1..16) new query tokens against the first
``cache_seqlens[b]`` keys of its cache.

  * q: (B, Nq, H, D).  The new tokens' own keys are already in the cache, at its end: new token t
    (0-based) of sequence b sits at position ``cache_seqlens[b] - Nq + t`` and sees keys
    ``j <= cache_seqlens[b] - Nq + t`` (bottom-right causal among the new tokens).  A new token whose
    position is negative (``cache_seqlens[b] < Nq``) sees no key and its output is 0.
  * contiguous cache: k_cache, v_cache (B, N_max, H_kv, D), capacity N_max;
    paged cache: k_cache, v_cache (num_blocks, page_size, H_kv, D) with ``block_table`` (B, max_blocks)
    int32: logical position p of sequence b lives in page ``block_table[b, p // page_size]``, row
    ``p % page_size``; capacity max_blocks * page_size; page sizes 16, 32, 64, 128, 256.
  * cache_seqlens: (B,) int32, ``1 <= cache_seqlens[b] <= capacity``.
  * returns (B, Nq, H, D) in q's dtype.  GQA/MQA: query head h reads kv head h // (H / H_kv).

Algorithm (``kernels.py``)
--------------------------
Flash-Decoding (Dao, Haziza, Massa, Sizov, 2023).  FlashAttention-2 parallelises over batch, heads and
blocks of query rows; with 1..16 new tokens that leaves B * H programs, each walking a whole cache
alone, too few to fill a GPU at small batch.  Flash-Decoding also splits the keys:

  1. ``split_kernel``: one program per (batch, kv head, row block, split) walks its range of the
     sequence's keys in chunks of BLOCK_N with FA2's online softmax (Algorithm 1: running row max m,
     running row sum l, un-normalised accumulator rescaled by exp2(m_old - m_new); log2(e) folded into
     the scale so the kernel uses ``exp2``; the division by l deferred to the end of the range), and
     writes its normalised partial output O_s (fp32) and base-2 log-sum-exp L_s = m + log2(l)
     (-inf for a split whose range is empty or invisible to the row).
  2. ``combine_kernel``: per output row and block of columns, L = log2(sum_s 2^L_s) and
     O = sum_s 2^(L_s - L) O_s (0 when every L_s is -inf), every split's partials loaded at once.
     On Hopper and later it is launched with programmatic dependent launch (``overlap_combine``):
     launched as the split programs finish their key loops, it waits for the split kernel's writes
     (``griddepcontrol.wait``) before reading, so its launch latency overlaps the split kernel's tail.
  With one split the first kernel writes O directly in q's dtype and no combine kernel runs.
  A sequence's ceil(cache_seqlens[b] / BLOCK_N) chunks are shared out evenly between the splits,
  sequence by sequence, so every split of one sequence does the same work whatever the lengths.

GQA packing: one program takes ALL query heads of its kv head and all Nq new tokens as the rows of one
tile (rows = (H / H_kv) * Nq, token-major, padded to a power of two >= 16 with masked rows, the
smallest M ``tl.dot`` takes), so a K/V chunk is read from HBM once per kv head, not once per query head.
Above 128 rows (64 at head dim 256) the rows go to several row blocks (``m_blocks`` programs), each
reading the chunk once: only MQA-like groups times many new tokens get there.

Masks: chunks whose keys all lie below ``cache_seqlens[b] - Nq + 1`` are visible to every new token and
run with no mask arithmetic; only the last chunk or two of a sequence (the key tail and the causal
triangle of the new tokens) are masked.  Addresses: a chunk of contiguous rows (a contiguous cache,
or a chunk inside one page) is one scalar int64 start plus a fixed int32 tile of offsets.

Paged cache: BLOCK_N and the page size are both powers of two, so either BLOCK_N divides the page size
(one table lookup per chunk, whose rows are contiguous in one page: ``kv_gather = "page"``) or the page
size divides BLOCK_N (each key row looks up its own page, ``kv_gather = "row"``: a gather of BLOCK_N
table entries that hit the same BLOCK_N / page_size addresses, one lookup for K and V, and rows that
stay contiguous along D, so every row is still one run of vector loads).  For pages of 16 and 32 keys
the tuner is also offered a chunk of one page.  Table entries past a sequence's length are never read.

Host path and unchecked values (``launch.py``, ``checks.py``)
------------------------------------------------------------
Shapes, dtypes, devices and options are checked from tensor metadata.  ``check_values=True`` (the
default) also checks the lengths against [1, capacity] and the table entries in use against
[0, num_blocks) on the host: one device-to-host synchronisation a call, so such a call waits for the
device and cannot be captured in a CUDA graph.  ``check_values=False`` skips it (for tensors the caller
has checked once): nothing else in a call reads the device, so calls queue like kernel launches.  The
kernel never trusts the values: it clamps a length into [0, capacity] and a page index into
[0, num_blocks), so no value makes it read outside the caches, and a program that had to clamp writes
NaN; the combine carries a NaN partial into every row of its sequence.  So with unchecked bad values,
every output row of a sequence whose length lies outside [1, capacity], or which uses a table entry
outside [0, num_blocks), is NaN; the other sequences are unaffected.

Split count and tile (``tuning.py``)
-----------------------------------
``num_splits=0``: ``choose_num_splits(programs, capacity, SMs)``, with programs = B * H_kv * m_blocks
before splitting and the SM count of the device (a fixed 4 under the interpreter): no split when
programs >= 2 SMs; otherwise ceil(4 SMs / programs) splits, capped so that a split of the capacity
holds at least 256 keys, and at 128.  It reads the capacity, not the lengths (that would need a
synchronisation), so a batch much shorter than its capacity gets short or empty splits (an empty
split writes L = -inf).  Explicit counts 1..128 are honoured.  With S > 1 splits a call allocates
S * B * Nq * H * (D + 1) fp32 values of partial results.

The tile (BLOCK_N keys a chunk, warps, pipeline stages) is chosen on the device: the first call of a
shape class times each candidate of its head-dim class (``tuning.SPACE``: six or so, BLOCK_N 16 to
256 with 1 to 8 warps and one to three K/V chunks in flight, within a shared-memory budget; plus a
one-page chunk for pages of 16 or 32 where the class has none) in interleaved rounds
(``_tuner.InterleavedTuner``, each round timed by ``_tuner.held_bench``: GPU time only, as the host path of a
small call is longer than its kernels), split and combine kernels together; for a split launch with
``num_splits=0`` a quarter, half, twice and four times the heuristic's split count are timed too.  A paged kernel is built
with twice the stages of a contiguous one for the same chunks in flight (Triton pipelines a load
whose address comes from another load, the page index, over half the stages).  The class: head dim, tile rows, page size, dtype, and split count, capacity and
programs before splitting (batch x kv heads x row blocks) rounded up to powers of two.  ``DecodeOptions`` turns tuning off (the class's first candidate runs), pins a
tile, or keeps the heuristic's split count.  Under the CPU interpreter one fixed tile runs (BLOCK_N
32, so that its tests take both paged gathers) unless one is pinned.  ``launch_log`` records the
tile, the split count and where each came from.  The first call of a class pays for the tuning (and
synchronises); capture a call in a CUDA graph only after its class is tuned, with check_values=False.

Precision: Q K^T and P V are ``tl.dot`` in the input dtype with fp32 accumulation (P cast to the
input dtype, bf16 stays bf16); fp32 inputs use exact ``input_precision="ieee"`` dots.

Not supported: backward / autograd (forward only: inputs that require grad under grad mode are refused
rather than silently detached), sliding windows, ALiBi or other biases, soft-capping, dropout,
fp8 or quantised caches, head dims other than 32/64/96/128/256, more than 16 new tokens (a prefill:
use flash_attn_v2), new tokens that are not at the end of the cache, returning the LSE, variable numbers
of new tokens per sequence, non-positive softmax scales.
"""
from .checks import MAX_NEW_TOKENS, PAGE_SIZES
from .launch import flash_decode
from .options import DecodeOptions
from .tuning import MAX_SPLITS, choose_num_splits

__all__ = ["flash_decode", "DecodeOptions", "choose_num_splits", "MAX_NEW_TOKENS", "MAX_SPLITS", "PAGE_SIZES"]
