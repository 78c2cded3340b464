// Wide heads (head_dim past TILED_DMAX, up to WIDE_DMAX).
#pragma once
#include "common.h"

// ------------------------------------------------------------------------------------------
// Wide heads (head_dim > 256, up to WIDE_DMAX): one block of 256 threads per (query row, head).
// The query row (rotated as it is loaded under ROPE) sits in shared memory; 16 groups of 16
// lanes score 16 keys at a time (lanes over head dims, shuffles finish each dot product), then
// every thread folds those 16 keys into the online softmax for its D/256 output dims.
// `tiles` holds the batch entry of each query row.
#define WIDE_EP (WIDE_DMAX / WIDE_THREADS)
#define WIDE_VU 4  // V rows in flight per thread

template <typename T, bool ROPE>
AF_DEVICE void wide_body(const AttnParams& p) {
    __shared__ float sq[WIDE_DMAX];
    __shared__ float ss[WIDE_THREADS / 16];
    const int tid = threadIdx.x, lane = tid % 16, grp = tid / 16;
    const int t = blockIdx.x, h = blockIdx.y, D = p.head_dim;
    const int kh = h / (p.heads / p.kv_heads);
    const int b = reinterpret_cast<const int*>(p.tiles)[t];
    const KvRows kvr(p, b);
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const int qi = t - qbeg;
    const int visible = p.causal ? kv_len - q_len + qi + 1 : kv_len;
    const int first = af_first_key(p, visible);  // keys first .. visible - 1
    const T* Qrow = reinterpret_cast<const T*>(p.q) + q_at(p, t, h);
    const T* K = reinterpret_cast<const T*>(p.k);
    const T* V = reinterpret_cast<const T*>(p.v);
    for (int d = tid; d < D; d += WIDE_THREADS) {
        float x = af_to_float(Qrow[d]);
        if (ROPE && p.q_pos) x = rope_elem_at(p, Qrow, d, x, [&](int pair) { return af_qpos(p, t, pair); });
        sq[d] = x * p.scale_log2;
    }
    __syncthreads();
    float acc[WIDE_EP];
#pragma unroll
    for (int i = 0; i < WIDE_EP; ++i) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int j0 = first; j0 < visible; j0 += WIDE_THREADS / 16) {
        const int j = j0 + grp;
        float sc = 0.f;
        if (j < visible) {
            const long slot = kvr(j);
            const T* krow = K + slot * p.k_stride + (long)kh * D;
            const int kp = (ROPE && p.k_pos) ? reinterpret_cast<const int*>(p.k_pos)[slot] : AF_ROTATED;
            if (ROPE && kp != AF_ROTATED) {
                for (int d = lane; d < D; d += 16) sc += sq[d] * rope_elem(p, krow, d, af_to_float(krow[d]), kp);
            } else {
                // Kept free of the rotation so the compiler unrolls it and keeps loads in flight.
#pragma unroll 8
                for (int d = lane; d < D; d += 16) sc += sq[d] * af_to_float(krow[d]);
            }
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) sc += af_shfl_xor(sc, o);
        if (lane == 0) ss[grp] = j < visible ? af_cap2(sc, p.softcap_log2) : -INFINITY;
        __syncthreads();
        float cm = -INFINITY;
#pragma unroll
        for (int g = 0; g < WIDE_THREADS / 16; ++g) cm = fmaxf(cm, ss[g]);
        const float mnew = fmaxf(m, cm);  // finite: key j0 is visible
        const float corr = exp2f(m - mnew);
        l *= corr;
#pragma unroll
        for (int i = 0; i < WIDE_EP; ++i) acc[i] *= corr;
        // acc += w V over the 16 keys, WIDE_VU rows loaded before any is used: one key at a
        // time, every V row waited out a full L2/DRAM latency (the loop was latency-bound).
        const int ng = min(WIDE_THREADS / 16, visible - j0);
        for (int g0 = 0; g0 < ng; g0 += WIDE_VU) {
            float vv[WIDE_VU][WIDE_EP], w[WIDE_VU];
#pragma unroll
            for (int u = 0; u < WIDE_VU; ++u) {
                const int g = g0 + u;
                const bool ok = g < ng;
                w[u] = ok ? exp2f(ss[g] - mnew) : 0.f;
                const T* vrow = V + kvr(j0 + (ok ? g : 0)) * p.v_stride + (long)kh * D;
#pragma unroll
                for (int i = 0; i < WIDE_EP; ++i) {
                    const int d = tid + i * WIDE_THREADS;
                    vv[u][i] = (ok && d < D) ? af_to_float(vrow[d]) : 0.f;
                }
            }
#pragma unroll
            for (int u = 0; u < WIDE_VU; ++u) {
                l += w[u];
#pragma unroll
                for (int i = 0; i < WIDE_EP; ++i) acc[i] += w[u] * vv[u][i];
            }
        }
        m = mnew;
        __syncthreads();
    }
    T* O = reinterpret_cast<T*>(p.out) + o_at(p, t, h);
    const float denom = l + af_sink_term(p.sinks, h, m);
    const float inv = 1.f / denom;
    if (tid == 0) af_store_lse(p.lse, (long)t * p.heads + h, m, l, p.sinks, h);
#pragma unroll
    for (int i = 0; i < WIDE_EP; ++i) {
        const int d = tid + i * WIDE_THREADS;
        if (d < D) O[d] = af_from_float<T>(acc[i] * inv);
    }
}
