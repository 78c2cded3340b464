//! hip-fused's step: K and V appended unrotated, each slot's position recorded in the cache's
//! position array; attention rotates Q and every cached key on the fly. The cache is bound to
//! the first step's RoPE table: another table is refused (one cache serves one configuration),
//! so a context shift only has to move positions.

use attnforge_api::{Error, KvPools, Result, RopeConfig, RopeFrequencies, RopeStyle, StepArgs};

use super::{cache_attention, positions_i32, slot_mapping, Ctx};
use crate::contract::Kernel;
use crate::runtime::launch::attention::{AttnLaunch, AttnRope};
use crate::runtime::launch::kv_append;
use crate::runtime::launch::rope::RopeTable;
use crate::storage::{pool_state_mut, BoundRope};

/// Binds the pools to this step's RoPE table, or refuses another one.
fn bind_rope(ctx: &Ctx<'_>, c: &mut KvPools, config: &RopeConfig, freqs: &RopeFrequencies) -> Result<BoundRope> {
    let table = ctx.table(freqs)?;
    bind_table(ctx.name, c, bound(table, config, freqs))
}

/// The binding a step with `config` and `freqs` (whose device table is `table`) asks for.
pub(crate) fn bound(table: std::sync::Arc<crate::runtime::DeviceBuffer>, config: &RopeConfig, freqs: &RopeFrequencies) -> BoundRope {
    let key: std::sync::Arc<[u64]> = freqs.inv_freq.iter().map(|f| f.to_bits()).collect();
    BoundRope { key, table, rotary_dim: config.rotary_dim, interleaved: config.style == RopeStyle::Interleaved, factor: freqs.attention_factor as f32, mrope: super::mrope_of(config) }
}

/// Binds the pools to `want`, or refuses another table (host state only: no device work).
pub(crate) fn bind_table(name: &str, c: &mut KvPools, want: BoundRope) -> Result<BoundRope> {
    let p = pool_state_mut(c).ok_or_else(|| Error::Device { code: -1, message: format!("{name}: KV pools made without slot positions") })?;
    match &p.rope {
        Some(b) if b.key != want.key || b.rotary_dim != want.rotary_dim || b.interleaved != want.interleaved || b.factor.to_bits() != want.factor.to_bits() => {
            Err(Error::InvalidArgument(format!(
                "{}: this cache holds unrotated keys for another RoPE configuration (rotary_dim {}, {} pairs); one cache serves one configuration",
                name,
                b.rotary_dim,
                if b.interleaved { "interleaved" } else { "half-split" }
            )))
        }
        Some(b) => Ok(b.clone()),
        None => {
            p.rope = Some(want.clone());
            Ok(want)
        }
    }
}

pub(crate) fn step(ctx: &Ctx<'_>, append: Kernel, attention: &AttnLaunch, a: StepArgs<'_>) -> Result<()> {
    let StepArgs { q, k, v, positions, config, freqs, pools, meta, batch, start, kv_lens, params, sinks, out, .. } = a;
    let bound = bind_rope(ctx, pools, config, &freqs)?;
    let slots = slot_mapping(meta, batch, &start)?;
    let m = ctx.gpu.upload_meta(&[&positions_i32(positions), &slots])?;
    let spec = pools.spec().clone();
    let (kv, vv) = (ctx.q(k, "k")?, ctx.q(v, "v")?);
    {
        let pool = ctx.pools_mut(pools)?;
        kv_append::append(ctx.gpu, append, slots.len(), spec.num_kv_heads, spec.head_dim, kv, vv, pool, m.part(1), Some(m.part(0)))?;
    }
    let heads = q.shape()[1];
    let pos = crate::storage::pools(pools, ctx.name, ctx.gpu)?.2.map(|s| s.pos.view());
    let rope = AttnRope {
        q_pos: Some(m.part(0)),
        k_pos: pos,
        table: RopeTable { inv_freq: bound.table.view(), rotary_dim: bound.rotary_dim, factor: bound.factor },
        interleaved: bound.interleaved,
        mrope: None, // refused by the plan: one position per cached key
    };
    let (qv, ov) = (ctx.q(q, "q")?, ctx.q_mut(out, "out")?);
    cache_attention(ctx, attention, qv, heads, pools, meta, batch, &kv_lens, params, ctx.extras(sinks, None)?, ov, Some(rope))
}
