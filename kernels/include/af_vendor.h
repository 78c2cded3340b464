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
// (two floats to a packed pair, low element first), af_sincos.
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

// ---------------------------------------------------------------- common to both
AF_DEVICE float af_bf2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
AF_DEVICE void af_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
