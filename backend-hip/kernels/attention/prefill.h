// Vector-unit prefill (FlashAttention-2 tiles in f32): every dtype, head-dim buckets
// AF_PREFILL_DIMS; the matrix-core kernels (mma_prefill.h) take f16/bf16 where they can.
#pragma once
#include "common.h"

// ------------------------------------------------------------------------------------------
// Prefill: one block of 256 threads per (64-query tile, head). Threads form a 16 x 16 grid; a
// thread owns query rows 4*ty..4*ty+3 and key columns tx + 16*j of each 64-key tile, and output
// columns tx + 16*j of its rows. Scores are accumulated over head_dim in chunks of 16 staged in
// shared memory; V is staged 16 rows at a time in the same space.
#define PF_DK 16
#define PF_LD (PF_DK + 4)

template <typename T, int DMAX, bool ROPE>
AF_DEVICE void prefill_body(const AttnParams& p) {
    constexpr int EP = DMAX / 16;  // output columns per thread
    __shared__ float sP[PF_BR][PF_BC + 4];
    __shared__ float sBuf[(2 * PF_BR * PF_LD > 16 * (DMAX + 4)) ? 2 * PF_BR * PF_LD : 16 * (DMAX + 4)];
    float (*sQ)[PF_LD] = reinterpret_cast<float (*)[PF_LD]>(sBuf);
    float (*sK)[PF_LD] = reinterpret_cast<float (*)[PF_LD]>(sBuf + PF_BR * PF_LD);
    float* sV = sBuf;  // [16][DMAX + 4] during P.V

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int b = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x];
    const KvRows kvr(p, b);
    const int q0 = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int D = p.head_dim;
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const T* Q = reinterpret_cast<const T*>(p.q);
    const T* K = reinterpret_cast<const T*>(p.k);
    const T* V = reinterpret_cast<const T*>(p.v);
    long qs = p.q_stride;  // elements between query rows of Q (out's once Q is rotated into out)
    if (ROPE && p.q_pos) {
        // Rotate this block's query tile once, into its own rows of `out` (no other block
        // touches them, and the final store comes after every read); the key loop reads Q
        // from there. One rotation per query and head, however many key tiles follow.
        T* O = reinterpret_cast<T*>(p.out);
        const int rows = min(PF_BR, q_len - q0);
        rope_rows<T>(
            p, rows, D, tid, 256, [&](int r) { return Q + q_at(p, qbeg + q0 + r, h); }, [&](int r, int k) { return af_qpos(p, qbeg + q0 + r, k); },
            [&](int r, int d, float x) { O[o_at(p, qbeg + q0 + r, h) + d] = af_from_float<T>(x); });
        __syncthreads();
        Q = O;
        qs = p.o_stride;
    }

    float acc[4][EP];
    float m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int j = 0; j < EP; ++j) acc[i][j] = 0.f;
    }
    // Keys any row of this tile can see: causal rows see up to kv_len - q_len + row.
    const int last_row = min(q0 + PF_BR, q_len) - 1;
    const int kv_end = p.causal ? min(kv_len, kv_len - q_len + last_row + 1) : kv_len;

    // Under a sliding window, key tiles wholly before the first row's window are skipped.
    const int k_start = p.causal ? af_first_key(p, min(kv_len, kv_len - q_len + q0 + 1)) / PF_BC * PF_BC : 0;

    for (int k0 = k_start; k0 < kv_end; k0 += PF_BC) {
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
        // Staging: each thread loads 4 consecutive elements of one row of Q and of K.
        const int lr = tid / 4, lc = (tid % 4) * 4;
        const int qrow = q0 + lr, krow = k0 + lr;
        const T* qsrc = Q + (long)(qbeg + qrow) * qs + (long)h * D + lc;
        const T* ksrc = krow < kv_len ? K + kvr(krow) * p.k_stride + (long)kh * D + lc : nullptr;
        for (int d0 = 0; d0 < D; d0 += PF_DK) {
            __syncthreads();
            float tmp[4] = {0.f, 0.f, 0.f, 0.f};
            if (qrow < q_len) af_load<4>(qsrc + d0, tmp);
            sQ[lr][lc] = tmp[0]; sQ[lr][lc + 1] = tmp[1]; sQ[lr][lc + 2] = tmp[2]; sQ[lr][lc + 3] = tmp[3];
            float tk[4] = {0.f, 0.f, 0.f, 0.f};
            if (ksrc) af_load<4>(ksrc + d0, tk);
            if (ROPE && p.k_pos && ksrc) {
                const int pos = reinterpret_cast<const int*>(p.k_pos)[kvr(krow)];
                if (pos != AF_ROTATED) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) tk[i] = rope_elem(p, ksrc - lc, d0 + lc + i, tk[i], pos);
                }
            }
            sK[lr][lc] = tk[0]; sK[lr][lc + 1] = tk[1]; sK[lr][lc + 2] = tk[2]; sK[lr][lc + 3] = tk[3];
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < PF_DK; kk += 4) {
                float4 qa[4], kb[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) qa[i] = *reinterpret_cast<const float4*>(&sQ[ty * 4 + i][kk]);
#pragma unroll
                for (int j = 0; j < 4; ++j) kb[j] = *reinterpret_cast<const float4*>(&sK[tx + 16 * j][kk]);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        s[i][j] += qa[i].x * kb[j].x + qa[i].y * kb[j].y + qa[i].z * kb[j].z + qa[i].w * kb[j].w;
            }
        }
        // Online softmax, in base 2: scores scaled by scale * log2(e).
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int qi = q0 + ty * 4 + i;
            const int limit = p.causal ? kv_len - q_len + qi + 1 : kv_len;  // keys first .. limit - 1 visible
            const int first = af_first_key(p, limit);
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int kj = k0 + tx + 16 * j;
                s[i][j] = (kj < limit && kj >= first && kj < kv_len && qi < q_len) ? af_logit2(s[i][j], p.scale_log2, p.softcap_log2) : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, af_shfl_xor(mx, o));
            const float mnew = fmaxf(m[i], mx);
            const float base = mnew == -INFINITY ? 0.f : mnew;  // fully masked so far: weights 0
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float pj = exp2f(s[i][j] - base);
                sP[ty * 4 + i][tx + 16 * j] = pj;
                sum += pj;
            }
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) sum += af_shfl_xor(sum, o);
            const float corr = exp2f(m[i] - base);
            l[i] = l[i] * corr + sum;
            m[i] = mnew;
#pragma unroll
            for (int j = 0; j < EP; ++j) acc[i][j] *= corr;
        }
        // acc += P . V, V staged 16 rows at a time.
        for (int c0 = 0; c0 < PF_BC && k0 + c0 < kv_end; c0 += 16) {
            __syncthreads();
            for (int idx = tid * 4; idx < 16 * D; idx += 256 * 4) {
                const int r = idx / D, c = idx % D;
                float tv[4] = {0.f, 0.f, 0.f, 0.f};
                const int kr = k0 + c0 + r;
                if (kr < kv_len) af_load<4>(V + kvr(kr) * p.v_stride + (long)kh * D + c, tv);
                float* dst = sV + r * (DMAX + 4) + c;
                dst[0] = tv[0]; dst[1] = tv[1]; dst[2] = tv[2]; dst[3] = tv[3];
            }
            __syncthreads();
#pragma unroll
            for (int c = 0; c < 16; c += 4) {
                // P four columns at a time (one 16-byte load per row), V one value per column.
                float4 pc[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) pc[i] = *reinterpret_cast<const float4*>(&sP[ty * 4 + i][c0 + c]);
#pragma unroll
                for (int j = 0; j < EP; ++j) {
                    if (tx + 16 * j < D) {
                        const float* vc = sV + c * (DMAX + 4) + tx + 16 * j;
                        const float v0 = vc[0], v1 = vc[DMAX + 4], v2 = vc[2 * (DMAX + 4)], v3 = vc[3 * (DMAX + 4)];
#pragma unroll
                        for (int i = 0; i < 4; ++i) acc[i][j] += pc[i].x * v0 + pc[i].y * v1 + pc[i].z * v2 + pc[i].w * v3;
                    }
                }
            }
        }
        __syncthreads();
    }
    T* O = reinterpret_cast<T*>(p.out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int qi = q0 + ty * 4 + i;
        if (qi >= q_len) continue;
        const float denom = l[i] + af_sink_term(p.sinks, h, m[i]);
        const float inv = 1.f / denom;
        if (tx == 0) af_store_lse(p.lse, (long)(qbeg + qi) * p.heads + h, m[i], l[i], p.sinks, h);
        T* orow = O + o_at(p, qbeg + qi, h);
#pragma unroll
        for (int j = 0; j < EP; ++j)
            if (tx + 16 * j < D) orow[tx + 16 * j] = af_from_float<T>(acc[i][j] * inv);
    }
}
