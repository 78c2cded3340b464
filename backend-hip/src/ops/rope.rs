//! RoPE (Q and K in place) and fused RoPE + KV append (rotated K and V written to the cache in
//! the same pass). The inverse-frequency table goes to the device once per distinct table and
//! is reused by every call; positions are per-call metadata.

use backend_api::{DType, ProblemDesc, Result, RopeStyle};

use crate::runtime::Gpu;

/// Mirrors `RopeParams` in kernels/rope.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RopeParams {
    pub q: u64,
    pub k: u64,
    pub positions: u64,
    pub inv_freq: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub v: u64,
    pub slots: u64,
    pub tokens: i32,
    pub q_heads: i32,
    pub k_heads: i32,
    pub head_dim: i32,
    pub rotary_dim: i32,
    pub interleaved: i32,
    pub vp: i32,
    pub attention_factor: f32,
    /// Shift on a hip-fused cache: int32 per pool slot, or 0.
    pub k_pos: u64,
    /// Shift: K rows are cache slots `slots[t]`, rotated in place by `positions[t]`.
    pub gather: i32,
    pub pad: i32,
}

/// Why `problem` cannot be rotated here (empty: it can).
pub fn reasons(problem: &ProblemDesc) -> Vec<String> {
    super::head_dim_reason(problem.head_dim).into_iter().collect()
}

/// Rotary pairs per thread: the widest of 8, 4, 2, 1 that divides rotary_dim / 2 and keeps an
/// access within 16 bytes per half (32 for interleaved pairs).
pub fn pairs_per_thread(rotary_dim: usize, dtype: DType) -> i32 {
    let half = rotary_dim / 2;
    [8usize, 4, 2, 1].into_iter().find(|&v| half % v == 0 && v <= super::chunk(dtype)).unwrap_or(1) as i32
}

/// Launches the rope kernel (q may be 0; k_cache/v_cache/v/slots 0 unless fused).
pub fn launch(gpu: &Gpu, dtype: DType, p: RopeParams, style: RopeStyle) -> Result<()> {
    let p = RopeParams { interleaved: (style == RopeStyle::Interleaved) as i32, ..p };
    let units = ((p.rotary_dim / 2 / p.vp) as usize).max(p.head_dim as usize / super::chunk(dtype));
    let threads = p.tokens as usize * units;
    let blocks = threads.div_ceil(256) as u32;
    let style = if p.interleaved != 0 { "i" } else { "h" };
    gpu.launch(&format!("rope_v{}{style}_{}", p.vp, dtype.name()), (blocks, 1, 1), 256, p)
}
