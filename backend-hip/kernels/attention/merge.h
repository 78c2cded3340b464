// Split-K merge (decode with several splits, both the vector and the matrix-core kernels).
#pragma once
#include "common.h"

// One block per (query row, head): out = sum_s w_s acc_s / sum_s w_s l_s, w_s = 2^(m_s - max m).
template <typename T> AF_DEVICE void attn_merge_body(const MergeParams& p) {
    const long row = blockIdx.x;
    const float* part = reinterpret_cast<const float*>(p.part) + row * p.splits * (p.head_dim + 2);
    float M = -INFINITY;
    for (int s = 0; s < p.splits; ++s) M = fmaxf(M, part[s * (p.head_dim + 2)]);
    const float base = M == -INFINITY ? 0.f : M;
    for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) {
        float L = 0.f, A = 0.f;
        for (int s = 0; s < p.splits; ++s) {
            const float* ps = part + s * (p.head_dim + 2);
            const float w = exp2f(ps[0] - base);
            L += ps[1] * w;
            A += ps[2 + c] * w;
        }
        const float denom = L + af_sink_term(p.sinks, row % p.heads, base);
        reinterpret_cast<T*>(p.out)[row / p.heads * p.o_stride + row % p.heads * p.head_dim + c] = af_from_float<T>(A / denom);
        if (c == 0) af_store_lse(p.lse, row, base, L, p.sinks, (int)(row % p.heads));
    }
}

// The merge folded into a split-K decode (p.counters set): every block of an (entry, kv head,
// row chunk) writes its partials, fences them and counts itself in; the last of the p.splits
// blocks merges them into `out` as attn_merge would (reading the others' partials past L1) and
// puts the counter back to 0, so the next launch, or a replayed graph, finds it zeroed. Called
// by every thread of the block after its partials are written. `row_of(r)`: the partials' row of
// the block's row r; `out_of(r)`: its first element in out. One thread per (row, column pair),
// one pass over the splits with a running maximum, U (16) splits' loads in flight at a time (one
// block merges what attn_merge spreads over many: its loads must overlap).
template <typename T, int U = 16, typename RowF, typename OutF>
AF_DEVICE void split_merge_last(const AttnParams& p, int rows, int D, int tid, int nthreads, RowF row_of, OutF out_of) {
    __threadfence();
    __syncthreads();
    int arrived = 0;
    if (tid == 0) {
        int* ctr = reinterpret_cast<int*>(p.counters) + (long)(blockIdx.x / p.splits) * gridDim.y + blockIdx.y;
        arrived = atomicAdd(ctr, 1) + 1;
        if (arrived == p.splits) atomicExch(ctr, 0);
    }
    if (!__syncthreads_or(arrived == p.splits)) return;
    __threadfence();
    const int D2 = D / 2, W = D + 2;
    const float* partb = reinterpret_cast<const float*>(p.part);
    for (int idx = tid; idx < rows * D2; idx += nthreads) {
        const int r = idx / D2, c = (idx % D2) * 2;
        const float* part = partb + row_of(r) * p.splits * W;
        float M = -INFINITY, L = 0.f, A0 = 0.f, A1 = 0.f;
        for (int s0 = 0; s0 < p.splits; s0 += U) {
            float m[U], l[U];
            float2 a[U];
#pragma unroll
            for (int j = 0; j < U; ++j) {
                const float* ps = part + (s0 + j < p.splits ? s0 + j : s0) * W;
                m[j] = s0 + j < p.splits ? af_ld_coherent(ps) : -INFINITY;
                l[j] = af_ld_coherent(ps + 1);
                a[j] = af_ld_coherent2(ps + 2 + c);
            }
#pragma unroll
            for (int j = 0; j < U; ++j) {
                const float mn = fmaxf(M, m[j]);
                if (mn == -INFINITY) continue;  // nothing seen yet, or a split without keys
                const float f = exp2f(M - mn), w = exp2f(m[j] - mn);
                L = L * f + l[j] * w;
                A0 = A0 * f + a[j].x * w;
                A1 = A1 * f + a[j].y * w;
                M = mn;
            }
        }
        T* o = reinterpret_cast<T*>(p.out) + out_of(r) + c;
        if (c == 0) af_store_lse(p.lse, row_of(r), M, L, p.sinks, (int)(row_of(r) % p.heads));
        L += af_sink_term(p.sinks, (int)(row_of(r) % p.heads), M);
        o[0] = af_from_float<T>(A0 / L);
        o[1] = af_from_float<T>(A1 / L);
    }
}

// merge_states: partial attention states (output, log-sum-exp over disjoint keys) into the state
// over their union. One block per (token, head) row, a column pair per thread:
//   M = max_i lse_i, w_i = e^(lse_i - M), out = sum_i w_i out_i / sum_i w_i, lse = M + ln sum_i w_i.
// A state with lse -inf weighs nothing; all -inf: out 0, lse -inf; a NaN lse makes the row NaN.
AF_DEVICE af_ptr ms_out(const MergeStatesParams& p, int i) {
    switch (i) {
        case 0: return p.out0; case 1: return p.out1; case 2: return p.out2; case 3: return p.out3;
        case 4: return p.out4; case 5: return p.out5; case 6: return p.out6; default: return p.out7;
    }
}
AF_DEVICE af_ptr ms_lse(const MergeStatesParams& p, int i) {
    switch (i) {
        case 0: return p.lse0; case 1: return p.lse1; case 2: return p.lse2; case 3: return p.lse3;
        case 4: return p.lse4; case 5: return p.lse5; case 6: return p.lse6; default: return p.lse7;
    }
}
AF_DEVICE int ms_stride(const MergeStatesParams& p, int i) {
    switch (i) {
        case 0: return p.stride0; case 1: return p.stride1; case 2: return p.stride2; case 3: return p.stride3;
        case 4: return p.stride4; case 5: return p.stride5; case 6: return p.stride6; default: return p.stride7;
    }
}
// A thread per chunk of V columns of one row (V = 16 bytes of T when p.vec, else 2): the row's
// weights from its n lse (each chunk's thread reads them; they stay in L1), then one wide load
// per state, f32 accumulation, one wide store.
template <typename T, int V>
AF_DEVICE void merge_states_chunk(const MergeStatesParams& p, long row, int c) {
    const long t = row / p.heads;
    const int h = (int)(row % p.heads), D = p.head_dim;
    float w[MERGE_MAX_STATES];
    float M = -INFINITY;
    bool nan = false;
#pragma unroll
    for (int i = 0; i < MERGE_MAX_STATES; ++i) {
        w[i] = i < p.n ? reinterpret_cast<const float*>(ms_lse(p, i))[row] : -INFINITY;
        nan |= w[i] != w[i];
        M = fmaxf(M, w[i]);
    }
    float S = 0.f;
#pragma unroll
    for (int i = 0; i < MERGE_MAX_STATES; ++i) {
        w[i] = M == -INFINITY ? 0.f : expf(w[i] - M);
        S += w[i];
    }
    const float inv = nan ? NAN : (S > 0.f ? 1.f / S : 0.f);
    float a[V];
#pragma unroll
    for (int e = 0; e < V; ++e) a[e] = 0.f;
#pragma unroll
    for (int i = 0; i < MERGE_MAX_STATES; ++i) {
        if (i >= p.n) break;
        float x[V];
        af_load<V>(reinterpret_cast<const T*>(ms_out(p, i)) + t * ms_stride(p, i) + (long)h * D + c, x);
#pragma unroll
        for (int e = 0; e < V; ++e) a[e] += w[i] * x[e];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) a[e] *= inv;
    af_store<V>(reinterpret_cast<T*>(p.out) + t * p.o_stride + (long)h * D + c, a);
    if (p.lse && c == 0) reinterpret_cast<float*>(p.lse)[row] = nan ? NAN : (M == -INFINITY ? -INFINITY : M + logf(S));
}
template <typename T> AF_DEVICE void merge_states_body(const MergeStatesParams& p) {
    constexpr int VW = 16 / (int)sizeof(T);
    const int V = p.vec ? VW : 2;
    const int chunks = p.head_dim / V;
    const long gid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (long)p.rows * chunks) return;
    const long row = gid / chunks;
    const int c = (int)(gid % chunks) * V;
    if (p.vec) merge_states_chunk<T, VW>(p, row, c);
    else merge_states_chunk<T, 2>(p, row, c);
}