"""One fwd_bwd of ours and of cuDNN at D128, N 8k, B2 H16, bf16 (ncu filters the backward kernels by name)."""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashbench_kernels.flash_attn_v2 import flash_attn_v2

N, B, H, D = 8192, 2, 16, 128
for causal in (False, True):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    ours = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    lv = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    out = flash_attn_v2(*ours, causal=causal)
    torch.autograd.grad(out, ours, do)
    torch.cuda.synchronize()
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        out = F.scaled_dot_product_attention(*lv, is_causal=causal)
    torch.autograd.grad(out, lv, do)
    torch.cuda.synchronize()
print("done")
