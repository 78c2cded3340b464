// hip-separate's attention: the unfused baseline an engine starts from. Three kernels over an
// f32 score buffer in global memory, as a textbook implementation does:
//   attn_scores_{dtype}: S = scale * Q K^T (entries outside the causal mask or window -inf), one block per (query, head),
//                        16-lane groups per key;
//   attn_softmax_f32:    P = softmax(S) row by row, in place;
//   attn_pv_{dtype}:     O = P V, threads over head dims.
// Any even head_dim up to SEP_DMAX (the query row is staged in shared memory). K/V addressing is
// the flash kernels' (`KvRows`), so caches (contiguous, paged) and plain tensors both work.
#include "attention/common.h"

struct SepRow {
    int b, qi, q_len, kv_len, first, visible;  // the row sees keys first .. visible - 1
    long long s0;  // first score of this (query, head) row
};
AF_DEVICE SepRow sep_row(const SepParams& p, int t, int h) {
    const AttnParams& a = p.a;
    SepRow r;
    r.b = reinterpret_cast<const int*>(p.row_entry)[t];
    const int qbeg = reinterpret_cast<const int*>(a.q_off)[r.b];
    r.qi = t - qbeg;
    r.q_len = reinterpret_cast<const int*>(a.q_off)[r.b + 1] - qbeg;
    r.kv_len = reinterpret_cast<const int*>(a.kv_len)[r.b];
    r.visible = a.causal ? r.kv_len - r.q_len + r.qi + 1 : r.kv_len;
    r.first = af_first_key(a, r.visible);
    r.s0 = reinterpret_cast<const long long*>(p.s_off)[r.b] + ((long long)r.qi * a.heads + h) * r.kv_len;
    return r;
}

template <typename T> AF_DEVICE void attn_scores_body(const SepParams& p) {
    const AttnParams& a = p.a;
    __shared__ float sq[SEP_DMAX];
    const int t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
    const int kh = h / (a.heads / a.kv_heads);
    const SepRow r = sep_row(p, t, h);
    const T* Q = reinterpret_cast<const T*>(a.q) + q_at(a, t, h);
    for (int d = threadIdx.x; d < D; d += SEP_THREADS) sq[d] = af_to_float(Q[d]) * a.scale_log2;
    __syncthreads();
    const T* K = reinterpret_cast<const T*>(a.k);
    float* S = reinterpret_cast<float*>(a.part) + r.s0;
    const KvRows kvr(a, r.b);
    const int lane = threadIdx.x % 16, grp = threadIdx.x / 16;
    // Every lane of a group runs the same iterations (the shuffles need all 16).
    for (int j0 = 0; j0 < r.kv_len; j0 += SEP_THREADS / 16) {
        const int j = j0 + grp;
        float acc = 0.f;
        if (j >= r.first && j < r.visible) {
            const T* krow = K + kvr(j) * a.k_stride + (long)kh * D;
            for (int d = lane; d < D; d += 16) acc += sq[d] * af_to_float(krow[d]);
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) acc += af_shfl_xor(acc, o);
        if (lane == 0 && j < r.kv_len) S[j] = (j >= r.first && j < r.visible) ? af_cap2(acc, a.softcap_log2) : -INFINITY;
    }
}
AF_STAMP(attn_scores, SepParams, (SEP_THREADS), attn_scores_body)

extern "C" __global__ void __launch_bounds__(SEP_SOFTMAX_THREADS) attn_softmax_f32(SepParams p) {
    __shared__ float red[SEP_SOFTMAX_THREADS];
    const SepRow r = sep_row(p, blockIdx.x, blockIdx.y);
    float* S = reinterpret_cast<float*>(p.a.part) + r.s0;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < r.kv_len; j += SEP_SOFTMAX_THREADS) m = fmaxf(m, S[j]);
    red[threadIdx.x] = m;
    __syncthreads();
    for (int o = SEP_SOFTMAX_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float sum = 0.f;
    for (int j = threadIdx.x; j < r.kv_len; j += SEP_SOFTMAX_THREADS) {
        const float e = exp2f(S[j] - m);  // scores are in base 2 (scale * log2(e) applied)
        S[j] = e;
        sum += e;
    }
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int o = SEP_SOFTMAX_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    const float denom = red[0] + af_sink_term(p.a.sinks, blockIdx.y, m);
    const float inv = 1.f / denom;
    if (threadIdx.x == 0) af_store_lse(p.a.lse, (long)blockIdx.x * p.a.heads + blockIdx.y, m, red[0], p.a.sinks, blockIdx.y);
    for (int j = threadIdx.x; j < r.kv_len; j += SEP_SOFTMAX_THREADS) S[j] *= inv;
}

template <typename T> AF_DEVICE void attn_pv_body(const SepParams& p) {
    const AttnParams& a = p.a;
    const int t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
    const int kh = h / (a.heads / a.kv_heads);
    const SepRow r = sep_row(p, t, h);
    const float* P = reinterpret_cast<const float*>(a.part) + r.s0;
    const T* V = reinterpret_cast<const T*>(a.v);
    T* O = reinterpret_cast<T*>(a.out) + o_at(a, t, h);
    const KvRows kvr(a, r.b);
    for (int d = threadIdx.x; d < D; d += SEP_THREADS) {
        float acc = 0.f;
        for (int j = r.first; j < r.visible; ++j) acc += P[j] * af_to_float(V[kvr(j) * a.v_stride + (long)kh * D + d]);
        O[d] = af_from_float<T>(acc);
    }
}
AF_STAMP(attn_pv, SepParams, (SEP_THREADS), attn_pv_body)
