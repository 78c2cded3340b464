// Hopper prefill for f16/bf16 (hip-flash and hip-fused's plain attention, every backend's
// attention over contiguous rows): FlashAttention-3's structure on the vendor header's warpgroup
// API (af_wg_*, af_tma_load3, af_mbar_*; sm_90a only, a trap elsewhere).
// attn_prefill_wgmma_d{64,128}_{f16,bf16}: head_dim must equal the size, K/V contiguous rows
// (a contiguous cache or plain K/V: page_size 0), no RoPE inside, no FP8; the plan picks it on
// sm_90 devices and the matrix-core kernel (mma_prefill.h) for everything else.
//
// One block of WG_THREADS = 3 warpgroups per (query tile of WG_BM = 128 rows, head), from the
// host's tile list (heaviest causal tiles first):
// - warpgroup 0 produces: one thread loads the Q tile once and K and V tiles of WG_BN = 128
//   keys into WG_STAGES stages by TMA (tensor maps in the parameters, 128-byte swizzle, rows past
//   the end zero-filled), each tile completing on an mbarrier of its own; it waits for both
//   consumers to free a stage (eight warps arrive) before loading it again;
// - warpgroups 1 and 2 consume, 64 query rows each: S = Q K^T with both operands in shared
//   memory, online softmax on the accumulators (base 2), O += P V with P from registers and V
//   read N-major. S_n is issued together with O += P_{n-1} V_{n-1}, so the softmax of S_n runs
//   while the second product is in flight, and the two consumers take turns issuing (named
//   barriers 1 and 2), so one's softmax also overlaps the other's products;
// - setmaxnreg moves registers from the producer (24 a thread) to the consumers (240).
// Masks (causal bottom-right, sliding window, the end of the keys) only on the tiles that need
// them; soft-cap in af_logit2; sinks join the denominator and the lse is stored where the rows
// normalise. Rows of the Q tile past the entry's queries are computed over finite data (the
// next entry's rows, or zeros past the end) and never stored.
//
// ptxas (13.0) hoists the wait for O += P V (WARPGROUP.DEPBAR) above the softmax, which leaves
// nothing to overlap; it keeps the wait after a shared-memory store, so each consumer thread
// stores its row sums (which depend on every exp2 of the tile) to a scratch word just before the
// wait (bench/lab/wgmma_prefill_lab.cu records the schedules tried).
#pragma once
#include "common.h"

// Dynamic shared memory of the sm_90a prefill (bytes; wgmma_shared_bytes in backend-hip/src/plan.rs):
// the Q tile and WG_STAGES (K, V) stages, 1024-byte aligned inside the allocation.
template <int D> constexpr int wg_shared_bytes() { return WG_BM * D * 2 + WG_STAGES * 2 * WG_BN * D * 2 + 1024; }

#if defined(AF_WGMMA)
// Online softmax over a warpgroup's score tile (WG_BN / 2 floats a thread, af_wg_ss's layout)
// for this thread's two rows: visible keys [lo, lim) of each. Leaves s holding 2^(x - m_new),
// updates the running maxima m and the thread-partial sums l, returns each row's correction.
struct WgSoftmax {
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    int lim[2], lo[2];
    // Logits and their row maxima. The choices are made once per tile: per element they cost a
    // branch each (H200, S=4096: the branches were the most sampled instructions and the kernel
    // ran at 2/3 of the lab's speed). RAW (no soft-cap, scale > 0): s stays unscaled and only
    // the maxima are scaled, so each exponent below is one FFMA; otherwise s holds the scaled
    // (CAP: soft-capped) logits.
    template <bool CAP, bool MASK, bool RAW> AF_DEVICE void logits(float* s, float* mx, int c0, float scale_log2, float softcap_log2) const {
#pragma unroll
        for (int i = 0; i < WG_BN / 2; ++i) {
            float x = RAW ? s[i] : s[i] * scale_log2;
            if (CAP) x = softcap_log2 * tanhf(x);
            const int r = (i >> 1) & 1;
            if (MASK) {
                const int col = c0 + (i / 4) * 8 + (i & 1);
                if (col >= lim[r] || col < lo[r]) x = -INFINITY;
            }
            s[i] = x;
            mx[r] = fmaxf(mx[r], x);
        }
    }
    template <bool RAW> AF_DEVICE void exps(float* s, const float* base, float scale_log2) {
#pragma unroll
        for (int i = 0; i < WG_BN / 2; ++i) {
            const int r = (i >> 1) & 1;
            s[i] = af_exp2_ftz(RAW ? fmaf(s[i], scale_log2, -base[r]) : s[i] - base[r]);
            l[r] += s[i];
        }
    }
    AF_DEVICE void tile(float* s, int k0, bool masked, int lane, float scale_log2, float softcap_log2, float* corr) {
        const int c0 = k0 + (lane & 3) * 2;
        const bool raw = softcap_log2 <= 0.f && scale_log2 > 0.f;
        float mx[2] = {-INFINITY, -INFINITY};
        if (softcap_log2 > 0.f) {
            if (masked) logits<true, true, false>(s, mx, c0, scale_log2, softcap_log2);
            else logits<true, false, false>(s, mx, c0, scale_log2, softcap_log2);
        } else if (raw) {
            if (masked) logits<false, true, true>(s, mx, c0, scale_log2, softcap_log2);
            else logits<false, false, true>(s, mx, c0, scale_log2, softcap_log2);
        } else {
            if (masked) logits<false, true, false>(s, mx, c0, scale_log2, softcap_log2);
            else logits<false, false, false>(s, mx, c0, scale_log2, softcap_log2);
        }
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            if (raw) mx[r] *= scale_log2;  // monotonic: the maximum of the scaled logits
            mx[r] = fmaxf(mx[r], m[r]);
            base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            corr[r] = af_exp2_ftz(m[r] - base[r]);
            m[r] = mx[r];
            l[r] *= corr[r];
        }
        if (raw) exps<true>(s, base, scale_log2);
        else exps<false>(s, base, scale_log2);
    }
};

template <bool BF16> AF_DEVICE unsigned wg_pack2(float lo, float hi) { return BF16 ? af_f2bf2(lo, hi) : af_f2h2(lo, hi); }

// P as af_wg_rs's A fragments: key step kt's four registers are the n8 chunks 2kt (rows r,
// r + 8) and 2kt + 1 (the same rows, 8 keys on).
template <bool BF16> AF_DEVICE void wg_pack_p(const float* s, unsigned (*pa)[4]) {
#pragma unroll
    for (int j = 0; j < WG_BN / 8; ++j) {
        pa[j / 2][(j & 1) * 2] = wg_pack2<BF16>(s[4 * j], s[4 * j + 1]);
        pa[j / 2][(j & 1) * 2 + 1] = wg_pack2<BF16>(s[4 * j + 2], s[4 * j + 3]);
    }
}
// S = Q K^T for consumer g (Q rows 64g.. of sQ). Tiles are D / 64 regions of rows x 128 bytes.
template <int D, bool BF16> AF_DEVICE void wg_issue_qk(float* s, const unsigned char* sQ, const unsigned char* sK, int g) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        const unsigned long long da = af_sw128_desc(sQ + (ks >> 2) * WG_BM * 128 + g * 64 * 128 + (ks & 3) * 32, 16, 1024);
        const unsigned long long db = af_sw128_desc(sK + (ks >> 2) * WG_BN * 128 + (ks & 3) * 32, 16, 1024);
        af_wg_ss<WG_BN, BF16>(s, da, db, ks > 0);
    }
}
// O += P V (V N-major: the leading byte offset steps to the next 64 columns' region, the stride
// byte offset to the next 8 keys).
template <int D, bool BF16> AF_DEVICE void wg_issue_pv(float* o, unsigned (*pa)[4], const unsigned char* sV) {
#pragma unroll
    for (int kt = 0; kt < WG_BN / 16; ++kt) af_wg_rs<D, BF16>(o, pa[kt], af_sw128_desc(sV + kt * 16 * 128, WG_BN * 128, 1024));
}
#endif

template <typename T, int DM>
AF_DEVICE void prefill_wgmma_body(const WgParams& P) {
#if defined(AF_WGMMA)
    const AttnParams& p = P.a;
    constexpr bool BF16 = AfIsBf16<T>::value;
    constexpr int QB = WG_BM * DM * 2, KB = WG_BN * DM * 2;
    extern __shared__ __align__(16) unsigned char wg_smem[];
    __shared__ unsigned long long q_full, k_full[WG_STAGES], v_full[WG_STAGES], empty[WG_STAGES];
    __shared__ volatile float order_sink[256];  // written, never read: orders the wait (see above)
    unsigned char* sQ = wg_smem + ((1024 - (af_smem_addr(wg_smem) & 1023)) & 1023);
    auto sK = [&](int st) { return sQ + QB + 2 * st * KB; };
    auto sV = [&](int st) { return sQ + QB + (2 * st + 1) * KB; };

    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32;
    const int* tiles = reinterpret_cast<const int*>(p.tiles);
    const int b = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const int kbase = reinterpret_cast<const int*>(p.kv_base)[b];
    const int rows = min(WG_BM, q_len - q0);
    const int off = kv_len - q_len;  // causal: query i sees keys up to i + off
    const int kv_end = p.causal ? min(kv_len, off + q0 + rows) : kv_len;
    // Under a sliding window the tile's first row sees no key before af_first_key.
    const int j0 = p.causal ? af_first_key(p, min(kv_len, off + q0 + 1)) / WG_BN : 0;
    const int nt = (kv_end + WG_BN - 1) / WG_BN - j0;  // >= 1: every row sees a key
    if (tid == 0) {
        af_mbar_init(&q_full, 1);
        for (int st = 0; st < WG_STAGES; ++st) af_mbar_init(&k_full[st], 1), af_mbar_init(&v_full[st], 1), af_mbar_init(&empty[st], 8);
        af_mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {
        af_setmaxnreg_dec<24>();
        if (tid != 0) return;
        af_mbar_expect_tx(&q_full, QB);
#pragma unroll
        for (int r = 0; r < DM / 64; ++r) af_tma_load3(sQ + r * WG_BM * 128, &P.tq, &q_full, r * 64, h, qbeg + q0);
        for (int i = 0; i < nt; ++i) {
            const int st = i % WG_STAGES, k0 = kbase + (j0 + i) * WG_BN;
            if (i >= WG_STAGES) af_mbar_wait(&empty[st], ((i / WG_STAGES) & 1) ^ 1);
            af_mbar_expect_tx(&k_full[st], KB);
#pragma unroll
            for (int r = 0; r < DM / 64; ++r) af_tma_load3(sK(st) + r * WG_BN * 128, &P.tk, &k_full[st], r * 64, kh, k0);
            af_mbar_expect_tx(&v_full[st], KB);
#pragma unroll
            for (int r = 0; r < DM / 64; ++r) af_tma_load3(sV(st) + r * WG_BN * 128, &P.tv, &v_full[st], r * 64, kh, k0);
        }
        return;
    }
    af_setmaxnreg_inc<240>();
    const int g = wg - 1, w = (tid % 128) / 32;
    const int g_row0 = q0 + g * 64;                 // this warpgroup's first query (entry-relative)
    const int r_lo = g_row0 + w * 16 + lane / 4;     // this thread's rows: r_lo, r_lo + 8
    WgSoftmax sm;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        sm.lim[r] = p.causal ? min(kv_len, off + r_lo + 8 * r + 1) : kv_len;
        sm.lo[r] = p.causal ? af_first_key(p, sm.lim[r]) : 0;
    }
    // Tiles from mask_from on pass the end of the keys or some row's diagonal; tiles before
    // mask_below start before some row's window.
    const int mask_from = p.causal ? min(kv_len, off + g_row0 + 1) : kv_len;
    const int mask_below = p.causal ? af_first_key(p, min(kv_len, off + g_row0 + 64)) : 0;
    auto masked = [&](int k0) { return k0 + WG_BN > mask_from || k0 < mask_below; };
    // Turn-taking: consumer g issues after af_bar_sync(1 + g) and lets the other go with
    // af_bar_arrive(2 - g); consumer 1 opens consumer 0's first turn and skips its own last
    // arrive (every bar.sync then meets exactly one arrive).
    int turns = nt + 1;
    auto begin = [&]() { af_bar_sync(1 + g, 256); };
    auto end = [&]() {
        if (--turns > 0 || g == 0) af_bar_arrive(2 - g, 256);
    };
    if (g == 1) af_bar_arrive(1, 256);

    float o[DM / 2];
#pragma unroll
    for (int i = 0; i < DM / 2; ++i) o[i] = 0.f;
    float s[WG_BN / 2];
    unsigned pa[WG_BN / 16][4];
    float corr[2];
    af_mbar_wait(&q_full, 0);
    af_mbar_wait(&k_full[0], 0);
    begin();
    af_wg_fence();
    wg_issue_qk<DM, BF16>(s, sQ, sK(0), g);
    af_wg_commit();
    end();
    af_wg_wait<0>();
    af_wg_pin<WG_BN / 2>(s);
    sm.tile(s, j0 * WG_BN, masked(j0 * WG_BN), lane, p.scale_log2, p.softcap_log2, corr);
    wg_pack_p<BF16>(s, pa);
    for (int i = 1; i < nt; ++i) {
        const int st = i % WG_STAGES, prev = (i - 1) % WG_STAGES, k0 = (j0 + i) * WG_BN;
        af_mbar_wait(&k_full[st], (i / WG_STAGES) & 1);
        af_mbar_wait(&v_full[prev], ((i - 1) / WG_STAGES) & 1);
        begin();
        af_wg_fence();
        wg_issue_qk<DM, BF16>(s, sQ, sK(st), g);
        af_wg_commit();
        wg_issue_pv<DM, BF16>(o, pa, sV(prev));
        af_wg_commit();
        end();
        af_wg_wait<1>();
        af_wg_pin<WG_BN / 2>(s);
        sm.tile(s, k0, masked(k0), lane, p.scale_log2, p.softcap_log2, corr);
        order_sink[tid - 128] = sm.l[0] + sm.l[1];  // keeps the softmax ahead of the wait (see above)
        af_wg_wait<0>();
        af_wg_pin<DM / 2>(o);
        if (lane == 0) af_mbar_arrive(&empty[prev]);
#pragma unroll
        for (int k = 0; k < DM / 2; ++k) o[k] *= corr[(k >> 1) & 1];
        wg_pack_p<BF16>(s, pa);
    }
    const int last = (nt - 1) % WG_STAGES;
    af_mbar_wait(&v_full[last], ((nt - 1) / WG_STAGES) & 1);
    begin();
    af_wg_fence();
    wg_issue_pv<DM, BF16>(o, pa, sV(last));
    af_wg_commit();
    end();
    af_wg_wait<0>();
    af_wg_pin<DM / 2>(o);

    // Normalise and store this thread's two rows (rows past the entry's queries are not written).
    unsigned short* out = reinterpret_cast<unsigned short*>(p.out);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = sm.l[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = r_lo + r * 8;
        if (row >= q0 + rows) continue;
        const float inv = 1.f / (l + af_sink_term(p.sinks, h, sm.m[r]));
        if ((lane & 3) == 0) af_store_lse(p.lse, (long)(qbeg + row) * p.heads + h, sm.m[r], l, p.sinks, h);
        unsigned* orow = reinterpret_cast<unsigned*>(out + o_at(p, qbeg + row, h) + (lane & 3) * 2);
#pragma unroll
        for (int j = 0; j < DM / 8; ++j) orow[4 * j] = wg_pack2<BF16>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
#else
    af_trap();  // sm_90a only: the plan never launches this elsewhere
#endif
}
