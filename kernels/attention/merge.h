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
