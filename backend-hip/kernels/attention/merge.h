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
        reinterpret_cast<T*>(p.out)[row / p.heads * p.o_stride + row % p.heads * p.head_dim + c] = af_from_float<T>(A / (L + af_sink_term(p.sinks, row % p.heads, base)));
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
        L += af_sink_term(p.sinks, (int)(row_of(r) % p.heads), M);
        o[0] = af_from_float<T>(A0 / L);
        o[1] = af_from_float<T>(A1 / L);
    }
}
