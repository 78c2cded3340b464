//! The trait's ops on the GPU, on top of the typed launchers: per call, views of the tensors
//! and pools, metadata built from the validated arguments, and the launches a plan chose. The
//! primitives live here; each strategy's composite step has its own file.

pub(crate) mod flash;
pub(crate) mod fused;
pub(crate) mod hybrid;
pub(crate) mod planned;
pub(crate) mod separate;
pub(crate) mod tables;

use std::sync::Arc;

use attnforge_api::{
    AppendArgs, AttentionArgs, AttentionParams, Batch, CacheLayout, Error, KvCacheSpec, KvMetadata, KvPools, MergeArgs, PlainAttentionArgs, Result, RopeArgs, RopeFrequencies, ShiftArgs, StepArgs, Tensor,
};

use crate::contract::Kernel;
use crate::runtime::launch::attention::{self, AttnCall, AttnLaunch, AttnRope, KvAddressing, KvSource};
use crate::runtime::launch::kv_append;
use crate::runtime::launch::merge::{self, MergeCall};
use crate::runtime::launch::rope::{self, RopeLaunch, RopeShape, RopeTable};
use crate::runtime::launch::{PoolMut, Strided};
use crate::runtime::{DevMut, DevRef, DeviceBuffer, Gpu, Meta};
use crate::storage::{pools, tensor, writable, GpuPoolState};
use tables::RopeTables;

/// The optional views of an attention call: sinks and the log-sum-exp output.
pub(crate) struct Extras<'a> {
    pub sinks: Option<DevRef<'a>>,
    pub lse: Option<DevMut<'a>>,
}

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
    /// `t`'s rows (strided or not), read-only.
    fn q<'t>(&self, t: &'t Tensor, what: &str) -> Result<Strided<DevRef<'t>>> {
        Ok(Strided { mem: tensor(t, what, self.name, self.gpu)?.view(), stride: t.row_stride() })
    }
    /// `t`'s rows, writable.
    fn q_mut<'t>(&self, t: &'t mut Tensor, what: &str) -> Result<Strided<DevMut<'t>>> {
        let stride = t.row_stride();
        Ok(Strided { mem: writable(t, what, self.name, self.gpu)?.view_mut(), stride })
    }
    /// Attention sinks (f32 `[heads]`, read-only) and the log-sum-exp output (f32 `[T, heads]`,
    /// written), both dense.
    fn extras<'t>(&self, sinks: Option<&'t Tensor>, lse: Option<&'t mut Tensor>) -> Result<Extras<'t>> {
        Ok(Extras {
            sinks: sinks.map(|t| Ok::<_, Error>(tensor(t, "sinks", self.name, self.gpu)?.view())).transpose()?,
            lse: lse.map(|t| Ok::<_, Error>(writable(t, "lse", self.name, self.gpu)?.view_mut())).transpose()?,
        })
    }
    /// The pools (and hip-fused's slot positions), writable.
    fn pools_mut<'p>(&self, c: &'p mut KvPools) -> Result<PoolMut<'p>> {
        let slots = c.spec().pool_slots();
        let (k, v, state, scales) = c.parts_and_scales_mut();
        let (k, v) = (writable(k, "K pool", self.name, self.gpu)?, writable(v, "V pool", self.name, self.gpu)?);
        let pos = state.and_then(|s| s.as_any_mut().downcast_mut::<GpuPoolState>()).map(|s| {
            self.gpu.keep(&s.pos);
            s.pos.slice_mut(0)
        });
        Ok(PoolMut { k: k.view_mut(), v: v.view_mut(), pos, slots, scales: self.scale_refs(scales)? })
    }
    /// FP8 pools' scales, read-only.
    fn scales<'p>(&self, c: &'p KvPools) -> Result<Option<(DevRef<'p>, DevRef<'p>)>> {
        self.scale_refs(c.scales())
    }
    fn scale_refs<'p>(&self, scales: Option<(&'p Tensor, &'p Tensor)>) -> Result<Option<(DevRef<'p>, DevRef<'p>)>> {
        scales.map(|(ks, vs)| Ok((tensor(ks, "K scales", self.name, self.gpu)?.view(), tensor(vs, "V scales", self.name, self.gpu)?.view()))).transpose()
    }
}

/// M-RoPE's sections, if the configuration has them (positions `[3, T]`).
pub(crate) fn mrope_of(c: &attnforge_api::RopeConfig) -> Option<[usize; 3]> {
    match c.scaling {
        attnforge_api::RopeScaling::MRope { section } => Some(section),
        _ => None,
    }
}

/// Position ids as the kernels take them (the API keeps them below 2^30).
fn positions_i32(positions: &[u32]) -> Vec<i32> {
    positions.iter().map(|&p| p as i32).collect()
}

/// The pool slot of every new token: entry `i`'s tokens go to positions `start[i]..` (vLLM's
/// slot mapping, resolved on the host from the capacity or the page table).
fn slot_mapping(meta: &KvMetadata, batch: &Batch, start: &[usize]) -> Result<Vec<i32>> {
    let mut slots = Vec::with_capacity(batch.total_tokens());
    for ((&s, &n), &st) in batch.seq_ids().iter().zip(batch.q_lens()).zip(start) {
        for t in st..st + n {
            let slot = meta.slot(s, t);
            slots.push(i32::try_from(slot).map_err(|_| Error::InvalidArgument(format!("pool slot {slot} exceeds 32 bits")))?);
        }
    }
    Ok(slots)
}

/// RoPE on Q and K in place.
pub(crate) fn rope(ctx: &Ctx<'_>, l: &RopeLaunch, a: RopeArgs<'_>) -> Result<()> {
    let RopeArgs { q, k, positions, config, freqs, .. } = a;
    let table = ctx.table(&freqs)?;
    let meta = ctx.gpu.upload_meta(&[&positions_i32(positions)])?;
    let s = RopeShape { tokens: q.shape()[0], q_heads: q.shape()[1], k_heads: k.shape()[1], head_dim: config.head_dim, mrope: mrope_of(config) };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: config.rotary_dim, factor: freqs.attention_factor as f32 };
    let (q, k) = (ctx.q_mut(q, "q")?, ctx.q_mut(k, "k")?);
    rope::in_place(ctx.gpu, l, s, Some(q), k, meta.part(0), t)
}

/// Appends K/V rows at their slots (keys as given: a hip-fused slot is marked "stored rotated").
pub(crate) fn kv_append(ctx: &Ctx<'_>, kernel: Kernel, a: AppendArgs<'_>) -> Result<()> {
    let AppendArgs { pools, meta, k, v, batch, start, .. } = a;
    let slots = slot_mapping(meta, batch, &start)?;
    let m = ctx.gpu.upload_meta(&[&slots])?;
    let spec = pools.spec().clone();
    let (kv, vv) = (ctx.q(k, "k")?, ctx.q(v, "v")?);
    let pool = ctx.pools_mut(pools)?;
    kv_append::append(ctx.gpu, kernel, slots.len(), spec.num_kv_heads, spec.head_dim, kv, vv, pool, m.part(0), None)
}

/// Where the batch's K/V rows are in the pools.
fn addressing<'c>(spec: &KvCacheSpec, meta: &'c KvMetadata, batch: &Batch, bases: &'c mut Vec<usize>) -> KvAddressing<'c> {
    match spec.layout {
        CacheLayout::Contiguous { capacity } => {
            *bases = batch.seq_ids().iter().map(|&s| s * capacity).collect();
            KvAddressing::Rows(bases)
        }
        CacheLayout::Paged { page_size, .. } => KvAddressing::Pages { page_size, tables: batch.seq_ids().iter().map(|&s| meta.page_table(s)).collect() },
    }
}

/// Attention of `q` over the pools' first `kv_lens[i]` tokens of each batch entry.
#[allow(clippy::too_many_arguments)]
fn cache_attention(
    ctx: &Ctx<'_>,
    l: &AttnLaunch,
    q: Strided<DevRef<'_>>,
    heads: usize,
    c: &KvPools,
    meta: &KvMetadata,
    batch: &Batch,
    kv_lens: &[usize],
    params: AttentionParams,
    x: Extras<'_>,
    out: Strided<DevMut<'_>>,
    rope: Option<AttnRope<'_>>,
) -> Result<()> {
    let spec = c.spec();
    let (k, v, _) = pools(c, ctx.name, ctx.gpu)?;
    let mut bases = Vec::new();
    let row = spec.num_kv_heads * spec.head_dim;
    let kv = KvSource {
        k: Strided { mem: k.view(), stride: row },
        v: Strided { mem: v.view(), stride: row },
        rows: spec.pool_slots(),
        kv_heads: spec.num_kv_heads,
        at: addressing(c.spec(), meta, batch, &mut bases),
        scales: ctx.scales(c)?,
    };
    let call = AttnCall { dtype: spec.dtype, heads, head_dim: spec.head_dim, q, out, q_lens: batch.q_lens(), kv_lens, kv, causal: params.causal, scale: params.scale, softcap: params.softcap.unwrap_or(0.0), window: params.window.unwrap_or(0), sinks: x.sinks, lse: x.lse, rope };
    attention::attention(ctx.gpu, l, call)
}

/// hip-fused's cached keys may be stored unrotated: the in-attention RoPE for them (None when
/// the pools have no table bound, i.e. hold only keys stored rotated).
fn cache_key_rope(s: Option<&GpuPoolState>) -> Option<AttnRope<'_>> {
    let s = s?;
    let b = s.rope.as_ref()?;
    Some(AttnRope { q_pos: None, k_pos: Some(s.pos.view()), table: RopeTable { inv_freq: b.table.view(), rotary_dim: b.rotary_dim, factor: b.factor }, interleaved: b.interleaved, mrope: None })
}

/// Attention over the pools.
pub(crate) fn attention(ctx: &Ctx<'_>, l: &AttnLaunch, a: AttentionArgs<'_>) -> Result<()> {
    let heads = a.q.shape()[1];
    let q = ctx.q(a.q, "q")?;
    let out = ctx.q_mut(a.out, "out")?;
    let rope = if rotates_keys(l) { cache_key_rope(pools(a.pools, ctx.name, ctx.gpu)?.2) } else { None };
    let x = ctx.extras(a.sinks, a.lse)?;
    cache_attention(ctx, l, q, heads, a.pools, a.meta, a.batch, &a.kv_lens, a.params, x, out, rope)
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
    let kv = KvSource { k: ctx.q(a.k, "k")?, v: ctx.q(a.v, "v")?, rows, kv_heads: a.k.shape()[1], at: KvAddressing::Rows(&bases), scales: None };
    let x = ctx.extras(a.sinks, a.lse)?;
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
        softcap: a.params.softcap.unwrap_or(0.0),
        window: a.params.window.unwrap_or(0),
        sinks: x.sinks,
        lse: x.lse,
        rope: None,
    };
    attention::attention(ctx.gpu, l, call)
}

/// merge_states: every state's output and lse, the merged output and lse.
pub(crate) fn merge_states(ctx: &Ctx<'_>, kernel: Kernel, a: MergeArgs<'_>) -> Result<()> {
    let MergeArgs { states, out, lse, .. } = a;
    let (t, h, d) = (out.shape()[0], out.shape()[1], out.shape()[2]);
    let states = states.iter().map(|(o, l)| Ok((ctx.q(o, "state output")?, tensor(l, "state lse", ctx.name, ctx.gpu)?.view()))).collect::<Result<Vec<_>>>()?;
    let call = MergeCall { dtype: out.dtype(), tokens: t, heads: h, head_dim: d, states, out: ctx.q_mut(out, "out")?, lse: lse.map(|l| Ok::<_, Error>(writable(l, "lse", ctx.name, ctx.gpu)?.view_mut())).transpose()? };
    merge::merge_states(ctx.gpu, kernel, call)
}

/// Context shift: keys stored rotated are rotated by `delta` in place; hip-fused slots that hold
/// a position only move it.
pub(crate) fn shift(ctx: &Ctx<'_>, l: &RopeLaunch, a: ShiftArgs<'_>) -> Result<()> {
    let ShiftArgs { pools, meta, seq, tokens, delta, config, freqs, .. } = a;
    let n = tokens.len();
    let slots: Vec<i32> = tokens.map(|t| meta.slot(seq, t) as i32).collect();
    // |delta| < max_position <= 2^30 (validated).
    let deltas = vec![delta as i32; n];
    let m = ctx.gpu.upload_meta(&[&deltas, &slots])?;
    let table = ctx.table(&freqs)?;
    let spec = pools.spec().clone();
    let pool = ctx.pools_mut(pools)?;
    // Every M-RoPE component moves by delta: one rotation by delta per pair, as without it.
    let s = RopeShape { tokens: n, q_heads: 0, k_heads: spec.num_kv_heads, head_dim: spec.head_dim, mrope: None };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: config.rotary_dim, factor: 1.0 };
    rope::shift(ctx.gpu, l, s, pool, m.part(0), m.part(1), t)
}

/// hip-flash's and hip-hybrid's first kernel: K rotated into the cache with V in one pass (Q
/// rotated in place too when `rotate_q`). Returns the uploaded metadata (part 0: positions,
/// part 1: slots) and the table, for the attention that follows.
fn rope_into_cache(ctx: &Ctx<'_>, l: &RopeLaunch, a: &mut StepArgs<'_>, rotate_q: bool) -> Result<(Meta, Arc<DeviceBuffer>)> {
    let table = ctx.table(&a.freqs)?;
    let slots = slot_mapping(a.meta, a.batch, &a.start)?;
    let meta = ctx.gpu.upload_meta(&[&positions_i32(a.positions), &slots])?;
    let spec = a.pools.spec().clone();
    let s = RopeShape { tokens: slots.len(), q_heads: a.q.shape()[1], k_heads: spec.num_kv_heads, head_dim: spec.head_dim, mrope: mrope_of(a.config) };
    let t = RopeTable { inv_freq: table.view(), rotary_dim: a.config.rotary_dim, factor: a.freqs.attention_factor as f32 };
    let q = if rotate_q { Some(ctx.q_mut(a.q, "q")?) } else { None };
    let (k, v) = (ctx.q(a.k, "k")?, ctx.q(a.v, "v")?);
    let pool = ctx.pools_mut(a.pools)?;
    rope::into_cache(ctx.gpu, l, s, q, k, v, pool, meta.part(0), meta.part(1), t)?;
    Ok((meta, table))
}
