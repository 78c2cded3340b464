// Vector-unit decode (split-K flash-decoding): every dtype, AF_DECODE_SHAPES.
#pragma once
#include "common.h"
#include "merge.h"

// ------------------------------------------------------------------------------------------
// Decode (flash-decoding): one block of 128 threads per (entry, kv head, split, row chunk).
// The block's rows are the (query, head) pairs of one kv head's group: GQA heads share each K/V
// read. Three phases, so no step waits on the previous key (an online softmax would chain every
// key's update to the last):
//   1. logits: 8 groups of 16 lanes take every 8th key, KU keys at a time with all loads first;
//      a lane holds D/16 dims, 16-lane shuffles finish each dot product; logits go to shared.
//   2. per row, the max and sum of exp over the split's logits (block reduction).
//   3. P.V: the same groups accumulate weight * V rows, then merge through shared memory.
// With several splits the partial (max, sum, acc) goes to `part` and `attn_merge` combines them.
#define DC_GROUPS (DC_THREADS / 16)
#define DC_KU 4

// ROPE: 0 none, 1 queries only (hip-hybrid: the key path's registers are not spent), 2 queries
// and cached keys (hip-fused).
template <typename T, int DMAX, int RMAX, int ROPE>
AF_DEVICE void decode_body(const AttnParams& p) {
    constexpr int EP = DMAX / 16;
    constexpr int S_WORDS = RMAX * DC_MAXK;
    constexpr int A_WORDS = DC_GROUPS * RMAX * DMAX;
    __shared__ float smem[S_WORDS > A_WORDS ? S_WORDS : A_WORDS];
    __shared__ float sRed[DC_THREADS / 16][RMAX];
    __shared__ float sMax[RMAX], sSum[RMAX];
    float* sS = smem;    // [RMAX][DC_MAXK] logits, then weights
    float* sAcc = smem;  // [DC_GROUPS][RMAX][DMAX] after phase 3

    const int tid = threadIdx.x, lane = tid % 16, grp = tid / 16;
    const int kvh = p.kv_heads, G = p.heads / kvh;
    const int b = blockIdx.x / (kvh * p.splits);
    const KvRows kvr(p, b);
    const int kh = (blockIdx.x / p.splits) % kvh;
    const int split = blockIdx.x % p.splits;
    const int r0 = blockIdx.y * p.rows_per_block;
    const int D = p.head_dim, epd = D / 16;
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const int rows = min(RMAX, q_len * G - r0);
    if (rows <= 0) return;
    const T* Q = reinterpret_cast<const T*>(p.q);
    const T* K = reinterpret_cast<const T*>(p.k);
    const T* V = reinterpret_cast<const T*>(p.v);

    float q[RMAX][EP];
    int limit[RMAX], first[RMAX];  // row r sees keys first[r] .. limit[r] - 1
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        const int rr = r0 + (r < rows ? r : 0), qi = rr / G, h = kh * G + rr % G;
        limit[r] = r < rows ? (p.causal ? kv_len - q_len + qi + 1 : kv_len) : 0;
        first[r] = af_first_key(p, limit[r]);
        const T* src = Q + q_at(p, qbeg + qi, h) + lane * epd;
#pragma unroll
        for (int e = 0; e < EP; ++e) q[r][e] = 0.f;
        if (ROPE >= 1 && p.q_pos) {
            // rotated below, through shared memory
        } else if (epd == EP) {
            af_load<EP>(src, q[r]);
        } else {
#pragma unroll
            for (int e = 0; e < EP; ++e)
                if (e < epd) q[r][e] = af_to_float(src[e]);
        }
    }
    if (ROPE >= 1 && p.q_pos) {
        // Every group holds a copy of the block's query rows: rotate each row once into shared
        // memory (one cos/sin per pair), then each thread takes its dims from there.
        __shared__ float sQr[RMAX * DMAX];
        auto qrow = [&](int r) {
            const int rr = r0 + r, qi = rr / G, h = kh * G + rr % G;
            return Q + q_at(p, qbeg + qi, h);
        };
        rope_rows<T>(
            p, rows, D, tid, DC_THREADS, qrow,
            [&](int r, int k) { return af_qpos(p, qbeg + (r0 + r) / G, k); },
            [&](int r, int d, float x) { sQr[r * DMAX + d] = x; });
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RMAX; ++r)
#pragma unroll
            for (int e = 0; e < EP; ++e)
                if (e < epd) q[r][e] = sQr[(r < rows ? r : 0) * DMAX + lane * epd + e];
    }
    // The block's keys, kv_beg .. kv_end - 1 (a sliding window starts past 0), cut into p.splits.
    int kv_end = 0, kv_beg = kv_len;
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        kv_end = max(kv_end, limit[r]);
        if (r < rows) kv_beg = min(kv_beg, first[r]);
    }
    const int chunk = (kv_len - kv_beg + p.splits - 1) / p.splits;
    const int s0 = kv_beg + split * chunk, s1 = min(kv_end, s0 + chunk);
    const int n = max(0, s1 - s0);

    // Phase 1: logits. Every lane runs the same iterations (the shuffles need the whole warp).
    for (int base = 0; base < n; base += DC_KU * DC_GROUPS) {
        float kv[DC_KU][EP];
#pragma unroll
        for (int u = 0; u < DC_KU; ++u) {
            const int j = base + grp + u * DC_GROUPS;
#pragma unroll
            for (int e = 0; e < EP; ++e) kv[u][e] = 0.f;
            if (j < n) {
                const long off = kvr(s0 + j) * p.k_stride + (long)kh * D + lane * epd;
                if (epd == EP) {
                    af_load<EP>(K + off, kv[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < EP; ++e)
                        if (e < epd) kv[u][e] = af_to_float(K[off + e]);
                }
            }
        }
        if (ROPE >= 2 && p.k_pos) {
            // hip-fused: every cached key is rotated here, for every query block that reads it.
#pragma unroll
            for (int u = 0; u < DC_KU; ++u) {
                const int j = base + grp + u * DC_GROUPS;
                if (j >= n) continue;
                const long slot = kvr(s0 + j);
                const int pos = reinterpret_cast<const int*>(p.k_pos)[slot];
                if (pos == AF_ROTATED) continue;
                const T* krow_ptr = K + slot * p.k_stride + (long)kh * D;
#pragma unroll
                for (int e = 0; e < EP; ++e)
                    if (e < epd) kv[u][e] = rope_elem(p, krow_ptr, lane * epd + e, kv[u][e], pos);
            }
        }
#pragma unroll
        for (int u = 0; u < DC_KU; ++u) {
            const int j = base + grp + u * DC_GROUPS;
#pragma unroll
            for (int r = 0; r < RMAX; ++r) {
                float sc = 0.f;
#pragma unroll
                for (int e = 0; e < EP; ++e) sc += q[r][e] * kv[u][e];
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) sc += af_shfl_xor(sc, o);
                if (lane == 0 && j < n) sS[r * DC_MAXK + j] = (s0 + j < limit[r] && s0 + j >= first[r]) ? af_logit2(sc, p.scale_log2, p.softcap_log2) : -INFINITY;
            }
        }
    }
    __syncthreads();
    // Phase 2: per row max, then weights and their sum.
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        float mx = -INFINITY;
        for (int j = tid; j < n; j += DC_THREADS) mx = fmaxf(mx, sS[r * DC_MAXK + j]);
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, af_shfl_xor(mx, o));
        if (lane == 0) sRed[grp][r] = mx;
    }
    __syncthreads();
    if (tid < RMAX) {
        float mx = -INFINITY;
        for (int g = 0; g < DC_GROUPS; ++g) mx = fmaxf(mx, sRed[g][tid]);
        sMax[tid] = mx;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        const float base = sMax[r] == -INFINITY ? 0.f : sMax[r];
        float sum = 0.f;
        for (int j = tid; j < n; j += DC_THREADS) {
            const float w = exp2f(sS[r * DC_MAXK + j] - base);
            sS[r * DC_MAXK + j] = w;
            sum += w;
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) sum += af_shfl_xor(sum, o);
        if (lane == 0) sRed[grp][r] = sum;
    }
    __syncthreads();
    if (tid < RMAX) {
        float sum = 0.f;
        for (int g = 0; g < DC_GROUPS; ++g) sum += sRed[g][tid];
        sSum[tid] = sum;
    }
    // Phase 3: acc = sum_j w_j V_j, KU rows of V in flight per group.
    float acc[RMAX][EP];
#pragma unroll
    for (int r = 0; r < RMAX; ++r)
#pragma unroll
        for (int e = 0; e < EP; ++e) acc[r][e] = 0.f;
    for (int base = grp; base < n; base += DC_KU * DC_GROUPS) {
        float vv[DC_KU][EP];
#pragma unroll
        for (int u = 0; u < DC_KU; ++u) {
            const int j = base + u * DC_GROUPS;
#pragma unroll
            for (int e = 0; e < EP; ++e) vv[u][e] = 0.f;
            if (j < n) {
                const long off = kvr(s0 + j) * p.v_stride + (long)kh * D + lane * epd;
                if (epd == EP) {
                    af_load<EP>(V + off, vv[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < EP; ++e)
                        if (e < epd) vv[u][e] = af_to_float(V[off + e]);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < DC_KU; ++u) {
            const int j = base + u * DC_GROUPS;
            if (j >= n) continue;
#pragma unroll
            for (int r = 0; r < RMAX; ++r) {
                const float w = sS[r * DC_MAXK + j];
#pragma unroll
                for (int e = 0; e < EP; ++e) acc[r][e] += w * vv[u][e];
            }
        }
    }
    __syncthreads();  // sS is reused as sAcc below
#pragma unroll
    for (int r = 0; r < RMAX; ++r)
#pragma unroll
        for (int e = 0; e < EP; ++e) sAcc[(grp * RMAX + r) * DMAX + lane * EP + e] = acc[r][e];
    __syncthreads();
    for (int idx = tid; idx < rows * D; idx += DC_THREADS) {
        const int r = idx / D, c = idx % D;
        const int ln = c / epd, e = c % epd;  // which lane held dim c, and where
        float A = 0.f;
        for (int g = 0; g < DC_GROUPS; ++g) A += sAcc[(g * RMAX + r) * DMAX + ln * EP + e];
        const int rr = r0 + r, qi = rr / G, h = kh * G + rr % G;
        const long row = (long)(qbeg + qi) * p.heads + h;
        if (p.splits == 1) {
            const float denom = sSum[r] + af_sink_term(p.sinks, h, sMax[r]);
            reinterpret_cast<T*>(p.out)[o_at(p, qbeg + qi, h) + c] = af_from_float<T>(A / denom);
            if (c == 0) af_store_lse(p.lse, row, sMax[r], sSum[r], p.sinks, h);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (D + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = sMax[r]; part[1] = sSum[r]; }
        }
    }
    if (p.splits > 1 && p.counters)
        split_merge_last<T>(
            p, rows, D, tid, DC_THREADS, [&](int r) { const int rr = r0 + r; return (long)(qbeg + rr / G) * p.heads + kh * G + rr % G; },
            [&](int r) { const int rr = r0 + r; return o_at(p, qbeg + rr / G, kh * G + rr % G); });
}
