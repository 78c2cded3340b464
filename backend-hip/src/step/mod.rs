//! The trait's ops on the GPU, on top of the typed launchers: per call, views of the tensors
//! and pools, metadata built from the validated arguments, and the launches a plan chose. The
//! primitives live here; each strategy's composite step has its own file.

pub(crate) mod flash;
pub(crate) mod fused;
pub(crate) mod hybrid;
pub(crate) mod separate;
pub(crate) mod tables;

use std::sync::Arc;

use backend_api::{AppendArgs, AttentionArgs, AttentionParams, Batch, CacheLayout, Error, KvCache, PlainAttentionArgs, Result, RopeArgs, RopeFrequencies, ShiftArgs, StepArgs};

use crate::runtime::launch::attention::{self, AttnCall, AttnLaunch, AttnRope, KvAddressing, KvSource};
use crate::runtime::launch::kv_append;
use crate::runtime::launch::rope::{self, RopeLaunch, RopeShape, RopeTable};
use crate::runtime::launch::PoolMut;
use crate::contract::Kernel;
use crate::runtime::{DevMut, DevRef, DeviceBuffer, Gpu, Meta};
use crate::storage::{cache, cache_mut, tensor, tensor_mut, GpuCache};
use tables::RopeTables;

/// What every op needs: the GPU, the backend's name (for errors) and its table cache.
pub(crate) struct Ctx<'a> {
    pub gpu: &'a Gpu,
    pub name: &'a str,
    pub tables: &'a RopeTables,
}

impl Ctx<'_> {
    fn table(&self, freqs: &RopeFrequencies) -> Result<Arc<DeviceBuffer>> {
        self.tables.get(self.gpu, freqs)
    }
    fn q<'t>(&self, t: &'t backend_api::Tensor, what: &str) -> Result<DevRef<'t>> {
        Ok(tensor(t, what, self.name, self.gpu)?.buf.view())
    }
    fn q_mut<'t>(&self, t: &'t mut backend_api::Tensor, what: &str) -> Result<DevMut<'t>> {
        Ok(tensor_mut(t, what, self.name, self.gpu)?.buf.view_mut())
    }
}

/// Position ids as the kernels take them (the API keeps them below 2^30).
fn positions_i32(positions: &[u32]) -> Vec<i32> {
    positions.iter().map(|&p| p as i32).collect()
}

/// The pool slot of every new token: entry `i`'s tokens go to positions `start[i]..` (vLLM's
/// slot mapping, resolved on the host from the capacity or the page table).
fn slot_mapping(cache: &KvCache, batch: &Batch, start: &[usize]) -> Result<Vec<i32>> {
    let row = cache.spec().num_kv_heads * cache.spec().head_dim;
    let mut slots = Vec::with_capacity(batch.total_tokens());
    for ((&s, &n), &st) in batch.seq_ids().iter().zip(batch.q_lens()).zip(start) {
        for t in st..st + n {
            let slot = cache.slot_offset(s, t, 0) / row;
            slots.push(i32::try_from(slot).map_err(|_| Error::InvalidArgument(format!("pool slot {slot} exceeds 32 bits")))?);
        }
    }
    Ok(slots)
}

/// The pools of `c`, writable.
fn pool_mut<'a>(c: &'a mut GpuCache, slots: usize) -> PoolMut<'a> {
    PoolMut { k: c.k.view_mut(), v: c.v.view_mut(), pos: c.pos.as_mut().map(|p| p.view_mut()), slots }
}

/// RoPE on Q and K in place.
pub(crate) fn rope(ctx: &Ctx<'_>, l: &RopeLaunch, a: RopeArgs<'_>) -> Result<()> {
    let RopeArgs { q, k, positions, config, freqs, .. } = a;
    let table = ctx.table(&freqs)?;
    let meta = ctx.gpu.upload_meta(&[&positions_i32(positions)])?;
    let s = RopeShape { tokens: positions.len(), q_heads: q.shape()[1], k_heads: k.shape()[1], head_dim: config.head_dim };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: config.rotary_dim, factor: freqs.attention_factor as f32 };
    let (q, k) = (ctx.q_mut(q, "q")?, ctx.q_mut(k, "k")?);
    rope::in_place(ctx.gpu, l, s, Some(q), k, meta.part(0), t)
}

/// Appends K/V rows at their slots (keys as given: a hip-fused slot is marked "stored rotated").
pub(crate) fn kv_append(ctx: &Ctx<'_>, kernel: Kernel, a: AppendArgs<'_>) -> Result<()> {
    let AppendArgs { cache: c, k, v, batch, start, .. } = a;
    let slots = slot_mapping(c, batch, &start)?;
    let meta = ctx.gpu.upload_meta(&[&slots])?;
    let spec = c.spec().clone();
    let (kv, vv) = (ctx.q(k, "k")?, ctx.q(v, "v")?);
    let pools = cache_mut(c, ctx.name, ctx.gpu)?;
    kv_append::append(ctx.gpu, kernel, slots.len(), spec.num_kv_heads, spec.head_dim, kv, vv, pool_mut(pools, spec.pool_slots()), meta.part(0), None)
}

/// Where the batch's K/V rows are in the cache.
fn addressing<'c>(c: &'c KvCache, batch: &Batch, bases: &'c mut Vec<usize>) -> KvAddressing<'c> {
    match c.spec().layout {
        CacheLayout::Contiguous { capacity } => {
            *bases = batch.seq_ids().iter().map(|&s| s * capacity).collect();
            KvAddressing::Rows(bases)
        }
        CacheLayout::Paged { page_size, .. } => KvAddressing::Pages { page_size, tables: batch.seq_ids().iter().map(|&s| c.page_table(s)).collect() },
    }
}

/// Attention of `q` over the cache's first `kv_lens[i]` tokens of each batch entry.
#[allow(clippy::too_many_arguments)]
fn cache_attention(ctx: &Ctx<'_>, l: &AttnLaunch, q: DevRef<'_>, heads: usize, c: &KvCache, batch: &Batch, kv_lens: &[usize], params: AttentionParams, out: DevMut<'_>, rope: Option<AttnRope<'_>>) -> Result<()> {
    let spec = c.spec();
    let pools = cache(c, ctx.name, ctx.gpu)?;
    let mut bases = Vec::new();
    let kv = KvSource { k: pools.k.view(), v: pools.v.view(), rows: spec.pool_slots(), kv_heads: spec.num_kv_heads, at: addressing(c, batch, &mut bases) };
    let call = AttnCall { dtype: spec.dtype, heads, head_dim: spec.head_dim, q, out, q_lens: batch.q_lens(), kv_lens, kv, causal: params.causal, scale: params.scale, rope };
    attention::attention(ctx.gpu, l, call)
}

/// hip-fused's cached keys may be stored unrotated: the in-attention RoPE for them (None when
/// the cache has no table bound, i.e. holds only keys stored rotated).
fn cache_key_rope(c: &GpuCache) -> Option<AttnRope<'_>> {
    let (b, pos) = (c.rope.as_ref()?, c.pos.as_ref()?);
    Some(AttnRope { q_pos: None, k_pos: Some(pos.view()), table: RopeTable { inv_freq: b.table.view(), rotary_dim: b.rotary_dim, factor: b.factor }, interleaved: b.interleaved })
}

/// Attention over a cache.
pub(crate) fn attention(ctx: &Ctx<'_>, l: &AttnLaunch, a: AttentionArgs<'_>) -> Result<()> {
    let heads = a.q.shape()[1];
    let q = ctx.q(a.q, "q")?;
    let out = ctx.q_mut(a.out, "out")?;
    let rope = if rotates_keys(l) { cache_key_rope(cache(a.cache, ctx.name, ctx.gpu)?) } else { None };
    cache_attention(ctx, l, q, heads, a.cache, a.batch, &a.kv_lens, a.params, out, rope)
}

fn rotates_keys(l: &AttnLaunch) -> bool {
    use crate::contract::InKernelRope;
    match l {
        AttnLaunch::Tiled { kernel, .. } | AttnLaunch::Decode { kernel, .. } | AttnLaunch::Wide { kernel } => {
            matches!(kernel, Kernel::Decode { rope: InKernelRope::QueriesAndKeys, .. } | Kernel::Prefill { rope: true, .. } | Kernel::Wide { rope: true, .. })
        }
        AttnLaunch::Separate { .. } => false,
    }
}

/// Attention over given Q, K, V.
pub(crate) fn attention_plain(ctx: &Ctx<'_>, l: &AttnLaunch, a: PlainAttentionArgs<'_>) -> Result<()> {
    let bases: Vec<usize> = a.batch.kv_offsets()[..a.batch.len()].to_vec();
    let rows = *a.batch.kv_offsets().last().unwrap_or(&0);
    let kv = KvSource { k: ctx.q(a.k, "k")?, v: ctx.q(a.v, "v")?, rows, kv_heads: a.k.shape()[1], at: KvAddressing::Rows(&bases) };
    let call = AttnCall {
        dtype: a.q.dtype(),
        heads: a.q.shape()[1],
        head_dim: a.q.shape()[2],
        q: ctx.q(a.q, "q")?,
        out: ctx.q_mut(a.out, "out")?,
        q_lens: a.batch.q_lens(),
        kv_lens: a.batch.kv_lens(),
        kv,
        causal: a.params.causal,
        scale: a.params.scale,
        rope: None,
    };
    attention::attention(ctx.gpu, l, call)
}

/// Context shift: keys stored rotated are rotated by `delta` in place; hip-fused slots that hold
/// a position only move it.
pub(crate) fn shift(ctx: &Ctx<'_>, l: &RopeLaunch, a: ShiftArgs<'_>) -> Result<()> {
    let ShiftArgs { cache: c, seq, tokens, delta, config, freqs, .. } = a;
    let n = tokens.len();
    let row = c.spec().num_kv_heads * c.spec().head_dim;
    let slots: Vec<i32> = tokens.map(|t| (c.slot_offset(seq, t, 0) / row) as i32).collect();
    // |delta| < max_position <= 2^30 (validated).
    let deltas = vec![delta as i32; n];
    let meta = ctx.gpu.upload_meta(&[&deltas, &slots])?;
    let table = ctx.table(&freqs)?;
    let spec = c.spec().clone();
    let pools = cache_mut(c, ctx.name, ctx.gpu)?;
    let s = RopeShape { tokens: n, q_heads: 0, k_heads: spec.num_kv_heads, head_dim: spec.head_dim };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: config.rotary_dim, factor: 1.0 };
    rope::shift(ctx.gpu, l, s, pool_mut(pools, spec.pool_slots()), meta.part(0), meta.part(1), t)
}

/// hip-flash's and hip-hybrid's first kernel: K rotated into the cache with V in one pass (Q
/// rotated in place too when `rotate_q`). Returns the uploaded metadata (part 0: positions,
/// part 1: slots) and the table, for the attention that follows.
fn rope_into_cache(ctx: &Ctx<'_>, l: &RopeLaunch, a: &mut StepArgs<'_>, rotate_q: bool) -> Result<(Meta, Arc<DeviceBuffer>)> {
    let table = ctx.table(&a.freqs)?;
    let slots = slot_mapping(a.cache, a.batch, &a.start)?;
    let meta = ctx.gpu.upload_meta(&[&positions_i32(a.positions), &slots])?;
    let spec = a.cache.spec().clone();
    let s = RopeShape { tokens: slots.len(), q_heads: a.q.shape()[1], k_heads: spec.num_kv_heads, head_dim: spec.head_dim };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: a.config.rotary_dim, factor: a.freqs.attention_factor as f32 };
    let q = if rotate_q { Some(ctx.q_mut(a.q, "q")?) } else { None };
    let (k, v) = (ctx.q(a.k, "k")?, ctx.q(a.v, "v")?);
    let pools = cache_mut(a.cache, ctx.name, ctx.gpu)?;
    rope::into_cache(ctx.gpu, l, s, q, k, v, pool_mut(pools, spec.pool_slots()), meta.part(0), meta.part(1), t)?;
    Ok((meta, table))
}
