// Attention entry points without RoPE (hip-flash, hip-separate's plain path): the bodies live in
// include/af_attention.h; attention_rope.hip stamps the RoPE-in-attention variants.
//   attn_prefill_d{64,128,256}_{dtype}, attn_decode_d{..}_r{1,4,8}_{dtype}, attn_merge_{dtype}
#include "include/af_attention.h"

#define STAMP_PREFILL(DM)                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_f32(AttnParams p) { prefill_body<float, DM, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_f16(AttnParams p) { prefill_body<af_f16, DM, false>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_d##DM##_bf16(AttnParams p) { prefill_body<af_bf16, DM, false>(p); }
STAMP_PREFILL(64)
STAMP_PREFILL(128)
STAMP_PREFILL(256)

// Rows per block (RM) are instantiated per GQA group size so registers match the work:
// the host picks the smallest RM >= group * q_len (or the largest and several row chunks).
#define STAMP_DECODE(DM, RM)                                                                                  \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_f32(AttnParams p) { decode_body<float, DM, RM, 0>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_f16(AttnParams p) { decode_body<af_f16, DM, RM, 0>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode_d##DM##_r##RM##_bf16(AttnParams p) { decode_body<af_bf16, DM, RM, 0>(p); }
STAMP_DECODE(64, 1)
STAMP_DECODE(64, 4)
STAMP_DECODE(64, 8)
STAMP_DECODE(128, 1)
STAMP_DECODE(128, 4)
STAMP_DECODE(128, 8)
STAMP_DECODE(256, 1)
STAMP_DECODE(256, 4)

AF_STAMP(attn_merge, MergeParams, 256)

extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_f32(AttnParams p) { wide_body<float, false>(p); }
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_f16(AttnParams p) { wide_body<af_f16, false>(p); }
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_bf16(AttnParams p) { wide_body<af_bf16, false>(p); }
