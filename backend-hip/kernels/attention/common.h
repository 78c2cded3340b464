// Attention helpers shared by every attention kernel (vector units, matrix cores, hip-separate):
// K/V row addressing and RoPE inside attention. Parameters: AttnParams (af_contract.h).
//
// The K/V source is either a KV cache (contiguous or paged) or plain K/V tensors: `KvRows` turns
// (batch entry, token) into a row of the [rows, Hk, D] K/V array, so one kernel serves both.
// GQA by indexing: query head h reads kv head h / (H / Hk); nothing is replicated.
//
// RoPE inside attention (hip-hybrid, hip-fused): `q_pos` (non-zero) rotates each query as it is
// loaded, and `k_pos` (non-zero, one int per pool slot) rotates each cached key whose slot holds
// a position (AF_ROTATED: stored rotated already).
#pragma once
#include "../include/af_common.h"

// Position of query row `row` for rotary pair `pair`: q_pos[row], or with M-RoPE the pair's
// section's component of q_pos [3, q_rows].
AF_DEVICE int af_qpos(const AttnParams& p, long row, int pair) {
    const int* qp = reinterpret_cast<const int*>(p.q_pos);
    if (!p.mrope) return qp[row];
    const int comp = pair < p.mrope1 ? 0 : (pair < p.mrope2 ? 1 : 2);
    return qp[(long)comp * p.q_rows + row];
}

// Element d of a row rotated for position `pos(pair)`: x' = x cos + sign * partner * sin (the
// reference's pairing, rope.hip's angle). Dims >= rotary_dim pass through.
template <typename T, typename PosF>
AF_DEVICE float rope_elem_at(const AttnParams& p, const T* row, int d, float x, PosF pos) {
    if (d >= p.rotary_dim) return x;
    int pair, partner;
    float sign;
    if (p.rope_inter) {
        pair = d >> 1;
        partner = d ^ 1;
        sign = (d & 1) ? 1.f : -1.f;
    } else {
        const int half = p.rotary_dim >> 1;
        pair = d < half ? d : d - half;
        partner = d < half ? d + half : d - half;
        sign = d < half ? -1.f : 1.f;
    }
    float c, s;
    af_rope_cs((double)pos(pair), reinterpret_cast<const double*>(p.inv_freq)[pair], p.rope_factor, &c, &s);
    return x * c + sign * af_to_float(row[partner]) * s;
}
// The same for one position (cached keys).
template <typename T>
AF_DEVICE float rope_elem(const AttnParams& p, const T* row, int d, float x, int pos) {
    return rope_elem_at(p, row, d, x, [pos](int) { return pos; });
}

// Rotates `rows` rows cooperatively: one cos/sin per (row, pair), both elements of the pair
// emitted by the thread that computed it (rope_elem computes each angle twice, and once more per
// thread that holds a copy of the row). Work item i < rows * D / 2 is pair i % (D / 2) of row
// i / (D / 2); items past rotary_dim / 2 copy two pass-through dims. `src(r)` is row r,
// `pos(r, k)` its position for pair k (af_qpos), `emit(r, d, x)` takes rotated element d (src and emit may be the same
// place: a pair is read before it is written, by one thread). Same arithmetic as rope_elem; FAST
// (f16/bf16 matrix-core kernels) takes sin/cos on the hardware path after the same f64 reduction.
template <typename T, bool FAST = false, typename Src, typename Pos, typename Emit>
AF_DEVICE void rope_rows(const AttnParams& p, int rows, int D, int tid, int nthreads, Src src, Pos pos, Emit emit) {
    const int half_d = D >> 1, half_r = p.rotary_dim >> 1;
    for (int i = tid; i < rows * half_d; i += nthreads) {
        const int r = i / half_d, k = i % half_d;
        const T* row = src(r);
        const bool rot = k < half_r;
        const int d0 = rot ? (p.rope_inter ? 2 * k : k) : p.rotary_dim + 2 * (k - half_r);
        const int d1 = rot ? (p.rope_inter ? 2 * k + 1 : k + half_r) : d0 + 1;
        const float x0 = af_to_float(row[d0]), x1 = af_to_float(row[d1]);
        if (rot) {
            float c, s;
            af_rope_cs<FAST>((double)pos(r, k), reinterpret_cast<const double*>(p.inv_freq)[k], p.rope_factor, &c, &s);
            emit(r, d0, x0 * c + (-1.f) * x1 * s);
            emit(r, d1, x1 * c + 1.f * x0 * s);
        } else {
            emit(r, d0, x0);
            emit(r, d1, x1);
        }
    }
}

// First key a query sees whose keys end (exclusive) at `end`: under a sliding window the
// `p.window` keys before `end`, else key 0 (the host allows a window only with causal masks).
AF_DEVICE int af_first_key(const AttnParams& p, int end) { return p.window > 0 ? max(0, end - p.window) : 0; }

// Element offset of (token t, head h) in q and in out: tokens `q_stride` / `o_stride` elements
// apart (views into a fused QKV buffer), a token's heads dense.
AF_DEVICE long q_at(const AttnParams& p, long t, int h) { return t * p.q_stride + (long)h * p.head_dim; }
AF_DEVICE long o_at(const AttnParams& p, long t, int h) { return t * p.o_stride + (long)h * p.head_dim; }

// K/V rows of batch entry b: `kvr(t)` is the row of its token t in the [rows, Hk, D] array,
// kv_base[b] + t when contiguous, else block_table[b][t / page_size] * page_size + t % page_size.
// Built once per block. The page index divides by the run-time page size with a multiply-high
// (Granlund-Montgomery, as FlashInfer's uint_fastdiv: m = floor(2^32 (2^s - d) / d) + 1,
// q = (mulhi(t, m) + t) >> s, exact for t < 2^31), and a power-of-two page size takes a shift
// and a mask: a hardware integer division costs ~20 instructions per key, which was most of the
// issue time of the matrix-core decode's loads (H200, B=1: 28.0 -> 25.0 us at L=8192; B=64
// L=8192: 3.1 -> 4.0 TB/s).
struct KvRows {
    const int* table;  // entry b's row of block_table (paged) or nullptr
    long base;         // kv_base[b] (contiguous)
    int ps, shift;
    unsigned magic;
    bool pow2;
    AF_DEVICE KvRows(const AttnParams& p, int b) : table(nullptr), base(0), ps(p.page_size), shift(0), magic(0), pow2(false) {
        if (ps == 0) {
            base = reinterpret_cast<const int*>(p.kv_base)[b];
            return;
        }
        table = reinterpret_cast<const int*>(p.block_table) + (long)b * p.max_pages;
        while ((1u << shift) < (unsigned)ps) ++shift;
        pow2 = (1 << shift) == ps;
        if (!pow2) magic = (unsigned)(((1ull << 32) * ((1ull << shift) - (unsigned)ps)) / (unsigned)ps + 1);
    }
    // Calls f(row) with a row function for this entry's kind of addressing (contiguous, pages
    // of a power of two, other pages), so that a loop over keys inside f is compiled once per
    // kind and runs without the other kinds' predicated instructions.
    template <typename F> AF_DEVICE void with_rows(F&& f) const {
        if (ps == 0) {
            f([&](int t) -> long { return base + t; });
        } else if (pow2) {
            f([&](int t) -> long { return ((long)table[t >> shift] << shift) | (t & (ps - 1)); });
        } else {
            f([&](int t) -> long { return (*this)(t); });
        }
    }
    // The row of key t in two steps, for a caller that reads the page table ahead of its use:
    // page(t) is block_table's entry for t (0 when contiguous), row_at(page(t), t) its row.
    AF_DEVICE int page(int t) const {
        if (ps == 0) return 0;
        if (pow2) return table[t >> shift];
        return table[((unsigned)(((unsigned long long)(unsigned)t * magic) >> 32) + (unsigned)t) >> shift];
    }
    AF_DEVICE long row_at(int pg, int t) const {
        if (ps == 0) return base + t;
        if (pow2) return ((long)pg << shift) | (t & (ps - 1));
        const unsigned q = ((unsigned)(((unsigned long long)(unsigned)t * magic) >> 32) + (unsigned)t) >> shift;
        return (long)pg * ps + (t - (int)q * ps);
    }
    AF_DEVICE long operator()(int t) const {
        if (ps == 0) return base + t;
        if (pow2) return ((long)table[t >> shift] << shift) | (t & (ps - 1));
        const unsigned q = ((unsigned)(((unsigned long long)(unsigned)t * magic) >> 32) + (unsigned)t) >> shift;
        return (long)table[q] * ps + (t - (int)q * ps);
    }
};
