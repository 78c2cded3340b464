// Matrix-core entry points for f16/bf16 (hip-flash, hip-hybrid): bodies in attention/mma_*.h.
//   attn_prefill_mma_d{DM}_{f16,bf16}, attn_prefill_mma_qrope_d{DM}_*   AF_MMA_PREFILL_DIMS
//   attn_decode_mma_d{DM}_*, attn_decode_mma_qrope_d{DM}_*              AF_MMA_DECODE_DIMS
// head_dim must equal DM (other sizes take the vector-unit kernels); _qrope rotates the queries
// inside (hip-hybrid; keys arrive rotated).
#include "attention/mma_prefill.h"
#include "attention/mma_decode.h"

#define STAMP_MMA_PREFILL(DM)                                                                           \
    AF_STAMP16(attn_prefill_mma_d##DM, AttnParams, (MMA_THREADS), prefill_mma_body, DM, false)         \
    AF_STAMP16(attn_prefill_mma_qrope_d##DM, AttnParams, (MMA_THREADS), prefill_mma_body, DM, true)
AF_MMA_PREFILL_DIMS(STAMP_MMA_PREFILL)

#define STAMP_MMA_DECODE(DM)                                                                            \
    AF_STAMP16(attn_decode_mma_d##DM, AttnParams, (MMA_THREADS), decode_mma_body, DM, false)           \
    AF_STAMP16(attn_decode_mma_qrope_d##DM, AttnParams, (MMA_THREADS), decode_mma_body, DM, true)
AF_MMA_DECODE_DIMS(STAMP_MMA_DECODE)

#define STAMP_MMA_FP8_PREFILL(DM) AF_STAMP16(attn_prefill_mma_e4m3_d##DM, AttnParams, (MMA_THREADS), prefill_mma_body, DM, false, true)
AF_MMA_FP8_PREFILL_DIMS(STAMP_MMA_FP8_PREFILL)

// At least MMA_DC_FP8_BLOCKS blocks per SM (the plan sizes the pipeline for as many).
#define STAMP_MMA_FP8_DECODE(DM) AF_STAMP16(attn_decode_mma_e4m3_d##DM, AttnParams, (MMA_THREADS, MMA_DC_FP8_BLOCKS), decode_mma_body, DM, false, true)
AF_MMA_DECODE_DIMS(STAMP_MMA_FP8_DECODE)
