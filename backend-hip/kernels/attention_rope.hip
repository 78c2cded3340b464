// RoPE-in-attention entry points (hip-hybrid: Q rotated as it is loaded; hip-fused: Q and every
// cached key rotated on the fly). Same bodies as attention.hip (attention/*.h) with RoPE on; the
// split-K merge is shared (attn_merge_{dtype} in attention.hip).
//   attn_prefill_rope_d{DM}_{dtype}                      AF_PREFILL_DIMS
//   attn_decode_rope_d{DM}_r{RM}_{dtype}   (Q and K)     AF_DECODE_SHAPES
//   attn_decode_qrope_d{DM}_r{RM}_{dtype}  (Q only: fewer registers than the key path)
//   attn_wide_rope_{dtype}
#include "attention/prefill.h"
#include "attention/decode.h"
#include "attention/wide.h"

#define STAMP_PREFILL(DM) AF_STAMP(attn_prefill_rope_d##DM, AttnParams, (PF_THREADS, 1), prefill_body, DM, true)
AF_PREFILL_DIMS(STAMP_PREFILL)

#define STAMP_DECODE(DM, RM)                                                                        \
    AF_STAMP(attn_decode_rope_d##DM##_r##RM, AttnParams, (DC_THREADS), decode_body, DM, RM, 2)     \
    AF_STAMP(attn_decode_qrope_d##DM##_r##RM, AttnParams, (DC_THREADS), decode_body, DM, RM, 1)
AF_DECODE_SHAPES(STAMP_DECODE)

AF_STAMP(attn_wide_rope, AttnParams, (WIDE_THREADS), wide_body, true)
