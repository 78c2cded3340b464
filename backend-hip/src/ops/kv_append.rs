//! KV append through a slot mapping (one cache slot per new token, resolved on the host from the
//! capacity or page table), and the fill kernel.

use backend_api::{DType, KvCache, Result};

use crate::runtime::Gpu;

/// Mirrors `AppendParams` in kernels/kv_append.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendParams {
    pub k: u64,
    pub v: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub slots: u64,
    pub tokens: i32,
    pub k_heads: i32,
    pub head_dim: i32,
    pub pad: i32,
    /// hip-fused: int32 per pool slot, or 0.
    pub k_pos: u64,
    /// int32 `[T]` positions of unrotated keys, or 0 (keys arrive rotated).
    pub positions: u64,
}

/// Mirrors `FillParams` in kernels/kv_append.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FillParams {
    pub dst: u64,
    pub n: i64,
    pub value: f32,
    pub pad: i32,
}

/// The cache slot of every new token: entry `i`'s tokens go to positions `start[i]..`.
pub fn slot_mapping(cache: &KvCache, seq_ids: &[usize], q_lens: &[usize], start: &[usize]) -> Vec<i32> {
    let row = cache.spec().num_kv_heads * cache.spec().head_dim;
    let mut slots = Vec::with_capacity(q_lens.iter().sum());
    for ((&s, &n), &st) in seq_ids.iter().zip(q_lens).zip(start) {
        for t in st..st + n {
            slots.push((cache.slot_offset(s, t, 0) / row) as i32);
        }
    }
    slots
}

/// Launches the append kernel.
pub fn launch(gpu: &Gpu, dtype: DType, p: AppendParams) -> Result<()> {
    let threads = p.tokens as usize * p.k_heads as usize * (p.head_dim as usize / super::chunk(dtype));
    gpu.launch(&format!("kv_append_{}", dtype.name()), (threads.div_ceil(256) as u32, 1, 1), 256, p)
}

/// Sets `n` elements at `dst` to `value`.
pub fn fill(gpu: &Gpu, dtype: DType, dst: u64, n: usize, value: f32) -> Result<()> {
    gpu.launch(&format!("fill_{}", dtype.name()), (n.div_ceil(256) as u32, 1, 1), 256, FillParams { dst, n: n as i64, value, pad: 0 })
}
