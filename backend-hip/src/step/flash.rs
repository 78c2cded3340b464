//! hip-flash's step: one kernel rotates Q in place and writes rotated K and V into the cache,
//! then attention without RoPE (matrix cores where the plan chose them).

use attnforge_api::{Result, StepArgs};

use super::{cache_attention, rope_into_cache, Ctx};
use crate::runtime::launch::attention::AttnLaunch;
use crate::runtime::launch::rope::RopeLaunch;

pub(crate) fn step(ctx: &Ctx<'_>, rope: &RopeLaunch, attention: &AttnLaunch, mut a: StepArgs<'_>) -> Result<()> {
    let _meta = rope_into_cache(ctx, rope, &mut a, true)?;
    let heads = a.q.shape()[1];
    let q = ctx.q(a.q, "q")?;
    let out = ctx.q_mut(a.out, "out")?;
    let x = ctx.extras(a.sinks, None)?;
    cache_attention(ctx, attention, q, heads, a.pools, a.meta, a.batch, &a.kv_lens, a.params, x, out, None)
}
