// Matrix-core prefill for f16/bf16 (hip-flash, hip-hybrid): FlashAttention-2 with both products
// on matrix cores through the af_mma_* fragment operations of include/af_vendor.h (NVIDIA
// mma.sync + ldmatrix; AMD gfx90a MFMA; other AMD targets emulated).
// attn_prefill_mma{,_qrope}_d{64,128,256}_{f16,bf16}; head_dim must equal the template size
// (other sizes take the vector-unit kernel in attention.hip).
//
// One block of MMA_GROUPS groups (warps / wavefronts: 4 * AF_WARP threads) per (query tile,
// head), from the host's tile list `p.tiles` (heaviest causal tiles first). A tile has BR = 128
// rows up to head_dim 128 (64 at 256); group w owns rows 16 MT w .. 16 MT (w + 1) - 1 (MmaTile).
// Dynamic shared memory (bytes: mma_shared_bytes in ops/attention.rs):
//   sQ [BR][LD]   the query tile (hip-hybrid: rotated here, once per block)
//   sK [BC][LD]   one key tile        sV [BC][LD]   one value tile      (LD = DM + 8)
// Loads are asynchronous (cp.async on NVIDIA) and overlap compute as in FlashAttention-2: the
// V tile loads while S = Q K^T runs, the next K tile while softmax and O += P V run.
// S and O live in registers; probabilities go from the S accumulators to P operands without
// leaving registers (rounded to the input type, as FlashAttention does). Online softmax in base
// 2; masks only on tiles that cross the causal diagonal or the end of the keys. Causal tiles
// past the diagonal are skipped; GQA by indexing; caches contiguous or paged (kv_row).
#include "include/af_attention.h"

#define MMA_GROUPS 4
#define MMA_THREADS (MMA_GROUPS * AF_WARP)

template <typename T> struct MmaIsBf16 { static constexpr bool value = false; };
template <> struct MmaIsBf16<af_bf16> { static constexpr bool value = true; };

// Tile sizes per head dim (mirrored by mma_tile_rows / mma_shared_bytes in ops/attention.rs).
//   MT: 16-row query tiles per group. Two up to head_dim 128: every key and value fragment
//       read from shared memory serves two products (register blocking, as FlashAttention-2's
//       128-row tiles); one at 256, where two would not fit in registers.
//   BC: keys per tile; smaller on AMD, whose blocks get 64 KiB of LDS.
//       (On the H100, 32-key tiles at head_dim 128 measured 1-4 % slower than 64 at S >= 4096.)
template <int DM> struct MmaTile {
    static constexpr int MT = DM <= 128 ? 2 : 1;
    static constexpr int BR = MMA_GROUPS * 16 * MT;   // query rows per block
#if defined(AF_AMD)
    static constexpr int BC = DM <= 64 ? 64 : DM <= 128 ? 32 : 16;
#else
    static constexpr int BC = DM <= 128 ? 64 : 32;
#endif
    static constexpr int LD = DM + 8;                 // row stride, 16-bit elements (conflict-free ldmatrix)
    static constexpr bool QREG = DM * MT <= 128;      // query fragments kept in registers
};

// One online-softmax step for one 16-row tile of this group over NF score fragments whose first
// key is key0: scale to base 2, mask keys at or past the row's `lim` (when `masked`), update the
// row maxima `m` and this lane's partial sums `l`, turn the scores into probabilities in place,
// and leave in `corr` each row's factor for rescaling its accumulators.
template <int NF>
AF_DEVICE void mma_softmax_step(float (*s)[4], float* m, float* l, const int* lim, bool masked, int key0, float scale_log2, float* corr) {
    float mx[AF_MMA_SLOTS], base[AF_MMA_SLOTS];
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) mx[sl] = -INFINITY;
#pragma unroll
    for (int f = 0; f < NF; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int sl = af_mma_slot(e);
            float x = s[f][e] * scale_log2;
            if (masked && key0 + f * AF_MMA_SN + af_mma_col(e) >= lim[sl]) x = -INFINITY;
            s[f][e] = x;
            mx[sl] = fmaxf(mx[sl], x);
        }
    }
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        const float mn = fmaxf(m[sl], af_mma_rowmax(mx[sl]));
        base[sl] = mn == -INFINITY ? 0.f : mn;
        corr[sl] = exp2f(m[sl] - base[sl]);
        m[sl] = mn;
        l[sl] *= corr[sl];
    }
#pragma unroll
    for (int f = 0; f < NF; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int sl = af_mma_slot(e);
            s[f][e] = exp2f(s[f][e] - base[sl]);
            l[sl] += s[f][e];
        }
    }
}

template <typename T, int DM, bool QROPE>
AF_DEVICE void prefill_mma_body(const AttnParams& p) {
    using Tile = MmaTile<DM>;
    constexpr bool BF16 = MmaIsBf16<T>::value;
    constexpr int MT = Tile::MT, BR = Tile::BR, BC = Tile::BC, LD = Tile::LD;
    constexpr int CH = DM / 8;                                // 16-byte chunks per row
    constexpr int SF = BC / AF_MMA_SN, OF = DM / AF_MMA_ON;  // fragments per 16-row tile
    constexpr int KT = DM / 16;
    extern __shared__ __align__(16) unsigned short af_mma_smem[];
    unsigned short* sQ = af_mma_smem;
    unsigned short* sK = sQ + BR * LD;
    unsigned short* sV = sK + BC * LD;

    const int tid = threadIdx.x, w = tid / AF_WARP;
    const int b = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x];
    const int q0 = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const unsigned short* K = reinterpret_cast<const unsigned short*>(p.k);
    const unsigned short* V = reinterpret_cast<const unsigned short*>(p.v);
    const long krs = (long)p.kv_heads * DM;
    const int rows = min(BR, q_len - q0);

    // A K or V tile into shared memory; keys past kv_len are zeros.
    auto load_kv = [&](unsigned short* dst, const unsigned short* src, int k0) {
        static_assert(BC * CH % MMA_THREADS == 0, "whole chunks per thread");
#pragma unroll
        for (int it = 0; it < BC * CH / MMA_THREADS; ++it) {
            const int i = tid + it * MMA_THREADS, r = i / CH, c = (i % CH) * 8;
            const bool ok = k0 + r < kv_len;
            af_cp_async16(dst + r * LD + c, ok ? src + kv_row(p, b, k0 + r) * krs + (long)kh * DM + c : src, ok);
        }
    };

    // The query tile (rows past q_len are zeros: finite scores, never stored).
    {
        const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
        for (int i = tid; i < BR * CH; i += MMA_THREADS) {
            const int r = i / CH, c = (i % CH) * 8;
            af_cp_async16(sQ + r * LD + c, Q + ((long)(qbeg + q0 + min(r, rows - 1)) * p.heads + h) * DM + c, r < rows);
        }
    }
    const int last_row = q0 + rows - 1;
    const int kv_end = p.causal ? min(kv_len, kv_len - q_len + last_row + 1) : kv_len;
    const int ntiles = (kv_end + BC - 1) / BC;
    if (ntiles > 0) load_kv(sK, K, 0);
    af_cp_async_commit();
    af_cp_async_wait_all();
    __syncthreads();
    if (QROPE && p.q_pos) {
        // hip-hybrid: rotate the tile in shared memory, once per block (one sincos per row and
        // pair, on the fast hardware path after the f64 reduction: ~1e-6 absolute, far below
        // f16/bf16 rounding), while the first K tile is already in.
        const int* qp = reinterpret_cast<const int*>(p.q_pos) + qbeg + q0;
        rope_rows<T, true>(
            p, rows, DM, tid, MMA_THREADS, [&](int r) { return reinterpret_cast<const T*>(sQ + r * LD); },
            [&](int r) { return qp[r]; }, [&](int r, int d, float x) { sQ[r * LD + d] = af_from_float<T>(x).x; });
        __syncthreads();
    }

    const unsigned short* sQw = sQ + 16 * MT * w * LD;  // this group's rows
    unsigned qreg[Tile::QREG ? MT : 1][Tile::QREG ? KT : 1][AF_MMA_QW];
    if constexpr (Tile::QREG) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int kt = 0; kt < KT; ++kt) af_mma_load_q(qreg[mt][kt], sQw + 16 * mt * LD, LD, kt);
    }

    float o[MT][OF][4];
    float m[MT][AF_MMA_SLOTS], l[MT][AF_MMA_SLOTS];  // l: this lane's partial row sums (reduced at the end)
    int lim[MT][AF_MMA_SLOTS];                        // keys < lim are visible to the row
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int f = 0; f < OF; ++f) o[mt][f][0] = o[mt][f][1] = o[mt][f][2] = o[mt][f][3] = 0.f;
#pragma unroll
        for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
            m[mt][sl] = -INFINITY;
            l[mt][sl] = 0.f;
            const int qi = q0 + 16 * (MT * w + mt) + af_mma_row(sl);
            lim[mt][sl] = p.causal ? min(kv_len, kv_len - q_len + qi + 1) : kv_len;
        }
    }
    // Tiles from here on need masks for some row of this group.
    const int mask_from = p.causal ? min(kv_len, kv_len - q_len + q0 + 16 * MT * w + 1) : kv_len;

    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BC;
        if (j > 0) {
            af_cp_async_wait_all();  // K tile j has landed
            __syncthreads();         // ... for every group, and every group is done with sV
        }
        load_kv(sV, V, k0);
        af_cp_async_commit();

        // S = Q K^T: each key fragment serves the MT query tiles.
        float s[MT][SF][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int f = 0; f < SF; ++f) s[mt][f][0] = s[mt][f][1] = s[mt][f][2] = s[mt][f][3] = 0.f;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            unsigned qf[MT][AF_MMA_QW];
            if constexpr (!Tile::QREG) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) af_mma_load_q(qf[mt], sQw + 16 * mt * LD, LD, kt);
            }
#pragma unroll
            for (int c = 0; c < BC / 16; ++c) {
                unsigned kf[AF_MMA_KW];
                af_mma_load_k(kf, sK + c * 16 * LD, LD, kt);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    af_mma_qk16<BF16>(&s[mt][c * (16 / AF_MMA_SN)], Tile::QREG ? qreg[Tile::QREG ? mt : 0][Tile::QREG ? kt : 0] : qf[mt], kf);
            }
        }
        // Scale (base 2), mask, online softmax; probabilities to operands.
        const bool masked = k0 + BC > mask_from;
        unsigned pf[MT][BC / 16][AF_MMA_PW];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float corr[AF_MMA_SLOTS];
            mma_softmax_step<SF>(s[mt], m[mt], l[mt], lim[mt], masked, k0, p.scale_log2, corr);
#pragma unroll
            for (int c = 0; c < BC / 16; ++c) af_mma_pack_p<BF16>(pf[mt][c], &s[mt][c * (16 / AF_MMA_SN)]);
#pragma unroll
            for (int f = 0; f < OF; ++f) {
#pragma unroll
                for (int e = 0; e < 4; ++e) o[mt][f][e] *= corr[af_mma_slot(e)];
            }
        }

        af_cp_async_wait_all();  // V tile j has landed
        __syncthreads();         // ... for every group, and every group is done with sK
        if (j + 1 < ntiles) load_kv(sK, K, k0 + BC);
        af_cp_async_commit();

        // O += P V: each value fragment serves the MT query tiles.
#pragma unroll
        for (int c = 0; c < BC / 16; ++c) {
#pragma unroll
            for (int dt = 0; dt < KT; ++dt) {
                unsigned vf[AF_MMA_VW];
                af_mma_load_v(vf, sV + c * 16 * LD + dt * 16, LD);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) af_mma_pv16<BF16>(&o[mt][dt * (16 / AF_MMA_ON)], pf[mt][c], vf);
            }
        }
    }

    // Rows past q_len are not written.
    unsigned short* out = reinterpret_cast<unsigned short*>(p.out);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
            const int r = 16 * (MT * w + mt) + af_mma_row(sl);
            const float inv = 1.f / af_mma_rowsum(l[mt][sl]);
            if (r >= rows) continue;
            unsigned short* orow = out + ((long)(qbeg + q0 + r) * p.heads + h) * DM;
#pragma unroll
            for (int f = 0; f < OF; ++f) {
#pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    if (af_mma_slot(e) != sl) continue;
                    const float a = o[mt][f][e] * inv, c = o[mt][f][e + 1] * inv;
                    *reinterpret_cast<unsigned*>(orow + f * AF_MMA_ON + af_mma_col(e)) = BF16 ? af_f2bf2(a, c) : af_f2h2(a, c);
                }
            }
        }
    }
}

// _qrope: queries rotated inside (hip-hybrid; keys arrive rotated).
#define STAMP_MMA_KIND(KIND, QR, DM)                                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_prefill_mma##KIND##_d##DM##_f16(AttnParams p) { prefill_mma_body<af_f16, DM, QR>(p); } \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_prefill_mma##KIND##_d##DM##_bf16(AttnParams p) { prefill_mma_body<af_bf16, DM, QR>(p); }
#define STAMP_MMA(DM) STAMP_MMA_KIND(, false, DM) STAMP_MMA_KIND(_qrope, true, DM)
STAMP_MMA(64)
STAMP_MMA(128)
STAMP_MMA(256)

// ------------------------------------------------------------------------------------------
// Decode on matrix cores (split-K, flash-decoding): one block of MMA_GROUPS groups per (batch
// entry, kv head, split, chunk of 16 rows). The rows are the (query, head) pairs of one kv
// head's GQA group, so every K/V byte is read once for all of them; rows past the group are
// zeros (the matrix instruction's 16 rows cost nothing extra: decode is bound by K/V reads).
// The split's keys go through shared memory in tiles of 64, MMA_DC_STAGES deep on NVIDIA (the
// next two tiles load while this one is used; mma_decode_shared_bytes mirrors it); group w
// takes keys 16w..16w+15 of each tile with its own online softmax, and the groups merge
// through shared memory at the end. One split writes
// `out`; several write (max, sum, unnormalised acc) partials for attn_merge, as decode_body.
// Head dims 64 and 128 (shared memory: 16 + 2 x 64 x stages rows of DM + 8).
#define MMA_DC_BC 64
#if defined(AF_AMD)
#define MMA_DC_STAGES 1  // 64 KiB of LDS per block
#else
#define MMA_DC_STAGES 3
#endif

template <typename T, int DM, bool QROPE>
AF_DEVICE void decode_mma_body(const AttnParams& p) {
    constexpr bool BF16 = MmaIsBf16<T>::value;
    constexpr int LD = DM + 8, CH = DM / 8, BC = MMA_DC_BC;
    constexpr int OF = DM / AF_MMA_ON;
    extern __shared__ __align__(16) unsigned short af_mma_smem[];
    unsigned short* sQ = af_mma_smem;               // [16][LD]
    unsigned short* sKV = sQ + 16 * LD;              // [stages][K, V][BC][LD]

    const int tid = threadIdx.x, w = tid / AF_WARP;
    const int kvh = p.kv_heads, G = p.heads / kvh;
    const int b = blockIdx.x / (kvh * p.splits);
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
    const long krs = (long)kvh * DM;
    auto qrow = [&](int r) { const int rr = r0 + r; return (long)(qbeg + rr / G) * p.heads + kh * G + rr % G; };

    if (QROPE && p.q_pos) {
        const T* Qt = reinterpret_cast<const T*>(p.q);
        rope_rows<T>(
            p, rows, DM, tid, MMA_THREADS, [&](int r) { return Qt + qrow(r) * DM; },
            [&](int r) { return reinterpret_cast<const int*>(p.q_pos)[qbeg + (r0 + r) / G]; },
            [&](int r, int d, float x) { sQ[r * LD + d] = af_from_float<T>(x).x; });
        for (int i = rows * DM + tid; i < 16 * DM; i += MMA_THREADS) sQ[(i / DM) * LD + i % DM] = 0;
    } else {
        const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
        for (int i = tid; i < 16 * CH; i += MMA_THREADS) {
            const int r = i / CH, c = (i % CH) * 8;
            af_cp_async16(sQ + r * LD + c, Q + qrow(min(r, rows - 1)) * DM + c, r < rows);
        }
    }
    // This split's keys: a multiple of the tile, up to the last key any row sees.
    int kv_end = 0;
    for (int r = 0; r < rows; ++r) kv_end = max(kv_end, p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len);
    const int chunk = (((kv_len + p.splits - 1) / p.splits) + BC - 1) / BC * BC;
    const int s0 = split * chunk, s1 = min(kv_end, s0 + chunk);
    const int ntiles = s1 > s0 ? (s1 - s0 + BC - 1) / BC : 0;
    auto load_tile = [&](int j) {
        unsigned short* dK = sKV + (j % MMA_DC_STAGES) * 2 * BC * LD;
        unsigned short* dV = dK + BC * LD;
        static_assert(BC * CH % MMA_THREADS == 0, "whole chunks per thread");
#pragma unroll
        for (int it = 0; it < BC * CH / MMA_THREADS; ++it) {
            const int i = tid + it * MMA_THREADS, r = i / CH, c = (i % CH) * 8;
            const int key = s0 + j * BC + r;
            const bool ok = key < s1;
            const long off = ok ? kv_row(p, b, key) * krs + (long)kh * DM + c : 0;
            af_cp_async16(dK + r * LD + c, K + off, ok);
            af_cp_async16(dV + r * LD + c, V + off, ok);
        }
    };
#pragma unroll
    for (int st = 0; st + 1 < MMA_DC_STAGES; ++st) {
        if (st < ntiles) load_tile(st);
        af_cp_async_commit();
    }

    float o[OF][4];
#pragma unroll
    for (int f = 0; f < OF; ++f) o[f][0] = o[f][1] = o[f][2] = o[f][3] = 0.f;
    float m[AF_MMA_SLOTS], l[AF_MMA_SLOTS];
    int lim[AF_MMA_SLOTS];
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        m[sl] = -INFINITY;
        l[sl] = 0.f;
        const int r = af_mma_row(sl);
        lim[sl] = r < rows ? min(s1, p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len) : 0;
    }
    for (int j = 0; j < ntiles; ++j) {
        if (j + MMA_DC_STAGES - 1 < ntiles) load_tile(j + MMA_DC_STAGES - 1);
        af_cp_async_commit();
        af_cp_async_wait<MMA_DC_STAGES - 1>();  // tile j (and the query rows) have landed
        __syncthreads();
        const unsigned short* tK = sKV + (j % MMA_DC_STAGES) * 2 * BC * LD + 16 * w * LD;
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
        mma_softmax_step<16 / AF_MMA_SN>(s, m, l, lim, true, k0, p.scale_log2, corr);
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
            reinterpret_cast<T*>(p.out)[row * DM + c] = af_from_float<T>(A / L);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (DM + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = M; part[1] = L; }
        }
    }
}

#define STAMP_MMA_DC_KIND(KIND, QR, DM)                                                                                \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_decode_mma##KIND##_d##DM##_f16(AttnParams p) { decode_mma_body<af_f16, DM, QR>(p); } \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_decode_mma##KIND##_d##DM##_bf16(AttnParams p) { decode_mma_body<af_bf16, DM, QR>(p); }
#define STAMP_MMA_DC(DM) STAMP_MMA_DC_KIND(, false, DM) STAMP_MMA_DC_KIND(_qrope, true, DM)
STAMP_MMA_DC(64)
STAMP_MMA_DC(128)
