"""Which part of the chunk loop makes dQ wrong: the conversion's zeroing, the prepared launches' fast path, or
ordering between the launches?"""
import math, torch
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2, sm90_bwd
from flashbench_kernels import _prepared

def inputs(B, H, N, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]

def grads(q, k, v, do, lse2, delta, causal, **kw):
    g = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    sm90_bwd.backward(q, k, v, do, lse2, delta, *g, causal, q.shape[-1] ** -0.5, **kw)
    torch.cuda.synchronize()
    return g

real_conversion = sm90_bwd._dq_conversion
real_prepared = sm90_bwd.PreparedLaunch

class JitOnly(real_prepared):
    def __call__(self, *lead):
        self.kernel[self.grid](*lead, *self.fixed, **self.kwargs)

def memset_instead(n, sm_scale, zero=False):
    conv = real_conversion(n, sm_scale, False)
    def run(acc, dq):
        conv(acc, dq)
        if zero:
            acc.zero_()
    return run

def sync_after(n, sm_scale, zero=False):
    conv = real_conversion(n, sm_scale, zero)
    def run(acc, dq):
        torch.cuda.synchronize()
        conv(acc, dq)
        torch.cuda.synchronize()
    return run

def variants():
    yield "as is", lambda: None
    yield "memset instead of the conversion's zeroing", lambda: setattr(sm90_bwd, "_dq_conversion", memset_instead)
    yield "JIT every launch (no fast path)", lambda: setattr(sm90_bwd, "PreparedLaunch", JitOnly)
    yield "sync before and after each conversion", lambda: setattr(sm90_bwd, "_dq_conversion", sync_after)

for (B, H, N, D, causal, cp) in [(16, 16, 1024, 128, True, 128), (4, 16, 4096, 128, False, 32)]:
    q, k, v, do = inputs(B, H, N, D)
    o, lse = flash_attn_v2(q, k, v, causal=causal, return_lse=True, options=FA2Options(autotune=False))
    lse2 = (lse / math.log(2)).contiguous()
    delta = (do.float() * o.float()).sum(-1).contiguous()
    w1 = grads(q, k, v, do, lse2, delta, causal)
    print(f"== B{B} H{H} N{N} D{D} causal={causal} chunks of {cp}", flush=True)
    for name, patch in variants():
        patch()
        errs = []
        for rep in range(3):
            c = grads(q, k, v, do, lse2, delta, causal, chunk_pairs=cp)
            errs.append((c[0].float() - w1[0].float()).abs().max().item())
        sm90_bwd._dq_conversion, sm90_bwd.PreparedLaunch = real_conversion, real_prepared
        print(f"  {name}: max err {', '.join(f'{e:.3g}' for e in errs)}", flush=True)
