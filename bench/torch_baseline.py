"""PyTorch baselines for the problems of `attnforge bench` (backend-hip/src/bench.rs), run on the same GPU in
the same session: a device copy (bandwidth ceiling), torch.compile'd RoPE, and SDPA with each
backend (flash, cuDNN, efficient). Timed with triton.testing.do_bench (CUDA events, median).

    python3 bench/torch_baseline.py [--json out.json] [--quick] [--mma] [--decode-graph] [--window] [--merge] [--fp8]

The shapes of `--mma` and `--decode-graph` come from backend-hip/bench/shapes.json, the file
`attnforge bench` reads, so both sides time the same problems. Rows with a counterpart carry the
plot keys `table`, `shape` and `series` (`attnforge bench --from ours.json --torch this.json
--plots DIR` draws them side by side).

`--mma`: only the matrix-core issue's shapes (bench --mma): causal prefill f16/bf16, D=64/128,
S=1024/4096/16384, B=1/4, GQA 32/8 and MHA; decode bf16 B=1/16/64, L=4096/8192/131072.

`--decode-graph`: the shapes of `bench --decode-graph` (decode bf16 GQA 32/8 D=128, B=1/16/64,
L=4096/8192/131072): 32 layers of SDPA (flash, cuDNN) each over its own K/V (up to 64 GB, then
reused), eager and replayed from a CUDA graph; time per layer. `--quick`: B=1/16 at L=8192.

`--fp8`: the shapes of `bench --mode fp8` (`fp8_decode`): 32 layers of SDPA decode over bf16 K/V
(flash, cuDNN), and PyTorch's way to attend over an FP8 cache, which has no fused kernel for it:
K/V kept as torch.float8_e4m3fn with a scale per kv head, dequantised to bf16 per layer, then
SDPA flash; eager and under a CUDA graph.

`--window`: the shapes of `bench --mode window` (`window_decode`): the same decode at L=131072,
full and as SDPA's equivalent of a sliding window of 4096 keys (attention over the last 4096).
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

quick = "--quick" in sys.argv
out_path = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
dev = "cuda"
DT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
rows = []


def bench(fn):
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


SHAPES = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backend-hip", "bench", "shapes.json")))


def add(name, dtype, ms, nbytes, flops=0.0, key=None):
    """One row; `key` = (table, shape, series) for rows that `attnforge bench --plots` draws."""
    r = {"op": name, "dtype": dtype, "ms": ms, "bytes": nbytes, "flops": flops}
    if key:
        r.update(table=key[0], shape=key[1], series=key[2])
    rows.append(r)


n = 1 << 30
src = torch.empty(n, dtype=torch.uint8, device=dev)
dst = torch.empty_like(src)
add("device copy 1 GiB (read + write)", "f32", bench(lambda: dst.copy_(src)), 2.0 * n)
del src, dst


def sdpa_rows(label, q, k, v, causal, flops, nbytes, dtype_name, backends=("flash", "cudnn", "efficient"), key=None):
    table = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for bname in backends:
        try:
            with sdpa_kernel(table[bname]):
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
                fn()
                torch.cuda.synchronize()
                ms = bench(fn)
            add(f"torch sdpa {bname} {label}", dtype_name, ms, nbytes, flops, key and (key[0], key[1], f"torch sdpa {bname}"))
        except Exception as e:  # a backend that does not take this problem
            print(f"  sdpa {bname} {label} {dtype_name}: not run ({str(e).splitlines()[0][:100]})")


def report():
    copy_bw = rows[0]["bytes"] / rows[0]["ms"] / 1e9
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"{'op':<62} {'dtype':<5} {'ms':>9} {'TB/s':>8} {'% copy':>7} {'TFLOP/s':>9}")
    for r in rows:
        tbs = r["bytes"] / r["ms"] / 1e9
        print(f"{r['op']:<62} {r['dtype']:<5} {r['ms']:>9.4f} {tbs:>8.3f} {100 * tbs / copy_bw:>6.1f}% {r['flops'] / r['ms'] / 1e9:>9.2f}")
    if out_path:
        # Valid JSON: a value that is not a number is written as null, never NaN.
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
        json.dump(clean, open(out_path, "w"), indent=1, allow_nan=False)


if "--mma" in sys.argv:
    P = SHAPES["mma_prefill"]
    HQ = P["heads"]
    for name in P["dtypes"]:
        dt = DT[name]
        for Dd in P["head_dim"]:
            for S in P["seq_len"]:
                for B in P["batch"]:
                    for HK in P["kv_heads"]:
                        q = torch.randn(B, HQ, S, Dd, device=dev, dtype=dt)
                        k = torch.randn(B, HK, S, Dd, device=dev, dtype=dt)
                        v = torch.randn(B, HK, S, Dd, device=dev, dtype=dt)
                        sdpa_rows(f"mma prefill causal B={B} H={HQ}/{HK} S={S} D={Dd}", q, k, v, True, 4.0 * B * HQ * Dd * S * (S + 1) / 2,
                                  (2 * B * S * HQ * Dd + 2 * B * S * HK * Dd) * q.element_size(), name, ("flash", "cudnn"),
                                  key=("mma-prefill", f"{name} B={B} H={HQ}/{HK} S={S} D={Dd}"))
                        del q, k, v
    P = SHAPES["mma_decode"]
    HQ, HK, Dd = P["heads"], P["kv_heads"], P["head_dim"]
    for B in P["batch"]:
        for L in P["kv_len"]:
            q = torch.randn(B, HQ, 1, Dd, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, HK, L, Dd, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, HK, L, Dd, device=dev, dtype=torch.bfloat16)
            sdpa_rows(f"mma decode B={B} L={L} H={HQ}/{HK} D={Dd}", q, k, v, False, 4.0 * B * L * HQ * Dd, (2 * B * L * HK * Dd + 2 * B * HQ * Dd) * 2, "bf16", ("flash", "cudnn"),
                      key=("mma-decode", f"B={B} L={L}"))
            del q, k, v
            torch.cuda.empty_cache()
    report()
    sys.exit(0)


def eager_and_graph(step, name, shape_key, table_key, series, layers, nbytes):
    """Rows for `step` (all layers of a decode) per layer: run eagerly, then replayed from a CUDA
    graph captured after three warm-up runs on a side stream."""
    step()
    torch.cuda.synchronize()
    add(f"{name} decode/layer eager {shape_key} x{layers} layers", "bf16", bench(step) / layers, nbytes, 0.0, (table_key, shape_key, f"{series} eager"))
    g = torch.cuda.CUDAGraph()
    s_ = torch.cuda.Stream()
    s_.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s_):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s_)
    with torch.cuda.graph(g):
        step()
    add(f"{name} decode/layer CUDA graph {shape_key} x{layers} layers", "bf16", bench(g.replay) / layers, nbytes, 0.0, (table_key, shape_key, f"{series} CUDA graph"))
    del g


def decode_layers(B, L, table_key, shape_key, P):
    """32 layers of SDPA (flash, cuDNN) decode over L keys, each layer its own K/V (up to 64 GB,
    then reused), eager and replayed from a CUDA graph; rows per layer."""
    HQ, HK, Dd, LAYERS = P["heads"], P["kv_heads"], P["head_dim"], P["layers"]
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    layer_bytes = 2 * B * HK * L * Dd * 2
    distinct = max(1, min(LAYERS, -(-(64 << 30) // layer_bytes)))
    q = torch.randn(B, HQ, 1, Dd, device=dev, dtype=torch.bfloat16)
    kv = [(torch.randn(B, HK, L, Dd, device=dev, dtype=torch.bfloat16), torch.randn(B, HK, L, Dd, device=dev, dtype=torch.bfloat16)) for _ in range(distinct)]
    out = torch.empty_like(q)
    nbytes = 2 * B * L * HK * Dd * 2
    for bname, backend in backends.items():
        def step():
            for i in range(LAYERS):
                k, v = kv[i % distinct]
                out.copy_(F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        try:
            with sdpa_kernel(backend):
                eager_and_graph(step, f"torch sdpa {bname}", shape_key, table_key, f"torch sdpa {bname}", LAYERS, nbytes)
        except Exception as e:
            print(f"  sdpa {bname} decode {shape_key}: not run ({str(e).splitlines()[0][:100]})")
    del q, kv, out
    torch.cuda.empty_cache()


if "--decode-graph" in sys.argv:
    P = SHAPES["decode_graph"]
    shapes = [tuple(x) for x in P["quick"]] if quick else [(b, l) for b in P["batch"] for l in P["kv_len"]]
    for B, L in shapes:
        decode_layers(B, L, "decode-graph", f"B={B} L={L}", P)
    report()
    sys.exit(0)


if "--fp8" in sys.argv:
    P = SHAPES["fp8_decode"]
    HQ, HK, Dd, LAYERS = P["heads"], P["kv_heads"], P["head_dim"], P["layers"]
    for B in P["batch"]:
        for L in P["kv_len"]:
            decode_layers(B, L, "fp8-decode", f"B={B} L={L}", P)
            # Dequantise-then-attend over e4m3 K/V (per-head scales), each layer its own K/V.
            layer_bytes = 2 * B * HK * L * Dd
            distinct = max(1, min(LAYERS, -(-(64 << 30) // layer_bytes)))
            q = torch.randn(B, HQ, 1, Dd, device=dev, dtype=torch.bfloat16)
            kv = [tuple(torch.randn(B, HK, L, Dd, device=dev, dtype=torch.bfloat16).to(torch.float8_e4m3fn) for _ in range(2)) for _ in range(distinct)]
            ks = torch.rand(1, HK, 1, 1, device=dev, dtype=torch.float32) + 0.5
            vs = torch.rand(1, HK, 1, 1, device=dev, dtype=torch.float32) + 0.5
            out = torch.empty_like(q)

            def step():
                for i in range(LAYERS):
                    k8, v8 = kv[i % distinct]
                    k = (k8.to(torch.bfloat16) * ks).to(torch.bfloat16)
                    v = (v8.to(torch.bfloat16) * vs).to(torch.bfloat16)
                    out.copy_(F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                name = "torch e4m3 dequantise + sdpa flash"
                eager_and_graph(step, name, f"B={B} L={L}", "fp8-decode", name, LAYERS, 2 * B * L * HK * Dd)
            del q, kv, out
            torch.cuda.empty_cache()
    report()
    sys.exit(0)


if "--merge" in sys.argv:
    # merge_states as vLLM's / FlashInfer's callers would write it in PyTorch (f32 weights from
    # the lse, the weighted sum of bf16 outputs, the merged lse), eager and torch.compile'd.
    P = SHAPES["merge_states"]
    H, Dd = P["heads"], P["head_dim"]

    def merge(vs, ss):
        m = torch.stack(ss).amax(0)
        w = [torch.exp(s - m) for s in ss]
        tot = sum(w)
        out = sum(v.float() * (wi / tot)[..., None] for v, wi in zip(vs, w))
        return out.to(vs[0].dtype), m + torch.log(tot)

    compiled = torch.compile(merge)
    for T in P["tokens"]:
        for n in P["states"]:
            vs = [torch.randn(T, H, Dd, device=dev, dtype=torch.bfloat16) for _ in range(n)]
            ss = [torch.randn(T, H, device=dev, dtype=torch.float32) for _ in range(n)]
            nbytes = (n + 1) * T * H * Dd * 2 + (n + 1) * T * H * 4
            shape = f"T={T} states={n}"
            add(f"merge_states {shape} H={H} D={Dd} torch eager", "bf16", bench(lambda: merge(vs, ss)), nbytes, key=("merge-states", shape, "torch eager"))
            add(f"merge_states {shape} H={H} D={Dd} torch.compile", "bf16", bench(lambda: compiled(vs, ss)), nbytes, key=("merge-states", shape, "torch.compile"))
            del vs, ss
    report()
    sys.exit(0)


if "--window" in sys.argv:
    # SDPA has no sliding window: its equivalent of a decode step under a window of W keys is
    # attention over the last W keys, K/V tensors of W rows (what a windowed kernel reads).
    P = SHAPES["window_decode"]
    L, W = P["kv_len"], P["window"]
    for B in P["batch"]:
        decode_layers(B, L, "window-decode", f"B={B} L={L} full", P)
        decode_layers(B, W, "window-decode", f"B={B} L={L} W={W}", P)
    # Prefill: SDPA's causal attention over S tokens (it has no windowed prefill to compare).
    HQ, HK, Dd = P["heads"], P["kv_heads"], P["head_dim"]
    for S in P["prefill_seq_len"]:
        q = torch.randn(1, HQ, S, Dd, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HK, S, Dd, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HK, S, Dd, device=dev, dtype=torch.bfloat16)
        sdpa_rows(f"window prefill S={S} full H={HQ}/{HK} D={Dd}", q, k, v, True, 4.0 * HQ * Dd * S * (S + 1) / 2,
                  (2 * S * HQ * Dd + 2 * S * HK * Dd) * 2, "bf16", ("flash", "cudnn"), key=("window-prefill", f"prefill S={S} full"))
        del q, k, v
        torch.cuda.empty_cache()
    report()
    sys.exit(0)



def rope_ref(q, k, cos, sin, pos):
    # Half-split (NeoX / HF) rotation, in place, cos/sin gathered from a table as vLLM does.
    c = cos[pos].unsqueeze(1)
    s = sin[pos].unsqueeze(1)
    for x in (q, k):
        x1, x2 = x[..., :64].float(), x[..., 64:].float()
        x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype))


rope_c = torch.compile(rope_ref)
T, HQ, HK, D = (8192 if quick else 32768), 32, 8, 128
inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float64) / D))
ang = torch.arange(131072, device=dev, dtype=torch.float64)[:, None] * inv[None, :]
cos, sin = ang.cos().float(), ang.sin().float()
pos = torch.arange(T, device=dev)
for name, dt in DT.items():
    q = torch.randn(T, HQ, D, device=dev, dtype=dt)
    k = torch.randn(T, HK, D, device=dev, dtype=dt)
    ms = bench(lambda: rope_c(q, k, cos, sin, pos))
    add(f"torch.compile rope q+k T={T} H={HQ}/{HK} D={D}", name, ms, 2.0 * T * (HQ + HK) * D * q.element_size())


for (B, L) in [(16, 8192), (1, 8192)]:
    for name, dt in DT.items():
        q = torch.randn(B, HQ, 1, D, device=dev, dtype=dt)
        k = torch.randn(B, HK, L, D, device=dev, dtype=dt)
        v = torch.randn(B, HK, L, D, device=dev, dtype=dt)
        es = q.element_size()
        # decode: one query attends to everything (causal makes no difference with q_len 1)
        sdpa_rows(f"decode B={B} L={L} H={HQ}/{HK} D={D}", q, k, v, False, 4.0 * B * L * HQ * D, (2 * B * L * HK * D + 2 * B * HQ * D) * es, name)

for name, dt in DT.items():
    B, H, S, Dd = 8, 32, 1024, 64
    q, k, v = (torch.randn(B, H, S, Dd, device=dev, dtype=dt) for _ in range(3))
    sdpa_rows(f"prefill causal B={B} H={H} S={S} D={Dd}", q, k, v, True, 4.0 * B * H * Dd * S * (S + 1) / 2, 4.0 * B * H * S * Dd * q.element_size(), name)

for (S, name) in [(4096, "f32"), (4096, "f16"), (4096, "bf16"), (16384, "f16"), (16384, "bf16")]:
    dt = DT[name]
    q = torch.randn(1, HQ, S, D, device=dev, dtype=dt)
    k = torch.randn(1, HK, S, D, device=dev, dtype=dt)
    v = torch.randn(1, HK, S, D, device=dev, dtype=dt)
    sdpa_rows(f"prefill causal B=1 H={HQ}/{HK} S={S} D={D}", q, k, v, True, 4.0 * HQ * D * S * (S + 1) / 2, (2 * S * HQ * D + 2 * S * HK * D) * q.element_size(), name)
    if name == "f32":
        # No SDPA kernel takes f32 GQA: the efficient kernel with K/V expanded to 32 heads (the
        # expansion not timed), so the f32 realistic prefill has a baseline.
        ke, ve = (x.repeat_interleave(HQ // HK, dim=1).contiguous() for x in (k, v))
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            ms = bench(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True))
        add(f"torch sdpa efficient (K/V expanded) prefill causal B=1 H={HQ}/{HK} S={S} D={D}", name, ms, (2 * S * HQ * D + 2 * S * HK * D) * 4.0, 4.0 * HQ * D * S * (S + 1) / 2)
        del ke, ve

# The RoPE-fusion study's shapes: f32, one head, 64 queries x 64 keys, head_dim/rotary_dim
# 128/64, 512/128, 2048/128; torch rotates Q and K (partial rotary, half-split) then runs the
# efficient SDPA kernel (not causal), the whole step timed.
def study_step(q, k, v, cos, sin, rot):
    half = rot // 2
    def rot_(x):
        x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        return F.scaled_dot_product_attention(rot_(q), rot_(k), v)


for (Ds, rot) in [(128, 64), (512, 128), (2048, 128)]:
    q, k, v = (torch.randn(1, 1, 64, Ds, device=dev, dtype=torch.float32) for _ in range(3))
    inv_s = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, device=dev, dtype=torch.float64) / rot))
    a = torch.arange(64, device=dev, dtype=torch.float64)[:, None] * inv_s[None, :]
    cs, sn = a.cos().float(), a.sin().float()
    study_step(q, k, v, cs, sn, rot)
    fl, nb = 4.0 * 64 * 64 * Ds, 5 * 64 * Ds * 4.0
    add(f"torch rope+sdpa efficient study 64x64 H=1 D={Ds} rot={rot}", "f32", bench(lambda: study_step(q, k, v, cs, sn, rot)), nb, fl)
    # The same step replayed from a CUDA graph: the device time, without Python's launch cost.
    g = torch.cuda.CUDAGraph()
    s_ = torch.cuda.Stream()
    s_.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s_):
        for _ in range(3):
            study_step(q, k, v, cs, sn, rot)
    torch.cuda.current_stream().wait_stream(s_)
    with torch.cuda.graph(g):
        study_step(q, k, v, cs, sn, rot)
    add(f"torch rope+sdpa efficient (CUDA graph) study 64x64 H=1 D={Ds} rot={rot}", "f32", bench(g.replay), nb, fl)
    # SDPA alone (the 0.016 / 0.033 / 0.108 ms reference).
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        add(f"torch sdpa efficient (no rope) study 64x64 H=1 D={Ds}", "f32", bench(lambda: F.scaled_dot_product_attention(q, k, v)), nb, fl)

report()
