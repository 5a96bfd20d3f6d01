"""FlashAttention-2 in Triton: forward and backward, autotuned, with GQA/MQA, bottom-right causal,
sliding windows and packed variable-length batches.

What is implemented
-------------------
``flash_attn_v2(q, k, v, causal=False, sm_scale=None, return_lse=False, *, window=(-1, -1),
options=None, launch_log=None)`` computes ``softmax(sm_scale * Q K^T [+ mask]) V`` for SDPA-layout
inputs q (B, H, Nq, D), k and v (B, H_kv, Nkv, D) and is differentiable through a
``torch.autograd.Function`` whose backward runs Triton kernels, or on Hopper the Gluon backward
(``sm90_bwd.py``) wherever it takes the inputs (no PyTorch attention math anywhere).
``flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
sm_scale=None, window=(-1, -1), *, check_values=True, options=None, launch_log=None)`` (``varlen.py``) does
the same for sequences of different lengths packed into q (total_q, H, D), k and v (total_k, H_kv, D),
flash-attn's API, with the same kernels. ``options`` (an ``FA2Options``) pins configurations, forces a tile
path, turns autotuning or the Gluon forward off, sets the causal launch order, or chooses the backward;
``launch_log`` (a dict) receives the configuration each kernel ran.

Forward, FA2 paper (Dao 2023) Algorithm 1 (``kernels.py``)
  * one program per (block of BLOCK_M query rows, batch*head): the outer loop of Algorithm 1
    is the launch grid, so Q_i stays in registers and O_i is written once;
  * inner loop over K_j/V_j blocks of BLOCK_N keys with the online softmax (running row max m_i,
    running row sum l_i, un-normalised accumulator); log2(e) is folded into the scale so the
    kernel uses ``exp2``; the division by l_i is deferred to the end (Algorithm 1 line 12);
  * the base-2 log-sum-exp L_i = m_i + log2(l_i) (line 13) is stored for the backward pass
    (``return_lse=True`` returns it converted to the natural log);
  * causal: key blocks fully visible to every row of the query block run with no mask
    arithmetic; only the blocks crossing the diagonal apply the mask; blocks above the diagonal
    are never visited.  Causal query blocks are launched heaviest first across groups of heads
    spanning >= ``FA2Options.causal_group_programs`` programs, so that a sweep ends on light
    blocks (the dQ and dK/dV kernels likewise);
  * sliding windows ``(left, right)`` (FlashAttention's: query i sees key j iff
    i + (Nkv - Nq) - left <= j <= i + (Nkv - Nq) + right, -1 unbounded, causal capping right at 0):
    each program's loop bounds cover only the key blocks its rows' windows touch
    (``programs.span``), so the work scales with the window; blocks crossing a window edge apply
    the mask, the blocks between run without it.  The backward kernels bound their loops alike;
  * packed batches: one launch of the real (sequence, block) programs, from an int32 table built on
    the device from ``cu_seqlens`` (longest span first), padded to a row count known from shapes
    with empty programs; each program reads its sequence's offsets and lengths, and masks, windows
    and bottom-right alignment apply per sequence.

Backward, FA2 paper Algorithm 2, split into three kernels (``kernels.py``):
  * ``bwd_preprocess_kernel``: Delta_i = rowsum(dO_i * O_i) (Algorithm 2 line 4, D_i in the paper), and on
    the Gluon backward's path the zeroing of its fp32 dQ accumulator;
  * ``bwd_dkdv_kernel``: one program per (K/V block, batch*kv_head) loops over query blocks
    (and over the query heads sharing the kv head, so GQA/MQA gradients are summed in registers
    with no atomics and no extra memory), recomputing P from Q, K and the stored L;
    dV += P^T dO, dK += dS^T Q (lines 14-21);
  * ``bwd_dq_kernel``: one program per (Q block, batch*head) loops over K/V blocks and
    accumulates dQ += dS K in registers.  The paper's dQ update by atomic adds (line 21) is
    replaced by this second pass: it recomputes S and dP (7 instead of 5 matmuls in all) but is
    deterministic, needs no fp32 dQ buffer, no zero-fill and no conversion kernel.
  * on Hopper, ``sm90_bwd.py`` (Gluon, FlashAttention-3's layout) computes dK, dV and dQ in one
    kernel, dQ split between its two consumer warp groups and summed by fp32 reduce-adds (the paper's
    line 21), dense and packed, causal windows included: faster than the Triton kernels at every shape
    measured on an H200, so ``FA2Options(backward="auto")`` (the default) runs it wherever it takes the
    inputs; not bit-reproducible in dQ, so ``backward="triton"`` is the deterministic path.  Dense calls
    hold its fp32 dQ accumulator one chunk of (batch, kv head) pairs at a time (``dq_chunk_waves``).
    At D256 it runs ``sm90_bwd_d256.py`` (dense, causal windows included: FlashAttention-3's hdim-256 layout,
    the head dim split between the consumers), measured faster than the Triton kernels on an H100.

Conventions
  * causal is aligned to the bottom-right corner, like ``flashbench``'s reference: query i sees
    key j iff j <= i + (Nkv - Nq); windows likewise, per sequence for packed batches.  Query rows
    that see no key (causal with Nq > Nkv, a right reach ending before key 0, a packed sequence
    without keys) output 0, their LSE is -inf, and they contribute zero gradients (no NaN).
  * GQA/MQA: query head h reads kv head h // (H // H_kv) through index arithmetic; K/V are never
    copied or expanded.
  * any Nq, Nkv (tails handled by masked loads / TMA bounds), Nq != Nkv; head dims 32, 64, 96,
    128, 256 (96 runs in a 128-wide tile with the extra columns masked / zero-filled);
    fp16 and bf16 (P and dS are cast to the input dtype before the matmuls), and fp32 with exact
    ``input_precision="ieee"`` dots as a reference path.
  * inputs may be non-contiguous: strides are passed; the last dim must be contiguous.
  * sm_scale defaults to 1/sqrt(D) and must be a positive finite number.

Hardware paths (``launch.py`` chooses, ``tuning.py`` prunes, ``spaces.py`` lists the candidates)
  * pointer path (any CUDA GPU Triton supports): masked ``tl.load``/``tl.store`` of tiles,
    software-pipelined by ``num_stages``;
  * TMA path (capability >= 9, i.e. Hopper, with 16-byte aligned base addresses and strides):
    tiles move through device-side tensor descriptors (``tl.make_tensor_descriptor``, one per
    (batch, head) matrix, so out-of-bounds rows/columns are zero-filled on load and clipped on
    store).  ``USE_TMA`` is a constexpr, so every configuration exists on both paths; where the
    inputs allow both, each kernel is offered only the path that measured faster for it
    (``spaces.PREFERRED_PATH``: pointers for the forward, TMA for dK/dV, dQ by pointers up to D128
    and by TMA at D256), and the tuner chooses
    the tile sizes, warps and stages once per (Nq bucket, Nkv bucket, allowed paths, head dim, causal,
    window, packed, dtype, causal launch order; for the forward also EVEN_KV and whether the Gluon
    forward may run), timing the candidates in interleaved rounds (``_tuner.py``); measurements are in
    ``kernels/DESIGN.md``.
  * warp-specialised forward (Hopper, TMA path, dense, non-causal, no window, fp16/bf16; one of the tuned
    configurations for head dims 96 and 128): ``tl.range(..., warp_specialize=True)`` on the key
    loop, with 4 warps, which Triton 3.6 turns into one producer warp group issuing the TMA loads
    and two consumer warp groups of BLOCK_M / 2 query rows each running the dots and the softmax
    (12 warps; the FlashAttention-3 arrangement, without its explicit ping-pong or intra-warp-group
    overlap).  The pass accepts one loop per kernel, so this forward walks every key block in one
    loop, masking the key tail in each block unless 128 divides Nkv (``EVEN_KV``), and stores O by
    pointer; causal forwards are never warp-specialised (measured slower with every block masked).
    With 3 pipeline stages the specialised kernel wrote NaN rows on the H100 and is not offered.
  * Gluon Hopper forward (``sm90.py``; capability 9.x, fp16/bf16, D = 64, 128 or 256, contiguous inputs,
    dense with Nq and Nkv multiples of 128 or, at D64 and D128, packed batches of any lengths
    (``sm90.forward_varlen``), causal windows (left, 0) but no right reach, offered to the tuner from Nq
    (max_seqlen_q) >= ``spaces.GLUON_MIN_NQ``, a pinned configuration at any Nq): the same Algorithm 1 with
    FlashAttention-3's explicit producer/consumer warp specialisation and the softmax overlapping the P V
    wgmma, causal included (128x128 tiles with two consumers; 128x64 at D256; 192x128 with three consumers
    at D64, dense without a window). It is one more candidate of the forward's tuner (the ``GLUON`` entries
    of the spaces), so it runs only where the tuner measures it faster. Its own docstring says what it does
    not support. Dense calls of up to ``sm90_persistent.MAX_KEYS`` keys at D64 and D128 (2-stage rings at
    D128) run its persistent build (``sm90_persistent.py``: one program an SM walking tiles from a tile
    counter), measured faster there; the launch log marks its configuration ``persistent=True``.
  * Gluon Hopper backward (``sm90_bwd.py``, D64 and D128; ``sm90_bwd_d256.py``, D256 dense, causal windows included):
    see ``FA2Options.backward``.
  * under ``TRITON_INTERPRET=1`` one fixed small configuration is used and nothing is tuned.

Not supported: dropout, attention bias or arbitrary masks, top-left causal alignment, KV cache /
paged attention, fp8, head dims other than 32/64/96/128/256, non-positive softmax scales, gradients
with respect to the returned LSE, the LSE of packed batches; windows with a right reach run the
Triton forward only, and the warp-specialised forward takes neither windows nor packed batches.
"""
from .launch import flash_attn_v2
from .options import FA2Options
from .varlen import flash_attn_varlen

__all__ = ["FA2Options", "flash_attn_v2", "flash_attn_varlen"]
