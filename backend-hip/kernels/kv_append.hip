// KV append: copy new K/V rows into their cache slots (vLLM's slot mapping: the host resolves
// contiguous capacity or the page table into one slot index per token). One thread per
// (token, head, 16-byte chunk). A hip-fused cache also records each slot's position: the key
// stays unrotated and attention rotates it (`k_pos`; AF_ROTATED where K arrived rotated).
#include "include/af_common.h"

template <typename T> AF_DEVICE void kv_append_body(const AppendParams& p) {
    const int CV = 16 / (int)sizeof(T);
    const int nch = p.head_dim / CV;
    const long per_tok = (long)p.k_heads * nch;
    const long gid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (long)p.tokens * per_tok) return;
    const int t = (int)(gid / per_tok);
    const long r = gid % per_tok;  // head * nch + chunk
    const long dst = (long)reinterpret_cast<const int*>(p.slots)[t] * p.k_heads * p.head_dim + r * CV;
    af_copy<16 / sizeof(T)>(reinterpret_cast<T*>(p.k_cache) + dst, reinterpret_cast<const T*>(p.k) + (long)t * p.k_stride + r * CV);
    af_copy<16 / sizeof(T)>(reinterpret_cast<T*>(p.v_cache) + dst, reinterpret_cast<const T*>(p.v) + (long)t * p.v_stride + r * CV);
    if (p.k_pos && r == 0) {
        const int slot = reinterpret_cast<const int*>(p.slots)[t];
        reinterpret_cast<int*>(p.k_pos)[slot] = p.positions ? reinterpret_cast<const int*>(p.positions)[t] : AF_ROTATED;
    }
}
AF_STAMP(kv_append, AppendParams, (APPEND_THREADS), kv_append_body)

// KV append into FP8 pools (kv_append_e4m3_{f16,bf16}): the same mapping, each element stored
// as e4m3(x / scale[head]) (IEEE f32 division, then nearest even, saturating: the host's
// attnforge_api::e4m3_quantise); 8 elements (16 bytes of T in, 8 bytes out) per thread.
template <typename T> AF_DEVICE void kv_append_e4m3_body(const AppendParams& p) {
    constexpr int CV = 16 / (int)sizeof(T);
    static_assert(CV == 8, "16-bit rows in, 8-byte e4m3 chunks out");
    const int nch = p.head_dim / CV;
    const long per_tok = (long)p.k_heads * nch;
    const long gid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (long)p.tokens * per_tok) return;
    const int t = (int)(gid / per_tok);
    const long r = gid % per_tok;  // head * nch + chunk
    const int head = (int)(r / nch);
    const int slot = reinterpret_cast<const int*>(p.slots)[t];
    const long dst = (long)slot * p.k_heads * p.head_dim + r * CV;  // e4m3 elements are bytes
    const float ks = reinterpret_cast<const float*>(p.k_scale)[head], vs = reinterpret_cast<const float*>(p.v_scale)[head];
    auto put = [&](af_ptr cache, af_ptr src, long stride, float sc) {
        float x[CV];
        af_load<CV>(reinterpret_cast<const T*>(src) + (long)t * stride + r * CV, x);
        uint2 w;
        w.x = af_f2e4m3x2(x[0] / sc, x[1] / sc) | ((unsigned)af_f2e4m3x2(x[2] / sc, x[3] / sc) << 16);
        w.y = af_f2e4m3x2(x[4] / sc, x[5] / sc) | ((unsigned)af_f2e4m3x2(x[6] / sc, x[7] / sc) << 16);
        *reinterpret_cast<uint2*>(reinterpret_cast<unsigned char*>(cache) + dst) = w;
    };
    put(p.k_cache, p.k, p.k_stride, ks);
    put(p.v_cache, p.v, p.v_stride, vs);
    if (p.k_pos && r == 0) reinterpret_cast<int*>(p.k_pos)[slot] = p.positions ? reinterpret_cast<const int*>(p.positions)[t] : AF_ROTATED;
}
AF_ENTRY(kv_append_e4m3, f16, af_f16, AppendParams, (APPEND_THREADS), kv_append_e4m3_body)
AF_ENTRY(kv_append_e4m3, bf16, af_bf16, AppendParams, (APPEND_THREADS), kv_append_e4m3_body)

// Fill: every element of a tensor's rows set to one value (tests poison outputs with NaN);
// memory between the rows of a strided view is not touched. Grid-stride, so any element count
// fits the grid.
template <typename T> AF_DEVICE void fill_body(const FillParams& p) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride)
        reinterpret_cast<T*>(p.dst)[i / p.row_len * p.row_stride + i % p.row_len] = af_from_float<T>(p.value);
}
AF_STAMP(fill, FillParams, (FILL_THREADS), fill_body)
AF_ENTRY(fill, e4m3, af_e4m3, FillParams, (FILL_THREADS), fill_body)
