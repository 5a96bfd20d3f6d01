import sys, time, torch
from flashbench_kernels.flash_attn_v2 import FA2Options, flash_attn_v2
def ref(q, k, v, causal):
    G = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(G, 1); v = v.repeat_interleave(G, 1)
    s = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    if causal:
        Nq, Nk = s.shape[-2:]
        m = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device).tril(Nk - Nq)
        s = s.masked_fill(~m, float("-inf"))
    return torch.softmax(s, -1) @ v.float()
for (B, H, Hkv, Nq, Nkv, D, causal) in [(1,2,2,128,128,128,False),(1,2,2,256,256,64,True),(1,4,2,512,512,128,True),(2,4,4,256,768,128,True),(1,4,1,512,256,64,False)]:
    torch.manual_seed(0)
    q = torch.randn(B,H,Nq,D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B,Hkv,Nkv,D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B,Hkv,Nkv,D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B,H,Nq,D, device="cuda", dtype=torch.bfloat16)
    t = time.time(); log = {}
    o = flash_attn_v2(q, k, v, causal=causal, options=FA2Options(autotune=False, sm90_backward=True), launch_log=log)
    gq, gk, gv = torch.autograd.grad(o, (q, k, v), do); torch.cuda.synchronize()
    r = ref(q, k, v, causal); rq, rk, rv = torch.autograd.grad(r, (q, k, v), do.float())
    errs = [(a.float() - b.float()).abs().max().item() for a, b in ((o, r), (gq, rq), (gk, rk), (gv, rv))]
    print((B,H,Hkv,Nq,Nkv,D,causal), "errs o/dq/dk/dv", ["%.3g" % e for e in errs], "ref max dq %.3g" % rq.abs().max().item(), "%.1fs" % (time.time()-t), log.get("bwd_dq","")[:16], flush=True)
