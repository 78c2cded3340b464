//! KV append (rows into pool slots through a slot mapping) and fill (kernels/kv_append.hip).

use attnforge_api::{DType, Error, Result};

use super::{bytes_of, i32_of, need_meta, need_mut, need_ref, span_bytes, PoolMut, Strided};
use crate::contract::{AppendParams, FillParams, Kernel, APPEND_THREADS, CHUNK_BYTES, FILL_THREADS};
use crate::runtime::{DevMut, DevRef, Gpu, MetaRef};

/// Copies `tokens` rows of K and V (`[tokens, k_heads, head_dim]`) into pool slots `slots[t]`.
/// A hip-fused pool also records each slot's position: `positions[t]` for unrotated keys, or
/// "stored rotated" when `positions` is None.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append(
    gpu: &Gpu,
    kernel: Kernel,
    tokens: usize,
    k_heads: usize,
    head_dim: usize,
    k: Strided<DevRef<'_>>,
    v: Strided<DevRef<'_>>,
    pool: PoolMut<'_>,
    slots: MetaRef<'_>,
    positions: Option<MetaRef<'_>>,
) -> Result<()> {
    let Kernel::KvAppend { dtype, fp8 } = kernel else {
        return Err(Error::Device { code: -1, message: format!("{} is not the append kernel", kernel.symbol()) });
    };
    if fp8 != pool.scales.is_some() {
        return Err(Error::Device { code: -1, message: format!("{} for pools {} scales", kernel.symbol(), if fp8 { "without" } else { "with" }) });
    }
    let chunk = CHUNK_BYTES / dtype.size();
    if !head_dim.is_multiple_of(chunk) {
        return Err(Error::InvalidArgument(format!("kv_append: head_dim {head_dim} is not a multiple of {chunk}")));
    }
    let row = k_heads * head_dim;
    need_ref(gpu, "k", &k.mem, span_bytes("k", tokens, row, k.stride, dtype.size())?)?;
    need_ref(gpu, "v", &v.mem, span_bytes("v", tokens, row, v.stride, dtype.size())?)?;
    pool.check(gpu, k_heads, head_dim, dtype)?;
    need_meta(gpu, "slot mapping", &slots, tokens, 0, pool.slots as i64)?;
    let mut p = AppendParams {
        k: k.mem.addr,
        v: v.mem.addr,
        k_stride: k.stride as i32,
        v_stride: v.stride as i32,
        k_cache: pool.k.addr,
        v_cache: pool.v.addr,
        slots: slots.addr,
        tokens: i32_of(tokens, "tokens")?,
        k_heads: i32_of(k_heads, "key heads")?,
        head_dim: i32_of(head_dim, "head_dim")?,
        ..Default::default()
    };
    if let Some((ks, vs)) = &pool.scales {
        p.k_scale = ks.addr;
        p.v_scale = vs.addr;
    }
    if let Some(pos) = &pool.pos {
        p.k_pos = pos.addr;
        if let Some(positions) = positions {
            need_meta(gpu, "positions", &positions, tokens, i32::MIN as i64 + 1, i32::MAX as i64 + 1)?;
            p.positions = positions.addr;
        }
    }
    let threads = (tokens * k_heads * (head_dim / chunk)) as u64;
    // SAFETY: every slot is inside both pools (and the position array), k and v hold `tokens`
    // rows, positions one entry per token, the scales (FP8 pools) one f32 per key head.
    unsafe { gpu.launch(kernel, [threads.div_ceil(APPEND_THREADS as u64), 1, 1], APPEND_THREADS, 0, &p) }
}

/// Sets `rows` rows of `row` elements, `stride` elements apart, of `dst` to `value` (memory
/// between the rows is not touched).
pub(crate) fn fill(gpu: &Gpu, dtype: DType, dst: DevMut<'_>, rows: usize, row: usize, stride: usize, value: f32) -> Result<()> {
    if row == 0 || rows == 0 {
        return Ok(());
    }
    need_mut(gpu, "fill destination", &dst, span_bytes("fill", rows, row, stride.max(row), dtype.size())?)?;
    let n = bytes_of("fill", &[rows, row], 1)?;
    let p = FillParams { dst: dst.addr, n: n as i64, value, pad: 0, row_len: row as i64, row_stride: stride.max(row) as i64 };
    // Grid-stride kernel: a grid within the device's x limit covers any n.
    let blocks = (n as u64).div_ceil(FILL_THREADS as u64).clamp(1, gpu.props().max_grid[0].min(1 << 20));
    // SAFETY: dst holds n elements (checked).
    unsafe { gpu.launch(Kernel::Fill { dtype }, [blocks, 1, 1], FILL_THREADS, 0, &p) }
}
