// Matrix-core prefill for f16/bf16 (hip-flash, hip-hybrid): FlashAttention-2 with both products
// on matrix cores through the af_mma_* fragment operations of include/af_vendor.h (NVIDIA
// mma.sync + ldmatrix; AMD gfx90a MFMA; other AMD targets emulated).
// attn_prefill_mma{,_qrope}_d{64,128,256}_{f16,bf16}; head_dim must equal the template size
// (other sizes take the vector-unit kernel in attention.hip).
//
// One block of MMA_GROUPS groups (warps / wavefronts: 4 * AF_WARP threads) per (query tile,
// head), from the host's tile list `p.tiles` (heaviest causal tiles first). A tile has BR = 128
// rows up to head_dim 128 (64 at 256); group w owns rows 16 MT w .. 16 MT (w + 1) - 1 (MmaTile).
// Dynamic shared memory (bytes: mma_prefill_shared_bytes in backend-hip/src/plan.rs):
//   sQ [BR][LD]   the query tile (hip-hybrid: rotated here, once per block)
//   sK [BC][LD]   one key tile        sV [BC][LD]   one value tile      (LD = DM + 8)
// Loads are asynchronous (cp.async on NVIDIA) and overlap compute as in FlashAttention-2: the
// V tile loads while S = Q K^T runs, the next K tile while softmax and O += P V run.
// S and O live in registers; probabilities go from the S accumulators to P operands without
// leaving registers (rounded to the input type, as FlashAttention does). Online softmax in base
// 2; masks only on tiles that cross the causal diagonal or the end of the keys. Causal tiles
// past the diagonal are skipped; GQA by indexing; caches contiguous or paged (KvRows).

#pragma once
#include "mma_common.h"

//
// FP8 pools (FP8, attn_prefill_mma_e4m3_d{64,128}_*): K and V tiles load as e4m3 and are stored
// to shared memory converted to 16 bits (exact; K in the queries' type, V in f16, P V in f16 as
// in the decode), synchronously (the global loads of a tile still overlap each other); the kv
// head's K scale joins the softmax scale and its V scale the output's normalisation.
template <typename T, int DM, bool QROPE, bool FP8 = false>
AF_DEVICE void prefill_mma_body(const AttnParams& p) {
    using Tile = MmaTile<DM>;
    constexpr bool BF16 = AfIsBf16<T>::value;
    constexpr bool PV_BF16 = BF16 && !FP8;  // FP8: values converted to f16, P V in f16
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
    const KvRows kvr(p, b);
    const int q0 = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const unsigned short* K = reinterpret_cast<const unsigned short*>(p.k);
    const unsigned short* V = reinterpret_cast<const unsigned short*>(p.v);
    const int rows = min(BR, q_len - q0);

    // A K or V tile into shared memory; keys past kv_len are zeros.
    auto load_kv = [&](unsigned short* dst, const unsigned short* src, long stride, int k0, bool value) {
        if constexpr (FP8) {
            constexpr int CB = DM / 16;  // 16-byte chunks of an e4m3 row
            const unsigned char* sb = reinterpret_cast<const unsigned char*>(src);
            static_assert(BC * CB % MMA_THREADS == 0, "whole chunks per thread");
#pragma unroll
            for (int it = 0; it < BC * CB / MMA_THREADS; ++it) {
                const int i = tid + it * MMA_THREADS, r = i / CB, c = (i % CB) * 16;
                const bool ok = k0 + r < kv_len;
                const uint4 e = ok ? *reinterpret_cast<const uint4*>(sb + kvr(k0 + r) * stride + (long)kh * DM + c) : make_uint4(0u, 0u, 0u, 0u);
                uint4* d = reinterpret_cast<uint4*>(dst + r * LD + c);
                d[0] = value ? af_e4m3x8_to<af_f16>(make_uint2(e.x, e.y)) : af_e4m3x8_to<T>(make_uint2(e.x, e.y));
                d[1] = value ? af_e4m3x8_to<af_f16>(make_uint2(e.z, e.w)) : af_e4m3x8_to<T>(make_uint2(e.z, e.w));
            }
        } else {
            static_assert(BC * CH % MMA_THREADS == 0, "whole chunks per thread");
#pragma unroll
            for (int it = 0; it < BC * CH / MMA_THREADS; ++it) {
                const int i = tid + it * MMA_THREADS, r = i / CH, c = (i % CH) * 8;
                const bool ok = k0 + r < kv_len;
                af_cp_async16(dst + r * LD + c, ok ? src + kvr(k0 + r) * stride + (long)kh * DM + c : src, ok);
            }
        }
    };
    // FP8: the kv head's scales.
    const float kscale = FP8 ? reinterpret_cast<const float*>(p.k_scale)[kh] : 1.f;
    const float vscale = FP8 ? reinterpret_cast<const float*>(p.v_scale)[kh] : 1.f;
    const float scale_log2 = p.scale_log2 * kscale;

    // The query tile (rows past q_len are zeros: finite scores, never stored).
    {
        const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
        for (int i = tid; i < BR * CH; i += MMA_THREADS) {
            const int r = i / CH, c = (i % CH) * 8;
            af_cp_async16(sQ + r * LD + c, Q + q_at(p, qbeg + q0 + min(r, rows - 1), h) + c, r < rows);
        }
    }
    const int last_row = q0 + rows - 1;
    const int kv_end = p.causal ? min(kv_len, kv_len - q_len + last_row + 1) : kv_len;
    const int ntiles = (kv_end + BC - 1) / BC;
    // Under a sliding window the tile's first row sees no key before af_first_key: skip the
    // tiles wholly before it (the work grows with the window, not the context).
    const int j0 = p.causal ? af_first_key(p, min(kv_len, kv_len - q_len + q0 + 1)) / BC : 0;
    if (ntiles > j0) load_kv(sK, K, p.k_stride, j0 * BC, false);
    af_cp_async_commit();
    af_cp_async_wait_all();
    __syncthreads();
    if (QROPE && p.q_pos) {
        // hip-hybrid: rotate the tile in shared memory, once per block (one sincos per row and
        // pair, on the fast hardware path after the f64 reduction: ~1e-6 absolute, far below
        // f16/bf16 rounding), while the first K tile is already in.
        rope_rows<T, true>(
            p, rows, DM, tid, MMA_THREADS, [&](int r) { return reinterpret_cast<const T*>(sQ + r * LD); },
            [&](int r, int k) { return af_qpos(p, qbeg + q0 + r, k); }, [&](int r, int d, float x) { sQ[r * LD + d] = af_from_float<T>(x).x; });
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
    // ... and tiles before the window start of this group's last row.
    const int mask_below = p.causal ? af_first_key(p, min(kv_len, kv_len - q_len + q0 + 16 * MT * (w + 1))) : 0;

    for (int j = j0; j < ntiles; ++j) {
        const int k0 = j * BC;
        if (j > j0) {
            af_cp_async_wait_all();  // K tile j has landed
            __syncthreads();         // ... for every group, and every group is done with sV
        }
        load_kv(sV, V, p.v_stride, k0, true);
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
        const bool masked = k0 + BC > mask_from || k0 < mask_below;
        unsigned pf[MT][BC / 16][AF_MMA_PW];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float corr[AF_MMA_SLOTS];
            int lo[AF_MMA_SLOTS];
#pragma unroll
            for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) lo[sl] = af_first_key(p, lim[mt][sl]);
            mma_softmax_step<SF>(s[mt], m[mt], l[mt], lim[mt], lo, masked, k0, scale_log2, p.softcap_log2, corr);
#pragma unroll
            for (int c = 0; c < BC / 16; ++c) af_mma_pack_p<PV_BF16>(pf[mt][c], &s[mt][c * (16 / AF_MMA_SN)]);
#pragma unroll
            for (int f = 0; f < OF; ++f) {
#pragma unroll
                for (int e = 0; e < 4; ++e) o[mt][f][e] *= corr[af_mma_slot(e)];
            }
        }

        af_cp_async_wait_all();  // V tile j has landed
        __syncthreads();         // ... for every group, and every group is done with sK
        if (j + 1 < ntiles) load_kv(sK, K, p.k_stride, k0 + BC, false);
        af_cp_async_commit();

        // O += P V: each value fragment serves the MT query tiles.
#pragma unroll
        for (int c = 0; c < BC / 16; ++c) {
#pragma unroll
            for (int dt = 0; dt < KT; ++dt) {
                unsigned vf[AF_MMA_VW];
                af_mma_load_v(vf, sV + c * 16 * LD + dt * 16, LD);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) af_mma_pv16<PV_BF16>(&o[mt][dt * (16 / AF_MMA_ON)], pf[mt][c], vf);
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
            const float lsum = af_mma_rowsum(l[mt][sl]);
            const float denom = lsum + af_sink_term(p.sinks, h, m[mt][sl]);
            const float inv = vscale / denom;
            if (r >= rows) continue;
            // One lane of the row's group: the one holding its first output column.
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (af_mma_slot(e) == sl && af_mma_col(e) == 0) af_store_lse(p.lse, (long)(qbeg + q0 + r) * p.heads + h, m[mt][sl], lsum, p.sinks, h);
            unsigned short* orow = out + o_at(p, qbeg + q0 + r, h);
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

