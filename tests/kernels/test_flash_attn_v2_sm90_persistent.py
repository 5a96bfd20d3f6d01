"""The persistent build of the Gluon Hopper forward (``sm90_persistent``: one program an SM walking tiles).

Without a GPU: which configurations it takes (dense, D64 and D128, the O buffer within shared memory, up to
``MAX_KEYS`` keys), what its launcher hands the kernel (min(tiles, programs) programs, the batch*heads count,
the stream's tile counter, ``sm90``'s descriptors and constexprs), that the tuner's launch runs it there and
``sm90.forward`` elsewhere, and that the launch log says which ran (the compile test covers its builds:
``tools/fa2_compile_report.py --gluon``).  On a Hopper GPU: its outputs and LSE equal those of ``sm90.forward``
bit for bit (the same per-tile code) with few programs, so that each walks many tiles and the K/V ring, the Q
barrier and the O buffer turn over across tiles (the tile counter left at zero after each launch), causal
tiles of different lengths follow one another, and a three-consumer program's partial first tile (consumers
without rows) meets full ones; and against the float64 reference through ``flash_attn_v2``.
"""
from __future__ import annotations

import pytest
import torch

from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, launch, sm90, sm90_persistent, spaces, tuning
from kernel_checks import check_against_reference, fake_gluon_forward, make_inputs, on_hopper, poisoned_empty

hopper_only = pytest.mark.skipif(not on_hopper(), reason="the Gluon kernels run on Hopper (sm_90) only")


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype)


def test_it_takes_dense_128_key_blocks_whose_o_buffer_fits():
    assert sm90_persistent.reason(128, 2, sm90.BLOCK, varlen=False) is None
    assert sm90_persistent.reason(64, 2, sm90.BLOCK, varlen=False) is None
    assert sm90_persistent.reason(64, 3, sm90.WIDE_BLOCK, varlen=False) is None
    assert "packed" in sm90_persistent.reason(128, 2, sm90.BLOCK, varlen=True)
    assert "64-key blocks" in sm90_persistent.reason(256, 2, sm90.BLOCK, varlen=False)
    assert "O buffer" in sm90_persistent.reason(128, 3, sm90.BLOCK, varlen=False)
    assert sm90_persistent.reason(128, 2, sm90.BLOCK, varlen=False, n_kv=sm90_persistent.MAX_KEYS) is None
    assert "measured faster" in sm90_persistent.reason(128, 2, sm90.BLOCK, varlen=False, n_kv=4096)
    # Q 32 KiB + O 32 KiB + 2 stages of K and V 128 KiB at D128; 3 stages would take 256 KiB
    assert sm90_persistent.shared_bytes(128, 2, sm90.BLOCK) == 192 * 1024
    assert sm90_persistent.shared_bytes(64, 2, sm90.WIDE_BLOCK) == 112 * 1024


class _FakeKernel:
    def __init__(self, seen):
        self.seen = seen

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.seen.update(grid=grid, args=args, q_rows=args[0].block_shape[0], o_rows=args[3].block_shape[0], **kw)
        return run


@pytest.mark.parametrize("block_rows, tiles", [(sm90.BLOCK, 5 * 8), (sm90.WIDE_BLOCK, 4 * 8)])
def test_the_launch_takes_min_of_tiles_and_programs_and_sm90s_descriptors(block_rows, tiles, monkeypatch):
    seen = {}
    monkeypatch.setattr(sm90_persistent, "fwd_sm90_persistent_kernel", _FakeKernel(seen))
    monkeypatch.setattr(sm90_persistent, "tile_counter", lambda device: "counter")
    q, lse = _t(2, 4, 640, 64), _t(2, 4, 640, dtype=torch.float32)
    for programs, grid in ((7, 7), (1000, tiles)):
        sm90_persistent.forward(q, q, q, q, lse, True, 1.0, 0, 2, block_rows=block_rows, programs=programs)
        assert seen["grid"] == (grid,)
    assert seen["args"][-1] == 8 and seen["args"][5] == "counter"  # N_BH: batch x heads; the stream's counter
    assert seen["q_rows"] == sm90.q_tile_rows(block_rows) and seen["o_rows"] == sm90.CONSUMER_ROWS
    assert seen["CONSUMERS"] == sm90.consumers(block_rows) and "VARLEN" not in seen
    assert seen["maxnreg"] == sm90.launch_maxnreg(block_rows)


@pytest.mark.parametrize("d, stages, window_left, words", [
    (256, 2, -1, "64-key blocks"), (128, 3, -1, "O buffer"), (64, 2, 8, "without a window"),
])
def test_the_launch_refuses_what_it_does_not_build_before_any_launch(d, stages, window_left, words, monkeypatch):
    monkeypatch.setattr(sm90_persistent, "fwd_sm90_persistent_kernel", None)  # a launch would fail differently
    q = _t(1, 2, 256, d)
    block_rows = sm90.WIDE_BLOCK if words == "without a window" else sm90.BLOCK
    with pytest.raises(ValueError, match=words):
        sm90_persistent.forward(q, q, q, q, q, True, 1.0, 0, stages, window_left=window_left, block_rows=block_rows)


@pytest.mark.parametrize("d, stages, block_rows, n_kv, persistent", [
    (128, 2, sm90.BLOCK, 256, True), (64, 2, sm90.WIDE_BLOCK, 2048, True), (128, 2, sm90.BLOCK, 2176, False),
    (128, 3, sm90.BLOCK, 256, False), (256, 2, sm90.BLOCK, 256, False),
])
def test_the_tuners_launch_runs_the_persistent_build_where_it_is_built_and_measured_faster(d, stages, block_rows,
                                                                                          n_kv, persistent,
                                                                                          monkeypatch):
    ran = []
    fake_gluon_forward(monkeypatch, sm90_persistent, lambda *a, **kw: ran.append("persistent"))
    fake_gluon_forward(monkeypatch, sm90, lambda *a, **kw: ran.append("sm90"))
    q = _t(1, 2, n_kv, d)
    cfg = tuning.to_config((block_rows, sm90.block_n(d), 4, stages, spaces.GLUON), True)
    args = dict.fromkeys(tuning.fwd_kernel.arg_names, 0)
    args.update(Q=q, K=q, V=q, O=q, LSE=q, sm_scale=1.0)
    meta = launch.kernel_meta(d, True, False, 0)
    args = tuple(args[n] for n in tuning.fwd_kernel.arg_names)
    tuning.prepare_fwd(cfg, None, args, meta)(q, q, q, q, q)
    assert ran == ["persistent" if persistent else "sm90"]
    assert tuning.fwd_persistent(cfg, args, meta) is persistent
    assert tuning.launch_label(cfg, persistent).endswith(",persistent=True") is persistent


def test_packed_calls_never_run_it():
    cfg = tuning.to_config((sm90.BLOCK, 128, 4, 2, spaces.GLUON), True)
    args = dict.fromkeys(tuning.fwd_kernel.arg_names, 0)
    args.update(Q=_t(64, 2, 128), K=_t(64, 2, 128))
    meta = launch.kernel_meta(128, True, False, 0, varlen=True)
    assert not tuning.fwd_persistent(cfg, tuple(args[n] for n in tuning.fwd_kernel.arg_names), meta)


def test_a_pinned_gluon_forward_is_logged_as_persistent_where_it_runs_so(monkeypatch):
    monkeypatch.setattr(sm90, "unsupported_reason", sm90.input_reason)  # as if on an H100
    ran = []
    fake = lambda q, k, v, o, lse, *a, **kw: (ran.append(k.shape[2]), o.zero_(), lse.zero_())  # noqa: E731
    fake_gluon_forward(monkeypatch, sm90, fake)
    fake_gluon_forward(monkeypatch, sm90_persistent, lambda *a, **kw: (ran.append("persistent"), fake(*a, **kw)))
    options = FA2Options(path="tma", configs={"fwd": (sm90.BLOCK, 128, 4, 2, spaces.GLUON)})
    for n, persistent in ((sm90_persistent.MAX_KEYS, True), (sm90_persistent.MAX_KEYS + 128, False)):
        q, log = _t(1, 2, n, 128, dtype=torch.float16), {}
        flash_attn_v2(q, q, q, causal=True, launch_log=log, options=options)
        assert log["fwd"] == sm90.config_label(2, persistent=persistent)
    assert ran == ["persistent", sm90_persistent.MAX_KEYS, sm90_persistent.MAX_KEYS + 128]


# (B, H, Hkv, Nq, Nkv, D, causal, window_left, block_rows)
GRID = [
    (2, 4, 2, 640, 640, 128, True, -1, sm90.BLOCK),
    (2, 4, 4, 640, 1024, 128, False, -1, sm90.BLOCK),
    (1, 8, 2, 1024, 1024, 128, True, 200, sm90.BLOCK),
    (3, 2, 1, 384, 896, 64, True, -1, sm90.BLOCK),
    (2, 4, 2, 640, 640, 64, True, -1, sm90.WIDE_BLOCK),
    (2, 3, 3, 1024, 1024, 64, False, -1, sm90.WIDE_BLOCK),
    (1, 4, 1, 384, 1152, 64, True, -1, sm90.WIDE_BLOCK),
]


def _id(c):
    B, H, Hkv, Nq, Nkv, D, causal, left, rows = c
    return f"B{B}-H{H}-Hkv{Hkv}-Nq{Nq}-Nkv{Nkv}-D{D}-{'causal' if causal else 'full'}-w{left}-rows{rows}"


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GRID, ids=_id)
def test_gpu_equals_one_program_a_tile_with_few_programs_poisoned(case, dtype):
    B, H, Hkv, Nq, Nkv, D, causal, left, rows = case
    q, k, v, _ = make_inputs(B, H, Hkv, Nq, Nkv, D, dtype, seed=Nq + 3 * Nkv + D + rows)
    lse_shape = (B, H, Nq)
    o_ref, lse_ref = poisoned_empty(q.shape, dtype, "cuda"), poisoned_empty(lse_shape, torch.float32, "cuda")
    sm90.forward(q, k, v, o_ref, lse_ref, causal, 0.1, 0, 2, window_left=left, block_rows=rows)
    assert not o_ref.isnan().any() and not lse_ref.isnan().any()
    for programs in (1, 3, 7, None):
        o, lse = poisoned_empty(q.shape, dtype, "cuda"), poisoned_empty(lse_shape, torch.float32, "cuda")
        sm90_persistent.forward(q, k, v, o, lse, causal, 0.1, 0, 2, window_left=left, block_rows=rows,
                                programs=programs)
        assert torch.equal(o, o_ref), programs
        assert torch.equal(lse, lse_ref), programs
        assert sm90_persistent.tile_counter(q.device).item() == 0  # left for the next launch on the stream


@pytest.mark.gpu
@hopper_only
@pytest.mark.parametrize("block_rows", [sm90.BLOCK, sm90.WIDE_BLOCK])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_flash_attn_v2_runs_it_against_the_reference(block_rows, causal, monkeypatch):
    ran = []
    real = sm90_persistent.prepare_forward  # what the launcher runs: its plan prepares the persistent build
    monkeypatch.setattr(sm90_persistent, "prepare_forward", lambda *a, **kw: (ran.append(1), real(*a, **kw))[1])
    monkeypatch.setattr(launch, "_empty", poisoned_empty)
    options = FA2Options(autotune=False, configs={"fwd": (block_rows, 128, 4, 2, spaces.GLUON)})
    q, k, v, do = make_inputs(2, 8, 2, 1024, 1024, 64, torch.bfloat16, seed=block_rows + causal)
    check_against_reference(q, k, v, do, causal, options=options)
    assert ran
