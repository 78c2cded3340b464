// attnforge: the one header that knows which vendor it compiles for. Op kernels (rope.hip,
// kv_append.hip, attention.hip) include only this and never branch on the vendor.
//
//   AMD    (hipcc, HIP_PLATFORM=amd): hip_runtime.h; wavefront of 64 (gfx9) or 32 (gfx10+, wave32);
//          f16 through clang's _Float16.
//   NVIDIA (nvcc, HIP dialect compiled as CUDA): our own thin mapping, because HIP 5.2's
//          NVIDIA headers do not compile with CUDA 13; warp of 32; f16/bf16 through PTX cvt.
//
// What the kernels may use: AF_DEVICE, AF_WARP, af_shfl_xor (within a warp, offsets < 16 are
// safe on every target), af_h2f / af_f2h (f16), af_bf2f / af_f2bf (bf16), af_f2h2 / af_f2bf2
// (two floats to a packed pair, low element first), af_sincos, af_mma16816 (a 16x8x16 matrix
// product over 32 lanes; see below).
#pragma once

#if defined(__HIP_PLATFORM_AMD__) || (defined(__HIP__) && !defined(__CUDACC__))
// ---------------------------------------------------------------- AMD
#include <hip/hip_runtime.h>
#define AF_AMD 1
#define AF_DEVICE __device__ __forceinline__
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define AF_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define AF_WARP 64
#endif
AF_DEVICE float af_shfl_xor(float v, int mask) { return __shfl_xor(v, mask); }
AF_DEVICE float af_h2f(unsigned short h) { return (float)__builtin_bit_cast(_Float16, h); }
AF_DEVICE unsigned short af_f2h(float f) { return __builtin_bit_cast(unsigned short, (_Float16)f); }
AF_DEVICE unsigned short af_f2bf(float f) {
    unsigned int u = __builtin_bit_cast(unsigned int, f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                     // nearest even
    return (unsigned short)(u >> 16);
}
AF_DEVICE unsigned int af_f2h2(float lo, float hi) { return af_f2h(lo) | ((unsigned int)af_f2h(hi) << 16); }
AF_DEVICE unsigned int af_f2bf2(float lo, float hi) { return af_f2bf(lo) | ((unsigned int)af_f2bf(hi) << 16); }
#else
// ---------------------------------------------------------------- NVIDIA
#define AF_NVIDIA 1
#define AF_DEVICE __device__ __forceinline__
#define AF_WARP 32
AF_DEVICE float af_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
AF_DEVICE float af_h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
AF_DEVICE unsigned short af_f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
AF_DEVICE unsigned short af_f2bf(float f) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// One instruction converts two floats (sm_80+): the first operand lands in the high half.
AF_DEVICE unsigned int af_f2h2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
AF_DEVICE unsigned int af_f2bf2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

// ---------------------------------------------------------------- matrix cores
// af_mma16816<BF16>(c, a, b): c (16x8, f32) += a (16x16) * b (16x8), f16 or bf16 inputs, over one
// group of 32 lanes (a warp on NVIDIA; half a wave64 or a wave32 on AMD), in the register layout
// of NVIDIA's mma.m16n8k16: with g = lane / 4, t = lane % 4,
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   c[0..1] = C[g][2t, 2t+1]                          c[2..3] = C[g+8][2t, 2t+1]
// (two 16-bit elements per word, the lower index in the low half). NVIDIA: one mma.sync (sm_80+).
// AMD: emulated with 32 width-32 shuffles and 64 FMAs per call (correct on every target; an MFMA
// path for gfx90a with its own fragment layout is the next step). AF_MMA_NATIVE says which.
#if defined(AF_NVIDIA)
#define AF_MMA_NATIVE 1
template <bool BF16> AF_DEVICE void af_mma16816(float* c, const unsigned* a, const unsigned* b);
template <> AF_DEVICE void af_mma16816<false>(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> AF_DEVICE void af_mma16816<true>(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#else
#define AF_MMA_NATIVE 0
template <bool BF16> AF_DEVICE float af_lo16(unsigned w) {
    return BF16 ? __uint_as_float(w << 16) : af_h2f((unsigned short)(w & 0xffffu));
}
template <bool BF16> AF_DEVICE float af_hi16(unsigned w) {
    return BF16 ? __uint_as_float(w & 0xffff0000u) : af_h2f((unsigned short)(w >> 16));
}
template <bool BF16> AF_DEVICE float af_dot2(unsigned x, unsigned y) {
    return af_lo16<BF16>(x) * af_lo16<BF16>(y) + af_hi16<BF16>(x) * af_hi16<BF16>(y);
}
template <bool BF16> AF_DEVICE void af_mma16816(float* c, const unsigned* a, const unsigned* b) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const int la = 4 * g + u, lb0 = 8 * t + u, lb1 = 8 * t + 4 + u;  // A row g; B columns 2t, 2t+1
        const unsigned a0 = __shfl((int)a[0], la, 32), a1 = __shfl((int)a[1], la, 32);
        const unsigned a2 = __shfl((int)a[2], la, 32), a3 = __shfl((int)a[3], la, 32);
        const unsigned b00 = __shfl((int)b[0], lb0, 32), b01 = __shfl((int)b[1], lb0, 32);
        const unsigned b10 = __shfl((int)b[0], lb1, 32), b11 = __shfl((int)b[1], lb1, 32);
        c[0] += af_dot2<BF16>(a0, b00) + af_dot2<BF16>(a2, b01);
        c[1] += af_dot2<BF16>(a0, b10) + af_dot2<BF16>(a2, b11);
        c[2] += af_dot2<BF16>(a1, b00) + af_dot2<BF16>(a3, b01);
        c[3] += af_dot2<BF16>(a1, b10) + af_dot2<BF16>(a3, b11);
    }
}
#endif

// ---------------------------------------------------------------- common to both
AF_DEVICE float af_bf2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
AF_DEVICE void af_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
