"""Host time of the dQ conversion: the Triton kernel (the previous commit's kernels, basepkg/fbk_base) against
torch.mul(out=) (this tree); each alone, and inside a whole fwd_bwd call (D128 causal N1k B16 H16, bf16),
with the GPU held by a sleep kernel so that no call waits for it; interleaved holds."""
import os, statistics, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "basepkg"))
import torch
from flashbench_kernels.flash_attn_v2 import flash_attn_v2 as new_fa, sm90_bwd as new_bwd
from fbk_base.flash_attn_v2 import flash_attn_v2 as old_fa, sm90_bwd as old_bwd

torch.manual_seed(0)
B, H, N, D = 16, 16, 1024, 128
q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
acc = torch.randn(B, H, N, D, device="cuda", dtype=torch.float32)
dq_old, dq_new = torch.empty_like(q), torch.empty_like(q)
scale = D ** -0.5
old_bwd._dq_convert(acc, dq_old, scale)
new_bwd._dq_convert(acc, dq_new, scale)
torch.cuda.synchronize()
print("conversion outputs bit for bit equal:", torch.equal(dq_old, dq_new), flush=True)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    new_bwd._dq_convert(acc, dq_new, scale)
    torch.cuda.synchronize()
kern = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print("torch.mul(out=) kernels:", len(kern), kern[:3], flush=True)

leaves = [t.clone().requires_grad_() for t in (q, k, v)]
def fb(fa):
    def call():
        out = fa(*leaves, causal=True)
        return torch.autograd.grad(out, leaves, do)
    return call
grads = {}
for name, fa in (("old", old_fa), ("new", new_fa)):
    for _ in range(3):
        grads[name] = fb(fa)()
torch.cuda.synchronize()
print("fwd_bwd dk, dv equal:", all(torch.equal(a, b) for a, b in zip(grads["old"][1:], grads["new"][1:])),
      "max|ddq|", (grads["old"][0].float() - grads["new"][0].float()).abs().max().item(), flush=True)

calls = {"convert old": lambda: old_bwd._dq_convert(acc, dq_old, scale),
         "convert new": lambda: new_bwd._dq_convert(acc, dq_new, scale),
         "fwd_bwd old": fb(old_fa), "fwd_bwd new": fb(new_fa)}
per = {name: [] for name in calls}
REPS = 12
for hold in range(30):
    for name, fn in calls.items():
        torch.cuda._sleep(int(2e8))  # ~0.1 s of GPU time: nothing below waits for the GPU
        t0 = time.perf_counter()
        for _ in range(REPS):
            fn()
        per[name].append((time.perf_counter() - t0) / REPS * 1e6)
        torch.cuda.synchronize()
print(f"{'us a call':<14} {'median':>8} {'p20':>8} {'min':>8}")
for name, xs in per.items():
    xs = sorted(xs)
    print(f"{name:<14} {statistics.median(xs):8.1f} {xs[len(xs) // 5]:8.1f} {xs[0]:8.1f}")
