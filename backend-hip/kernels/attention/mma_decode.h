#pragma once
#include "mma_common.h"
#include "merge.h"

// ------------------------------------------------------------------------------------------
// Decode on matrix cores (split-K, flash-decoding): one block of MMA_GROUPS groups per (batch
// entry, kv head, split, chunk of 16 rows). The rows are the (query, head) pairs of one kv
// head's GQA group, so every K/V byte is read once for all of them; rows past the group are
// zeros (the matrix instruction's 16 rows cost nothing extra: decode is bound by K/V reads).
// The split's keys go through shared memory in tiles of MMA_DC_BC, p.stages deep (the plan picks
// the depth from the device's shared memory: 3 on Hopper and A100, where the next two tiles load
// while this one is used; fewer where 99 KiB per block is the limit; 1 on AMD, whose copies are
// synchronous); group w takes keys 16w..16w+15 of each tile with its own online softmax, and the
// groups merge through shared memory at the end (one stage is enough room for that merge). One
// split writes `out`; several write (max, sum, unnormalised acc) partials for attn_merge, as
// decode_body. Head dims 64 and 128 (dynamic shared memory: 16 + 2 x MMA_DC_BC x stages rows
// of DM + MMA_PAD 16-bit elements; the plan computes the same).

// The depth is a template parameter (a run-time depth costs 5-6 % at B=16..64 on the H200:
// the stage index becomes a division and the pipeline's waits a branch); decode_mma_body below
// dispatches on p.stages once per block.
template <typename T, int DM, bool QROPE, int STAGES>
AF_DEVICE void decode_mma_stages(const AttnParams& p) {
    constexpr bool BF16 = MmaIsBf16<T>::value;
    constexpr int LD = DM + MMA_PAD, CH = DM / 8, BC = MMA_DC_BC;
    constexpr int stages = STAGES;
    constexpr int OF = DM / AF_MMA_ON;
    extern __shared__ __align__(16) unsigned short af_mma_smem[];
    unsigned short* sQ = af_mma_smem;               // [16][LD]
    unsigned short* sKV = sQ + 16 * LD;              // [stages][K, V][BC][LD]

    const int tid = threadIdx.x, w = tid / AF_WARP;
    const int kvh = p.kv_heads, G = p.heads / kvh;
    const int b = blockIdx.x / (kvh * p.splits);
    const KvRows kvr(p, b);
    const int kh = (blockIdx.x / p.splits) % kvh;
    const int split = blockIdx.x % p.splits;
    const int r0 = blockIdx.y * 16;
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const int rows = min(16, q_len * G - r0);
    if (rows <= 0) return;
    const unsigned short* K = reinterpret_cast<const unsigned short*>(p.k);
    const unsigned short* V = reinterpret_cast<const unsigned short*>(p.v);
    auto qrow = [&](int r) { const int rr = r0 + r; return (long)(qbeg + rr / G) * p.heads + kh * G + rr % G; };  // partials' row
    auto qat = [&](int r) { const int rr = r0 + r; return q_at(p, qbeg + rr / G, kh * G + rr % G); };

    if (QROPE && p.q_pos) {
        const T* Qt = reinterpret_cast<const T*>(p.q);
        rope_rows<T>(
            p, rows, DM, tid, MMA_THREADS, [&](int r) { return Qt + qat(r); },
            [&](int r, int k) { return af_qpos(p, qbeg + (r0 + r) / G, k); },
            [&](int r, int d, float x) { sQ[r * LD + d] = af_from_float<T>(x).x; });
        for (int i = rows * DM + tid; i < 16 * DM; i += MMA_THREADS) sQ[(i / DM) * LD + i % DM] = 0;
    } else {
        const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
        for (int i = tid; i < 16 * CH; i += MMA_THREADS) {
            const int r = i / CH, c = (i % CH) * 8;
            af_cp_async16(sQ + r * LD + c, Q + qat(min(r, rows - 1)) + c, r < rows);
        }
    }
    // This split's keys: a multiple of the tile, up to the last key any row sees.
    // (A sliding window starts at the first key of the block's earliest query.)
    int kv_end = 0;
    for (int r = 0; r < rows; ++r) kv_end = max(kv_end, p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len);
    const int kv_beg = af_first_key(p, p.causal ? kv_len - q_len + r0 / G + 1 : kv_len);
    const int chunk = (((kv_len - kv_beg + p.splits - 1) / p.splits) + BC - 1) / BC * BC;
    const int s0 = kv_beg + split * chunk, s1 = min(kv_end, s0 + chunk);
    const int ntiles = s1 > s0 ? (s1 - s0 + BC - 1) / BC : 0;
    auto load_tile = [&](int j) {
        unsigned short* dK = sKV + (j % stages) * 2 * BC * LD;
        unsigned short* dV = dK + BC * LD;
        static_assert(BC * CH % MMA_THREADS == 0, "whole chunks per thread");
        kvr.with_rows([&](auto row) {
#pragma unroll
            for (int it = 0; it < BC * CH / MMA_THREADS; ++it) {
                const int i = tid + it * MMA_THREADS, r = i / CH, c = (i % CH) * 8;
                const int key = s0 + j * BC + r;
                const bool ok = key < s1;
                const long slot = ok ? row(key) : 0, col = ok ? (long)kh * DM + c : 0;
                af_cp_async16(dK + r * LD + c, K + slot * p.k_stride + col, ok);
                af_cp_async16(dV + r * LD + c, V + slot * p.v_stride + col, ok);
            }
        });
    };
    for (int st = 0; st + 1 < stages; ++st) {
        if (st < ntiles) load_tile(st);
        af_cp_async_commit();
    }

    float o[OF][4];
#pragma unroll
    for (int f = 0; f < OF; ++f) o[f][0] = o[f][1] = o[f][2] = o[f][3] = 0.f;
    float m[AF_MMA_SLOTS], l[AF_MMA_SLOTS];
    int lim[AF_MMA_SLOTS], lo[AF_MMA_SLOTS];
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        m[sl] = -INFINITY;
        l[sl] = 0.f;
        const int r = af_mma_row(sl);
        const int end = p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len;
        lim[sl] = r < rows ? min(s1, end) : 0;
        lo[sl] = af_first_key(p, end);
    }
    for (int j = 0; j < ntiles; ++j) {
        if (j + stages - 1 < ntiles) load_tile(j + stages - 1);
        af_cp_async_commit();
        af_cp_async_wait<STAGES - 1>();  // tile j (and the query rows) have landed
        __syncthreads();
        const unsigned short* tK = sKV + (j % stages) * 2 * BC * LD + 16 * w * LD;
        const unsigned short* tV = tK + BC * LD;
        const int k0 = s0 + j * BC + 16 * w;  // this group's 16 keys
        float s[16 / AF_MMA_SN][4];
#pragma unroll
        for (int f = 0; f < 16 / AF_MMA_SN; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = 0.f;
#pragma unroll
        for (int kt = 0; kt < DM / 16; ++kt) {
            unsigned qf[AF_MMA_QW], kf[AF_MMA_KW];
            af_mma_load_q(qf, sQ, LD, kt);
            af_mma_load_k(kf, tK, LD, kt);
            af_mma_qk16<BF16>(s, qf, kf);
        }
        float corr[AF_MMA_SLOTS];
        mma_softmax_step<16 / AF_MMA_SN>(s, m, l, lim, lo, true, k0, p.scale_log2, p.softcap_log2, corr);
        unsigned pf[AF_MMA_PW];
        af_mma_pack_p<BF16>(pf, s);
#pragma unroll
        for (int f = 0; f < OF; ++f) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[f][e] *= corr[af_mma_slot(e)];
        }
#pragma unroll
        for (int dt = 0; dt < DM / 16; ++dt) {
            unsigned vf[AF_MMA_VW];
            af_mma_load_v(vf, tV + dt * 16, LD);
            af_mma_pv16<BF16>(&o[dt * (16 / AF_MMA_ON)], pf, vf);
        }
        __syncthreads();  // every group is done with this stage before it is loaded again
    }
    af_cp_async_wait_all();

    // Merge the groups: (max, sum, acc) per row through shared memory (the K/V stages).
    float* sM = reinterpret_cast<float*>(sKV);       // [MMA_GROUPS][16]
    float* sL = sM + MMA_GROUPS * 16;                // [MMA_GROUPS][16]
    float* sO = sL + MMA_GROUPS * 16;                // [MMA_GROUPS][16][DM]
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        const int r = af_mma_row(sl);
        const float lsum = af_mma_rowsum(l[sl]);
        sM[w * 16 + r] = m[sl];
        sL[w * 16 + r] = lsum;
#pragma unroll
        for (int f = 0; f < OF; ++f) {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (af_mma_slot(e) == sl) sO[(w * 16 + r) * DM + f * AF_MMA_ON + af_mma_col(e)] = o[f][e];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < rows * DM; idx += MMA_THREADS) {
        const int r = idx / DM, c = idx % DM;
        float M = -INFINITY;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) M = fmaxf(M, sM[g * 16 + r]);
        const float base = M == -INFINITY ? 0.f : M;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) {
            const float f = exp2f(sM[g * 16 + r] - base);
            L += sL[g * 16 + r] * f;
            A += sO[(g * 16 + r) * DM + c] * f;
        }
        const long row = qrow(r);
        if (p.splits == 1) {
            const int rr = r0 + r;
            const float denom = L + af_sink_term(p.sinks, kh * G + rr % G, M);
            reinterpret_cast<T*>(p.out)[o_at(p, qbeg + rr / G, kh * G + rr % G) + c] = af_from_float<T>(A / denom);
            if (c == 0) af_store_lse(p.lse, row, M, L, p.sinks, kh * G + rr % G);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (DM + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = M; part[1] = L; }
        }
    }
    if (p.splits > 1 && p.counters)
        split_merge_last<T>(p, rows, DM, tid, MMA_THREADS, qrow, [&](int r) { const int rr = r0 + r; return o_at(p, qbeg + rr / G, kh * G + rr % G); });
}

template <typename T, int DM, bool QROPE>
AF_DEVICE void decode_mma_body(const AttnParams& p) {
#if defined(AF_NVIDIA)
    static_assert(MMA_DC_MAX_STAGES == 3, "one instance per depth the plan may pick");
    if (p.stages >= 3) decode_mma_stages<T, DM, QROPE, 3>(p);
    else if (p.stages == 2) decode_mma_stages<T, DM, QROPE, 2>(p);
    else decode_mma_stages<T, DM, QROPE, 1>(p);
#else
    // AMD's copies are synchronous: the plan always picks one stage.
    decode_mma_stages<T, DM, QROPE, 1>(p);
#endif
}
