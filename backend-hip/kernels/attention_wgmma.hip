// The sm_90a prefill for f16/bf16: body in attention/wgmma_prefill.h.
//   attn_prefill_wgmma_d{DM}_{f16,bf16}   AF_WGMMA_PREFILL_DIMS
// build.rs compiles this module for sm_90a where the build targets sm_90 (the warpgroup and TMA
// instructions exist only there); every other target gets entry points that trap, never launched.
// The parameters are __grid_constant__: the tensor maps are read by TMA from parameter space.
#include "attention/wgmma_prefill.h"

#define STAMP_WGMMA_ENTRY(DM, DT, T) \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attn_prefill_wgmma_d##DM##_##DT(const AF_GRID_CONST WgParams p) { prefill_wgmma_body<T, DM>(p); }
#define STAMP_WGMMA(DM) STAMP_WGMMA_ENTRY(DM, f16, af_f16) STAMP_WGMMA_ENTRY(DM, bf16, af_bf16)
AF_WGMMA_PREFILL_DIMS(STAMP_WGMMA)
