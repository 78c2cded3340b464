// attnforge kernel helpers shared by every op: storage types, conversion, vector loads, and the
// macro that stamps extern "C" entry points per dtype ({op}_{dtype}).
#pragma once
#include "af_vendor.h"
#include "af_contract.h"

struct af_f16 { unsigned short x; };
struct af_bf16 { unsigned short x; };
struct af_e4m3 { unsigned char x; };  // FP8 KV pools only (af_vendor.h's conversions)

AF_DEVICE float af_to_float(float v) { return v; }
AF_DEVICE float af_to_float(af_f16 v) { return af_h2f(v.x); }
AF_DEVICE float af_to_float(af_bf16 v) { return af_bf2f(v.x); }
AF_DEVICE float af_to_float(af_e4m3 v) { return af_h2f((unsigned short)af_e4m3x2_to_f16x2(v.x)); }

// Logit soft-capping in base 2 (AttnParams.softcap_log2 = cap * log2(e), 0 when off; then
// scale_log2 = scale / cap): y = x * scale_log2 of a raw score x becomes cap * tanh(scale * x /
// cap) * log2(e). af_cap2 takes y; kernels that scale Q ahead have y as their dot product.
AF_DEVICE float af_cap2(float y, float softcap_log2) { return softcap_log2 > 0.f ? softcap_log2 * tanhf(y) : y; }
AF_DEVICE float af_logit2(float x, float scale_log2, float softcap_log2) { return af_cap2(x * scale_log2, softcap_log2); }

// Attention sinks (gpt-oss): the softmax-denominator term of query head h for a row whose
// running maximum is m (base 2), 2^(sink_h log2(e) - m); 0 without sinks. Every kernel adds it
// to the row's sum when it normalises (the split-K merges once, over all splits).
AF_DEVICE float af_sink_term(af_ptr sinks, int h, float m) {
    return sinks ? exp2f(reinterpret_cast<const float*>(sinks)[h] * 1.4426950408889634f - m) : 0.f;
}

// Log-sum-exp output (natural log) of a row whose running maximum is m (base 2) and whose sum of
// the keys' weights relative to it is l, with head h's sink when there are sinks:
// ln(2^m l + e^sink), taken about the larger of the two terms (a sink far above every logit
// would overflow 2^(sink - m)). Written by one thread per row, at lse[row] (row = token * heads
// + head), when lse is set.
AF_DEVICE void af_store_lse(af_ptr lse, long row, float m, float l, af_ptr sinks, int h) {
    if (!lse) return;
    float r = m + log2f(l);
    if (sinks) {
        const float s = reinterpret_cast<const float*>(sinks)[h] * 1.4426950408889634f;
        const float hi = fmaxf(r, s);
        r = hi + log2f(exp2f(r - hi) + exp2f(s - hi));
    }
    reinterpret_cast<float*>(lse)[row] = r * 0.6931471805599453f;
}

template <typename T> AF_DEVICE T af_from_float(float f);
template <> AF_DEVICE float af_from_float<float>(float f) { return f; }
template <> AF_DEVICE af_f16 af_from_float<af_f16>(float f) { af_f16 r; r.x = af_f2h(f); return r; }
template <> AF_DEVICE af_bf16 af_from_float<af_bf16>(float f) { af_bf16 r; r.x = af_f2bf(f); return r; }
template <> AF_DEVICE af_e4m3 af_from_float<af_e4m3>(float f) { af_e4m3 r; r.x = (unsigned char)af_f2e4m3x2(f, 0.f); return r; }

template <typename T> struct AfIsBf16 { static constexpr bool value = false; };
template <> struct AfIsBf16<af_bf16> { static constexpr bool value = true; };

// Two e4m3 (the low byte first) to a packed pair of T (f16 or bf16), exact: e4m3 -> f16, and
// for bf16 through f32 (every e4m3 is a bf16 too). af_e4m3x8_to: eight (one 8-byte word).
template <typename T> AF_DEVICE unsigned af_e4m3x2_to(unsigned short w) {
    const unsigned h = af_e4m3x2_to_f16x2(w);
    return AfIsBf16<T>::value ? af_f2bf2(af_h2f((unsigned short)(h & 0xffffu)), af_h2f((unsigned short)(h >> 16))) : h;
}
template <typename T> AF_DEVICE uint4 af_e4m3x8_to(uint2 w) {
    return make_uint4(af_e4m3x2_to<T>((unsigned short)(w.x & 0xffffu)), af_e4m3x2_to<T>((unsigned short)(w.x >> 16)), af_e4m3x2_to<T>((unsigned short)(w.y & 0xffffu)),
                      af_e4m3x2_to<T>((unsigned short)(w.y >> 16)));
}

// Raw<B>: a B-byte chunk moved by one load or store (B = 2 .. 64).
template <int B> struct Raw;
template <> struct Raw<2> { unsigned short v; };
template <> struct Raw<4> { unsigned int v; };
template <> struct Raw<8> { uint2 v; };
template <> struct Raw<16> { uint4 v; };
template <> struct Raw<32> { uint4 a, b; };
template <> struct Raw<64> { uint4 a, b, c, d; };

// N consecutive elements to/from floats, one wide access (p must be aligned to N * sizeof(T)).
template <int N, typename T> AF_DEVICE void af_load(const T* p, float* out) {
    Raw<N * (int)sizeof(T)> r = *reinterpret_cast<const Raw<N * (int)sizeof(T)>*>(p);
    const T* e = reinterpret_cast<const T*>(&r);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = af_to_float(e[i]);
}
template <typename T> struct Pack2;  // two floats to one 32-bit word of a 16-bit type
template <> struct Pack2<af_f16> { static AF_DEVICE unsigned int f(float a, float b) { return af_f2h2(a, b); } };
template <> struct Pack2<af_bf16> { static AF_DEVICE unsigned int f(float a, float b) { return af_f2bf2(a, b); } };
template <int N, typename T> AF_DEVICE void af_store(T* p, const float* in) {
    Raw<N * (int)sizeof(T)> r;
    if constexpr (sizeof(T) == 2 && N % 2 == 0) {
        unsigned int* w = reinterpret_cast<unsigned int*>(&r);
#pragma unroll
        for (int i = 0; i < N / 2; ++i) w[i] = Pack2<T>::f(in[2 * i], in[2 * i + 1]);
    } else {
        T* e = reinterpret_cast<T*>(&r);
#pragma unroll
        for (int i = 0; i < N; ++i) e[i] = af_from_float<T>(in[i]);
    }
    *reinterpret_cast<Raw<N * (int)sizeof(T)>*>(p) = r;
}
// Copies N elements unchanged.
template <int N, typename T> AF_DEVICE void af_copy(T* dst, const T* src) {
    *reinterpret_cast<Raw<N * (int)sizeof(T)>*>(dst) = *reinterpret_cast<const Raw<N * (int)sizeof(T)>*>(src);
}

// The one entry-point stamp: `extern "C" __global__ void NAME_DT(PARAMS p)` running the template
// body BODY<T, ...>(p), with __launch_bounds__ BOUNDS (parenthesised: (threads) or (threads, min
// blocks)). Symbols are {op}[_{variant}]_{dtype}; backend-hip's `Kernel::symbol` builds the same
// names, and a test checks every kernel a plan can choose against what the compilers emitted.
#define AF_ENTRY(NAME, DT, T, PARAMS, BOUNDS, BODY, ...) \
    extern "C" __global__ void __launch_bounds__ BOUNDS NAME##_##DT(PARAMS p) { BODY<T, ##__VA_ARGS__>(p); }
// Every dtype (f32, f16, bf16).
#define AF_STAMP(NAME, PARAMS, BOUNDS, BODY, ...)                     \
    AF_ENTRY(NAME, f32, float, PARAMS, BOUNDS, BODY, ##__VA_ARGS__)   \
    AF_ENTRY(NAME, f16, af_f16, PARAMS, BOUNDS, BODY, ##__VA_ARGS__)  \
    AF_ENTRY(NAME, bf16, af_bf16, PARAMS, BOUNDS, BODY, ##__VA_ARGS__)
// The 16-bit dtypes (matrix-core kernels).
#define AF_STAMP16(NAME, PARAMS, BOUNDS, BODY, ...)                   \
    AF_ENTRY(NAME, f16, af_f16, PARAMS, BOUNDS, BODY, ##__VA_ARGS__)  \
    AF_ENTRY(NAME, bf16, af_bf16, PARAMS, BOUNDS, BODY, ##__VA_ARGS__)

// RoPE angle for one pair: f64 product and reduction (f32 would lose ~1e-2 rad at position 1e6),
// then f32 sincos; cos and sin times the scaling's multiplier. FAST (f16/bf16 matrix-core
// kernels) reduces to [-pi, pi] and takes the hardware sincos there (absolute error about 1e-6,
// against f16/bf16 rounding of 1e-3); otherwise [0, 2pi) and the precise sincos.
template <bool FAST = false>
AF_DEVICE void af_rope_cs(double pos, double inv_freq, float factor, float* c, float* s) {
    double a = pos * inv_freq;
    if (FAST) {
        a -= 6.283185307179586 * rint(a * 0.15915494309189535);
        af_sincos_fast((float)a, s, c);
    } else {
        a -= 6.283185307179586 * floor(a * 0.15915494309189535);
        af_sincos((float)a, s, c);
    }
    *s *= factor;
    *c *= factor;
}
// Per-slot position of a key stored already rotated (hip-fused caches; see kv_append.hip).
#define AF_ROTATED (-2147483647 - 1)
