//! RoPE launches (kernels/rope.hip): Q and K in place, fused RoPE + append (rotated K and V into
//! their pool slots), and the context shift (pool rows rotated by a delta, or hip-fused slot
//! positions moved).

use attnforge_api::{DType, Error, Result};

use super::{i32_of, need_meta, need_mut, need_ref, span_bytes, PoolMut, Strided};
use crate::contract::{Kernel, RopeParams, CHUNK_BYTES, ROPE_THREADS};
use crate::runtime::{DevMut, DevRef, Gpu, MetaRef};

/// The rope kernel a plan chose (`Kernel::Rope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RopeLaunch {
    pub kernel: Kernel,
}

/// A frequency table on the device and how it rotates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RopeTable<'a> {
    /// f64 `[rotary_dim / 2]`.
    pub inv_freq: DevRef<'a>,
    pub rotary_dim: usize,
    /// cos/sin multiplier.
    pub factor: f32,
}

/// Rows rotated: `tokens` rows of `q_heads` query and `k_heads` key heads of `head_dim`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RopeShape {
    pub tokens: usize,
    pub q_heads: usize,
    pub k_heads: usize,
    pub head_dim: usize,
    /// M-RoPE sections (rotary pairs per component): positions are `[3, tokens]`. None: one
    /// position per token.
    pub mrope: Option<[usize; 3]>,
}

/// Checks the shape against the kernel and the table; the params' common fields.
fn base(gpu: &Gpu, l: &RopeLaunch, s: &RopeShape, table: &RopeTable<'_>, positions: &MetaRef<'_>) -> Result<(DType, RopeParams)> {
    let Kernel::Rope { vp, interleaved, dtype } = l.kernel else {
        return Err(Error::Device { code: -1, message: format!("{} is not a rope kernel", l.kernel.symbol()) });
    };
    let half = table.rotary_dim / 2;
    let chunk = CHUNK_BYTES / dtype.size();
    if table.rotary_dim == 0 || !table.rotary_dim.is_multiple_of(2) || table.rotary_dim > s.head_dim || !half.is_multiple_of(vp as usize) || !s.head_dim.is_multiple_of(chunk) {
        return Err(Error::InvalidArgument(format!(
            "{}: rotary_dim {} / head_dim {} do not fit (pairs per thread {vp}, chunks of {chunk})",
            l.kernel.symbol(),
            table.rotary_dim,
            s.head_dim
        )));
    }
    need_ref(gpu, "RoPE table", &table.inv_freq, 8 * half)?;
    let (comps, [mrope, mrope1, mrope2]) = super::mrope_fields(s.mrope, half)?;
    need_meta(gpu, "positions", positions, comps * s.tokens, i32::MIN as i64, i32::MAX as i64 + 1)?;
    let p = RopeParams {
        mrope,
        mrope1,
        mrope2,
        positions: positions.addr,
        inv_freq: table.inv_freq.addr,
        tokens: i32_of(s.tokens, "tokens")?,
        q_heads: i32_of(s.q_heads, "query heads")?,
        k_heads: i32_of(s.k_heads, "key heads")?,
        head_dim: i32_of(s.head_dim, "head_dim")?,
        rotary_dim: table.rotary_dim as i32,
        interleaved: interleaved as i32,
        vp: vp as i32,
        attention_factor: table.factor,
        ..Default::default()
    };
    Ok((dtype, p))
}

/// Grid of the rope kernel: one thread per (token, unit, head slice), a unit being `vp` rotary
/// pairs or one 16-byte chunk, whichever is more (the kernel computes the same). Few tokens
/// (decode) spread their heads over up to one slice per head, so about 64 Ki threads run; the
/// context shift (`gather`) keeps one slice (a hip-fused slot's position moves once).
fn grid(p: &RopeParams, dtype: DType) -> [u64; 3] {
    let units = ((p.rotary_dim / 2 / p.vp) as u64).max(p.head_dim as u64 / (CHUNK_BYTES / dtype.size()) as u64);
    let threads = (p.tokens as u64 * units).max(1);
    let heads = p.q_heads.max(p.k_heads).max(1) as u64;
    let slices = if p.gather != 0 { 1 } else { (64 * 1024u64).div_ceil(threads).clamp(1, heads) };
    [(p.tokens as u64 * units).div_ceil(ROPE_THREADS as u64), slices, 1]
}

/// Points `p` at Q (when given), checked to hold `tokens` rows of its stride.
fn set_q(gpu: &Gpu, p: &mut RopeParams, s: &RopeShape, q: Option<&Strided<DevMut<'_>>>, dtype: DType) -> Result<()> {
    if let Some(q) = q {
        need_mut(gpu, "q", &q.mem, span_bytes("q", s.tokens, s.q_heads * s.head_dim, q.stride, dtype.size())?)?;
        (p.q, p.q_stride) = (q.mem.addr, q.stride as i32);
    }
    Ok(())
}

/// Rotates Q (when given) and K in place, token `t` at `positions[t]`.
pub(crate) fn in_place(
    gpu: &Gpu,
    l: &RopeLaunch,
    s: RopeShape,
    q: Option<Strided<DevMut<'_>>>,
    k: Strided<DevMut<'_>>,
    positions: MetaRef<'_>,
    table: RopeTable<'_>,
) -> Result<()> {
    let (dtype, mut p) = base(gpu, l, &s, &table, &positions)?;
    set_q(gpu, &mut p, &s, q.as_ref(), dtype)?;
    need_mut(gpu, "k", &k.mem, span_bytes("k", s.tokens, s.k_heads * s.head_dim, k.stride, dtype.size())?)?;
    (p.k, p.k_stride) = (k.mem.addr, k.stride as i32);
    // SAFETY: q and k hold every row the kernel rotates (checked above), positions has one entry
    // per token and the table rotary_dim / 2 entries; no cache pointer is set.
    unsafe { gpu.launch(l.kernel, grid(&p, dtype), ROPE_THREADS, 0, &p) }
}

/// Fused RoPE + append: K rotated into the K pool and V copied into the V pool at each token's
/// slot (Q rotated in place too when given; K itself is only read).
#[allow(clippy::too_many_arguments)]
pub(crate) fn into_cache(
    gpu: &Gpu,
    l: &RopeLaunch,
    s: RopeShape,
    q: Option<Strided<DevMut<'_>>>,
    k: Strided<DevRef<'_>>,
    v: Strided<DevRef<'_>>,
    pool: PoolMut<'_>,
    positions: MetaRef<'_>,
    slots: MetaRef<'_>,
    table: RopeTable<'_>,
) -> Result<()> {
    let (dtype, mut p) = base(gpu, l, &s, &table, &positions)?;
    set_q(gpu, &mut p, &s, q.as_ref(), dtype)?;
    let row = s.k_heads * s.head_dim;
    need_ref(gpu, "k", &k.mem, span_bytes("k", s.tokens, row, k.stride, dtype.size())?)?;
    need_ref(gpu, "v", &v.mem, span_bytes("v", s.tokens, row, v.stride, dtype.size())?)?;
    pool.check(gpu, s.k_heads, s.head_dim, dtype)?;
    need_meta(gpu, "slot mapping", &slots, s.tokens, 0, pool.slots as i64)?;
    (p.k, p.v, p.k_cache, p.v_cache, p.slots) = (k.mem.addr, v.mem.addr, pool.k.addr, pool.v.addr, slots.addr);
    (p.k_stride, p.v_stride) = (k.stride as i32, v.stride as i32);
    // SAFETY: every slot is inside both pools (checked), k/v/q hold `tokens` rows, positions and
    // the table are sized as the kernel reads them.
    unsafe { gpu.launch(l.kernel, grid(&p, dtype), ROPE_THREADS, 0, &p) }
}

/// Context shift: pool rows `slots[t]` rotated in place by `deltas[t]` positions (multiplier 1
/// in the table); a hip-fused cache's slots that hold a position only move it.
pub(crate) fn shift(gpu: &Gpu, l: &RopeLaunch, s: RopeShape, pool: PoolMut<'_>, deltas: MetaRef<'_>, slots: MetaRef<'_>, table: RopeTable<'_>) -> Result<()> {
    let (dtype, mut p) = base(gpu, l, &s, &table, &deltas)?;
    pool.check(gpu, s.k_heads, s.head_dim, dtype)?;
    need_meta(gpu, "shifted slots", &slots, s.tokens, 0, pool.slots as i64)?;
    (p.k, p.slots, p.gather) = (pool.k.addr, slots.addr, 1);
    p.k_stride = i32_of(s.k_heads * s.head_dim, "pool row")?;
    p.q_heads = 0;
    if let Some(pos) = &pool.pos {
        p.k_pos = pos.addr;
    }
    // SAFETY: every slot is inside the pool (and its position array), deltas has one entry per
    // token, the table rotary_dim / 2 entries.
    unsafe { gpu.launch(l.kernel, grid(&p, dtype), ROPE_THREADS, 0, &p) }
}
