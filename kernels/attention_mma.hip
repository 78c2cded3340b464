// Tensor-core prefill for f16/bf16 (hip-flash): FlashAttention-2 with the two products on matrix
// cores through af_mma16816 (include/af_vendor.h: mma.sync on NVIDIA; emulated on AMD until the
// MFMA path lands). attn_prefill_mma{,_qrope}_d{64,128}_{f16,bf16}; head_dim must equal the
// template size (other sizes take the vector-unit kernel in attention.hip).
//
// One block of 4 groups of 32 lanes per (64-query tile, head), the tiles of prefill_body
// (`p.tiles`), so the host side is shared. Group w owns query rows 16w..16w+15 of the tile:
//   S = Q K^T  (16 x 64 per group, f32): Q fragments stay in registers for the whole key loop;
//              K tile in shared memory row-major (a B fragment is one 32-bit load);
//   online softmax in base 2 on the S fragments (a row lives in the 4 lanes of a quad);
//   O += P V   (16 x D per group, f32): P goes from the S accumulator layout straight to A
//              fragments (rounded to the input type, as FlashAttention does); V is stored
//              transposed in shared memory so its B fragments are 32-bit loads too.
// Causal tiles past the diagonal are skipped; GQA by indexing; caches contiguous or paged
// (kv_row). Keys and queries past the ends are masked, never read.
#include "include/af_attention.h"

#define MMA_BR 64
#define MMA_BC 64
#define MMA_THREADS 128

template <typename T> struct MmaIsBf16 { static constexpr bool value = false; };
template <> struct MmaIsBf16<af_bf16> { static constexpr bool value = true; };

template <typename T, int DM, bool QROPE>
AF_DEVICE void prefill_mma_body(const AttnParams& p) {
    constexpr bool BF16 = MmaIsBf16<T>::value;
    constexpr int KLD = DM + 8;      // sK row stride in 16-bit elements (conflict-free fragments)
    constexpr int VLD = MMA_BC + 8;  // sVt row stride
    __shared__ __align__(16) unsigned short sK[MMA_BC * KLD];
    __shared__ __align__(16) unsigned short sVt[DM * VLD];

    const int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
    const int b = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x];
    const int q0 = reinterpret_cast<const int*>(p.tiles)[2 * blockIdx.x + 1];
    const int h = blockIdx.y, kh = h / (p.heads / p.kv_heads);
    const int qbeg = reinterpret_cast<const int*>(p.q_off)[b];
    const int q_len = reinterpret_cast<const int*>(p.q_off)[b + 1] - qbeg;
    const int kv_len = reinterpret_cast<const int*>(p.kv_len)[b];
    const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
    if (QROPE && p.q_pos) {
        // hip-hybrid: rotate this block's query tile once (one sincos per row and pair) into
        // its own rows of `out`, which no other block touches and which are written last;
        // the fragments below are read from there.
        const T* Qt = reinterpret_cast<const T*>(p.q);
        T* O = reinterpret_cast<T*>(p.out);
        const int rows = min(MMA_BR, q_len - q0);
        const int* qp = reinterpret_cast<const int*>(p.q_pos) + qbeg + q0;
        auto rowoff = [&](int r) { return ((long)(qbeg + q0 + r) * p.heads + h) * DM; };
        rope_rows<T>(
            p, rows, DM, tid, MMA_THREADS, [&](int r) { return Qt + rowoff(r); }, [&](int r) { return qp[r]; },
            [&](int r, int d, float x) { O[rowoff(r) + d] = af_from_float<T>(x); });
        __syncthreads();
        Q = reinterpret_cast<const unsigned short*>(p.out);
    }
    const unsigned short* K = reinterpret_cast<const unsigned short*>(p.k);
    const unsigned short* V = reinterpret_cast<const unsigned short*>(p.v);
    const long krs = (long)p.kv_heads * DM;

    // This lane's two query rows (tile rows 16w+g and 16w+g+8).
    const int qi0 = q0 + 16 * w + g, qi1 = qi0 + 8;
    unsigned qa[DM / 16][4];
    {
        const unsigned* r0 = reinterpret_cast<const unsigned*>(Q + ((long)(qbeg + min(qi0, q_len - 1)) * p.heads + h) * DM);
        const unsigned* r1 = reinterpret_cast<const unsigned*>(Q + ((long)(qbeg + min(qi1, q_len - 1)) * p.heads + h) * DM);
#pragma unroll
        for (int kt = 0; kt < DM / 16; ++kt) {
            qa[kt][0] = qi0 < q_len ? r0[kt * 8 + t4] : 0u;
            qa[kt][1] = qi1 < q_len ? r1[kt * 8 + t4] : 0u;
            qa[kt][2] = qi0 < q_len ? r0[kt * 8 + 4 + t4] : 0u;
            qa[kt][3] = qi1 < q_len ? r1[kt * 8 + 4 + t4] : 0u;
        }
    }
    float o[DM / 8][4];
#pragma unroll
    for (int i = 0; i < DM / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int lim0 = p.causal ? kv_len - q_len + qi0 + 1 : kv_len;  // keys < lim visible
    const int lim1 = p.causal ? kv_len - q_len + qi1 + 1 : kv_len;
    const int last_row = min(q0 + MMA_BR, q_len) - 1;
    const int kv_end = p.causal ? min(kv_len, kv_len - q_len + last_row + 1) : kv_len;

    for (int k0 = 0; k0 < kv_end; k0 += MMA_BC) {
        __syncthreads();  // the previous tile's fragments are read
        // K rows: 16-byte chunks, consecutive threads along a row. V: consecutive threads down
        // the keys, so the transposed 16-bit stores of a group fall in different banks.
#pragma unroll
        for (int i = 0; i < MMA_BC * DM / 8 / MMA_THREADS; ++i) {
            const int idx = tid + i * MMA_THREADS;
            const int r = idx / (DM / 8), c = (idx % (DM / 8)) * 8;
            uint4 kv4 = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + r < kv_len) kv4 = *reinterpret_cast<const uint4*>(K + kv_row(p, b, k0 + r) * krs + (long)kh * DM + c);
            *reinterpret_cast<uint4*>(&sK[r * KLD + c]) = kv4;
            const int vr = idx % MMA_BC, vc = (idx / MMA_BC) * 8;
            uint4 vv = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + vr < kv_len) vv = *reinterpret_cast<const uint4*>(V + kv_row(p, b, k0 + vr) * krs + (long)kh * DM + vc);
            const unsigned short* ve = reinterpret_cast<const unsigned short*>(&vv);
#pragma unroll
            for (int e = 0; e < 8; ++e) sVt[(vc + e) * VLD + vr] = ve[e];
        }
        __syncthreads();

        // S = Q K^T: 8 column tiles of 8 keys.
        float s[MMA_BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < MMA_BC / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            const unsigned* krow = reinterpret_cast<const unsigned*>(&sK[(nt * 8 + g) * KLD]);
#pragma unroll
            for (int kt = 0; kt < DM / 16; ++kt) {
                const unsigned bf[2] = {krow[kt * 8 + t4], krow[kt * 8 + 4 + t4]};
                af_mma16816<BF16>(s[nt], qa[kt], bf);
            }
        }
        // Mask, scale, online softmax for rows qi0 (s[.][0..1]) and qi1 (s[.][2..3]).
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < MMA_BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int key = k0 + nt * 8 + 2 * t4 + e;
                s[nt][e] = (key < lim0 && key < kv_len && qi0 < q_len) ? s[nt][e] * p.scale_log2 : -INFINITY;
                s[nt][2 + e] = (key < lim1 && key < kv_len && qi1 < q_len) ? s[nt][2 + e] * p.scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, af_shfl_xor(mx0, 1));
        mx0 = fmaxf(mx0, af_shfl_xor(mx0, 2));
        mx1 = fmaxf(mx1, af_shfl_xor(mx1, 1));
        mx1 = fmaxf(mx1, af_shfl_xor(mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0, base1 = mn1 == -INFINITY ? 0.f : mn1;
        float sum0 = 0.f, sum1 = 0.f;
        unsigned pa[MMA_BC / 16][4];
#pragma unroll
        for (int nt = 0; nt < MMA_BC / 8; ++nt) {
            const float p0 = exp2f(s[nt][0] - base0), p1 = exp2f(s[nt][1] - base0);
            const float p2 = exp2f(s[nt][2] - base1), p3 = exp2f(s[nt][3] - base1);
            sum0 += p0 + p1;
            sum1 += p2 + p3;
            const unsigned lo = BF16 ? af_f2bf2(p0, p1) : af_f2h2(p0, p1);
            const unsigned hi = BF16 ? af_f2bf2(p2, p3) : af_f2h2(p2, p3);
            // Column tile nt is half of key step nt / 2: its words are a[0], a[1] (first half)
            // or a[2], a[3] (second half) of that step's A fragment.
            pa[nt / 2][(nt % 2) * 2 + 0] = lo;
            pa[nt / 2][(nt % 2) * 2 + 1] = hi;
        }
        sum0 += af_shfl_xor(sum0, 1);
        sum0 += af_shfl_xor(sum0, 2);
        sum1 += af_shfl_xor(sum1, 1);
        sum1 += af_shfl_xor(sum1, 2);
        const float c0 = exp2f(m0 - base0), c1 = exp2f(m1 - base1);
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dt = 0; dt < DM / 8; ++dt) {
            o[dt][0] *= c0;
            o[dt][1] *= c0;
            o[dt][2] *= c1;
            o[dt][3] *= c1;
        }
        // O += P V: B fragment (keys 2t.., column d = 8 dt + g) from V transposed.
#pragma unroll
        for (int dt = 0; dt < DM / 8; ++dt) {
            const unsigned* vrow = reinterpret_cast<const unsigned*>(&sVt[(dt * 8 + g) * VLD]);
#pragma unroll
            for (int ks = 0; ks < MMA_BC / 16; ++ks) {
                const unsigned bf[2] = {vrow[ks * 8 + t4], vrow[ks * 8 + 4 + t4]};
                af_mma16816<BF16>(o[dt], pa[ks], bf);
            }
        }
    }
    // Rows past q_len are not written (their l is 0).
    const float inv0 = qi0 < q_len ? 1.f / l0 : 0.f, inv1 = qi1 < q_len ? 1.f / l1 : 0.f;
    unsigned* o0 = reinterpret_cast<unsigned*>(reinterpret_cast<unsigned short*>(p.out) + ((long)(qbeg + min(qi0, q_len - 1)) * p.heads + h) * DM);
    unsigned* o1 = reinterpret_cast<unsigned*>(reinterpret_cast<unsigned short*>(p.out) + ((long)(qbeg + min(qi1, q_len - 1)) * p.heads + h) * DM);
#pragma unroll
    for (int dt = 0; dt < DM / 8; ++dt) {
        if (qi0 < q_len) o0[dt * 4 + t4] = BF16 ? af_f2bf2(o[dt][0] * inv0, o[dt][1] * inv0) : af_f2h2(o[dt][0] * inv0, o[dt][1] * inv0);
        if (qi1 < q_len) o1[dt * 4 + t4] = BF16 ? af_f2bf2(o[dt][2] * inv1, o[dt][3] * inv1) : af_f2h2(o[dt][2] * inv1, o[dt][3] * inv1);
    }
}

// _qrope: queries rotated inside (hip-hybrid; keys arrive rotated).
#define STAMP_MMA_KIND(KIND, QR, DM)                                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_prefill_mma##KIND##_d##DM##_f16(AttnParams p) { prefill_mma_body<af_f16, DM, QR>(p); } \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attn_prefill_mma##KIND##_d##DM##_bf16(AttnParams p) { prefill_mma_body<af_bf16, DM, QR>(p); }
#define STAMP_MMA(DM) STAMP_MMA_KIND(, false, DM) STAMP_MMA_KIND(_qrope, true, DM)
STAMP_MMA(64)
STAMP_MMA(128)
