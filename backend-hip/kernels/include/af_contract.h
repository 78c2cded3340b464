// attnforge: the contract between backend-hip (Rust) and the kernels. The one source of truth
// for every parameter struct passed to a kernel, every limit both sides depend on, and every
// list of compiled instantiations. backend-hip/build.rs reads this file and generates the Rust
// side (OUT_DIR/contract.rs: constants, #[repr(C)] structs, instantiation lists) together with
// OUT_DIR/af_layout.h, the size and offset of every struct and field as build.rs computed them
// from the C layout rules. Kernels compiled by build.rs (AF_LAYOUT_CHECK) static_assert their
// layout against those numbers, and the Rust side asserts the same numbers at compile time, so
// a field added, removed, reordered or retyped on one side cannot compile.
//
// What build.rs reads, one item per line (everything else is ignored):
//   AF_LIMIT(NAME, value)                 // doc    -> constexpr int NAME / pub const NAME: usize
//   AF_LIMIT_VENDOR(NAME, nvidia, amd)    // doc    -> per-vendor value (Rust: Vendored)
//   AF_STRUCT(Name)                       // doc    -> struct / #[repr(C)] struct, then
//   AF_FIELD(type, name)                  // doc       fields of af_ptr (u64), int (i32),
//   AF_END(Name)                                       float (f32), af_i64 (i64), af_tmap (a
//                                                      CUDA tensor map: 128 bytes, 64-aligned)
//                                                      or an earlier struct
//   #define AF_NAME(X) X(a) X(b, c) ...   // doc    -> an instantiation list (Rust: NAME, a slice)
// Structs may not contain implicit padding (build.rs refuses it: Rust would pass the padding
// bytes uninitialised); add an explicit `pad` field.
#pragma once
#include "af_vendor.h"

#define AF_LIMIT(NAME, VALUE) constexpr int NAME = VALUE;
#if defined(AF_AMD)
#define AF_LIMIT_VENDOR(NAME, NVIDIA, AMD) constexpr int NAME = AMD;
#else
#define AF_LIMIT_VENDOR(NAME, NVIDIA, AMD) constexpr int NAME = NVIDIA;
#endif
#define AF_STRUCT(NAME) struct NAME {
#define AF_FIELD(TYPE, NAME) TYPE NAME;
#define AF_END(NAME) };

typedef unsigned long long af_ptr;  // a device address
typedef long long af_i64;
struct alignas(64) af_tmap {  // a CUtensorMap (cuTensorMapEncodeTiled, on the host), opaque
    unsigned long long opaque[16];
};

// ------------------------------------------------------------------ limits
AF_LIMIT(HEAD_DIM_MULTIPLE, 16)      // head_dim must be a multiple of this: rows move in 16-byte chunks
AF_LIMIT(CHUNK_BYTES, 16)            // bytes one thread moves per load or store in copies and RoPE
AF_LIMIT(ROPE_THREADS, 256)          // block of the rope kernels
AF_LIMIT(APPEND_THREADS, 256)        // block of kv_append
AF_LIMIT(FILL_THREADS, 256)          // block of fill
AF_LIMIT(PF_THREADS, 256)            // block of the vector-unit prefill
AF_LIMIT(PF_BR, 64)                  // query rows of a vector-unit prefill tile
AF_LIMIT(PF_BC, 64)                  // keys of a vector-unit prefill tile
AF_LIMIT(DC_THREADS, 128)            // block of the vector-unit decode
AF_LIMIT(DC_MAXK, 1024)              // keys one vector-unit decode split holds in shared memory, at most
AF_LIMIT(DECODE_MAX_Q, 4)            // longest q_len that takes the decode kernels (prefill beyond)
AF_LIMIT(WIDE_THREADS, 256)          // block of the wide-head kernel
AF_LIMIT(WIDE_DMAX, 4096)            // largest head_dim of the wide-head kernel (a query row in shared memory)
AF_LIMIT(TILED_DMAX, 256)            // largest head_dim of the tiled prefill and split-K decode
AF_LIMIT(MERGE_THREADS, 128)         // block of the split-K merge
AF_LIMIT(MERGE_STATES_THREADS, 256)  // block of merge_states (a thread per 16-byte chunk of a row, or per column pair)
AF_LIMIT(MERGE_MAX_STATES, 8)        // partial states one merge_states launch takes (MergeStatesParams' fields)
AF_LIMIT(SEP_THREADS, 128)           // block of hip-separate's scores and P.V kernels
AF_LIMIT(SEP_SOFTMAX_THREADS, 256)   // block of hip-separate's softmax
AF_LIMIT(SEP_DMAX, 4096)             // largest head_dim of hip-separate (a query row in shared memory)
AF_LIMIT(MMA_GROUPS, 4)              // warps (wavefronts) of a matrix-core block
AF_LIMIT(MMA_PAD, 8)                 // 16-bit elements of padding per shared-memory row (conflict-free ldmatrix)
AF_LIMIT(MMA_PF_MT_D64, 2)           // 16-row query tiles per warp, matrix-core prefill, head_dim 64
AF_LIMIT(MMA_PF_MT_D128, 2)          // ... head_dim 128 (register blocking: one K/V fragment serves two tiles)
AF_LIMIT(MMA_PF_MT_D256, 1)          // ... head_dim 256 (two would not fit in registers)
AF_LIMIT_VENDOR(MMA_PF_BC_D64, 64, 64)   // keys per matrix-core prefill tile, head_dim 64 (AMD: 64 KiB of LDS)
AF_LIMIT_VENDOR(MMA_PF_BC_D128, 64, 32)  // ... head_dim 128
AF_LIMIT_VENDOR(MMA_PF_BC_D256, 32, 16)  // ... head_dim 256
AF_LIMIT(MMA_DC_BC, 64)              // keys per matrix-core decode tile (16 per warp)
AF_LIMIT(MMA_DC_MAX_STAGES, 3)       // deepest K/V pipeline of the matrix-core decode (the plan picks 1..3)
AF_LIMIT(WG_THREADS, 384)            // block of the sm_90a prefill: a producer warpgroup and two consumer warpgroups
AF_LIMIT(WG_BM, 128)                 // query rows of an sm_90a prefill tile (64 per consumer warpgroup)
AF_LIMIT(WG_BN, 128)                 // keys of an sm_90a prefill K/V tile (one TMA box per 64 columns)
AF_LIMIT(WG_STAGES, 2)               // K/V stages of the sm_90a prefill's pipeline
AF_LIMIT(MMA_DC_FP8_BLOCKS, 3)       // blocks per SM the matrix-core decode over FP8 pools is built for (launch bound; the plan's depth keeps them resident)

// ------------------------------------------------------------------ parameter structs
AF_STRUCT(RopeParams)                // rope.hip: RoPE in place, fused RoPE + append, context shift
AF_FIELD(af_ptr, q)                  // [T, Hq, D], rotated in place; 0: rotate K only
AF_FIELD(af_ptr, k)                  // [T, Hk, D]; with gather, the K pool [slots, Hk, D]
AF_FIELD(af_ptr, positions)          // int32 [T]: position (shift: delta) of each token
AF_FIELD(af_ptr, inv_freq)           // double [rotary_dim / 2]
AF_FIELD(af_ptr, k_cache)            // fused: K pool receiving rotated K (0: rotate k in place)
AF_FIELD(af_ptr, v_cache)            // fused: V pool receiving V
AF_FIELD(af_ptr, v)                  // fused: [T, Hk, D]
AF_FIELD(af_ptr, slots)              // fused / gather: int32 [T] pool slot of each token
AF_FIELD(int, tokens)                // T
AF_FIELD(int, q_heads)               // Hq
AF_FIELD(int, k_heads)               // Hk
AF_FIELD(int, head_dim)              // D
AF_FIELD(int, rotary_dim)            // dims that rotate (the rest pass through)
AF_FIELD(int, interleaved)           // 1: pairs (2i, 2i+1); 0: (i, i + rotary_dim / 2)
AF_FIELD(int, vp)                    // rotary pairs per thread (one of ROPE_VPS)
AF_FIELD(float, attention_factor)    // cos/sin multiplier
AF_FIELD(af_ptr, k_pos)              // shift on a hip-fused cache: int32 [slots] (0: none)
AF_FIELD(int, gather)                // 1: shift: K rows are pool slots `slots[t]`, rotated in place
AF_FIELD(int, q_stride)              // elements between consecutive tokens of q (views into a fused buffer)
AF_FIELD(int, k_stride)              // ... of k (with gather: of the pool, Hk * D)
AF_FIELD(int, v_stride)              // ... of v (fused)
AF_FIELD(int, mrope)                 // 1: M-RoPE, positions [3, T]: pairs below mrope1 take positions[t], below mrope2 positions[T + t], the rest positions[2T + t]; 0: one position per token
AF_FIELD(int, mrope1)
AF_FIELD(int, mrope2)
AF_FIELD(int, pad)
AF_END(RopeParams)

AF_STRUCT(AppendParams)              // kv_append.hip: new K/V rows into their pool slots
AF_FIELD(af_ptr, k)                  // [T, Hk, D]
AF_FIELD(af_ptr, v)                  // [T, Hk, D]
AF_FIELD(af_ptr, k_cache)            // K pool [slots, Hk, D]
AF_FIELD(af_ptr, v_cache)            // V pool
AF_FIELD(af_ptr, slots)              // int32 [T]
AF_FIELD(int, tokens)                // T
AF_FIELD(int, k_heads)               // Hk
AF_FIELD(int, head_dim)              // D
AF_FIELD(int, k_stride)              // elements between consecutive tokens of k
AF_FIELD(af_ptr, k_pos)              // hip-fused: int32 [slots] position of each slot's key (0: none)
AF_FIELD(af_ptr, positions)          // int32 [T] positions of unrotated keys (0: keys arrive rotated)
AF_FIELD(int, v_stride)              // elements between consecutive tokens of v
AF_FIELD(int, pad)
AF_FIELD(af_ptr, k_scale)            // FP8 pools (kv_append_e4m3_*): f32 [Hk], K stored as e4m3(k / k_scale[head])
AF_FIELD(af_ptr, v_scale)            // ... V as e4m3(v / v_scale[head])
AF_END(AppendParams)

AF_STRUCT(FillParams)                // kv_append.hip: every element of a buffer set to one value
AF_FIELD(af_ptr, dst)
AF_FIELD(af_i64, n)                  // elements
AF_FIELD(float, value)
AF_FIELD(int, pad)
AF_FIELD(af_i64, row_len)            // elements per row (a strided view: only rows are written)
AF_FIELD(af_i64, row_stride)         // elements between row starts
AF_END(FillParams)

AF_STRUCT(AttnParams)                // attention*.hip, separate.hip
AF_FIELD(af_ptr, q)                  // [Tq, H, D]
AF_FIELD(af_ptr, k)                  // [rows, Hk, D]: a pool or plain K
AF_FIELD(af_ptr, v)                  // [rows, Hk, D]
AF_FIELD(af_ptr, out)                // [Tq, H, D]
AF_FIELD(af_ptr, q_off)              // int32 [B + 1] query row offsets
AF_FIELD(af_ptr, kv_len)             // int32 [B]
AF_FIELD(af_ptr, kv_base)            // int32 [B] first K/V row of entry b (page_size == 0)
AF_FIELD(af_ptr, block_table)        // int32 [B, max_pages] (page_size > 0)
AF_FIELD(af_ptr, tiles)              // prefill: int32 [tiles, 2] (entry, first query); wide: int32 [Tq] entry
AF_FIELD(af_ptr, part)               // split-K partials f32 [Tq, H, splits, D + 2]; separate: scores
AF_FIELD(int, heads)                 // H
AF_FIELD(int, kv_heads)              // Hk
AF_FIELD(int, head_dim)              // D
AF_FIELD(int, page_size)             // 0: contiguous rows
AF_FIELD(int, max_pages)             // columns of block_table
AF_FIELD(int, causal)
AF_FIELD(int, splits)                // split-K splits of the decode
AF_FIELD(int, rows_per_block)        // decode: (query, head) rows per block
AF_FIELD(float, scale_log2)          // softmax scale * log2(e) (with soft-capping: scale / cap)
AF_FIELD(int, stages)                // matrix-core decode: K/V pipeline depth (1..MMA_DC_MAX_STAGES)
AF_FIELD(af_ptr, q_pos)              // RoPE inside: int32 [Tq] position of each query (0: Q as given)
AF_FIELD(af_ptr, k_pos)              // RoPE inside: int32 [slots] position of each cached key (0: K as given)
AF_FIELD(af_ptr, inv_freq)           // RoPE inside: double [rotary_dim / 2]
AF_FIELD(int, rotary_dim)
AF_FIELD(int, rope_inter)            // 1: interleaved pairs
AF_FIELD(float, rope_factor)         // cos/sin multiplier
AF_FIELD(int, q_stride)              // elements between consecutive query rows of q (a token's heads are dense)
AF_FIELD(int, o_stride)              // ... of out
AF_FIELD(int, k_stride)              // elements between consecutive K rows (a pool: Hk * D)
AF_FIELD(int, v_stride)              // ... of V
AF_FIELD(float, softcap_log2)        // logit soft-cap * log2(e); 0: none (then scale_log2 = scale / cap)
AF_FIELD(af_ptr, counters)           // decode, splits > 1: int32 [B, Hk, row chunks], zero; set: the last split merges (no attn_merge)
AF_FIELD(int, window)                // sliding window (causal only): a query sees the `window` keys ending at its own; 0: none
AF_FIELD(int, pad)
AF_FIELD(af_ptr, sinks)              // attention sinks: f32 [H], a logit per query head in the softmax denominator; 0: none
AF_FIELD(af_ptr, lse)                // f32 [Tq, H]: each row's log-sum-exp (natural log, sinks included), written where it normalises; 0: none
AF_FIELD(int, mrope)                 // 1: q_pos is M-RoPE's [3, q_rows]: pairs below mrope1 take component 0, below mrope2 1, the rest 2
AF_FIELD(int, mrope1)
AF_FIELD(int, mrope2)
AF_FIELD(int, q_rows)                // Tq (the stride of q_pos's components)
AF_FIELD(af_ptr, k_scale)            // FP8 pools (the _e4m3 kernels): f32 [Hk], key = e4m3 * k_scale[kv head]; 0: K as stored
AF_FIELD(af_ptr, v_scale)            // ... value = e4m3 * v_scale[kv head]
AF_END(AttnParams)

AF_STRUCT(WgParams)                  // attention_wgmma.hip: the sm_90a prefill, its loads through tensor maps (TMA)
AF_FIELD(af_tmap, tq)                // q as (head_dim, heads, Tq), q_stride apart, boxes of 64 x 1 x WG_BM, 128-byte swizzle
AF_FIELD(af_tmap, tk)                // K rows as (head_dim, kv_heads, rows), k_stride apart, boxes of 64 x 1 x WG_BN
AF_FIELD(af_tmap, tv)                // V rows, the same
AF_FIELD(AttnParams, a)              // everything else (contiguous rows: page_size 0)
AF_FIELD(int, pad0)                  // (to the maps' 64-byte alignment)
AF_FIELD(int, pad1)
AF_FIELD(int, pad2)
AF_FIELD(int, pad3)
AF_END(WgParams)

AF_STRUCT(SepParams)                 // separate.hip: scores, softmax, P.V over a score buffer
AF_FIELD(AttnParams, a)              // a.part: scores f32, [q_len, H, kv_len] per entry
AF_FIELD(af_ptr, row_entry)          // int32 [Tq] batch entry of each query row
AF_FIELD(af_ptr, s_off)              // int64 [B] first score of each entry
AF_END(SepParams)

AF_STRUCT(MergeParams)               // attention.hip: split-K partials into the output
AF_FIELD(af_ptr, part)               // f32 [rows, splits, D + 2]
AF_FIELD(af_ptr, out)                // [rows, D]
AF_FIELD(int, rows)
AF_FIELD(int, splits)
AF_FIELD(int, head_dim)
AF_FIELD(int, heads)                 // rows are (token, head): token = row / heads
AF_FIELD(int, o_stride)              // elements between consecutive tokens of out
AF_FIELD(int, pad)
AF_FIELD(af_ptr, sinks)              // attention sinks f32 [heads] (0: none)
AF_FIELD(af_ptr, lse)                // f32 [rows]: each row's log-sum-exp (0: none)
AF_END(MergeParams)

AF_STRUCT(MergeStatesParams)         // attention.hip: partial attention states (output, lse) over disjoint keys into one
AF_FIELD(af_ptr, out)                // [T, H, D], tokens o_stride elements apart
AF_FIELD(af_ptr, lse)                // f32 [T, H]: the merged log-sum-exp (0: not written)
AF_FIELD(af_ptr, out0)               // state 0's output [T, H, D], tokens stride0 apart (i < n)
AF_FIELD(af_ptr, out1)               // state 1's output [T, H, D], tokens stride1 apart (i < n)
AF_FIELD(af_ptr, out2)               // state 2's output [T, H, D], tokens stride2 apart (i < n)
AF_FIELD(af_ptr, out3)               // state 3's output [T, H, D], tokens stride3 apart (i < n)
AF_FIELD(af_ptr, out4)               // state 4's output [T, H, D], tokens stride4 apart (i < n)
AF_FIELD(af_ptr, out5)               // state 5's output [T, H, D], tokens stride5 apart (i < n)
AF_FIELD(af_ptr, out6)               // state 6's output [T, H, D], tokens stride6 apart (i < n)
AF_FIELD(af_ptr, out7)               // state 7's output [T, H, D], tokens stride7 apart (i < n)
AF_FIELD(af_ptr, lse0)               // state 0's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse1)               // state 1's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse2)               // state 2's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse3)               // state 3's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse4)               // state 4's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse5)               // state 5's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse6)               // state 6's log-sum-exp f32 [T, H]
AF_FIELD(af_ptr, lse7)               // state 7's log-sum-exp f32 [T, H]
AF_FIELD(int, stride0)
AF_FIELD(int, stride1)
AF_FIELD(int, stride2)
AF_FIELD(int, stride3)
AF_FIELD(int, stride4)
AF_FIELD(int, stride5)
AF_FIELD(int, stride6)
AF_FIELD(int, stride7)
AF_FIELD(int, n)                     // states, 1..MERGE_MAX_STATES
AF_FIELD(int, heads)                 // H: row = token * H + head
AF_FIELD(int, head_dim)              // D
AF_FIELD(int, o_stride)              // elements between consecutive tokens of out
AF_FIELD(int, rows)                  // T * H
AF_FIELD(int, vec)                   // 1: every row and pointer 16-byte aligned, a thread per 16-byte chunk; 0: per column pair
AF_END(MergeStatesParams)

// ------------------------------------------------------------------ instantiations
#define AF_ROPE_VPS(X) X(1) X(2) X(4) X(8)                                                     // rope: pairs per thread
#define AF_PREFILL_DIMS(X) X(64) X(128) X(256)                                                 // vector prefill: head-dim buckets
#define AF_DECODE_SHAPES(X) X(64, 1) X(64, 4) X(64, 8) X(128, 1) X(128, 4) X(128, 8) X(256, 1) X(256, 4) // vector decode: (head-dim bucket, rows per block)
#define AF_MMA_PREFILL_DIMS(X) X(64) X(128) X(256)                                             // matrix-core prefill: exact head dims
#define AF_MMA_DECODE_DIMS(X) X(64) X(128)                                                     // matrix-core decode: exact head dims (also over FP8 pools)
#define AF_MMA_FP8_PREFILL_DIMS(X) X(64) X(128)                                                // matrix-core prefill over FP8 pools: exact head dims
#define AF_WGMMA_PREFILL_DIMS(X) X(64) X(128)                                                  // sm_90a prefill: exact head dims

#if defined(AF_LAYOUT_CHECK)
#include "af_layout.h"  // generated by build.rs: static_asserts of every size and offset
#endif
