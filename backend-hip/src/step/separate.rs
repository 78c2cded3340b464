//! hip-separate's step: the unfused baseline, the trait's default composition: RoPE kernel,
//! append kernel, then attention as three kernels over a score buffer.

use attnforge_api::{Result, StepArgs};

use super::{attention, kv_append, rope, Ctx};
use crate::contract::Kernel;
use crate::runtime::launch::attention::AttnLaunch;
use crate::runtime::launch::rope::RopeLaunch;

pub(crate) fn step(ctx: &Ctx<'_>, rope_l: &RopeLaunch, append: Kernel, attention_l: &AttnLaunch, mut a: StepArgs<'_>) -> Result<()> {
    rope(ctx, rope_l, a.rope_args())?;
    kv_append(ctx, append, a.append_args())?;
    attention(ctx, attention_l, a.attention_args())
}
