// Attention bodies: FlashAttention-2 style tiled prefill and split-K flash-decoding, both
// computing in f32 on the vector units (matrix-core prefill is a later issue). The K/V source is
// either a KV cache (contiguous or paged) or plain K/V tensors: `kv_row` turns (batch entry,
// token) into a row of the [rows, Hk, D] K/V array, so one kernel serves both. GQA by indexing:
// query head h reads kv head h / (H / Hk); nothing is replicated.
//
// Template flag ROPE: RoPE applied inside attention (hip-hybrid, hip-fused). Then `q_pos`
// (non-zero) rotates each query as it is loaded, and `k_pos` (non-zero, one int per cache slot)
// rotates each cached key whose slot holds a position (AF_ROTATED: stored rotated already).
// attention.hip stamps ROPE = false (hip-flash, no rope code at all), attention_rope.hip ROPE =
// true; they compile in parallel.
#pragma once
#include "af_common.h"

// Mirrors backend-hip/src/ops/attention.rs `AttnParams`.
struct AttnParams {
    af_ptr q, k, v, out;       // q/out [Tq, H, D]; k/v [rows, Hk, D]
    af_ptr q_off;              // int32 [B + 1] query row offsets
    af_ptr kv_len;             // int32 [B]
    af_ptr kv_base;            // int32 [B] first row of entry b (page_size == 0)
    af_ptr block_table;        // int32 [B, max_pages] (page_size > 0)
    af_ptr tiles;              // int32 [num_tiles, 2]: (entry, first query) per prefill block
    af_ptr part;               // f32 split-K partials [Tq, H, splits, D + 2]
    int heads, kv_heads, head_dim, page_size, max_pages, causal, splits, rows_per_block;
    float scale_log2;          // softmax scale * log2(e)
    int pad;
    af_ptr q_pos;              // ROPE: int32 [Tq] position of each query token (0: Q as given)
    af_ptr k_pos;              // ROPE: int32 [pool slots] position of each cached key (0: K as given)
    af_ptr inv_freq;           // ROPE: double [rotary_dim / 2]
    int rotary_dim, rope_inter;
    float rope_factor;         // cos/sin multiplier
    int pad2;
};

// Element d of a row rotated for position `pos`: x' = x cos + sign * partner * sin (the
// reference's pairing, rope.hip's angle). Dims >= rotary_dim pass through.
template <typename T>
AF_DEVICE float rope_elem(const AttnParams& p, const T* row, int d, float x, int pos) {
    if (d >= p.rotary_dim) return x;
    int pair, partner;
    float sign;
    if (p.rope_inter) {
        pair = d >> 1;
        partner = d ^ 1;
        sign = (d & 1) ? 1.f : -1.f;
    } else {
        const int half = p.rotary_dim >> 1;
        pair = d < half ? d : d - half;
        partner = d < half ? d + half : d - half;
        sign = d < half ? -1.f : 1.f;
    }
    float c, s;
    af_rope_cs((double)pos, reinterpret_cast<const double*>(p.inv_freq)[pair], p.rope_factor, &c, &s);
    return x * c + sign * af_to_float(row[partner]) * s;
}

// Rotates `rows` rows cooperatively: one cos/sin per (row, pair), both elements of the pair
// emitted by the thread that computed it (rope_elem computes each angle twice, and once more per
// thread that holds a copy of the row). Work item i < rows * D / 2 is pair i % (D / 2) of row
// i / (D / 2); items past rotary_dim / 2 copy two pass-through dims. `src(r)` is row r,
// `pos(r)` its position, `emit(r, d, x)` takes rotated element d (src and emit may be the same
// place: a pair is read before it is written, by one thread). Same arithmetic as rope_elem; FAST
// (f16/bf16 matrix-core kernels) takes sin/cos on the hardware path after the same f64 reduction.
template <typename T, bool FAST = false, typename Src, typename Pos, typename Emit>
AF_DEVICE void rope_rows(const AttnParams& p, int rows, int D, int tid, int nthreads, Src src, Pos pos, Emit emit) {
    const int half_d = D >> 1, half_r = p.rotary_dim >> 1;
    for (int i = tid; i < rows * half_d; i += nthreads) {
        const int r = i / half_d, k = i % half_d;
        const T* row = src(r);
        const bool rot = k < half_r;
        const int d0 = rot ? (p.rope_inter ? 2 * k : k) : p.rotary_dim + 2 * (k - half_r);
        const int d1 = rot ? (p.rope_inter ? 2 * k + 1 : k + half_r) : d0 + 1;
        const float x0 = af_to_float(row[d0]), x1 = af_to_float(row[d1]);
        if (rot) {
            float c, s;
            af_rope_cs<FAST>((double)pos(r), reinterpret_cast<const double*>(p.inv_freq)[k], p.rope_factor, &c, &s);
            emit(r, d0, x0 * c + (-1.f) * x1 * s);
            emit(r, d1, x1 * c + 1.f * x0 * s);
        } else {
            emit(r, d0, x0);
            emit(r, d1, x1);
        }
    }
}

AF_DEVICE long kv_row(const AttnParams& p, int b, int t) {
    if (p.page_size == 0) return (long)reinterpret_cast<const int*>(p.kv_base)[b] + t;
    const int* bt = reinterpret_cast<const int*>(p.block_table);
    return (long)bt[(long)b * p.max_pages + t / p.page_size] * p.page_size + t % p.page_size;
}

// ------------------------------------------------------------------------------------------
// Prefill: one block of 256 threads per (64-query tile, head). Threads form a 16 x 16 grid; a
// thread owns query rows 4*ty..4*ty+3 and key columns tx + 16*j of each 64-key tile, and output
// columns tx + 16*j of its rows. Scores are accumulated over head_dim in chunks of 16 staged in
// shared memory; V is staged 16 rows at a time in the same space.
#define PF_BR 64
#define PF_BC 64
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
    const int q0 = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int D = p.head_dim;
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const T* Q = reinterpret_cast<const T*>(p.q);
    const T* K = reinterpret_cast<const T*>(p.k);
    const T* V = reinterpret_cast<const T*>(p.v);
    const long krs = (long)p.kv_heads * D;  // K/V row stride
    if (ROPE && p.q_pos) {
        // Rotate this block's query tile once, into its own rows of `out` (no other block
        // touches them, and the final store comes after every read); the key loop reads Q
        // from there. One rotation per query and head, however many key tiles follow.
        T* O = reinterpret_cast<T*>(p.out);
        const int rows = min(PF_BR, q_len - q0);
        const int* qp = reinterpret_cast<const int*>(p.q_pos) + qbeg + q0;
        auto rowoff = [&](int r) { return ((long)(qbeg + q0 + r) * p.heads + h) * D; };
        rope_rows<T>(
            p, rows, D, tid, 256, [&](int r) { return Q + rowoff(r); }, [&](int r) { return qp[r]; },
            [&](int r, int d, float x) { O[rowoff(r) + d] = af_from_float<T>(x); });
        __syncthreads();
        Q = O;
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

    for (int k0 = 0; k0 < kv_end; k0 += PF_BC) {
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
        // Staging: each thread loads 4 consecutive elements of one row of Q and of K.
        const int lr = tid / 4, lc = (tid % 4) * 4;
        const int qrow = q0 + lr, krow = k0 + lr;
        const T* qsrc = Q + ((long)(qbeg + qrow) * p.heads + h) * D + lc;
        const T* ksrc = krow < kv_len ? K + kv_row(p, b, krow) * krs + (long)kh * D + lc : nullptr;
        for (int d0 = 0; d0 < D; d0 += PF_DK) {
            __syncthreads();
            float tmp[4] = {0.f, 0.f, 0.f, 0.f};
            if (qrow < q_len) af_load<4>(qsrc + d0, tmp);
            sQ[lr][lc] = tmp[0]; sQ[lr][lc + 1] = tmp[1]; sQ[lr][lc + 2] = tmp[2]; sQ[lr][lc + 3] = tmp[3];
            float tk[4] = {0.f, 0.f, 0.f, 0.f};
            if (ksrc) af_load<4>(ksrc + d0, tk);
            if (ROPE && p.k_pos && ksrc) {
                const int pos = reinterpret_cast<const int*>(p.k_pos)[kv_row(p, b, krow)];
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
            const int limit = p.causal ? kv_len - q_len + qi + 1 : kv_len;  // keys < limit visible
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int kj = k0 + tx + 16 * j;
                s[i][j] = (kj < limit && kj < kv_len && qi < q_len) ? s[i][j] * p.scale_log2 : -INFINITY;
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
                if (kr < kv_len) af_load<4>(V + kv_row(p, b, kr) * krs + (long)kh * D + c, tv);
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
        const float inv = 1.f / l[i];
        T* orow = O + ((long)(qbeg + qi) * p.heads + h) * D;
#pragma unroll
        for (int j = 0; j < EP; ++j)
            if (tx + 16 * j < D) orow[tx + 16 * j] = af_from_float<T>(acc[i][j] * inv);
    }
}


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
#define DC_THREADS 128
#define DC_GROUPS (DC_THREADS / 16)
#define DC_MAXK 1024  // keys per split at most (the host sizes splits so)
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
    const long krs = (long)kvh * D;

    float q[RMAX][EP];
    int limit[RMAX];
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        const int rr = r0 + (r < rows ? r : 0), qi = rr / G, h = kh * G + rr % G;
        limit[r] = r < rows ? (p.causal ? kv_len - q_len + qi + 1 : kv_len) : 0;
        const T* src = Q + ((long)(qbeg + qi) * p.heads + h) * D + lane * epd;
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
            return Q + ((long)(qbeg + qi) * p.heads + h) * D;
        };
        rope_rows<T>(
            p, rows, D, tid, DC_THREADS, qrow,
            [&](int r) { return reinterpret_cast<const int*>(p.q_pos)[qbeg + (r0 + r) / G]; },
            [&](int r, int d, float x) { sQr[r * DMAX + d] = x; });
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RMAX; ++r)
#pragma unroll
            for (int e = 0; e < EP; ++e)
                if (e < epd) q[r][e] = sQr[(r < rows ? r : 0) * DMAX + lane * epd + e];
    }
    int kv_end = 0;
#pragma unroll
    for (int r = 0; r < RMAX; ++r) kv_end = max(kv_end, limit[r]);
    const int chunk = (kv_len + p.splits - 1) / p.splits;
    const int s0 = split * chunk, s1 = min(kv_end, s0 + chunk);
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
                const long off = kv_row(p, b, s0 + j) * krs + (long)kh * D + lane * epd;
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
                const long slot = kv_row(p, b, s0 + j);
                const int pos = reinterpret_cast<const int*>(p.k_pos)[slot];
                if (pos == AF_ROTATED) continue;
                const T* krow_ptr = K + slot * krs + (long)kh * D;
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
                if (lane == 0 && j < n) sS[r * DC_MAXK + j] = (s0 + j < limit[r]) ? sc * p.scale_log2 : -INFINITY;
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
                const long off = kv_row(p, b, s0 + j) * krs + (long)kh * D + lane * epd;
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
            reinterpret_cast<T*>(p.out)[row * D + c] = af_from_float<T>(A / sSum[r]);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (D + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = sMax[r]; part[1] = sSum[r]; }
        }
    }
}


// ------------------------------------------------------------------------------------------
// Wide heads (head_dim > 256, up to WIDE_DMAX): one block of 256 threads per (query row, head).
// The query row (rotated as it is loaded under ROPE) sits in shared memory; 16 groups of 16
// lanes score 16 keys at a time (lanes over head dims, shuffles finish each dot product), then
// every thread folds those 16 keys into the online softmax for its D/256 output dims.
// `tiles` holds the batch entry of each query row.
#define WIDE_THREADS 256
#define WIDE_DMAX 4096
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
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const int qi = t - qbeg;
    const int visible = p.causal ? kv_len - q_len + qi + 1 : kv_len;
    const T* Qrow = reinterpret_cast<const T*>(p.q) + ((long)t * p.heads + h) * D;
    const T* K = reinterpret_cast<const T*>(p.k);
    const T* V = reinterpret_cast<const T*>(p.v);
    const int qpos = (ROPE && p.q_pos) ? reinterpret_cast<const int*>(p.q_pos)[t] : 0;
    for (int d = tid; d < D; d += WIDE_THREADS) {
        float x = af_to_float(Qrow[d]);
        if (ROPE && p.q_pos) x = rope_elem(p, Qrow, d, x, qpos);
        sq[d] = x * p.scale_log2;
    }
    __syncthreads();
    float acc[WIDE_EP];
#pragma unroll
    for (int i = 0; i < WIDE_EP; ++i) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int j0 = 0; j0 < visible; j0 += WIDE_THREADS / 16) {
        const int j = j0 + grp;
        float sc = 0.f;
        if (j < visible) {
            const long slot = kv_row(p, b, j);
            const T* krow = K + (slot * p.kv_heads + kh) * D;
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
        if (lane == 0) ss[grp] = j < visible ? sc : -INFINITY;
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
                const T* vrow = V + (kv_row(p, b, j0 + (ok ? g : 0)) * p.kv_heads + kh) * D;
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
    T* O = reinterpret_cast<T*>(p.out) + ((long)t * p.heads + h) * D;
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < WIDE_EP; ++i) {
        const int d = tid + i * WIDE_THREADS;
        if (d < D) O[d] = af_from_float<T>(acc[i] * inv);
    }
}

// Split-K merge: one block per (query row, head): out = sum_s w_s acc_s / sum_s w_s l_s,
// w_s = 2^(m_s - max m).
struct MergeParams {
    af_ptr part, out;
    int rows, splits, head_dim, pad;
};
template <typename T> AF_DEVICE void attn_merge_impl(const MergeParams& p) {
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
        reinterpret_cast<T*>(p.out)[row * p.head_dim + c] = af_from_float<T>(A / L);
    }
}
