// Decode-kernel lab (issue 13): times the matrix-core split-K decode kernel of
// backend-hip/kernels/attention/mma_decode.h and variants of it on synthetic paged caches (random bf16,
// shuffled pages, enough pools per shape to cycle past the L2), standalone: nvcc on the GPU
// machine, no Rust. Each variant's output is compared with the first's (maxdiff; the load-only
// variant computes nothing). Not part of the library: the variants that win move into backend-hip/kernels/.
//   nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I backend-hip/kernels bench/lab/decode_lab.cu -o lab
//   ./lab [B L PAGE_SIZE [VARIANT-PREFIX]]
// bench/lab/top_stalls.py lists the SASS lines with the most stall samples of an
// `ncu --page source --csv --print-source sass` export.
#include "attention_mma.hip"
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <random>
#include <cstring>
#include <cmath>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

// Variant: the same body with the layout and the compute switchable.
//   HND: pools [Hk][slots][D] (p.rotary_dim = slots: no RoPE here); else [slots][Hk][D].
//   LOADONLY: stream the tiles, skip the products (what the load pattern alone reaches).
template <typename T, int DM, int STAGES, bool HND, bool LOADONLY, int MU = 8, int PSMODE = 0, bool ROWLOAD = false>
__global__ void __launch_bounds__(MMA_THREADS) lab_decode(AttnParams p) {
    constexpr bool BF16 = AfIsBf16<T>::value;
    constexpr int LD = DM + MMA_PAD, CH = DM / 8, BC = MMA_DC_BC;
    constexpr int stages = STAGES;
    constexpr int OF = DM / AF_MMA_ON;
    extern __shared__ __align__(16) unsigned short af_mma_smem[];
    unsigned short* sQ = af_mma_smem;
    unsigned short* sKV = sQ + 16 * LD;
    const int tid = threadIdx.x, w = tid / AF_WARP;
    const int kvh = p.kv_heads, G = p.heads / kvh;
    const int b = blockIdx.x / (kvh * p.splits);
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
    auto qrow = [&](int r) { const int rr = r0 + r; return (long)(qbeg + rr / G) * p.heads + kh * G + rr % G; };
    auto qat = [&](int r) { const int rr = r0 + r; return q_at(p, qbeg + rr / G, kh * G + rr % G); };
    {
        const unsigned short* Q = reinterpret_cast<const unsigned short*>(p.q);
        for (int i = tid; i < 16 * CH; i += MMA_THREADS) {
            const int r = i / CH, c = (i % CH) * 8;
            af_cp_async16(sQ + r * LD + c, Q + qat(min(r, rows - 1)) + c, r < rows);
        }
    }
    int kv_end = 0;
    for (int r = 0; r < rows; ++r) kv_end = max(kv_end, p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len);
    const int chunk = (((kv_len + p.splits - 1) / p.splits) + BC - 1) / BC * BC;
    const int s0 = split * chunk, s1 = min(kv_end, s0 + chunk);
    const int ntiles = s1 > s0 ? (s1 - s0 + BC - 1) / BC : 0;
    // PSMODE 0: the library's KvRows; 1: page size 16 known; 2: multiply-high division for every
    // page size; 3: the hardware division (kv_row before KvRows).
    unsigned fd_m = 0; int fd_s = 0;
    if (PSMODE == 2) {
        const unsigned d = p.page_size;
        while ((1u << fd_s) < d) ++fd_s;
        fd_m = (unsigned)((((unsigned long long)1 << 32) * ((1ull << fd_s) - d)) / d + 1);
    }
    const KvRows kvrows(p, b);
    const int* btab = reinterpret_cast<const int*>(p.block_table) + (long)b * p.max_pages;
    auto slot_of = [&](int t) -> long {
        if (PSMODE == 0) return kvrows(t);
        if (PSMODE == 1) return (long)btab[t >> 4] * 16 + (t & 15);
        if (PSMODE == 3) return (long)btab[t / p.page_size] * p.page_size + t % p.page_size;
        const unsigned q = (__umulhi((unsigned)t, fd_m) + (unsigned)t) >> fd_s;
        return (long)btab[q] * p.page_size + (t - (int)q * p.page_size);
    };
    auto load_tile = [&](int j) {
        unsigned short* dK = sKV + (j % stages) * 2 * BC * LD;
        unsigned short* dV = dK + BC * LD;
        if (ROWLOAD) {
            // One key row per pair of threads: one row lookup per thread per tile, the halves
            // of the K row and of the V row (8 chunks each) from it.
            static_assert(2 * BC == MMA_THREADS, "two threads per key");
            const int r = tid >> 1, h = (tid & 1) * (DM / 2);
            const int key = s0 + j * BC + r;
            const bool ok = key < s1;
            const long slot = ok ? kvrows(key) : 0;
            const unsigned short* ks = K + (ok ? slot * p.k_stride + (long)kh * DM + h : 0);
            const unsigned short* vs = V + (ok ? slot * p.v_stride + (long)kh * DM + h : 0);
#pragma unroll
            for (int c = 0; c < DM / 2; c += 8) {
                af_cp_async16(dK + r * LD + h + c, ks + c, ok);
                af_cp_async16(dV + r * LD + h + c, vs + c, ok);
            }
            return;
        }
#pragma unroll
        for (int it = 0; it < BC * CH / MMA_THREADS; ++it) {
            const int i = tid + it * MMA_THREADS, r = i / CH, c = (i % CH) * 8;
            const int key = s0 + j * BC + r;
            const bool ok = key < s1;
            const long slot = ok ? slot_of(key) : 0;
            const long off = HND ? ((long)kh * p.rotary_dim + slot) * DM + c : (ok ? slot * p.k_stride + (long)kh * DM + c : 0);
            af_cp_async16(dK + r * LD + c, K + off, ok);
            af_cp_async16(dV + r * LD + c, V + off, ok);
        }
    };
    for (int st = 0; st + 1 < stages; ++st) {
        if (st < ntiles) load_tile(st);
        af_cp_async_commit();
    }
    float o[OF][4];
#pragma unroll
    for (int f = 0; f < OF; ++f) o[f][0] = o[f][1] = o[f][2] = o[f][3] = 0.f;
    float m[AF_MMA_SLOTS], l[AF_MMA_SLOTS];
    int lim[AF_MMA_SLOTS];
#pragma unroll
    for (int sl = 0; sl < AF_MMA_SLOTS; ++sl) {
        m[sl] = -INFINITY;
        l[sl] = 0.f;
        const int r = af_mma_row(sl);
        lim[sl] = r < rows ? min(s1, p.causal ? kv_len - q_len + (r0 + r) / G + 1 : kv_len) : 0;
    }
    for (int j = 0; j < ntiles; ++j) {
        if (j + stages - 1 < ntiles) load_tile(j + stages - 1);
        af_cp_async_commit();
        af_cp_async_wait<STAGES - 1>();
        __syncthreads();
        const unsigned short* tK = sKV + (j % stages) * 2 * BC * LD + 16 * w * LD;
        const unsigned short* tV = tK + BC * LD;
        if (LOADONLY) {
            o[0][0] += __uint_as_float(tK[tid % 16] | (unsigned)tV[tid % 16] << 16);
        } else {
        const int k0 = s0 + j * BC + 16 * w;
        float s[16 / AF_MMA_SN][4];
#pragma unroll
        for (int f = 0; f < 16 / AF_MMA_SN; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = 0.f;
#pragma unroll
        for (int kt = 0; kt < DM / 16; ++kt) {
            unsigned qf[AF_MMA_QW], kf[AF_MMA_KW];
            af_mma_load_q(qf, sQ, LD, kt);
            af_mma_load_k(kf, tK, LD, kt);
            af_mma_qk16<BF16>(s, qf, kf);
        }
        float corr[AF_MMA_SLOTS];
        mma_softmax_step<16 / AF_MMA_SN>(s, m, l, lim, true, k0, p.scale_log2, 0.f, corr);
        unsigned pf[AF_MMA_PW];
        af_mma_pack_p<BF16>(pf, s);
#pragma unroll
        for (int f = 0; f < OF; ++f) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[f][e] *= corr[af_mma_slot(e)];
        }
#pragma unroll
        for (int dt = 0; dt < DM / 16; ++dt) {
            unsigned vf[AF_MMA_VW];
            af_mma_load_v(vf, tV + dt * 16, LD);
            af_mma_pv16<BF16>(&o[dt * (16 / AF_MMA_ON)], pf, vf);
        }
        }
        __syncthreads();
    }
    af_cp_async_wait_all();
    float* sM = reinterpret_cast<float*>(sKV);
    float* sL = sM + MMA_GROUPS * 16;
    float* sO = sL + MMA_GROUPS * 16;
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
                if (af_mma_slot(e) == sl) sO[(w * 16 + r) * DM + f * AF_MMA_ON + af_mma_col(e)] = o[f][e];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < rows * DM; idx += MMA_THREADS) {
        const int r = idx / DM, c = idx % DM;
        float M = -INFINITY;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) M = fmaxf(M, sM[g * 16 + r]);
        const float base = M == -INFINITY ? 0.f : M;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int g = 0; g < MMA_GROUPS; ++g) {
            const float f = exp2f(sM[g * 16 + r] - base);
            L += sL[g * 16 + r] * f;
            A += sO[(g * 16 + r) * DM + c] * f;
        }
        const long row = qrow(r);
        if (p.splits == 1) {
            const int rr = r0 + r;
            reinterpret_cast<T*>(p.out)[o_at(p, qbeg + rr / G, kh * G + rr % G) + c] = af_from_float<T>(A / L);
        } else {
            float* part = reinterpret_cast<float*>(p.part) + (row * p.splits + split) * (DM + 2);
            part[2 + c] = A;
            if (c == 0) { part[0] = M; part[1] = L; }
        }
    }
    if (p.splits > 1 && p.counters)
        split_merge_last<T, MU>(p, rows, DM, tid, MMA_THREADS, qrow, [&](int r) { const int rr = r0 + r; return o_at(p, qbeg + rr / G, kh * G + rr % G); });
}

__global__ void fill_rand(unsigned short* x, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        x[i] = af_f2bf(((int)(h & 0xff) - 128) / 128.f);
    }
}
static float bf2f_host(unsigned short b) { unsigned u = (unsigned)b << 16; float f; memcpy(&f, &u, 4); return f; }

static int splits_for(int blocks, int max_kv, int slots, int min_keys) {
    int most = std::max(1, (max_kv + min_keys - 1) / min_keys), best = 1;
    auto cost = [&](int s) { return (double)((blocks * s + slots - 1) / slots) / s; };
    for (int s = 1; s <= most; ++s) if (cost(s) < 0.95 * cost(best)) best = s;
    return best;
}

typedef void (*KernelFn)(AttnParams);
struct Variant { const char* name; KernelFn fn; int stages; bool hnd; int min_keys = 256; int force_splits = 0; };

int main(int argc, char** argv) {
    const int H = 32, Hk = 8, D = 128;
    const int shapes[][3] = {{2, 1000, 12}, {2, 999, 1}, {3, 5000, 48}, {1, 4096, 16}, {1, 8192, 16}, {16, 8192, 16}, {64, 8192, 16}, {16, 65536, 16}};
    int dev_sms; CK(cudaDeviceGetAttribute(&dev_sms, cudaDevAttrMultiProcessorCount, 0));
    Variant vs[] = {
        // The library's kernel at the plan's depth (3 on Hopper) and at 2 (3 blocks per SM).
        {"lib s3", (KernelFn)attn_decode_mma_d128_bf16, 3, false},
        {"lib s2", (KernelFn)attn_decode_mma_d128_bf16, 2, false},
        // KvRows' operator() per key (its kinds of addressing predicated inside the loop).
        {"lab s3 kvrows", lab_decode<af_bf16, 128, 3, false, false, 16, 0>, 3, false},
        // Page index by the hardware division (before KvRows), by a constant page size.
        {"lab s3 hwdiv", lab_decode<af_bf16, 128, 3, false, false, 16, 3>, 3, false},
        {"lab s3 ps16", lab_decode<af_bf16, 128, 3, false, false, 16, 1>, 3, false},
        // One key row per pair of threads (fewer lookups, uncoalesced per instruction).
        {"lab s3 rowload", lab_decode<af_bf16, 128, 3, false, false, 16, 0, true>, 3, false},
        // Pools [Hk][slots][D] instead of [slots][Hk][D].
        {"lab s3 hnd", lab_decode<af_bf16, 128, 3, true, false, 16, 0>, 3, true},
        // The loads alone: what this block structure streams without the products.
        {"load s3", lab_decode<af_bf16, 128, 3, false, true, 16, 0>, 3, false},
    };
    for (auto& v : vs) CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    // Optional filter: lab B L PS VARIANT-PREFIX (one shape, the variants whose name starts so).
    const int one[3] = {argc > 3 ? atoi(argv[1]) : 0, argc > 3 ? atoi(argv[2]) : 0, argc > 3 ? atoi(argv[3]) : 0};
    for (auto& sh0 : shapes) {
        const int* sh = argc > 3 ? one : sh0;
        if (argc > 3 && &sh0 != &shapes[0]) break;
        const int B = sh[0], L = sh[1], PS = sh[2], mp = (L + PS - 1) / PS;
        const long pages = (long)B * mp, slots = pages * PS;
        const size_t kvbytes = slots * Hk * D * 2;
        // Layers: enough pools that 2 x the L2 is cycled through (or 8 at most), 40 GB cap.
        int layers = (int)std::min<long>(8, std::max<long>(1, (240L << 20) / (long)(2 * kvbytes) + 1));
        std::vector<unsigned short*> Ks(layers), Vs(layers);
        for (int l = 0; l < layers; ++l) {
            CK(cudaMalloc(&Ks[l], kvbytes)); CK(cudaMalloc(&Vs[l], kvbytes));
            fill_rand<<<1024, 256>>>(Ks[l], kvbytes / 2, 11 + l); fill_rand<<<1024, 256>>>(Vs[l], kvbytes / 2, 99 + l);
        }
        std::vector<int> table(pages), qoff(B + 1), kvl(B, L);
        std::vector<int> perm(pages); for (long i = 0; i < pages; ++i) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
        for (long i = 0; i < pages; ++i) table[i] = perm[i];
        for (int b = 0; b <= B; ++b) qoff[b] = b;
        int *dT, *dQo, *dKl, *dCnt; unsigned short *dQ, *dO; float* dPart;
        CK(cudaMalloc(&dT, pages * 4)); CK(cudaMemcpy(dT, table.data(), pages * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&dQo, (B + 1) * 4)); CK(cudaMemcpy(dQo, qoff.data(), (B + 1) * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&dKl, B * 4)); CK(cudaMemcpy(dKl, kvl.data(), B * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&dQ, (size_t)B * H * D * 2)); fill_rand<<<64, 256>>>(dQ, (size_t)B * H * D, 5);
        CK(cudaMalloc(&dO, (size_t)B * H * D * 2));
        CK(cudaMalloc(&dCnt, (size_t)B * Hk * 4)); CK(cudaMemset(dCnt, 0, (size_t)B * Hk * 4));
        std::vector<unsigned short> ref((size_t)B * H * D), got((size_t)B * H * D);
        bool first = true;
        for (auto& v : vs) {
            if (strstr(v.name, "ps16") && PS != 16) continue;
            if (argc > 4 && strncmp(v.name, argv[4], strlen(argv[4])) != 0) continue;
            const int shared = (16 + 2 * MMA_DC_BC * v.stages) * (D + MMA_PAD) * 2;
            const int per_sm = (228 * 1024) / (shared + 1024);
            const int blocks = B * Hk;
            const int splits = v.force_splits ? v.force_splits : splits_for(blocks, L, dev_sms * per_sm, v.min_keys);
            CK(cudaMalloc(&dPart, (size_t)B * H * splits * (D + 2) * 4));
            AttnParams p{};
            p.q = (af_ptr)dQ; p.out = (af_ptr)dO; p.q_off = (af_ptr)dQo; p.kv_len = (af_ptr)dKl; p.block_table = (af_ptr)dT;
            p.part = (af_ptr)dPart; p.heads = H; p.kv_heads = Hk; p.head_dim = D; p.page_size = PS; p.max_pages = mp;
            p.causal = 1; p.splits = splits; p.rows_per_block = 16; p.scale_log2 = 0.0884f * 1.4427f; p.stages = v.stages;
            p.q_stride = H * D; p.o_stride = H * D; p.k_stride = Hk * D; p.v_stride = Hk * D; p.rotary_dim = (int)slots;
            p.counters = splits > 1 ? (af_ptr)dCnt : 0;
            dim3 grid(B * Hk * splits, 1);
            auto launch = [&](int l) { p.k = (af_ptr)Ks[l]; p.v = (af_ptr)Vs[l]; v.fn<<<grid, MMA_THREADS, shared>>>(p); };
            for (int i = 0; i < 3 * layers; ++i) launch(i % layers);
            CK(cudaDeviceSynchronize());
            cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
            const int iters = std::max(layers * 4, (int)std::min<long>(200, (8L << 30) / kvbytes));
            std::vector<float> ts;
            for (int rep = 0; rep < 5; ++rep) {
                cudaEventRecord(e0);
                for (int i = 0; i < iters; ++i) launch(i % layers);
                cudaEventRecord(e1); CK(cudaEventSynchronize(e1));
                float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms * 1000.f / iters);
            }
            std::sort(ts.begin(), ts.end());
            launch(0); CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(first ? ref.data() : got.data(), dO, ref.size() * 2, cudaMemcpyDeviceToHost));
            float err = 0.f;
            if (!first) for (size_t i = 0; i < ref.size(); ++i) err = fmaxf(err, fabsf(bf2f_host(ref[i]) - bf2f_host(got[i])));
            first = false;
            const float us = ts[2];
            printf("B=%3d L=%6d ps=%2d %-16s splits=%3d blocks/SM=%d  %9.2f us  %5.2f TB/s  maxdiff %.4f\n", B, L, PS, v.name, splits, per_sm, us, 2.0 * kvbytes / us / 1e6, err);
            fflush(stdout);
            CK(cudaFree(dPart));
        }
        for (int l = 0; l < layers; ++l) { cudaFree(Ks[l]); cudaFree(Vs[l]); }
        cudaFree(dT); cudaFree(dQo); cudaFree(dKl); cudaFree(dQ); cudaFree(dO); cudaFree(dCnt);
    }
    return 0;
}
