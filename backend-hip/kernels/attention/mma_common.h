// Matrix-core attention (f16/bf16) on the af_mma_* fragment operations of include/af_vendor.h
// (NVIDIA mma.sync + ldmatrix; AMD gfx90a MFMA; other AMD targets emulated): tile sizes and the
// online-softmax step shared by the prefill (mma_prefill.h) and decode (mma_decode.h) kernels.
#pragma once
#include "common.h"

#define MMA_THREADS (MMA_GROUPS * AF_WARP)

// Tile sizes per head dim, from the contract (the plan sizes shared memory from the same limits).
//   MT: 16-row query tiles per group. Two up to head_dim 128: every key and value fragment
//       read from shared memory serves two products (register blocking, as FlashAttention-2's
//       128-row tiles); one at 256, where two would not fit in registers.
//   BC: keys per tile; smaller on AMD, whose blocks get 64 KiB of LDS.
//       (On the H100, 32-key tiles at head_dim 128 measured 1-4 % slower than 64 at S >= 4096.)
template <int DM> struct MmaTile {
    static_assert(DM == 64 || DM == 128 || DM == 256, "matrix-core head dims: AF_MMA_PREFILL_DIMS");
    static constexpr int MT = DM == 64 ? MMA_PF_MT_D64 : DM == 128 ? MMA_PF_MT_D128 : MMA_PF_MT_D256;
    static constexpr int BR = MMA_GROUPS * 16 * MT;   // query rows per block
    static constexpr int BC = DM == 64 ? MMA_PF_BC_D64 : DM == 128 ? MMA_PF_BC_D128 : MMA_PF_BC_D256;
    static constexpr int LD = DM + MMA_PAD;           // row stride, 16-bit elements (conflict-free ldmatrix)
    static constexpr bool QREG = DM * MT <= 128;      // query fragments kept in registers
};

// One online-softmax step for one 16-row tile of this group over NF score fragments whose first
// key is key0: scale to base 2, mask keys at or past the row's `lim` or before its `lo` (when
// `masked`; lo: the first key of a sliding window, else 0), update the
// row maxima `m` and this lane's partial sums `l`, turn the scores into probabilities in place,
// and leave in `corr` each row's factor for rescaling its accumulators. mma_softmax_step_at
// takes the key of element e of fragment f from key_at(f, e) (kernels that permute their keys),
// CAP: -1 tests softcap_log2 per score, 0 / 1 say once for the tile whether it is off / on;
// FAST: 2^x by af_exp2_ftz (probabilities below 2^-126 of the row's maximum flush to zero).
template <int NF, int CAP = -1, bool FAST = false, typename KeyAt>
AF_DEVICE void mma_softmax_step_at(float (*s)[4], float* m, float* l, const int* lim, const int* lo, bool masked, KeyAt key_at, float scale_log2, float softcap_log2, float* corr) {
    auto ex2 = [](float x) { return FAST ? af_exp2_ftz(x) : exp2f(x); };
    float mx[AF_MMA_SLOTS], base[AF_MMA_SLOTS];
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) mx[sl] = -INFINITY;
#pragma unroll
    for (int f = 0; f < NF; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int sl = af_mma_slot(e);
            float x = CAP < 0 ? af_logit2(s[f][e], scale_log2, softcap_log2) : CAP ? softcap_log2 * tanhf(s[f][e] * scale_log2) : s[f][e] * scale_log2;
            const int key = key_at(f, e);
            if (masked && (key >= lim[sl] || key < lo[sl])) x = -INFINITY;
            s[f][e] = x;
            mx[sl] = fmaxf(mx[sl], x);
        }
    }
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        const float mn = fmaxf(m[sl], af_mma_rowmax(mx[sl]));
        base[sl] = mn == -INFINITY ? 0.f : mn;
        corr[sl] = ex2(m[sl] - base[sl]);
        m[sl] = mn;
        l[sl] *= corr[sl];
    }
#pragma unroll
    for (int f = 0; f < NF; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int sl = af_mma_slot(e);
            s[f][e] = ex2(s[f][e] - base[sl]);
            l[sl] += s[f][e];
        }
    }
}

template <int NF>
AF_DEVICE void mma_softmax_step(float (*s)[4], float* m, float* l, const int* lim, const int* lo, bool masked, int key0, float scale_log2, float softcap_log2, float* corr) {
    mma_softmax_step_at<NF>(s, m, l, lim, lo, masked, [key0](int f, int e) { return key0 + f * AF_MMA_SN + af_mma_col(e); }, scale_log2, softcap_log2, corr);
}
