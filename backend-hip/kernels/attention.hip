// Attention entry points without RoPE inside (hip-flash, every plain attention): the bodies live
// in attention/*.h; attention_rope.hip stamps the RoPE-in-attention variants and
// attention_mma.hip the matrix-core ones. Instantiation lists come from the contract.
//   attn_prefill_d{DM}_{dtype}          AF_PREFILL_DIMS
//   attn_decode_d{DM}_r{RM}_{dtype}     AF_DECODE_SHAPES
//   attn_wide_{dtype}, attn_merge_{dtype}, merge_states_{dtype}
#include "attention/prefill.h"
#include "attention/decode.h"
#include "attention/wide.h"
#include "attention/merge.h"

#define STAMP_PREFILL(DM) AF_STAMP(attn_prefill_d##DM, AttnParams, (PF_THREADS, 1), prefill_body, DM, false)
AF_PREFILL_DIMS(STAMP_PREFILL)

// Rows per block (RM) are instantiated per GQA group size so registers match the work: the plan
// picks the smallest RM >= group * q_len (or the largest and several row chunks).
#define STAMP_DECODE(DM, RM) AF_STAMP(attn_decode_d##DM##_r##RM, AttnParams, (DC_THREADS), decode_body, DM, RM, 0)
AF_DECODE_SHAPES(STAMP_DECODE)

AF_STAMP(attn_wide, AttnParams, (WIDE_THREADS), wide_body, false)
AF_STAMP(attn_merge, MergeParams, (MERGE_THREADS), attn_merge_body)
AF_STAMP(merge_states, MergeStatesParams, (MERGE_STATES_THREADS), merge_states_body)
