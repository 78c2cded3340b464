// attnforge: the one header that knows which vendor it compiles for. Op kernels (rope.hip,
// kv_append.hip, attention.hip) include only this and never branch on the vendor.
//
//   AMD    (hipcc, HIP_PLATFORM=amd): hip_runtime.h; wavefront of 64 (gfx9) or 32 (gfx10+, wave32);
//          f16 through clang's _Float16.
//   NVIDIA (nvcc, HIP dialect compiled as CUDA): our own thin mapping, because HIP 5.2's
//          NVIDIA headers do not compile with CUDA 13; warp of 32; f16/bf16 through PTX cvt.
//
// What the kernels may use: AF_DEVICE, AF_WARP, af_shfl_xor (within a warp, offsets < 16 are
// safe on every target), af_shfl (a lane's value), af_exp2_ftz (2^x, fast; subnormal results
// may flush to zero), af_syncwarp (the lanes of one warp / wavefront, with shared-memory
// ordering; only where every group of the block calls it), af_h2f / af_f2h (f16), af_bf2f / af_f2bf (bf16), af_f2h2 / af_f2bf2
// (two floats to a packed pair, low element first), af_sincos, af_sincos_fast, af_cp_async16
// (global to shared) with af_cp_async_commit / _wait_all / _wait<N>, af_ld_coherent / af_ld_coherent2 (floats
// another block of the same kernel stored before a fence: read past the non-coherent L1), and
// the matrix-core fragment operations af_mma_* (see below), and the FP8 e4m3 conversions
// af_e4m3x2_to_f16x2 / af_f2e4m3x2 (KV caches; at the end).
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
AF_DEVICE int af_shfl(int v, int lane) { return __shfl(v, lane); }
AF_DEVICE float af_exp2_ftz(float x) { return exp2f(x); }
// A barrier for one group's lanes, with shared-memory ordering; kernels call it where every
// group of the block reaches the same point, so the block barrier is a valid (stronger) one.
AF_DEVICE void af_syncwarp() { __syncthreads(); }
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
AF_DEVICE int af_shfl(int v, int lane) { return __shfl_sync(0xffffffffu, v, lane); }
// 2^x on the special-function unit alone (ex2.approx.ftz: ~2 ulp, results below 2^-126 flush to
// zero): exp2f adds a range fix-up of several instructions per call around it.
AF_DEVICE float af_exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
AF_DEVICE void af_syncwarp() { __syncwarp(); }
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
// Attention's two products on matrix cores. One group of AF_WARP lanes (a warp; a wavefront)
// owns 16 query rows; kernels use only what follows, the fragment layouts are this header's:
//   AF_MMA_SN      keys of one score fragment (float[4] per lane)
//   AF_MMA_ON      head-dim columns of one output fragment (float[4] per lane)
//   AF_MMA_QW      32-bit words of one query fragment (16 rows x 16 head-dim columns)
//   AF_MMA_PW      32-bit words of one probability fragment (16 rows x 16 keys)
//   AF_MMA_SLOTS   query rows per lane (the softmax statistics it keeps)
//   af_mma_slot(e) / af_mma_row(slot) / af_mma_col(e): element e of a score or output fragment
//       is in row slot af_mma_slot(e), query row af_mma_row(slot) of the group's 16, column
//       af_mma_col(e) (key within the score fragment, head-dim column within the output one);
//       elements e and e+1 (e even) are adjacent columns of one row
//   af_mma_rowmax / af_mma_rowsum: reduce over the lanes that share a row
//   AF_MMA_KW / AF_MMA_VW  32-bit words of a key / value fragment (16 keys x 16 columns)
//   af_mma_load_q(qf, sQ, ld, kt): query fragment, columns 16kt.. of the 16 rows at sQ
//   af_mma_load_k(kf, sK, ld, kt): key fragment, columns 16kt.. of the 16 keys at sK
//   af_mma_qk16<BF16>(s, qf, kf): s[16/SN][4] += Q K^T for those 16 rows and 16 keys
//   af_mma_pack_p<BF16>(pf, s): probabilities of 16 keys (s[16/SN][4]) to an operand, rounded
//       to the input type as FlashAttention does
//   af_mma_load_v(vf, sV, ld): value fragment, the 16 keys x 16 columns at sV
//   af_mma_pv16<BF16>(o, pf, vf): o[16/ON][4] += P V for those 16 keys and 16 columns
// Fragments are loaded separately from the products so one key or value fragment can serve
// several 16-row query tiles (register blocking: fewer shared-memory reads per product).
// Every shared-memory tile is row-major (stride ld 16-bit elements, rows 16-byte aligned).
// Paths:
//   NVIDIA (sm_80+): mma.sync.m16n8k16, fragments by ldmatrix (.trans for V).
//   AMD CDNA2 (gfx90a, wave64): v_mfma_f32_16x16x16{f16,bf16_1k} on the transposed products
//       S^T = K Q^T and O^T = V^T P^T: S^T's accumulator layout is exactly the operand layout
//       P^T needs, so probabilities never leave their registers (as on NVIDIA).
//   Other AMD targets (gfx1030, wave32; no matrix cores): NVIDIA's layout, fragments by plain
//       shared-memory loads, af_mma16816 emulated with shuffles and FMAs. This keeps the one
//       source compiling for every target, but it spills heavily there, so the host does not
//       launch it: without matrix cores (`DeviceProps::matrix_cores`) f16/bf16 take the vector kernels.
// AF_MMA_NATIVE says whether matrix instructions run (1) or the emulation (0).
#if defined(AF_AMD) && defined(__gfx90a__)
#define AF_MFMA 1
#endif

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
AF_DEVICE unsigned af_smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i.
AF_DEVICE void af_ldsm4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(af_smem_addr(p)));
}
AF_DEVICE void af_ldsm4t(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(af_smem_addr(p)));
}
// Global -> shared, 16 bytes, without passing through registers (zero-filled when !valid; src
// must still be a mapped address). Completion: af_cp_async_commit, then af_cp_async_wait_all (or
// af_cp_async_wait<N>: all but the newest N groups).
AF_DEVICE void af_cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(af_smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
AF_DEVICE void af_cp_async_commit() { asm volatile("cp.async.commit_group;"); }
AF_DEVICE void af_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Waits until at most N committed groups are still in flight (N-deep pipelines).
template <int N> AF_DEVICE void af_cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
AF_DEVICE float af_ld_coherent(const float* p) { return __ldcg(p); }
AF_DEVICE float2 af_ld_coherent2(const float* p) { return __ldcg(reinterpret_cast<const float2*>(p)); }
#else
AF_DEVICE float af_ld_coherent(const float* p) { return __uint_as_float(__atomic_load_n(reinterpret_cast<const unsigned*>(p), __ATOMIC_RELAXED)); }
AF_DEVICE float2 af_ld_coherent2(const float* p) { return make_float2(af_ld_coherent(p), af_ld_coherent(p + 1)); }
AF_DEVICE void af_cp_async16(void* dst, const void* src, bool valid) {
    *reinterpret_cast<uint4*>(dst) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
}
AF_DEVICE void af_cp_async_commit() {}
AF_DEVICE void af_cp_async_wait_all() {}
template <int N> AF_DEVICE void af_cp_async_wait() {}
#endif

#if defined(AF_MFMA)
// ------------------------------------------- AMD gfx90a: MFMA 16x16x16, wave64
// Lane l, r = l % 16, q = l / 16: operand A[i][k] holds row r, columns 4q..4q+3; B[k][n] holds
// rows 4q..4q+3 of column r; the accumulator D[i][n] rows 4q..4q+3 of column r. With A = K,
// B = Q^T the accumulator is S^T: lane l holds query row r, keys 4q..4q+3.
#define AF_MMA_NATIVE 1
#define AF_MMA_SN 16
#define AF_MMA_ON 16
#define AF_MMA_QW 2
#define AF_MMA_PW 2
#define AF_MMA_KW 2
#define AF_MMA_VW 2
#define AF_MMA_SLOTS 1
static_assert(AF_WARP == 64, "the MFMA path runs wave64");
typedef _Float16 af_half4 __attribute__((ext_vector_type(4)));
typedef short af_short4 __attribute__((ext_vector_type(4)));
typedef float af_float4 __attribute__((ext_vector_type(4)));
typedef unsigned af_uint2 __attribute__((ext_vector_type(2)));
AF_DEVICE int af_mma_slot(int) { return 0; }
AF_DEVICE int af_mma_row(int) { return threadIdx.x % 16; }
AF_DEVICE int af_mma_col(int e) { return 4 * ((threadIdx.x % 64) / 16) + e; }
AF_DEVICE float af_mma_rowmax(float x) { x = fmaxf(x, af_shfl_xor(x, 16)); return fmaxf(x, af_shfl_xor(x, 32)); }
AF_DEVICE float af_mma_rowsum(float x) { x += af_shfl_xor(x, 16); return x + af_shfl_xor(x, 32); }
template <bool BF16> AF_DEVICE void af_mfma16(float* c, const unsigned* a, const unsigned* b) {
    af_float4 acc = {c[0], c[1], c[2], c[3]};
    const af_uint2 av = {a[0], a[1]}, bv = {b[0], b[1]};
    if constexpr (BF16)
        acc = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(__builtin_bit_cast(af_short4, av), __builtin_bit_cast(af_short4, bv), acc, 0, 0, 0);
    else
        acc = __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(af_half4, av), __builtin_bit_cast(af_half4, bv), acc, 0, 0, 0);
    c[0] = acc[0]; c[1] = acc[1]; c[2] = acc[2]; c[3] = acc[3];
}
AF_DEVICE void af_mma_load_q(unsigned* qf, const unsigned short* sQ, int ld, int kt) {
    const int r = threadIdx.x % 16, q = (threadIdx.x % 64) / 16;
    const uint2 v = *reinterpret_cast<const uint2*>(sQ + r * ld + 16 * kt + 4 * q);
    qf[0] = v.x; qf[1] = v.y;
}
// K rows in the A layout: the same addressing as the queries.
AF_DEVICE void af_mma_load_k(unsigned* kf, const unsigned short* sK, int ld, int kt) { af_mma_load_q(kf, sK, ld, kt); }
template <bool BF16> AF_DEVICE void af_mma_qk16(float (*s)[4], const unsigned* qf, const unsigned* kf) { af_mfma16<BF16>(s[0], kf, qf); }
template <bool BF16> AF_DEVICE void af_mma_pack_p(unsigned* pf, const float (*s)[4]) {
    pf[0] = BF16 ? af_f2bf2(s[0][0], s[0][1]) : af_f2h2(s[0][0], s[0][1]);
    pf[1] = BF16 ? af_f2bf2(s[0][2], s[0][3]) : af_f2h2(s[0][2], s[0][3]);
}
AF_DEVICE void af_mma_load_v(unsigned* vf, const unsigned short* sV, int ld) {
    // A = V^T: row r (head-dim column r), columns 4q..4q+3 (keys): one column of four V rows.
    const int r = threadIdx.x % 16, q = (threadIdx.x % 64) / 16;
    const unsigned short* v = sV + 4 * q * ld + r;
    vf[0] = v[0] | ((unsigned)v[ld] << 16);
    vf[1] = v[2 * ld] | ((unsigned)v[3 * ld] << 16);
}
template <bool BF16> AF_DEVICE void af_mma_pv16(float (*o)[4], const unsigned* pf, const unsigned* vf) { af_mfma16<BF16>(o[0], vf, pf); }
#else
// ------------------------------------------- NVIDIA's m16n8k16 layout (32 lanes)
// g = lane / 4, t = lane % 4: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][..], a[2] = A[g][2t+8, 2t+9],
// a[3] = A[g+8][2t+8, ..]; b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]; c[0..1] = C[g][2t, 2t+1],
// c[2..3] = C[g+8][2t, 2t+1] (two 16-bit elements per word, the lower index in the low half).
#define AF_MMA_SN 8
#define AF_MMA_ON 8
#define AF_MMA_QW 4
#define AF_MMA_PW 4
#define AF_MMA_KW 4
#define AF_MMA_VW 4
#define AF_MMA_SLOTS 2
// AF_MMA_M16N8K16: fragments are in this layout, so a kernel may build operands in registers
// itself (mma_decode.h's e4m3 decode does), calling af_mma16816 on them.
#define AF_MMA_M16N8K16 1
static_assert(AF_WARP == 32, "the m16n8k16 layout is for groups of 32 lanes (wave32 on AMD)");
#if !defined(AF_NVIDIA)
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
AF_DEVICE int af_mma_slot(int e) { return e >> 1; }
AF_DEVICE int af_mma_row(int slot) { return (threadIdx.x % 32) / 4 + 8 * slot; }
AF_DEVICE int af_mma_col(int e) { return 2 * (threadIdx.x % 4) + (e & 1); }
AF_DEVICE float af_mma_rowmax(float x) { x = fmaxf(x, af_shfl_xor(x, 1)); return fmaxf(x, af_shfl_xor(x, 2)); }
AF_DEVICE float af_mma_rowsum(float x) { x += af_shfl_xor(x, 1); return x + af_shfl_xor(x, 2); }
AF_DEVICE void af_mma_load_q(unsigned* qf, const unsigned short* sQ, int ld, int kt) {
    const int lane = threadIdx.x % 32;
#if defined(AF_NVIDIA)
    const int i = lane / 8;  // matrices: rows 0-7 / 8-15 x columns 0-7 / 8-15 -> a[0..3]
    af_ldsm4(qf, sQ + (lane % 8 + 8 * (i % 2)) * ld + 16 * kt + 8 * (i / 2));
#else
    const int g = lane / 4, t = lane % 4;
    const unsigned short* q = sQ + g * ld + 16 * kt + 2 * t;
    qf[0] = *reinterpret_cast<const unsigned*>(q);
    qf[1] = *reinterpret_cast<const unsigned*>(q + 8 * ld);
    qf[2] = *reinterpret_cast<const unsigned*>(q + 8);
    qf[3] = *reinterpret_cast<const unsigned*>(q + 8 * ld + 8);
#endif
}
// {b[0], b[1]} of keys 0-7, then of keys 8-15.
AF_DEVICE void af_mma_load_k(unsigned* kf, const unsigned short* sK, int ld, int kt) {
    const int lane = threadIdx.x % 32;
#if defined(AF_NVIDIA)
    const int i = lane / 8;
    af_ldsm4(kf, sK + (lane % 8 + 8 * (i / 2)) * ld + 16 * kt + 8 * (i % 2));
#else
    const int g = lane / 4, t = lane % 4;
    const unsigned short* k = sK + g * ld + 16 * kt + 2 * t;
    kf[0] = *reinterpret_cast<const unsigned*>(k);
    kf[1] = *reinterpret_cast<const unsigned*>(k + 8);
    kf[2] = *reinterpret_cast<const unsigned*>(k + 8 * ld);
    kf[3] = *reinterpret_cast<const unsigned*>(k + 8 * ld + 8);
#endif
}
template <bool BF16> AF_DEVICE void af_mma_qk16(float (*s)[4], const unsigned* qf, const unsigned* kf) {
    af_mma16816<BF16>(s[0], qf, kf);
    af_mma16816<BF16>(s[1], qf, kf + 2);
}
template <bool BF16> AF_DEVICE void af_mma_pack_p(unsigned* pf, const float (*s)[4]) {
    // Keys 0-7 are a[0] (row g) and a[1] (row g+8); keys 8-15 are a[2] and a[3].
    pf[0] = BF16 ? af_f2bf2(s[0][0], s[0][1]) : af_f2h2(s[0][0], s[0][1]);
    pf[1] = BF16 ? af_f2bf2(s[0][2], s[0][3]) : af_f2h2(s[0][2], s[0][3]);
    pf[2] = BF16 ? af_f2bf2(s[1][0], s[1][1]) : af_f2h2(s[1][0], s[1][1]);
    pf[3] = BF16 ? af_f2bf2(s[1][2], s[1][3]) : af_f2h2(s[1][2], s[1][3]);
}
// {b[0], b[1]} of columns 0-7, then of columns 8-15.
AF_DEVICE void af_mma_load_v(unsigned* vf, const unsigned short* sV, int ld) {
    const int lane = threadIdx.x % 32;
#if defined(AF_NVIDIA)
    const int i = lane / 8;  // transposed matrices: keys 0-7 / 8-15 x columns 0-7 / 8-15
    af_ldsm4t(vf, sV + (lane % 8 + 8 * (i % 2)) * ld + 8 * (i / 2));
#else
    const int g = lane / 4, t = lane % 4;
    const unsigned short* v = sV + 2 * t * ld + g;
    vf[0] = v[0] | ((unsigned)v[ld] << 16);
    vf[1] = v[8 * ld] | ((unsigned)v[9 * ld] << 16);
    vf[2] = v[8] | ((unsigned)v[ld + 8] << 16);
    vf[3] = v[8 * ld + 8] | ((unsigned)v[9 * ld + 8] << 16);
#endif
}
template <bool BF16> AF_DEVICE void af_mma_pv16(float (*o)[4], const unsigned* pf, const unsigned* vf) {
    af_mma16816<BF16>(o[0], pf, vf);
    af_mma16816<BF16>(o[1], pf, vf + 2);
}
#endif

// ---------------------------------------------------------------- common to both
AF_DEVICE float af_bf2f(unsigned short b) { return __uint_as_float(((unsigned int)b) << 16); }
// Byte i of the result is byte (sel >> 4i) & 7 of {a, b} (a's bytes 0-3, b's 4-7): NVIDIA's prmt.
AF_DEVICE unsigned af_byte_perm(unsigned a, unsigned b, unsigned sel) { return __byte_perm(a, b, sel); }
AF_DEVICE void af_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
AF_DEVICE void af_sincos_fast(float a, float* s, float* c) { __sincosf(a, s, c); }  // |a| <= pi

// ---------------------------------------------------------------- FP8 e4m3 (KV caches)
// OCP e4m3 ("e4m3fn"): 4-bit exponent (bias 7), 3-bit mantissa, no infinities, 0x7f / 0xff NaN,
// largest finite 448. af_e4m3x2_to_f16x2(w): the two e4m3 of w (low byte first) to a packed
// f16 pair, exactly (every e4m3 is an f16). af_f2e4m3x2(lo, hi): two floats to two e4m3 (lo in
// the low byte), rounded to nearest even, saturating at +-448 (infinities too), NaN to NaN:
// NVIDIA's cvt.rn.satfinite and the host's conversion (the `float8` crate) give the same bits.
// NVIDIA sm_89+ converts in hardware; sm_80 and AMD (gfx90a, gfx1030: no FP8 conversions)
// compute the same results in integer and float arithmetic.
// One e4m3 to f16 bits: its exponent and mantissa fields shifted into f16's (bias 15) give the
// value times 2^-8 (subnormals too), and the multiply by 256 is exact.
AF_DEVICE unsigned short af_e4m3_to_f16_sw(unsigned b) {
    if ((b & 0x7fu) == 0x7fu) return 0x7fffu;
    return af_f2h(af_h2f((unsigned short)((b & 0x7fu) << 7)) * 256.f) | (unsigned short)((b & 0x80u) << 8);
}
// One float to e4m3: the magnitude rounded on e4m3's grid (2^-9 steps below 2^-6, three
// mantissa bits above; rintf rounds to nearest even), clamped at 448, then encoded through f16.
AF_DEVICE unsigned af_f2e4m3_sw(float x) {
    if (x != x) return 0x7fu;
    const unsigned sign = (__float_as_uint(x) >> 24) & 0x80u;
    const float a = fminf(fabsf(x), 480.f);
    float r;
    if (a < 0.015625f) {
        r = rintf(a * 512.f) * (1.f / 512.f);
    } else {
        int e;
        frexpf(a, &e);  // a in [2^(e-1), 2^e): the unit is 2^(e-4)
        r = ldexpf(rintf(ldexpf(a, 4 - e)), e - 4);
    }
    return sign | (af_f2h(fminf(r, 448.f) * (1.f / 256.f)) >> 7);
}
#if defined(AF_NVIDIA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
AF_DEVICE unsigned int af_e4m3x2_to_f16x2(unsigned short w) {
    unsigned int r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(w));
    return r;
}
AF_DEVICE unsigned short af_f2e4m3x2(float lo, float hi) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
#else
AF_DEVICE unsigned int af_e4m3x2_to_f16x2(unsigned short w) { return af_e4m3_to_f16_sw(w & 0xffu) | ((unsigned int)af_e4m3_to_f16_sw(w >> 8) << 16); }
AF_DEVICE unsigned short af_f2e4m3x2(float lo, float hi) { return (unsigned short)(af_f2e4m3_sw(lo) | (af_f2e4m3_sw(hi) << 8)); }
#endif

// ---------------------------------------------------------------- Hopper warpgroup API (sm_90a)
// AF_WGMMA is defined where the sm_90a instructions exist (nvcc -gencode arch=compute_90a): the
// asynchronous warpgroup MMA (wgmma.mma_async, 128 threads, 64 rows a warpgroup), the tensor
// memory accelerator (cp.async.bulk.tensor) with transaction-counting mbarriers, named barriers
// and setmaxnreg. Kernels built on them (attention/wgmma_prefill.h) compile everywhere else to
// a trap: the plan launches them only on sm_90 devices with the sm_90a code object.
//   af_wg_ss<N, BF16>(d, a, b, acc)  d[64 x N] (+)= A[64 x 16] B[16 x N], A and B K-major in
//                                    shared memory (descriptors); acc = 0 overwrites d
//   af_wg_rs<N, BF16>(d, a, b)       d += A B, A in registers (mma.sync m16n8k16's A fragment:
//                                    four 32-bit registers a warp-row), B N-major in shared memory
// Accumulators: N / 2 floats a thread; warp w of the warpgroup owns rows 16w + lane / 4 and
// 16w + lane / 4 + 8; element 4j + e is row (e < 2 ? r : r + 8), column 8j + 2 (lane % 4) + (e & 1).
// af_sw128_desc: a shared-memory matrix descriptor over 128-byte swizzled rows (16-byte chunk c
// of row r stored at chunk c ^ (r % 8)); operand regions start 1024-byte aligned.
// AF_GRID_CONST: a kernel parameter read in place (TMA takes a tensor map's address in
// parameter space); af_trap: ends the kernel with an error (entry points built where their
// instructions do not exist).
#if defined(AF_NVIDIA)
#define AF_GRID_CONST __grid_constant__
AF_DEVICE void af_trap() { __trap(); }
#else
#define AF_GRID_CONST
AF_DEVICE void af_trap() { __builtin_trap(); }
#endif
#if defined(AF_NVIDIA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AF_WGMMA 1
template <int N, bool BF16> AF_DEVICE void af_wg_ss(float* d, unsigned long long a, unsigned long long b, int acc);
template <int N, bool BF16> AF_DEVICE void af_wg_rs(float* d, const unsigned* a, unsigned long long b);
#define AF_WG_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define AF_WG_D64 AF_WG_D32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define AF_WG_O32(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define AF_WG_O64(d) AF_WG_O32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
// One definition per (N, operand form), stamped for f16 and bf16; R: accumulator registers.
// A, B and the accumulate flag (SS) or A's four registers and B (RS) follow the R accumulators:
// their operand numbers are spelled out (PTX takes only literal %n).
#define AF_WG_SS(N, R, IA, IB, IP, TY, BF)                                                                                            \
    template <> AF_DEVICE void af_wg_ss<N, BF>(float* d, unsigned long long a, unsigned long long b, int acc) {                      \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IP ", 0;\n"                                                              \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " AF_WG_D##R "}, %" #IA ", %" #IB ", p, 1, 1, 0, 0;\n}\n" \
                     : AF_WG_O##R(d)                                                                                                  \
                     : "l"(a), "l"(b), "r"(acc));                                                                                     \
    }
#define AF_WG_RS(N, R, I0, I1, I2, I3, IB, IP, TY, BF)                                                                                \
    template <> AF_DEVICE void af_wg_rs<N, BF>(float* d, const unsigned* a, unsigned long long b) {                                  \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IP ", 0;\n"                                                              \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " AF_WG_D##R "}, {%" #I0 ", %" #I1 ", %" #I2 ", %" #I3 "}, %" #IB ", p, 1, 1, 1;\n}\n" \
                     : AF_WG_O##R(d)                                                                                                  \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                                                   \
    }
AF_WG_SS(64, 32, 32, 33, 34, "f16", false) AF_WG_SS(64, 32, 32, 33, 34, "bf16", true)
AF_WG_SS(128, 64, 64, 65, 66, "f16", false) AF_WG_SS(128, 64, 64, 65, 66, "bf16", true)
AF_WG_RS(64, 32, 32, 33, 34, 35, 36, 37, "f16", false) AF_WG_RS(64, 32, 32, 33, 34, 35, 36, 37, "bf16", true)
AF_WG_RS(128, 64, 64, 65, 66, 67, 68, 69, "f16", false) AF_WG_RS(128, 64, 64, 65, 66, 67, 68, 69, "bf16", true)
#undef AF_WG_SS
#undef AF_WG_RS
#undef AF_WG_D32
#undef AF_WG_D64
#undef AF_WG_O32
#undef AF_WG_O64
AF_DEVICE void af_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
AF_DEVICE void af_wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> AF_DEVICE void af_wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMA.
template <int R> AF_DEVICE void af_wg_pin(float* d) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
AF_DEVICE unsigned long long af_sw128_desc(const void* p, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((af_smem_addr(p) & 0x3ffffu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
// mbarriers: init (count arrivals), arrive, arrive announcing `bytes` of TMA transactions, wait
// for a phase's parity.
AF_DEVICE void af_mbar_init(unsigned long long* b, unsigned count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(af_smem_addr(b)), "r"(count)); }
AF_DEVICE void af_mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
AF_DEVICE void af_mbar_expect_tx(unsigned long long* b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(af_smem_addr(b)), "r"(bytes) : "memory");
}
AF_DEVICE void af_mbar_arrive(unsigned long long* b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(af_smem_addr(b)) : "memory"); }
AF_DEVICE void af_mbar_wait(unsigned long long* b, unsigned parity) {
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(af_smem_addr(b)),
                 "r"(parity)
                 : "memory");
}
// One box of a 3-D tensor map (a kernel parameter: `map` is its generic address; coordinates
// innermost first) into dst, completing on bar.
AF_DEVICE void af_tma_load3(void* dst, const void* map, unsigned long long* bar, int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(af_smem_addr(dst)), "l"(map), "r"(c0), "r"(c1),
                 "r"(c2), "r"(af_smem_addr(bar))
                 : "memory");
}
// Named barriers over `threads` threads (two consumer warpgroups taking turns).
AF_DEVICE void af_bar_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory"); }
AF_DEVICE void af_bar_arrive(int id, int threads) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory"); }
template <int R> AF_DEVICE void af_setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R)); }
template <int R> AF_DEVICE void af_setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R)); }
#endif
