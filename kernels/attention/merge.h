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
        reinterpret_cast<T*>(p.out)[row / p.heads * p.o_stride + row % p.heads * p.head_dim + c] = af_from_float<T>(A / L);
    }
}

// The merge folded into a split-K decode (p.counters set): every block of an (entry, kv head,
// row chunk) writes its partials, fences them and counts itself in; the last of the p.splits
// blocks merges them into `out` as attn_merge would (reading the others' partials past L1) and
// puts the counter back to 0, so the next launch, or a replayed graph, finds it zeroed. Called
// by every thread of the block after its partials are written. `row_of(r)`: the partials' row of
// the block's row r; `out_of(r)`: its first element in out.
template <typename T, typename RowF, typename OutF>
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
    const float* partb = reinterpret_cast<const float*>(p.part);
    for (int idx = tid; idx < rows * D; idx += nthreads) {
        const int r = idx / D, c = idx % D;
        const float* part = partb + row_of(r) * p.splits * (D + 2);
        float M = -INFINITY;
        for (int s = 0; s < p.splits; ++s) M = fmaxf(M, af_ld_coherent(part + s * (D + 2)));
        const float base = M == -INFINITY ? 0.f : M;
        float L = 0.f, A = 0.f;
        for (int s = 0; s < p.splits; ++s) {
            const float* ps = part + s * (D + 2);
            const float w = exp2f(af_ld_coherent(ps) - base);
            L += af_ld_coherent(ps + 1) * w;
            A += af_ld_coherent(ps + 2 + c) * w;
        }
        reinterpret_cast<T*>(p.out)[out_of(r) + c] = af_from_float<T>(A / L);
    }
}
