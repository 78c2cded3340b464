# cuDNN / flash SDPA decode, attention only, under a CUDA graph of 8 layers (lab reference).
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from triton.testing import do_bench
for B, L in [(1, 4096), (1, 8192), (16, 8192), (64, 8192), (16, 65536)]:
    layers = max(1, min(8, (240 << 20) // (2 * B * L * 8 * 128 * 2) + 1))
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    kv = [(torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16), torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16)) for _ in range(layers)]
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        with sdpa_kernel(be):
            f = lambda: [F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kv]
            f(); torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s): f()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g): f()
            t = do_bench(lambda: g.replay(), warmup=50, rep=300) * 1000 / layers
            print(f"B={B:3d} L={L:6d} torch {name:6s} graph {t:9.2f} us {4*B*L*8*128/t/1e6:5.2f} TB/s", flush=True)
    del kv
