// Attention: FlashAttention-2 style tiled prefill and split-K flash-decoding, both computing in
// f32 on the vector units (matrix-core prefill is a later issue). The K/V source is either a KV
// cache (contiguous or paged) or plain K/V tensors: `kv_row` turns (batch entry, token) into a
// row of the [rows, Hk, D] K/V array, so one kernel serves both. GQA by indexing: query head h
// reads kv head h / (H / Hk); nothing is replicated.
#include "include/af_common.h"

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
};

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

template <typename T, int DMAX>
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

#define STAMP_PREFILL(DM)                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_f32(AttnParams p) { prefill_body<float, DM>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_f16(AttnParams p) { prefill_body<af_f16, DM>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_bf16(AttnParams p) { prefill_body<af_bf16, DM>(p); }
STAMP_PREFILL(64)
STAMP_PREFILL(128)
STAMP_PREFILL(256)

// ------------------------------------------------------------------------------------------
// Decode (flash-decoding): one block of 128 threads per (entry, kv head, row chunk, split).
// The block's rows are the (query, head) pairs of one kv head's group: GQA heads share each K/V
// read. Threads form 8 groups of 16 lanes; a group takes every 8th key of the split, a lane
// holds D/16 dims of every row. Groups merge through shared memory; with several splits the
// partial (max, sum, acc) goes to `part` and `attn_merge` combines them.
#define DC_THREADS 128
#define DC_GROUPS (DC_THREADS / 16)

template <typename T, int DMAX, int RMAX>
AF_DEVICE void decode_body(const AttnParams& p) {
    constexpr int EP = DMAX / 16;
    __shared__ float sAcc[DC_GROUPS][RMAX][DMAX];
    __shared__ float sM[DC_GROUPS][RMAX], sL[DC_GROUPS][RMAX];

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

    float q[RMAX][EP], acc[RMAX][EP], m[RMAX], l[RMAX];
    int limit[RMAX];
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.f;
        const int rr = r0 + (r < rows ? r : 0), qi = rr / G, h = kh * G + rr % G;
        limit[r] = r < rows ? (p.causal ? kv_len - q_len + qi + 1 : kv_len) : 0;
        const T* src = Q + ((long)(qbeg + qi) * p.heads + h) * D + lane * epd;
#pragma unroll
        for (int e = 0; e < EP; ++e) {
            acc[r][e] = 0.f;
            q[r][e] = 0.f;
        }
        if (epd == EP) {
            af_load<EP>(src, q[r]);
        } else {
#pragma unroll
            for (int e = 0; e < EP; ++e)
                if (e < epd) q[r][e] = af_to_float(src[e]);
        }
    }
    int kv_end = 0;
#pragma unroll
    for (int r = 0; r < RMAX; ++r) kv_end = max(kv_end, limit[r]);
    const int chunk = (kv_len + p.splits - 1) / p.splits;
    const int s0 = split * chunk, s1 = min(kv_end, s0 + chunk);

    // Every lane runs the same number of iterations (the shuffles below need the whole warp);
    // a group past the end of the split loads nothing and skips the update. Each group takes
    // KU keys per iteration, all loads first, so more bytes are in flight per thread.
    constexpr int KU = 2;
    for (int base = s0; base < s1; base += KU * DC_GROUPS) {
        float kv[KU][EP], vv[KU][EP];
        bool valid[KU];
        int tk[KU];
#pragma unroll
        for (int u = 0; u < KU; ++u) {
            tk[u] = base + grp + u * DC_GROUPS;
            valid[u] = tk[u] < s1;
#pragma unroll
            for (int e = 0; e < EP; ++e) { kv[u][e] = 0.f; vv[u][e] = 0.f; }
            if (valid[u]) {
                const long off = kv_row(p, b, tk[u]) * krs + (long)kh * D + lane * epd;
                if (epd == EP) {
                    af_load<EP>(K + off, kv[u]);
                    af_load<EP>(V + off, vv[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < EP; ++e)
                        if (e < epd) { kv[u][e] = af_to_float(K[off + e]); vv[u][e] = af_to_float(V[off + e]); }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < KU; ++u) {
#pragma unroll
            for (int r = 0; r < RMAX; ++r) {
                float sc = 0.f;
#pragma unroll
                for (int e = 0; e < EP; ++e) sc += q[r][e] * kv[u][e];
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) sc += af_shfl_xor(sc, o);
                if (!valid[u] || tk[u] >= limit[r]) continue;
                sc *= p.scale_log2;
                const float mnew = fmaxf(m[r], sc);
                const float corr = exp2f(m[r] - mnew), w = exp2f(sc - mnew);
                l[r] = l[r] * corr + w;
                m[r] = mnew;
#pragma unroll
                for (int e = 0; e < EP; ++e) acc[r][e] = acc[r][e] * corr + w * vv[u][e];
            }
        }
    }
    // Merge the groups.
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
#pragma unroll
        for (int e = 0; e < EP; ++e) sAcc[grp][r][lane * EP + e] = acc[r][e];
        if (lane == 0) { sM[grp][r] = m[r]; sL[grp][r] = l[r]; }
    }
    __syncthreads();
    for (int idx = tid; idx < rows * D; idx += DC_THREADS) {
        const int r = idx / D, c = idx % D;
        const int ln = c / epd, e = c % epd;  // which lane held dim c, and where
        float M = -INFINITY;
        for (int g = 0; g < DC_GROUPS; ++g) M = fmaxf(M, sM[g][r]);
        const float base = M == -INFINITY ? 0.f : M;
        float L = 0.f, A = 0.f;
        for (int g = 0; g < DC_GROUPS; ++g) {
            const float w = exp2f(sM[g][r] - base);
            L += sL[g][r] * w;
            A += sAcc[g][r][ln * EP + e] * w;
        }
        const int rr = r0 + r, qi = rr / G, h = kh * G + rr % G;
        const long row = (long)(qbeg + qi) * p.heads + h;
        if (p.splits == 1) {
            reinterpret_cast<T*>(p.out)[row * D + c] = af_from_float<T>(A / L);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (D + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = M; part[1] = L; }
        }
    }
}

// Rows per block (RM) are instantiated per GQA group size so registers match the work:
// the host picks the smallest RM >= group * q_len (or the largest and several row chunks).
#define STAMP_DECODE(DM, RM)                                                                                  \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_f32(AttnParams p) { decode_body<float, DM, RM>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_f16(AttnParams p) { decode_body<af_f16, DM, RM>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_bf16(AttnParams p) { decode_body<af_bf16, DM, RM>(p); }
STAMP_DECODE(64, 1)
STAMP_DECODE(64, 4)
STAMP_DECODE(64, 8)
STAMP_DECODE(128, 1)
STAMP_DECODE(128, 4)
STAMP_DECODE(128, 8)
STAMP_DECODE(256, 1)
STAMP_DECODE(256, 4)

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
AF_STAMP(attn_merge, MergeParams, 256)
