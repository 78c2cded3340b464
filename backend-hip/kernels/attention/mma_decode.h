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
//
// FP8 pools (FP8, attn_decode_mma_e4m3_d{DM}_*): the stages hold e4m3 tiles ([stages][K, V][BC][DM]
// bytes, 16-byte copies of 16 keys' elements, half the bytes). Each group copies only its own 16
// keys of every tile, so the loop has no block barrier: the groups run their pipelines apart,
// synchronising their own lanes (af_syncwarp). Every e4m3 is exactly an f16 (and a bf16); P V
// runs in f16 for bf16 models too (probabilities in [0, 1] lose nothing to f16). Two paths:
//  - E4R (AF_DC_E4M3_REGS: fragments in m16n8k16's layout, i.e. NVIDIA): each lane loads its
//    e4m3 fragments straight from the stage and converts them in registers (one instruction per
//    pair); the reduction order, the keys and the output columns are permuted so that every load
//    is a wide one (see the loop), and Q K^T runs in f16 with bf16 query rows scaled by a power
//    of two (see the query load). Three stages at MMA_DC_FP8_BLOCKS (three) blocks per SM, the
//    kernel's launch bound (registers); the plan takes the deepest pipeline that keeps them
//    resident and counts that many when it picks the splits. (H200, attention over 32 layers'
//    pools at B=16 L=8192 against bf16 pools at 0.145 ms: 0.54x of bf16's time; the 16-bit tile
//    below took 0.79x; BENCHMARKS.md has the steps between.)
//  - otherwise (AMD gfx90a's MFMA layout): converted into one 16-bit tile (sConv [BC][LD]) that
//    the matrix instructions read as usual: the keys in the queries' type, then the values in f16
//    over them, converted while Q K^T's products are in flight.
// The scales fold into the arithmetic: the kv head's K scale multiplies the softmax
// scale (a raw score is k_scale * (q . e4m3)), its V scale the accumulated output (shared
// memory: mma_decode_fp8_shared_bytes in plan.rs).
#if defined(AF_MMA_M16N8K16)
#define AF_DC_E4M3_REGS 1
#else
#define AF_DC_E4M3_REGS 0
#endif
// The register path's e4m3 stages: 16-byte chunk c of tile row r (CB chunks a row) is stored at
// chunk dc_e4m3_kswz (keys) / dc_e4m3_vswz (values), so that the loads below hit 32 distinct banks
// (key rows are read two rows of 4 chunks a quarter-warp; value rows 4t + k a lane t, one chunk a
// lane g). At head_dim 64 the value loads keep a two-way conflict (all four rows of one load have
// the same parity, and a 64-byte row spans half the banks).
template <int CB> AF_DEVICE int dc_e4m3_kswz(int r, int c) { return CB >= 8 ? c ^ ((r & 1) << 2) : c; }
template <int CB> AF_DEVICE int dc_e4m3_vswz(int r, int c) { return c ^ ((2 * (r >> 2)) & (CB - 2)); }

template <typename T, int DM, bool QROPE, int STAGES, bool FP8 = false>
AF_DEVICE void decode_mma_stages(const AttnParams& p) {
    constexpr bool BF16 = AfIsBf16<T>::value;
    constexpr bool PV_BF16 = BF16 && !FP8;  // FP8: values converted to f16, P V in f16
    constexpr bool E4R = FP8 && AF_DC_E4M3_REGS;  // FP8 fragments converted in registers
    constexpr int LD = DM + MMA_PAD, CH = DM / 8, BC = MMA_DC_BC;
    constexpr int stages = STAGES;
    constexpr int OF = DM / AF_MMA_ON;
    extern __shared__ __align__(16) unsigned short af_mma_smem[];
    unsigned short* sQ = af_mma_smem;               // [16][LD]
    unsigned short* sKV = sQ + 16 * LD;              // [stages][K, V][BC][LD] (FP8: [stages][K, V][BC][DM] bytes)
    unsigned short* sConv = sKV + (FP8 ? stages * BC * DM : 0);  // FP8 without E4R: [BC][LD], K then V

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

    // E4R: the query rows in f16, in shared memory as mma.sync's A fragments take them: rows g
    // and g + 8 interleaved per pair of columns (32-bit word d + h of pair row g holds row
    // g + 8h's columns d, d + 1), pair rows SQW words apart; a lane's fragment of a reduction
    // step is then one 16-byte load (see the loop). Q K^T runs in f16 for bf16 models too, so
    // that keys take one conversion instruction per pair (bf16 would take four): each bf16 row
    // is scaled by a power of two 2^-x that brings its largest magnitude into [2^14, 2^15), which
    // makes every element of at least 2^-29 of that magnitude exact in f16 (smaller ones, whose
    // products are below 2^-29 of the largest, round as f16 subnormals), and 2^x joins the
    // row's softmax scale (word DM + h of pair row g: row g + 8h's 2^x; 1 for f16 models).
    constexpr int SQW = DM + 8;
    static_assert(8 * SQW * 4 == 16 * LD * 2, "the interleaved query rows take sQ's room");
    if constexpr (E4R) {
        const unsigned* Qw = reinterpret_cast<const unsigned*>(p.q);
        unsigned* sQw = reinterpret_cast<unsigned*>(sQ);
        const int lane = tid % AF_WARP;
        static_assert(16 % MMA_GROUPS == 0 && DM % 64 == 0, "whole query rows per group, whole words per lane");
#pragma unroll
        for (int rr = 0; rr < 16 / MMA_GROUPS; ++rr) {
            const int r = w * (16 / MMA_GROUPS) + rr;
            unsigned v[DM / 64];
            float mx = 0.f;
#pragma unroll
            for (int u = 0; u < DM / 64; ++u) {
                v[u] = r < rows ? Qw[qat(r) / 2 + lane + AF_WARP * u] : 0u;
                if constexpr (BF16) mx = fmaxf(mx, fmaxf(fabsf(af_bf2f((unsigned short)(v[u] & 0xffffu))), fabsf(af_bf2f((unsigned short)(v[u] >> 16)))));
            }
            int x = 0;
            if constexpr (BF16) {
#pragma unroll
                for (int o = AF_WARP / 2; o > 0; o /= 2) mx = fmaxf(mx, af_shfl_xor(mx, o));
                // mx in [2^e, 2^(e+1)): x = e - 14, within the exponents a float scale can hold.
                const int e = (int)((__float_as_uint(mx) >> 23) & 0xffu) - 127;
                x = mx > 0.f && mx < INFINITY ? min(max(e - 14, -126), 126) : 0;
            }
            const float down = __uint_as_float((unsigned)(127 - x) << 23);
#pragma unroll
            for (int u = 0; u < DM / 64; ++u) {
                const int d = 2 * (lane + AF_WARP * u);
                sQw[(r % 8) * SQW + d + r / 8] = BF16 ? af_f2h2(af_bf2f((unsigned short)(v[u] & 0xffffu)) * down, af_bf2f((unsigned short)(v[u] >> 16)) * down) : v[u];
            }
            if (lane == 0) sQw[(r % 8) * SQW + DM + r / 8] = (unsigned)(127 + x) << 23;
        }
    } else if (QROPE && p.q_pos) {
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
    // E4R: the page of key 16w + lane % 16 of the next tile to load, read a tile ahead of its
    // copy (the page-table read's latency then passes while the group computes).
    auto e4r_lookup = [&](int j) { const int key = s0 + j * BC + 16 * w + (tid % 16); return key < s1 ? kvr.page(key) : 0; };
    int e4r_page = 0;
    auto load_tile = [&](int j) {
        if constexpr (FP8) {
            // e4m3 rows: 16 elements per 16-byte copy, rows of DM bytes; group w copies its own
            // 16 keys (rows 16w..16w+15).
            constexpr int CB = DM / 16;
            unsigned char* dK = reinterpret_cast<unsigned char*>(sKV) + (j % stages) * 2 * BC * DM;
            unsigned char* dV = dK + BC * DM;
            const unsigned char* Kb = reinterpret_cast<const unsigned char*>(p.k);
            const unsigned char* Vb = reinterpret_cast<const unsigned char*>(p.v);
            static_assert(BC == 16 * MMA_GROUPS && 16 * CB % AF_WARP == 0, "16 keys per group, whole chunks per lane");
            const int lane = tid % AF_WARP;
            if constexpr (E4R) {
                // Lane l < 16 has read key l's page (e4r_page, one tile ahead); every lane copies
                // chunk lane % CB of rows lane / CB + 32 / CB it, their rows shuffled from the
                // lane that looked them up.
                const int c = lane % CB, key0 = s0 + j * BC + 16 * w;
                const int slot_l = key0 + lane % 16 < s1 ? (int)kvr.row_at(e4r_page, key0 + lane % 16) : 0;
                const unsigned char* kb = Kb + (long)kh * DM + 16 * c;
                const unsigned char* vb = Vb + (long)kh * DM + 16 * c;
#pragma unroll
                for (int it = 0; it < 16 * CB / AF_WARP; ++it) {
                    const int rl = lane / CB + it * (AF_WARP / CB), r = 16 * w + rl;
                    const long slot = af_shfl(slot_l, rl);
                    const bool ok = key0 + rl < s1;
                    af_cp_async16(dK + r * DM + 16 * dc_e4m3_kswz<CB>(r, c), kb + slot * p.k_stride, ok);
                    af_cp_async16(dV + r * DM + 16 * dc_e4m3_vswz<CB>(r, c), vb + slot * p.v_stride, ok);
                }
            } else {
                kvr.with_rows([&](auto row) {
#pragma unroll
                    for (int it = 0; it < 16 * CB / AF_WARP; ++it) {
                        const int i = lane + it * AF_WARP, r = 16 * w + i / CB, c = (i % CB) * 16;
                        const int key = s0 + j * BC + r;
                        const bool ok = key < s1;
                        const long slot = ok ? row(key) : 0, col = ok ? (long)kh * DM + c : 0;
                        af_cp_async16(dK + r * DM + c, Kb + slot * p.k_stride + col, ok);
                        af_cp_async16(dV + r * DM + c, Vb + slot * p.v_stride + col, ok);
                    }
                });
            }
        } else {
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
        }
    };
    // FP8: the kv head's scales (the K scale joins the softmax scale, the V scale the output).
    const float kscale = FP8 ? reinterpret_cast<const float*>(p.k_scale)[kh] : 1.f;
    const float vscale = FP8 ? reinterpret_cast<const float*>(p.v_scale)[kh] : 1.f;
    const float scale_log2 = p.scale_log2 * kscale;
    if constexpr (E4R) e4r_page = e4r_lookup(0);
    for (int st = 0; st + 1 < stages; ++st) {
        if (st < ntiles) {
            load_tile(st);
            if constexpr (E4R) e4r_page = e4r_lookup(st + 1);
        }
        af_cp_async_commit();
    }

    float o[OF][4];
#pragma unroll
    for (int f = 0; f < OF; ++f) o[f][0] = o[f][1] = o[f][2] = o[f][3] = 0.f;
    float e4r_scale[AF_MMA_SLOTS];  // E4R: each row's softmax scale (scale_log2 * 2^x)
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
        if (j + stages - 1 < ntiles) {
            load_tile(j + stages - 1);
            if constexpr (E4R) e4r_page = e4r_lookup(j + stages);
        }
        af_cp_async_commit();
        af_cp_async_wait<STAGES - 1>();  // tile j (and the query rows) have landed
#if AF_DC_E4M3_REGS
        if constexpr (E4R) {
            // FP8 on the m16n8k16 layout: e4m3 fragments straight from the stage into registers,
            // converted there (no 16-bit tile). Two permutations make every load a wide one:
            //  - Q K^T's reduction order: lane t takes head-dim columns 64c + 16t .. + 15 of its key
            //    row in one 16-byte load, and step kk of chunk c treats columns 16t + 4kk + {0, 1}
            //    and + {2, 3} as the fragment's 2t, 2t + 1 and 2t + 8, 2t + 9; the query fragment
            //    takes the same columns (one 16-byte load from the interleaved rows), so the sum
            //    is the same;
            //  - the keys: score column n of fragment f is key 4 (n / 2) + 2f + n % 2, so a lane's
            //    probabilities (columns 2t, 2t + 1 of both fragments) are keys 4t .. 4t + 3: P V
            //    takes rows 4t .. 4t + 3 of V (DM / 8 bytes each, one load a row), and byte
            //    permutes pair them per column. Output fragment nd's column n is then head-dim
            //    column (DM / 8) n + nd (undone by the merge below).
            if (j == 0) {
                __syncthreads();
                // The rows' softmax scales (2^x of the f16 query rows, see above).
#pragma unroll
                for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) e4r_scale[sl] = scale_log2 * __uint_as_float(reinterpret_cast<const unsigned*>(sQ)[(tid % AF_WARP / 4) * SQW + DM + sl]);
            } else {
                af_syncwarp();
            }
            constexpr int CB = DM / 16, VB = DM / 8;
            const unsigned char* tK8 = reinterpret_cast<const unsigned char*>(sKV) + (j % stages) * 2 * BC * DM + 16 * w * DM;
            const unsigned char* tV8 = tK8 + BC * DM;
            const int lane = tid % AF_WARP, g = lane / 4, t = lane % 4;
            const int rk0 = 4 * (g / 2) + g % 2, rk1 = rk0 + 2;  // this lane's key rows of score fragments 0 and 1
            float s[2][4], s2[2][4];  // two accumulator chains (even and odd steps), summed
#pragma unroll
            for (int f = 0; f < 2; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = s2[f][0] = s2[f][1] = s2[f][2] = s2[f][3] = 0.f;
#pragma unroll
            for (int c = 0; c < DM / 64; ++c) {
                const uint4 ka = *reinterpret_cast<const uint4*>(tK8 + rk0 * DM + 16 * dc_e4m3_kswz<CB>(rk0, 4 * c + t));
                const uint4 kb = *reinterpret_cast<const uint4*>(tK8 + rk1 * DM + 16 * dc_e4m3_kswz<CB>(rk1, 4 * c + t));
                const unsigned kwa[4] = {ka.x, ka.y, ka.z, ka.w}, kwb[4] = {kb.x, kb.y, kb.z, kb.w};
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    // Rows g and g + 8, columns 64c + 16t + 4kk + {0, 1} and + {2, 3}: a[0..3].
                    const uint4 q = *reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned*>(sQ) + g * SQW + 64 * c + 16 * t + 4 * kk);
                    const unsigned qf[4] = {q.x, q.y, q.z, q.w};
                    const unsigned kf[4] = {af_e4m3x2_to_f16x2((unsigned short)(kwa[kk] & 0xffffu)), af_e4m3x2_to_f16x2((unsigned short)(kwa[kk] >> 16)),
                                            af_e4m3x2_to_f16x2((unsigned short)(kwb[kk] & 0xffffu)), af_e4m3x2_to_f16x2((unsigned short)(kwb[kk] >> 16))};
                    af_mma_qk16<false>(kk % 2 ? s2 : s, qf, kf);
                }
            }
#pragma unroll
            for (int f = 0; f < 2; ++f)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[f][e] = (s[f][e] + s2[f][e]) * e4r_scale[af_mma_slot(e)];
            const int k0 = s0 + j * BC + 16 * w;  // this group's 16 keys
            float corr[AF_MMA_SLOTS];
            auto key_at = [&](int f, int e) { return k0 + 4 * t + 2 * f + (e & 1); };
            if (p.softcap_log2 > 0.f) mma_softmax_step_at<2, 1, true>(s, m, l, lim, lo, true, key_at, 1.f, p.softcap_log2, corr);
            else mma_softmax_step_at<2, 0, true>(s, m, l, lim, lo, true, key_at, 1.f, p.softcap_log2, corr);
            unsigned pf[AF_MMA_PW];
            af_mma_pack_p<false>(pf, s);
#pragma unroll
            for (int f = 0; f < OF; ++f) {
#pragma unroll
                for (int e = 0; e < 4; ++e) o[f][e] *= corr[af_mma_slot(e)];
            }
            alignas(16) unsigned vw[4][VB / 4];  // rows 4t .. 4t + 3, head-dim columns VB g .. VB g + VB - 1
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int r = 4 * t + k;
                *reinterpret_cast<Raw<VB>*>(vw[k]) = *reinterpret_cast<const Raw<VB>*>(tV8 + r * DM + 16 * dc_e4m3_vswz<CB>(r, VB * g / 16) + VB * g % 16);
            }
#pragma unroll
            for (int nd = 0; nd < OF; ++nd) {
                const unsigned sel = (nd % 4) | ((4 + nd % 4) << 4);  // byte nd % 4 of two rows
                const unsigned vf[2] = {af_e4m3x2_to_f16x2((unsigned short)af_byte_perm(vw[0][nd / 4], vw[1][nd / 4], sel)),
                                        af_e4m3x2_to_f16x2((unsigned short)af_byte_perm(vw[2][nd / 4], vw[3][nd / 4], sel))};
                af_mma16816<false>(o[nd], pf, vf);
            }
            af_syncwarp();  // every lane of this group is done with its rows of this stage
            continue;
        }
#endif
        // 16-bit K/V, and FP8 through the converted tile (AMD):
        // FP8: this group's 16 keys of stage j, e4m3 to 16 bits into its rows of sConv: the keys
        // (in T) before Q K^T, then the values (in f16) over them before P V.
        auto convert = [&](int half) {
            const unsigned char* src = reinterpret_cast<const unsigned char*>(sKV) + ((j % stages) * 2 + half) * BC * DM;
            constexpr int CB = DM / 16;
            const int lane = tid % AF_WARP;
#pragma unroll
            for (int it = 0; it < 16 * CB / AF_WARP; ++it) {
                const int i = lane + it * AF_WARP, r = 16 * w + i / CB, c = (i % CB) * 16;
                const uint4 e = *reinterpret_cast<const uint4*>(src + r * DM + c);
                uint4* d = reinterpret_cast<uint4*>(sConv + r * LD + c);
                d[0] = half ? af_e4m3x8_to<af_f16>(make_uint2(e.x, e.y)) : af_e4m3x8_to<T>(make_uint2(e.x, e.y));
                d[1] = half ? af_e4m3x8_to<af_f16>(make_uint2(e.z, e.w)) : af_e4m3x8_to<T>(make_uint2(e.z, e.w));
            }
        };
        if constexpr (FP8) {
            // The query rows are every thread's copies (once); tile j's rows of this group are
            // its own lanes'.
            if (j == 0) __syncthreads();
            else af_syncwarp();
            convert(0);
            af_syncwarp();
        } else {
            __syncthreads();
        }
        const unsigned short* tK = (FP8 ? sConv : sKV + (j % stages) * 2 * BC * LD) + 16 * w * LD;
        const unsigned short* tV = FP8 ? tK : tK + BC * LD;
        const int k0 = s0 + j * BC + 16 * w;  // this group's 16 keys
        float s[16 / AF_MMA_SN][4];
#pragma unroll
        for (int f = 0; f < 16 / AF_MMA_SN; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = 0.f;
        if constexpr (FP8) {
            // Two accumulator chains (even and odd 16-column steps), summed: half the
            // dependent matrix instructions on the tile's critical path.
            float s2[16 / AF_MMA_SN][4];
#pragma unroll
            for (int f = 0; f < 16 / AF_MMA_SN; ++f) s2[f][0] = s2[f][1] = s2[f][2] = s2[f][3] = 0.f;
#pragma unroll
            for (int kt = 0; kt < DM / 16; ++kt) {
                unsigned qf[AF_MMA_QW], kf[AF_MMA_KW];
                af_mma_load_q(qf, sQ, LD, kt);
                af_mma_load_k(kf, tK, LD, kt);
                af_mma_qk16<BF16>(kt % 2 ? s2 : s, qf, kf);
            }
#pragma unroll
            for (int f = 0; f < 16 / AF_MMA_SN; ++f)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[f][e] += s2[f][e];
        } else {
#pragma unroll
            for (int kt = 0; kt < DM / 16; ++kt) {
                unsigned qf[AF_MMA_QW], kf[AF_MMA_KW];
                af_mma_load_q(qf, sQ, LD, kt);
                af_mma_load_k(kf, tK, LD, kt);
                af_mma_qk16<BF16>(s, qf, kf);
            }
        }
        if constexpr (FP8) {
            // Every lane's key fragments are read: the values go over them while the products
            // are in flight.
            af_syncwarp();
            convert(1);
        }
        float corr[AF_MMA_SLOTS];
        mma_softmax_step<16 / AF_MMA_SN>(s, m, l, lim, lo, true, k0, scale_log2, p.softcap_log2, corr);
        unsigned pf[AF_MMA_PW];
        af_mma_pack_p<PV_BF16>(pf, s);
#pragma unroll
        for (int f = 0; f < OF; ++f) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[f][e] *= corr[af_mma_slot(e)];
        }
        if constexpr (FP8) af_syncwarp();
#pragma unroll
        for (int dt = 0; dt < DM / 16; ++dt) {
            unsigned vf[AF_MMA_VW];
            af_mma_load_v(vf, tV + dt * 16, LD);
            af_mma_pv16<PV_BF16>(&o[dt * (16 / AF_MMA_ON)], pf, vf);
        }
        // Every group (FP8: every lane of this group) is done with this stage before it is
        // loaded again.
        if constexpr (FP8) af_syncwarp();
        else __syncthreads();
    }
    af_cp_async_wait_all();
    if constexpr (FP8) __syncthreads();  // the merge below reuses every group's stages

    // Merge the groups: (max, sum, acc) per row through shared memory (the K/V stages; rows of
    // SO_LD floats, which keeps the fragments' stores at most two-way bank conflicts; only the
    // block's `rows` rows are stored).
    constexpr int SO_LD = DM + 4;
    static_assert(MMA_GROUPS * 16 * (2 + SO_LD) * 4 <= 2 * BC * LD * 2, "the merge fits one 16-bit stage");
    float* sM = reinterpret_cast<float*>(sKV);       // [MMA_GROUPS][16]
    float* sL = sM + MMA_GROUPS * 16;                // [MMA_GROUPS][16]
    float* sO = sL + MMA_GROUPS * 16;                // [MMA_GROUPS][16][SO_LD]
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
                if (af_mma_slot(e) == sl && r < rows) sO[(w * 16 + r) * SO_LD + f * AF_MMA_ON + af_mma_col(e)] = o[f][e];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < rows * DM; idx += MMA_THREADS) {
        const int r = idx / DM, c = idx % DM;
        // E4R: head-dim column c is column c / (DM / 8) of output fragment c % (DM / 8) (the
        // stores above keep the fragments' order, whose bank conflicts are at most two-way).
        const int at = E4R ? c % (DM / 8) * AF_MMA_ON + c / (DM / 8) : c;
        float M = -INFINITY;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) M = fmaxf(M, sM[g * 16 + r]);
        const float base = M == -INFINITY ? 0.f : M;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) {
            const float f = exp2f(sM[g * 16 + r] - base);
            L += sL[g * 16 + r] * f;
            A += sO[(g * 16 + r) * SO_LD + at] * f;
        }
        A *= vscale;
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

template <typename T, int DM, bool QROPE, bool FP8 = false>
AF_DEVICE void decode_mma_body(const AttnParams& p) {
#if defined(AF_NVIDIA)
    static_assert(MMA_DC_MAX_STAGES == 3, "one instance per depth the plan may pick");
    if (p.stages >= 3) decode_mma_stages<T, DM, QROPE, 3, FP8>(p);
    else if (p.stages == 2) decode_mma_stages<T, DM, QROPE, 2, FP8>(p);
    else decode_mma_stages<T, DM, QROPE, 1, FP8>(p);
#else
    // AMD's copies are synchronous: the plan always picks one stage.
    decode_mma_stages<T, DM, QROPE, 1, FP8>(p);
#endif
}
