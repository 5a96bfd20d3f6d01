import torch
from flashbench_kernels.flash_attn_v2 import flash_attn_v2
N, B, H, D = 8192, 2, 16, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
ours = [t.detach().clone().requires_grad_() for t in (q, k, v)]
for _ in range(2):
    out = flash_attn_v2(*ours)
    torch.autograd.grad(out, ours, do)
torch.cuda.synchronize()
print("done")
