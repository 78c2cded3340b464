// Hopper prefill lab (issue 15): a first sm_90a attention prefill kernel on warpgroup MMA
// (wgmma.mma_async) with both of S = Q K^T's operands and V in shared memory (128-byte
// swizzle), P from registers, cp.async double-buffered K/V tiles, two consumer warpgroups of 64
// query rows each, the causal schedule heaviest-first. Standalone: nvcc on the GPU machine, no
// Rust; it checks every shape against a naive f32 kernel and times the 48-shape grid's causal
// GQA shapes. Not part of the library: once it passes and beats kernels/attention/mma_prefill.h,
// it moves behind the vendor header's fragment/tile API (issue 15 item 1), and the next steps
// (TMA loads with mbarriers, a producer warp, ping-pong of the consumer warpgroups) start here.
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I backend-hip/kernels bench/lab/wgmma_prefill_lab.cu -o wglab
//   ./wglab            (checks, then times)     ./wglab check   (checks only)
// or bench/lab/wgmma_lab.sh OUT_DIR on the GPU machine (build, checks under compute-sanitizer,
// timings, then bench/torch_baseline.py --mma in the same call).
// Status (2026-11-30): written and compiled here (nvcc 13.0, sm_90a: 168-209 registers, no
// spills, 12 HGMMA in each D=64 kernel and 16 in each D=128 one), not yet run on a GPU: the
// session that wrote it had no device time left. If D=64 passes and D=128 fails, suspect V's
// descriptor first (LBO: the next 64 columns' region; SBO: the next 8 keys).
// Layouts: Q and O [B][S][H][D], K and V [B][S][Hk][D], f16 or bf16; q_len = kv_len = S.
#include "include/af_common.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

// ------------------------------------------------------------------ warpgroup MMA
// wg_ss<N, BF16>: d[64 x N] (+)= A[64 x 16] B[16 x N], A and B K-major in shared memory
// (descriptors); acc = 0 overwrites d. wg_rs<N, BF16>: d += A B with A in registers (four
// 32-bit registers a warp-row fragment, as mma.sync's m16n8k16 A) and B N-major ("transposed")
// in shared memory. Accumulator d: N/2 floats a thread; warp w of the warpgroup owns rows
// 16w + lane/4 and 16w + lane/4 + 8; element 4j + e is row (e < 2 ? r : r + 8), column
// 8j + 2 (lane % 4) + (e & 1).
template <int N, bool BF16> AF_DEVICE void wg_ss(float* d, unsigned long long a, unsigned long long b, int acc);
template <int N, bool BF16> AF_DEVICE void wg_rs(float* d, const unsigned* a, unsigned long long b);
template <> AF_DEVICE void wg_ss<64, false>(float* d, unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b), "r"(acc));
}
template <> AF_DEVICE void wg_rs<64, false>(float* d, const unsigned* a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <> AF_DEVICE void wg_ss<64, true>(float* d, unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b), "r"(acc));
}
template <> AF_DEVICE void wg_rs<64, true>(float* d, const unsigned* a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <> AF_DEVICE void wg_ss<128, false>(float* d, unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(a), "l"(b), "r"(acc));
}
template <> AF_DEVICE void wg_rs<128, false>(float* d, const unsigned* a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <> AF_DEVICE void wg_ss<128, true>(float* d, unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(a), "l"(b), "r"(acc));
}
template <> AF_DEVICE void wg_rs<128, true>(float* d, const unsigned* a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
AF_DEVICE void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
AF_DEVICE void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> AF_DEVICE void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMA.
template <int R> AF_DEVICE void wg_pin(float* d) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Generic-proxy writes (cp.async, st.shared) made visible to the async proxy wgmma reads through.
AF_DEVICE void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (16-byte units), swizzle mode 1 in bits 62-63. The swizzle acts on address bits, so
// every operand region starts 1024-byte aligned.
AF_DEVICE unsigned long long sw128_desc(const void* p, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((af_smem_addr(p) & 0x3ffffu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

// R rows x D two-byte columns from src (row stride ld elements; rows >= valid zero-filled) into
// D / 64 regions of R rows x 128 bytes: 16-byte chunk c of row r lands at chunk c ^ (r % 8) of
// its row (the 128-byte swizzle; wgmma reads Q and K K-major, V N-major, from this one layout).
template <int R, int D, int THREADS> AF_DEVICE void load_tile(unsigned char* dst, const unsigned short* src, long ld, int valid, int tid) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int i = tid; i < R * CH; i += THREADS) {
        const int r = i / CH, c = i % CH;
        const bool ok = r < valid;
        af_cp_async16(dst + (c >> 3) * R * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4), src + (long)(ok ? r : 0) * ld + c * 8, ok);
    }
}

template <bool BF16> AF_DEVICE unsigned pack2(float lo, float hi) { return BF16 ? af_f2bf2(lo, hi) : af_f2h2(lo, hi); }

constexpr int BM = 128, BN = 128, THREADS = 256;
template <int D> constexpr int smem_bytes() { return BM * D * 2 + 2 * 2 * BN * D * 2 + 1024; }

// One block: BM query rows of one head (warpgroup g: rows 64g..64g+63), K/V tiles of BN keys.
template <bool BF16, int D, bool CAUSAL>
__global__ void __launch_bounds__(THREADS, 1) wg_prefill(const unsigned short* Q, const unsigned short* K, const unsigned short* V, unsigned short* O, int S, int H, int Hk, float scale_log2) {
    constexpr int QB = BM * D * 2, KB = BN * D * 2;
    extern __shared__ __align__(16) unsigned char wg_smem[];
    unsigned char* sQ = wg_smem + ((1024 - (af_smem_addr(wg_smem) & 1023)) & 1023);
    // Stage st: K at sQ + QB + 2 st KB, V right after it.
    auto sK = [&](int st) { return sQ + QB + 2 * st * KB; };
    auto sV = [&](int st) { return sQ + QB + (2 * st + 1) * KB; };
    const int tid = threadIdx.x, g = tid / 128, w = (tid % 128) / 32, lane = tid % 32;
    const int mt = gridDim.x - 1 - blockIdx.x;  // the causal diagonal's longest rows first
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (H / Hk);
    const int q0 = mt * BM;
    const long qld = (long)H * D, kld = (long)Hk * D;
    const unsigned short* Kb = K + (long)b * S * kld + kh * D;
    const unsigned short* Vb = V + (long)b * S * kld + kh * D;
    const int kv_end = CAUSAL ? min(S, q0 + BM) : S;
    const int nt = (kv_end + BN - 1) / BN;

    load_tile<BM, D, THREADS>(sQ, Q + ((long)b * S + q0) * qld + h * D, qld, S - q0, tid);
    load_tile<BN, D, THREADS>(sK(0), Kb, kld, S, tid);
    load_tile<BN, D, THREADS>(sV(0), Vb, kld, S, tid);
    af_cp_async_commit();

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int r_lo = q0 + g * 64 + w * 16 + lane / 4;  // this thread's rows: r_lo, r_lo + 8

    for (int n = 0; n < nt; ++n) {
        const int st = n & 1;
        if (n + 1 < nt) {
            const int k1 = (n + 1) * BN;
            load_tile<BN, D, THREADS>(sK(st ^ 1), Kb + k1 * kld, kld, S - k1, tid);
            load_tile<BN, D, THREADS>(sV(st ^ 1), Vb + k1 * kld, kld, S - k1, tid);
            af_cp_async_commit();
            af_cp_async_wait<1>();
        } else {
            af_cp_async_wait_all();
        }
        fence_proxy_async();
        __syncthreads();

        // S = Q K^T over D / 16 steps of 16.
        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) s[i] = 0.f;
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const unsigned long long da = sw128_desc(sQ + (ks >> 2) * BM * 128 + g * 64 * 128 + (ks & 3) * 32, 16, 1024);
            const unsigned long long db = sw128_desc(sK(st) + (ks >> 2) * BN * 128 + (ks & 3) * 32, 16, 1024);
            wg_ss<BN, BF16>(s, da, db, ks > 0);
        }
        wg_commit();
        wg_wait<0>();
        wg_pin<BN / 2>(s);

        // Online softmax (base 2) over this tile; masked where the tile passes S or the diagonal.
        const int c0 = n * BN + (lane & 3) * 2;
        const bool edge = n * BN + BN > S || (CAUSAL && n * BN + BN - 1 > q0 + g * 64);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) {
            float x = s[i] * scale_log2;
            if (edge) {
                const int col = c0 + (i / 4) * 8 + (i & 1), row = r_lo + ((i >> 1) & 1) * 8;
                if (col >= S || (CAUSAL && col > row)) x = -INFINITY;
            }
            s[i] = x;
            mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], x);
        }
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            const float corr = exp2f(m[r] - base[r]);
            m[r] = mx[r];
            l[r] *= corr;
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                o[4 * j + 2 * r] *= corr;
                o[4 * j + 2 * r + 1] *= corr;
            }
        }
        unsigned pa[BN / 16][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const float p0 = exp2f(s[4 * j] - base[0]), p1 = exp2f(s[4 * j + 1] - base[0]);
            const float p2 = exp2f(s[4 * j + 2] - base[1]), p3 = exp2f(s[4 * j + 3] - base[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            pa[j / 2][(j & 1) * 2] = pack2<BF16>(p0, p1);
            pa[j / 2][(j & 1) * 2 + 1] = pack2<BF16>(p2, p3);
        }

        // O += P V over BN / 16 steps of 16 keys; V N-major: LBO steps to the next 64 columns'
        // region, SBO to the next 8 keys.
        wg_fence();
#pragma unroll
        for (int kt = 0; kt < BN / 16; ++kt) wg_rs<D, BF16>(o, pa[kt], sw128_desc(sV(st) + kt * 16 * 128, BN * 128, 1024));
        wg_commit();
        wg_wait<0>();
        wg_pin<D / 2>(o);
        __syncthreads();  // the stage is reloaded next iteration
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int row = r_lo + r * 8;
        if (row >= S) continue;
        const float inv = 1.f / l[r];
        unsigned* out = reinterpret_cast<unsigned*>(O + ((long)b * S + row) * qld + h * D + (lane & 3) * 2);
#pragma unroll
        for (int j = 0; j < D / 8; ++j) out[4 * j] = pack2<BF16>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
}

// ------------------------------------------------------------------ harness
__global__ void fill_rand(unsigned short* x, long n, unsigned seed, bool bf16) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed * 0x9e3779b9u;
        h ^= h >> 15; h *= 0x2c1b3c6du; h ^= h >> 12; h *= 0x297a2d39u; h ^= h >> 15;
        const float v = (h & 0xffffff) / 8388608.f - 1.f;
        x[i] = bf16 ? af_f2bf(v) : af_f2h(v);
    }
}
__global__ void poison(unsigned short* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] = 0x7fff;  // NaN in both
}
AF_DEVICE float ld2(const unsigned short* p, long i, bool bf16) { return bf16 ? af_bf2f(p[i]) : af_h2f(p[i]); }

// Naive f32 attention: a thread per (batch, head, query row), two passes over the keys.
template <int D> __global__ void ref_attention(const unsigned short* Q, const unsigned short* K, const unsigned short* V, float* O, int B, int S, int H, int Hk, bool causal, float scale, bool bf16) {
    const long t = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (t >= (long)B * S * H) return;
    const int h = t % H, row = (t / H) % S, b = t / ((long)H * S), kh = h / (H / Hk);
    float q[D], acc[D];
    for (int d = 0; d < D; ++d) q[d] = ld2(Q, t * D + d, bf16), acc[d] = 0.f;
    const int end = causal ? row + 1 : S;
    float mx = -INFINITY;
    for (int j = 0; j < end; ++j) {
        const long kb = (((long)b * S + j) * Hk + kh) * D;
        float dot = 0.f;
        for (int d = 0; d < D; ++d) dot += q[d] * ld2(K, kb + d, bf16);
        mx = fmaxf(mx, dot * scale);
    }
    float sum = 0.f;
    for (int j = 0; j < end; ++j) {
        const long kb = (((long)b * S + j) * Hk + kh) * D;
        float dot = 0.f;
        for (int d = 0; d < D; ++d) dot += q[d] * ld2(K, kb + d, bf16);
        const float p = expf(dot * scale - mx);
        sum += p;
        for (int d = 0; d < D; ++d) acc[d] += p * ld2(V, kb + d, bf16);
    }
    for (int d = 0; d < D; ++d) O[t * D + d] = acc[d] / sum;
}

using Kern = void (*)(const unsigned short*, const unsigned short*, const unsigned short*, unsigned short*, int, int, int, float);
static Kern kernel(bool bf16, int D, bool causal) {
#define AF_PICK(BF, DD, C) if (bf16 == BF && D == DD && causal == C) return wg_prefill<BF, DD, C>;
    AF_PICK(false, 64, false) AF_PICK(false, 64, true) AF_PICK(false, 128, false) AF_PICK(false, 128, true)
    AF_PICK(true, 64, false) AF_PICK(true, 64, true) AF_PICK(true, 128, false) AF_PICK(true, 128, true)
#undef AF_PICK
    return nullptr;
}

struct Problem { int B, H, Hk, S, D; bool causal, bf16; };

static void launch(const Problem& p, const unsigned short* q, const unsigned short* k, const unsigned short* v, unsigned short* o) {
    Kern f = kernel(p.bf16, p.D, p.causal);
    const int smem = p.D == 64 ? smem_bytes<64>() : smem_bytes<128>();
    CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    f<<<dim3((p.S + BM - 1) / BM, p.H, p.B), THREADS, smem>>>(q, k, v, o, p.S, p.H, p.Hk, 1.4426950408889634f / sqrtf((float)p.D));
}

struct Buffers {
    unsigned short *q, *k, *v, *o;
    Buffers(const Problem& p) {
        const long nq = (long)p.B * p.S * p.H * p.D, nk = (long)p.B * p.S * p.Hk * p.D;
        CK(cudaMalloc(&q, nq * 2)); CK(cudaMalloc(&o, nq * 2)); CK(cudaMalloc(&k, nk * 2)); CK(cudaMalloc(&v, nk * 2));
        fill_rand<<<1024, 256>>>(q, nq, 1, p.bf16); fill_rand<<<1024, 256>>>(k, nk, 2, p.bf16); fill_rand<<<1024, 256>>>(v, nk, 3, p.bf16);
        poison<<<1024, 256>>>(o, nq);
    }
    ~Buffers() { cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); }
};

static float half_to_float(unsigned short h) {
    const int e = (h >> 10) & 31, mant = h & 1023;
    const float v = e == 31 ? (mant ? NAN : INFINITY) : e ? ldexpf(1024 + mant, e - 25) : ldexpf(mant, -24);
    return h >> 15 ? -v : v;
}

static bool check(const Problem& p) {
    Buffers x(p);
    const long nq = (long)p.B * p.S * p.H * p.D;
    float* ref; CK(cudaMalloc(&ref, nq * 4));
    const long rows = (long)p.B * p.S * p.H;
    if (p.D == 64) ref_attention<64><<<(rows + 127) / 128, 128>>>(x.q, x.k, x.v, ref, p.B, p.S, p.H, p.Hk, p.causal, 1.f / sqrtf(64.f), p.bf16);
    else ref_attention<128><<<(rows + 127) / 128, 128>>>(x.q, x.k, x.v, ref, p.B, p.S, p.H, p.Hk, p.causal, 1.f / sqrtf(128.f), p.bf16);
    launch(p, x.q, x.k, x.v, x.o);
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    std::vector<float> r(nq); std::vector<unsigned short> g(nq);
    CK(cudaMemcpy(r.data(), ref, nq * 4, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(g.data(), x.o, nq * 2, cudaMemcpyDeviceToHost));
    cudaFree(ref);
    double worst = 0; long at = -1;
    for (long i = 0; i < nq; ++i) {
        unsigned bits = p.bf16 ? (unsigned)g[i] << 16 : 0;
        float got;
        if (p.bf16) memcpy(&got, &bits, 4);
        else got = half_to_float(g[i]);
        const double e = std::isfinite(got) ? fabs((double)got - r[i]) : INFINITY;
        if (!(e <= worst)) worst = e, at = i;
    }
    const double tol = p.bf16 ? 1.6e-2 : 2.5e-3;
    const bool ok = worst <= tol;
    printf("check B=%d H=%d Hk=%d S=%d D=%d %s %s: max |err| %.3g (tol %.3g)%s", p.B, p.H, p.Hk, p.S, p.D, p.causal ? "causal" : "full", p.bf16 ? "bf16" : "f16", worst, tol, ok ? " ok\n" : "");
    if (!ok) printf(" FAIL at element %ld (row %ld, head %ld, col %ld): got bits %04x, want %g\n", at, at / p.D / p.H % p.S, at / p.D % p.H, at % p.D, g[at], r[at]);
    return ok;
}

static void time_one(const Problem& p) {
    Buffers x(p);
    cudaEvent_t a, z; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&z));
    for (int i = 0; i < 3; ++i) launch(p, x.q, x.k, x.v, x.o);
    CK(cudaEventRecord(a));
    const int iters = p.S >= 16384 ? 10 : 30;
    for (int i = 0; i < iters; ++i) launch(p, x.q, x.k, x.v, x.o);
    CK(cudaEventRecord(z)); CK(cudaEventSynchronize(z)); CK(cudaGetLastError());
    float ms; CK(cudaEventElapsedTime(&ms, a, z)); ms /= iters;
    // torch_baseline.py's count: causal rows see (S + 1) / 2 keys on average.
    const double flops = 4.0 * p.B * p.H * p.D * (double)p.S * (p.causal ? (p.S + 1) / 2.0 : p.S);
    printf("time B=%d H=%d Hk=%d S=%d D=%d %s %s: %.4f ms, %.1f TFLOP/s\n", p.B, p.H, p.Hk, p.S, p.D, p.causal ? "causal" : "full", p.bf16 ? "bf16" : "f16", ms, flops / ms / 1e9);
}

int main(int argc, char** argv) {
    const bool only_check = argc > 1 && !strcmp(argv[1], "check");
    bool ok = true;
    for (int bf = 0; bf < 2; ++bf)
        for (int D : {64, 128}) {
            const Problem ps[] = {{1, 4, 2, 1000, D, true, !!bf}, {2, 4, 4, 333, D, false, !!bf}, {1, 8, 2, 2048, D, true, !!bf}, {1, 2, 1, 129, D, false, !!bf}, {1, 2, 2, 64, D, true, !!bf}};
            for (const auto& p : ps) ok = check(p) && ok;
        }
    printf(ok ? "ALL CHECKS PASS\n" : "CHECKS FAILED\n");
    if (!ok) return 1;
    if (only_check) return 0;
    for (int bf = 0; bf < 2; ++bf)
        for (int D : {64, 128})
            for (int B : {1, 4})
                for (int Hk : {8, 32})
                    for (int S : {1024, 4096, 16384}) time_one({B, 32, Hk, S, D, true, !!bf});
    return 0;
}
