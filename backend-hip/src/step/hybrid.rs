//! hip-hybrid's step: the fused kernel writes rotated K and V into the cache and leaves Q alone;
//! attention rotates Q as it loads it (once per block, in shared memory), so Q is never written
//! back.

use attnforge_api::{Result, RopeStyle, StepArgs};

use super::{cache_attention, rope_into_cache, Ctx};
use crate::runtime::launch::attention::{AttnLaunch, AttnRope};
use crate::runtime::launch::rope::{RopeLaunch, RopeTable};

pub(crate) fn step(ctx: &Ctx<'_>, rope: &RopeLaunch, attention: &AttnLaunch, mut a: StepArgs<'_>) -> Result<()> {
    let (meta, table) = rope_into_cache(ctx, rope, &mut a, false)?;
    let heads = a.q.shape()[1];
    let q_rope = AttnRope {
        q_pos: Some(meta.part(0)),
        k_pos: None,
        table: RopeTable { inv_freq: table.view(), rotary_dim: a.config.rotary_dim, factor: a.freqs.attention_factor as f32 },
        interleaved: a.config.style == RopeStyle::Interleaved,
        mrope: super::mrope_of(a.config),
    };
    let q = ctx.q(a.q, "q")?;
    let out = ctx.q_mut(a.out, "out")?;
    let x = ctx.extras(a.sinks, None)?;
    cache_attention(ctx, attention, q, heads, a.pools, a.meta, a.batch, &a.kv_lens, a.params, x, out, Some(q_rope))
}
