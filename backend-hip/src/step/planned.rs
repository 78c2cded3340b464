//! Plan / run ([`attnforge_api::plan`]): a plan holds the step's launches, its metadata in one
//! device buffer at a fixed address (positions, slot mapping, query offsets, key lengths, row
//! bases, page tables, tiles), the split-K scratch (or hip-separate's score buffer and row
//! table) and the RoPE table; `run` per layer builds views of the layer's tensors and launches,
//! with no allocation, no host<->device copy and no wait, so it can be captured into a device
//! graph. `update` rewrites the metadata in place (same lengths: the bucket fixes them).
//! `plan_in` carves the same buffers out of a caller's workspace instead of allocating them.

use std::sync::Arc;

use attnforge_api::{AttentionParams, Error, GraphExec, KvPools, LayerViews, PlanArgs, PlanOp, PlanState, Result, Tensor};

use super::fused::{bind_table, bound};
use super::{addressing, cache_key_rope, positions_i32, rotates_keys, slot_mapping, Ctx, Extras};
use crate::contract::Kernel;
use crate::plan::{OpPlan, Strategy};
use crate::runtime::launch::attention::{self, AttnDevice, AttnHost, AttnLaunch, AttnRope, AttnShape, AttnViews};
use crate::runtime::launch::rope::{self, RopeLaunch, RopeShape, RopeTable};
use crate::runtime::launch::{kv_append, Strided};
use crate::runtime::{DevMut, DevRef, DeviceBuffer, Gpu, GpuGraph, Meta};
use crate::storage::{pools, writable, BoundRope};

/// A plan of a GPU backend.
#[derive(Debug)]
pub(crate) struct GpuPlan {
    launches: OpPlan,
    /// Parts: 0 positions, 1 slot mapping, 2..=6 the attention's (q_off, kv_len, kv_base,
    /// block_table, tiles).
    meta: Meta,
    attn: Option<AttnHost>,
    scratch: Option<Arc<DeviceBuffer>>,
    sep: Option<Arc<DeviceBuffer>>,
    /// Split-K decode: the counters with which the last split merges (zeroed; every launch
    /// leaves them zeroed).
    counters: Option<Arc<DeviceBuffer>>,
    /// The RoPE table and how it rotates (RoPE ops; hip-fused's binding).
    rope: Option<BoundRope>,
    tokens: usize,
    heads: usize,
    params: AttentionParams,
    /// The GPU stream's identity the plan's buffers are ordered on.
    stream: u64,
    /// The caller's workspace the buffers above were carved from ([`plan_in`]): held so that
    /// it outlives them (never read).
    #[allow(dead_code)]
    workspace: Option<Tensor>,
}

impl PlanState for GpuPlan {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn workspace_bytes(&self) -> usize {
        [&self.scratch, &self.sep, &self.counters].iter().map(|b| b.as_ref().map_or(0, |b| b.len())).sum::<usize>() + self.meta.bytes()
    }
}

/// The host side of a plan: every metadata part, checked.
struct Host {
    positions: Vec<i32>,
    slots: Vec<i32>,
    attn: Option<AttnHost>,
}

fn host(l: &OpPlan, a: &PlanArgs<'_>) -> Result<Host> {
    let ropes = matches!(a.op, PlanOp::Rope | PlanOp::Step);
    let appends = matches!(a.op, PlanOp::Append | PlanOp::Step);
    let positions = if ropes { positions_i32(a.positions) } else { Vec::new() };
    let slots = if appends { slot_mapping(a.meta, a.batch, &a.start)? } else { Vec::new() };
    let attn = match l {
        OpPlan::Attention(al) | OpPlan::Step { attention: al, .. } => {
            let spec = a.spec;
            let mut bases = Vec::new();
            let at = addressing(spec, a.meta, a.batch, &mut bases);
            let shape = AttnShape {
                heads: a.num_heads,
                head_dim: spec.head_dim,
                kv_heads: spec.num_kv_heads,
                rows: spec.pool_slots(),
                q_lens: a.batch.q_lens(),
                kv_lens: &a.kv_lens,
                at: &at,
                causal: a.params.causal,
                window: a.params.window.unwrap_or(0),
                bucket: Some(a.max_kv_len),
            };
            Some(attention::prepare(al, &shape)?)
        }
        _ => None,
    };
    Ok(Host { positions, slots, attn })
}

impl Host {
    fn parts(&self) -> Vec<&[i32]> {
        let mut v: Vec<&[i32]> = vec![&self.positions, &self.slots];
        match &self.attn {
            Some(h) => v.extend(h.parts.iter().map(|p| p.as_slice())),
            None => v.extend([&[] as &[i32]; 5]),
        }
        v
    }
}

/// Bytes of the plan's device buffers, in carve order: metadata, split-K scratch,
/// hip-separate's row table, counters (0: none).
fn sizes(h: &Host) -> [usize; 4] {
    let meta = 4 * h.parts().iter().map(|p| p.len()).sum::<usize>();
    match &h.attn {
        Some(x) => [meta, x.scratch, x.sep.len(), x.counters],
        None => [meta, 0, 0, 0],
    }
}

/// Device bytes [`plan_in`] needs for `a` with the launches `l`.
pub(crate) fn workspace_bytes(l: &OpPlan, a: &PlanArgs<'_>) -> Result<usize> {
    Ok(Gpu::carve_bytes(&sizes(&host(l, a)?)))
}

/// Makes a plan: the launches `l` (from `plan()` for the bucket) and the metadata of `a`.
pub(crate) fn plan(ctx: &Ctx<'_>, l: OpPlan, a: PlanArgs<'_>) -> Result<GpuPlan> {
    let h = host(&l, &a)?;
    let meta = ctx.gpu.upload_meta(&h.parts())?;
    let (scratch, sep, counters) = match &h.attn {
        Some(x) => (
            if x.scratch > 0 { Some(ctx.gpu.alloc_uninit(x.scratch)?) } else { None },
            if x.sep.is_empty() { None } else { Some(ctx.gpu.upload(&x.sep)?) },
            if x.counters > 0 { Some(ctx.gpu.alloc(x.counters)?) } else { None },
        ),
        None => (None, None, None),
    };
    finish(ctx, l, a, h, meta, [scratch, sep, counters], None)
}

/// [`plan`] with every buffer carved from the caller's `workspace` (checked: this device, this
/// instance or borrowed memory, writable, live, large enough; nothing is allocated).
pub(crate) fn plan_in(ctx: &Ctx<'_>, l: OpPlan, a: PlanArgs<'_>, workspace: Tensor) -> Result<GpuPlan> {
    let h = host(&l, &a)?;
    let ws = writable(&workspace, "workspace", ctx.name, ctx.gpu)?;
    let size = sizes(&h);
    let (need, have) = (Gpu::carve_bytes(&size), workspace.byte_len());
    if have < need {
        return Err(Error::StorageTooSmall { what: "workspace".into(), needed: need, got: have });
    }
    let mut pieces = ctx.gpu.carve(&ws.buf, ws.offset, have, &size)?.into_iter();
    let mut next = || pieces.next().ok_or_else(|| Error::Device { code: -1, message: "workspace carve".into() });
    let meta = ctx.gpu.upload_meta_into(&h.parts(), next()?)?;
    let (scratch, sep, counters) = (next()?, next()?, next()?);
    let (mut scratch_b, mut sep_b, mut counters_b) = (None, None, None);
    if let Some(x) = &h.attn {
        if x.scratch > 0 {
            scratch_b = Some(scratch);
        }
        if !x.sep.is_empty() {
            ctx.gpu.write(sep.slice_mut(0), 0, &x.sep)?;
            sep_b = Some(sep);
        }
        if x.counters > 0 {
            ctx.gpu.zero(&counters)?;
            counters_b = Some(counters);
        }
    }
    finish(ctx, l, a, h, meta, [scratch_b, sep_b, counters_b], Some(workspace))
}

fn finish(ctx: &Ctx<'_>, l: OpPlan, a: PlanArgs<'_>, h: Host, meta: Meta, bufs: [Option<DeviceBuffer>; 3], workspace: Option<Tensor>) -> Result<GpuPlan> {
    let rope = match (a.config, &a.freqs) {
        (Some(c), Some(f)) => Some(bound(ctx.table(f)?, c, f)),
        _ => None,
    };
    let [scratch, sep, counters] = bufs.map(|b| b.map(Arc::new));
    Ok(GpuPlan {
        launches: l,
        meta,
        attn: h.attn,
        scratch,
        sep,
        counters,
        rope,
        tokens: a.batch.total_tokens(),
        heads: a.num_heads,
        params: a.params,
        stream: ctx.gpu.stream_raw(),
        workspace,
    })
}

/// A plan whose workspace was memory borrowed for a lifetime that has ended is refused.
fn check_live(ctx: &Ctx<'_>, p: &GpuPlan) -> Result<()> {
    if p.stream != ctx.gpu.stream_raw() {
        return Err(Error::InvalidArgument(format!("{}: the plan was made on another stream", ctx.name)));
    }
    if !p.meta.live() {
        return Err(Error::InvalidArgument(format!("{}: the plan's workspace is borrowed memory whose borrow has ended", ctx.name)));
    }
    Ok(())
}

/// Rewrites `p` for the next step (the API checked it is the same op, shape and bucket).
/// Nothing changes when it fails.
pub(crate) fn update(ctx: &Ctx<'_>, p: &mut GpuPlan, a: PlanArgs<'_>) -> Result<()> {
    check_live(ctx, p)?;
    let h = host(&p.launches, &a)?;
    if let (Some(new), Some(old)) = (&h.attn, &p.attn) {
        if new.sep.len() != old.sep.len() || new.scratch > old.scratch || new.counters != old.counters {
            return Err(Error::Device { code: -1, message: format!("{}: the step's attention does not fit the plan's buffers", ctx.name) });
        }
    }
    ctx.gpu.rewrite_meta(&mut p.meta, &h.parts())?;
    if let (Some(x), Some(buf)) = (&h.attn, &p.sep) {
        ctx.gpu.write(buf.slice_mut(0), 0, &x.sep)?;
    }
    p.attn = h.attn;
    Ok(())
}

fn table(b: &BoundRope) -> RopeTable<'_> {
    RopeTable { inv_freq: b.table.view(), rotary_dim: b.rotary_dim, factor: b.factor }
}

/// One layer: launches only.
pub(crate) fn run(ctx: &Ctx<'_>, strategy: Strategy, p: &GpuPlan, views: LayerViews<'_>) -> Result<()> {
    check_live(ctx, p)?;
    // A capture holds what its launches read (the views' tensors register themselves).
    ctx.gpu.keep(p.meta.buffer());
    for b in [&p.scratch, &p.sep, &p.counters].into_iter().flatten() {
        ctx.gpu.keep(b);
    }
    if let Some(r) = &p.rope {
        ctx.gpu.keep(&r.table);
    }
    let no = |what: &str| Error::Device { code: -1, message: format!("{}: the plan has no {what}", ctx.name) };
    let m = &p.meta;
    match (views, &p.launches) {
        (LayerViews::Rope { q, k }, OpPlan::Rope(l)) => {
            let r = p.rope.as_ref().ok_or_else(|| no("RoPE table"))?;
            let s = RopeShape { tokens: p.tokens, q_heads: p.heads, k_heads: k.shape()[1], head_dim: k.shape()[2], mrope: r.mrope };
            rope::in_place(ctx.gpu, l, s, Some(ctx.q_mut(q, "q")?), ctx.q_mut(k, "k")?, m.part(0), table(r))
        }
        (LayerViews::Append { k, v, pools }, OpPlan::Append(kernel)) => append(ctx, *kernel, p, k, v, pools, false),
        (LayerViews::Attention { q, pools: c, out, sinks, lse }, OpPlan::Attention(l)) => {
            let rope = if rotates_keys(l) { cache_key_rope(pools(c, ctx.name, ctx.gpu)?.2) } else { None };
            attend(ctx, l, p, ctx.q(q, "q")?, c, ctx.extras(sinks, lse)?, ctx.q_mut(out, "out")?, rope)
        }
        (LayerViews::Step { q, k, v, pools: c, out, sinks }, OpPlan::Step { rope: rl, append: ak, attention: al }) => {
            let r = p.rope.as_ref().ok_or_else(|| no("RoPE table"))?;
            match (strategy, rl, ak) {
                (Strategy::Flash | Strategy::Hybrid, Some(rl), None) => {
                    let flash = strategy == Strategy::Flash;
                    into_cache(ctx, rl, p, r, flash.then_some(&mut *q), k, v, c)?;
                    let q_rope = (!flash).then(|| AttnRope { q_pos: Some(m.part(0)), k_pos: None, table: table(r), interleaved: r.interleaved, mrope: r.mrope });
                    attend(ctx, al, p, ctx.q(q, "q")?, c, ctx.extras(sinks, None)?, ctx.q_mut(out, "out")?, q_rope)
                }
                (Strategy::Fused, None, Some(kernel)) => {
                    let b = bind_table(ctx.name, c, r.clone())?;
                    ctx.gpu.keep(&b.table);
                    append(ctx, *kernel, p, k, v, c, true)?;
                    let pos = pools(c, ctx.name, ctx.gpu)?.2.map(|s| s.pos.view());
                    // hip-fused refuses M-RoPE (one position per cached key).
                    let rope = AttnRope { q_pos: Some(m.part(0)), k_pos: pos, table: table(&b), interleaved: b.interleaved, mrope: None };
                    attend(ctx, al, p, ctx.q(q, "q")?, c, ctx.extras(sinks, None)?, ctx.q_mut(out, "out")?, Some(rope))
                }
                // hip-separate's step, and hip-flash's and hip-hybrid's over FP8 pools (their
                // fused RoPE + append writes 16-bit rows): RoPE in place, append, attention.
                (Strategy::Separate | Strategy::Flash | Strategy::Hybrid, Some(rl), Some(kernel)) => {
                    let s = RopeShape { tokens: p.tokens, q_heads: p.heads, k_heads: k.shape()[1], head_dim: k.shape()[2], mrope: r.mrope };
                    rope::in_place(ctx.gpu, rl, s, Some(ctx.q_mut(q, "q")?), ctx.q_mut(k, "k")?, m.part(0), table(r))?;
                    append(ctx, *kernel, p, k, v, c, false)?;
                    attend(ctx, al, p, ctx.q(q, "q")?, c, ctx.extras(sinks, None)?, ctx.q_mut(out, "out")?, None)
                }
                _ => Err(no("launch of this strategy's step")),
            }
        }
        _ => Err(no("launch for these views")),
    }
}

/// The append kernel with the plan's slot mapping (and, for hip-fused's step, positions).
fn append(ctx: &Ctx<'_>, kernel: Kernel, p: &GpuPlan, k: &attnforge_api::Tensor, v: &attnforge_api::Tensor, c: &mut KvPools, with_positions: bool) -> Result<()> {
    let spec = c.spec().clone();
    let (kv, vv) = (ctx.q(k, "k")?, ctx.q(v, "v")?);
    let pool = ctx.pools_mut(c)?;
    let pos = with_positions.then(|| p.meta.part(0));
    kv_append::append(ctx.gpu, kernel, p.tokens, spec.num_kv_heads, spec.head_dim, kv, vv, pool, p.meta.part(1), pos)
}

/// hip-flash's / hip-hybrid's fused RoPE + append with the plan's positions and slots.
#[allow(clippy::too_many_arguments)]
fn into_cache(ctx: &Ctx<'_>, l: &RopeLaunch, p: &GpuPlan, r: &BoundRope, q: Option<&mut attnforge_api::Tensor>, k: &attnforge_api::Tensor, v: &attnforge_api::Tensor, c: &mut KvPools) -> Result<()> {
    let spec = c.spec().clone();
    let s = RopeShape { tokens: p.tokens, q_heads: p.heads, k_heads: spec.num_kv_heads, head_dim: spec.head_dim, mrope: r.mrope };
    let q = match q {
        Some(q) => Some(ctx.q_mut(q, "q")?),
        None => None,
    };
    let (k, v) = (ctx.q(k, "k")?, ctx.q(v, "v")?);
    let pool = ctx.pools_mut(c)?;
    rope::into_cache(ctx.gpu, l, s, q, k, v, pool, p.meta.part(0), p.meta.part(1), table(r))
}

/// Attention over the pools with the plan's metadata and scratch.
#[allow(clippy::too_many_arguments)]
fn attend(ctx: &Ctx<'_>, l: &AttnLaunch, p: &GpuPlan, q: Strided<DevRef<'_>>, c: &KvPools, x: Extras<'_>, out: Strided<DevMut<'_>>, rope: Option<AttnRope<'_>>) -> Result<()> {
    let h = p.attn.as_ref().ok_or_else(|| Error::Device { code: -1, message: format!("{}: the plan has no attention metadata", ctx.name) })?;
    let spec = c.spec();
    let (k, v, _) = pools(c, ctx.name, ctx.gpu)?;
    let row = spec.num_kv_heads * spec.head_dim;
    let views = AttnViews {
        q,
        out,
        k: Strided { mem: k.view(), stride: row },
        v: Strided { mem: v.view(), stride: row },
        dtype: spec.dtype,
        scale: p.params.scale,
        softcap: p.params.softcap.unwrap_or(0.0),
        causal: p.params.causal,
        window: p.params.window.unwrap_or(0),
        sinks: x.sinks,
        lse: x.lse,
        rope,
        kv_scales: ctx.scales(c)?,
    };
    let m = &p.meta;
    let dev = AttnDevice { meta: [m.part(2), m.part(3), m.part(4), m.part(5), m.part(6)], scratch: p.scratch.as_ref().map(|s| s.slice_mut(0)), sep: p.sep.as_ref().map(|s| s.view()), counters: p.counters.as_ref().map(|c| c.slice_mut(0)) };
    attention::launch(ctx.gpu, l, h, views, dev)
}

/// A graph captured on a GPU backend's stream.
#[derive(Debug)]
pub(crate) struct Graph(pub GpuGraph);

impl GraphExec for Graph {
    fn replay(&self) -> Result<()> {
        self.0.replay()
    }
}

