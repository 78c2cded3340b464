// RoPE on Q and K in place, and the fused variant that writes rotated K (and V) straight into
// the KV cache. One thread per (token, unit, head slice); a unit is VP consecutive rotary pairs,
// so the angles (f64 product and reduction, then f32 sincos) are computed once per token, pair
// and slice and applied to the slice's heads (heads blockIdx.y, + gridDim.y, ...: a decode step
// of a few tokens spreads its heads over blocks instead of walking them in one thread). Passthrough dims (>= rotary_dim) are untouched in place and copied in
// the fused variant.
#include "include/af_common.h"

// Rotates pair unit `u` of every head of one token. Heads go HU at a time, all loads before
// any store: in place, the compiler cannot move a load above an earlier store to the same
// array, so without this each head's load would wait for the previous head's store.
template <typename T, int VP, bool INTER>
AF_DEVICE void rotate_rows(T* base, int heads, int D, int half, int u, const float* c, const float* s, T* out_base, int h1, int hs) {
    constexpr int HU = VP >= 8 ? 2 : 4;  // keeps the widest variant near 80 registers
    constexpr bool inter = INTER;
    for (int h0 = h1; h0 < heads; h0 += HU * hs) {
        float a[HU][INTER ? 2 * VP : VP], b[HU][INTER ? 1 : VP];
#pragma unroll
        for (int j = 0; j < HU; ++j) {
            if (h0 + j * hs >= heads) break;
            const T* row = base + (long)(h0 + j * hs) * D;
            if constexpr (!inter) {
                af_load<VP>(row + u * VP, a[j]);
                af_load<VP>(row + half + u * VP, b[j]);
            } else {
                af_load<2 * VP>(row + 2 * u * VP, a[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < HU; ++j) {
            if (h0 + j * hs >= heads) break;
            T* orow = out_base + (long)(h0 + j * hs) * D;
            if constexpr (!inter) {
#pragma unroll
                for (int i = 0; i < VP; ++i) {
                    const float x = a[j][i], y = b[j][i];
                    a[j][i] = x * c[i] - y * s[i];
                    b[j][i] = y * c[i] + x * s[i];
                }
                af_store<VP>(orow + u * VP, a[j]);
                af_store<VP>(orow + half + u * VP, b[j]);
            } else {
#pragma unroll
                for (int i = 0; i < VP; ++i) {
                    const float x = a[j][2 * i], y = a[j][2 * i + 1];
                    a[j][2 * i] = x * c[i] - y * s[i];
                    a[j][2 * i + 1] = y * c[i] + x * s[i];
                }
                af_store<2 * VP>(orow + 2 * u * VP, a[j]);
            }
        }
    }
}

template <typename T, int VP, bool INTER>
AF_DEVICE void rope_body(const RopeParams& p) {
    const int D = p.head_dim, half = p.rotary_dim / 2;
    const int npv = half / VP;                      // pair units per row
    const int CV = 16 / (int)sizeof(T);             // elements per 16-byte chunk
    const int nch = D / CV;                         // copy chunks per row (fused)
    const int units = npv > nch ? npv : nch;
    const long gid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (long)p.tokens * units) return;
    const int t = (int)(gid / units), u = (int)(gid % units);
    const int h1 = blockIdx.y, hs = gridDim.y;  // this thread's head slice
    T* q = reinterpret_cast<T*>(p.q);
    T* k = reinterpret_cast<T*>(p.k);
    T* kc = reinterpret_cast<T*>(p.k_cache);
    const long krow = (p.gather ? (long)reinterpret_cast<const int*>(p.slots)[t] : (long)t) * p.k_stride;
    T* kdst = kc ? kc + (long)reinterpret_cast<const int*>(p.slots)[t] * p.k_heads * D : k + krow;
    if (p.gather && p.k_pos) {
        // Context shift on a hip-fused cache: a slot that holds a position only moves it (its
        // key is unrotated); a key stored rotated is rotated by the shift like anywhere else.
        int* kp = reinterpret_cast<int*>(p.k_pos) + reinterpret_cast<const int*>(p.slots)[t];
        const int old = *kp;
        if (old != AF_ROTATED) {
            if (u == 0 && h1 == 0) *kp = old + reinterpret_cast<const int*>(p.positions)[t];
            return;
        }
    }
    if (u < npv) {
        const int* positions = reinterpret_cast<const int*>(p.positions);
        const double* inv = reinterpret_cast<const double*>(p.inv_freq);
        float c[VP], s[VP];
#pragma unroll
        for (int i = 0; i < VP; ++i) {
            // M-RoPE: the pair's section picks its component of the token's three positions.
            const int pair = u * VP + i;
            const int comp = pair < p.mrope1 ? 0 : (pair < p.mrope2 ? 1 : 2);
            const double pos = (double)positions[(p.mrope ? (long)comp * p.tokens : 0) + t];
            af_rope_cs(pos, inv[pair], p.attention_factor, &c[i], &s[i]);
        }
        if (q) rotate_rows<T, VP, INTER>(q + (long)t * p.q_stride, p.q_heads, D, half, u, c, s, q + (long)t * p.q_stride, h1, hs);
        rotate_rows<T, VP, INTER>(k + krow, p.k_heads, D, half, u, c, s, kdst, h1, hs);
    }
    if (kc && u < nch) {
        // Passthrough dims of K, and V, into the cache.
        const T* v = reinterpret_cast<const T*>(p.v);
        T* vdst = reinterpret_cast<T*>(p.v_cache) + (long)reinterpret_cast<const int*>(p.slots)[t] * p.k_heads * D;
        for (int h = h1; h < p.k_heads; h += hs) {
            const long o = (long)h * D + u * CV;
            if (u * CV >= p.rotary_dim) {
                af_copy<16 / sizeof(T)>(kdst + o, k + krow + o);
            } else if ((u + 1) * CV > p.rotary_dim) {
                for (int e = p.rotary_dim - u * CV; e < CV; ++e) kdst[o + e] = k[krow + o + e];
            }
            af_copy<16 / sizeof(T)>(vdst + o, v + (long)t * p.v_stride + o);
        }
    }
}

// One entry point per (pairs per thread, pairing style, dtype): rope_v{VP}{h|i}_{dtype}, so
// each keeps only its own path's registers (VP from AF_ROPE_VPS).
#define STAMP_ROPE(VP)                                                                 \
    AF_STAMP(rope_v##VP##h, RopeParams, (ROPE_THREADS), rope_body, VP, false)          \
    AF_STAMP(rope_v##VP##i, RopeParams, (ROPE_THREADS), rope_body, VP, true)
AF_ROPE_VPS(STAMP_ROPE)
