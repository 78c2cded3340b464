// RoPE-in-attention entry points (hip-hybrid: Q rotated as it is loaded; hip-fused: Q and every
// cached key rotated on the fly): attn_prefill_rope_d{..}_{dtype}, attn_decode_{rope,qrope}_d{..}_r{..}_{dtype}.
// Same bodies as attention.hip (include/af_attention.h) with ROPE = true; the split-K merge is
// shared (attn_merge_{dtype} in attention.hip).
#include "include/af_attention.h"

#define STAMP_PREFILL(DM)                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_rope_d##DM##_f32(AttnParams p) { prefill_body<float, DM, true>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_rope_d##DM##_f16(AttnParams p) { prefill_body<af_f16, DM, true>(p); } \
    extern "C" __global__ void __launch_bounds__(256, 1) attn_prefill_rope_d##DM##_bf16(AttnParams p) { prefill_body<af_bf16, DM, true>(p); }
STAMP_PREFILL(64)
STAMP_PREFILL(128)
STAMP_PREFILL(256)

// _rope: queries and cached keys (hip-fused); _qrope: queries only (hip-hybrid, fewer registers).
#define STAMP_DECODE_MODE(KIND, MODE, DM, RM)                                                                          \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode##KIND##_d##DM##_r##RM##_f32(AttnParams p) { decode_body<float, DM, RM, MODE>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode##KIND##_d##DM##_r##RM##_f16(AttnParams p) { decode_body<af_f16, DM, RM, MODE>(p); } \
    extern "C" __global__ void __launch_bounds__(DC_THREADS) attn_decode##KIND##_d##DM##_r##RM##_bf16(AttnParams p) { decode_body<af_bf16, DM, RM, MODE>(p); }
#define STAMP_DECODE(DM, RM) STAMP_DECODE_MODE(_rope, 2, DM, RM) STAMP_DECODE_MODE(_qrope, 1, DM, RM)
STAMP_DECODE(64, 1)
STAMP_DECODE(64, 4)
STAMP_DECODE(64, 8)
STAMP_DECODE(128, 1)
STAMP_DECODE(128, 4)
STAMP_DECODE(128, 8)
STAMP_DECODE(256, 1)
STAMP_DECODE(256, 4)

extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_rope_f32(AttnParams p) { wide_body<float, true>(p); }
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_rope_f16(AttnParams p) { wide_body<af_f16, true>(p); }
extern "C" __global__ void __launch_bounds__(WIDE_THREADS) attn_wide_rope_bf16(AttnParams p) { wide_body<af_bf16, true>(p); }
