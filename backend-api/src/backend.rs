//! The [`AttentionBackend`] trait (what a backend implements) and the [`Backend`] handle (what
//! users call: it validates, asks the capability query, then dispatches).

use std::sync::Arc;

use crate::args::*;
use crate::plan::{Graph, GraphExec, GraphSupport, HostPlan, LayerViews, PlanArgs, PlanOp, PlanState, StepDesc, StepPlan};
use crate::CacheLayout;

/// The span of one public op: backend and op at once, the problem's shape once validated
/// ([`record_problem`]), so a subscriber sees which problem each call ran.
macro_rules! op_span {
    ($name:literal, $backend:expr) => {
        tracing::debug_span!(
            $name,
            backend = $backend,
            dtype = tracing::field::Empty,
            seqs = tracing::field::Empty,
            heads = tracing::field::Empty,
            kv_heads = tracing::field::Empty,
            head_dim = tracing::field::Empty,
            max_q_len = tracing::field::Empty,
            max_kv_len = tracing::field::Empty,
            causal = tracing::field::Empty,
            paged = tracing::field::Empty,
            rope = tracing::field::Empty,
        )
        .entered()
    };
}

/// Writes the validated problem into the current op span (fields declared by `op_span!`).
fn record_problem(desc: &ProblemDesc) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("dtype", desc.dtype.name());
    span.record("seqs", desc.batch_size);
    span.record("heads", desc.num_heads);
    span.record("kv_heads", desc.num_kv_heads);
    span.record("head_dim", desc.head_dim);
    span.record("max_q_len", desc.max_q_len);
    span.record("max_kv_len", desc.max_kv_len);
    span.record("causal", desc.causal);
    span.record("paged", matches!(desc.layout, Some(CacheLayout::Paged { .. })));
    if let Some(r) = &desc.rope {
        span.record("rope", r.scaling.name());
    }
}

use crate::{
    AttentionParams, Batch, CachedSeq, DType, Device, Error, KvCache, KvCacheSpec, KvMetadata, KvPool, KvPools, Op, PlainBatch, ProblemDesc, Result, RopeConfig, RopeFrequencies, Storage, Tensor,
};

/// An attention backend. Object safe; one instance serves every thread. Ops receive arguments
/// the API has already validated (see [`crate::args`]) and whose problem the backend's own
/// [`AttentionBackend::supports`] accepted.
pub trait AttentionBackend: Send + Sync {
    /// Registry name, e.g. `cpu`, `hip-flash`.
    fn name(&self) -> &str;
    /// The device its tensors live on.
    fn device(&self) -> Device;
    /// Whether `op` can run `problem`: `Ok`, or one human-readable reason per unmet
    /// requirement. Must be the same code that picks the kernel, so support and dispatch agree.
    fn supports(&self, op: Op, problem: &ProblemDesc) -> Result<(), Vec<String>>;
    /// A new, zero-filled dense tensor.
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// Copies host values (dense, `src.len() == dst.numel()`) into `dst`'s rows, rounding to
    /// its dtype; memory between strided rows is not touched.
    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()>;
    /// Copies `src`'s rows to the host as dense f32.
    fn read(&self, src: &Tensor) -> Result<Vec<f32>>;
    /// Sets every element of `dst`'s rows to `value` (NaN allowed: tests poison outputs with it);
    /// memory between strided rows is not touched.
    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()>;
    /// (optional) A tensor over `base`'s memory from element `offset` on, of `shape` with rows
    /// `row_stride` elements apart, sharing it (no copy; the memory stays alive while any view
    /// does). The API has checked that it lies inside the dense `base`. Default: `Unsupported`:
    /// such a backend runs the owned path only, and the conformance suite checks it that way.
    fn view(&self, base: &Tensor, offset: usize, shape: &[usize], row_stride: usize) -> Result<Tensor> {
        let _ = (base, offset, shape, row_stride);
        Err(Error::Unsupported { backend: self.name().to_string(), op: "view".into(), reasons: vec![format!("{} makes no views: its tensors are dense and its own", self.name())] })
    }
    /// (optional) State a backend keeps beside KV pools of `spec` (per slot, e.g. hip-fused's
    /// key positions), created with every [`KvPools`]. Default: none.
    fn kv_pool_state(&self, spec: &KvCacheSpec) -> Result<Option<Box<dyn Storage>>> {
        let _ = spec;
        Ok(None)
    }
    /// RoPE on Q and K in place.
    fn rope(&self, args: RopeArgs<'_>) -> Result<()>;
    /// Appends K/V rows to a cache.
    fn kv_append(&self, args: AppendArgs<'_>) -> Result<()>;
    /// Attention of new queries over a cache.
    fn attention(&self, args: AttentionArgs<'_>) -> Result<()>;
    /// Attention over given Q, K, V.
    fn attention_plain(&self, args: PlainAttentionArgs<'_>) -> Result<()>;
    /// (optional) RoPE + append + attention in one step; fused backends override it. Default:
    /// the three primitives in order.
    fn rope_append_attend(&self, mut args: StepArgs<'_>) -> Result<()> {
        self.rope(args.rope_args())?;
        self.kv_append(args.append_args())?;
        self.attention(args.attention_args())
    }
    /// (optional) Context shift (see [`ShiftArgs`]). Default: `Unsupported`, so a backend that
    /// does not implement it says so through the capability query too (its `supports` should
    /// decline [`Op::Shift`]).
    fn shift_positions(&self, args: ShiftArgs<'_>) -> Result<()> {
        let _ = args;
        Err(Error::Unsupported { backend: self.name().to_string(), op: Op::Shift.name().to_string(), reasons: vec![format!("{} does not implement context shift", self.name())] })
    }
    /// (optional) Merges partial attention states (see [`MergeArgs`]). Default: `Unsupported`
    /// (its `supports` should decline [`Op::MergeStates`] too).
    fn merge_states(&self, args: MergeArgs<'_>) -> Result<()> {
        let _ = args;
        Err(Error::Unsupported { backend: self.name().to_string(), op: Op::MergeStates.name().to_string(), reasons: vec![format!("{} does not implement merge_states", self.name())] })
    }
    /// (optional) Waits for queued device work; errors surface here. Default: nothing to wait for.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// (optional) Copies whole pages of paged pools (K, V and anything the backend keeps per
    /// slot), `(from, to)` pairs (validated: in the pool, every `to` distinct and never a
    /// `from`), for [`Backend::copy_kv_pages`] and [`Backend::fork_sequence`]. The default is a
    /// host round trip through [`AttentionBackend::read`] / [`AttentionBackend::write`] (right
    /// for host backends; GPU backends override it with device copies).
    fn copy_kv_pages(&self, pools: &mut KvPools, pages: &[(u32, u32)]) -> Result<()> {
        let CacheLayout::Paged { page_size, .. } = pools.spec().layout else {
            return Err(Error::InvalidArgument("copy_kv_pages on a contiguous KV cache".into()));
        };
        let row = page_size * pools.spec().num_kv_heads * pools.spec().head_dim;
        let (k, v, _) = pools.parts_mut();
        for t in [k, v] {
            let mut host = self.read(t)?;
            for &(from, to) in pages {
                let (f, d) = (from as usize * row, to as usize * row);
                host.copy_within(f..f + row, d);
            }
            self.write(t, &host)?;
        }
        Ok(())
    }
    /// (optional) The device's memory as its driver reports it, for every process: `(in use,
    /// total)` bytes; `None` for host backends (the default).
    fn memory_info(&self) -> Result<Option<(usize, usize)>> {
        Ok(None)
    }
    /// (optional) Plans a step for every layer ([`crate::plan`]): all host work once. Default:
    /// the validated description kept on the host, run through the ordinary ops (right for host
    /// backends, which have nothing to upload).
    fn plan(&self, args: PlanArgs<'_>) -> Result<Box<dyn PlanState>> {
        Ok(Box::new(HostPlan::new(args)))
    }
    /// (optional) Device bytes a plan of `args` needs in a caller's workspace
    /// ([`AttentionBackend::plan_in`]). Default: none (host plans hold no device buffers).
    fn plan_workspace_bytes(&self, args: PlanArgs<'_>) -> Result<usize> {
        let _ = args;
        Ok(0)
    }
    /// (optional) [`AttentionBackend::plan`] with every device buffer of the plan carved from
    /// `workspace` (the caller's memory on this backend's device; the plan keeps the tensor and
    /// allocates nothing). Must check the workspace (device, writable, at least
    /// [`AttentionBackend::plan_workspace_bytes`] bytes) with typed errors. Default: a host
    /// plan, which needs no device memory: the workspace is dropped untouched.
    fn plan_in(&self, args: PlanArgs<'_>, workspace: Tensor) -> Result<Box<dyn PlanState>> {
        drop(workspace);
        self.plan(args)
    }
    /// (optional) Rewrites `plan` for the next step in place (same op, batch shape and bucket:
    /// validated). Must not change anything when it fails. Default: for the default plan.
    fn update_plan(&self, plan: &mut dyn PlanState, args: PlanArgs<'_>) -> Result<()> {
        let p = plan.as_any_mut().downcast_mut::<HostPlan>().ok_or_else(|| Error::InvalidArgument(format!("{}: the plan was not made by this backend", self.name())))?;
        *p = HostPlan::new(args);
        Ok(())
    }
    /// (optional) One layer of a plan: `views` were checked against it (shapes, dtypes, device,
    /// storage, pools' spec, overlaps). A device backend only launches here. Default: the
    /// default plan through the ordinary ops.
    fn run(&self, plan: &dyn PlanState, views: LayerViews<'_>, validated: Validated) -> Result<()> {
        let p = plan.as_any().downcast_ref::<HostPlan>().ok_or_else(|| Error::InvalidArgument(format!("{}: the plan was not made by this backend", self.name())))?;
        run_host_plan(self, p, views, validated)
    }
    /// (optional) What [`AttentionBackend::capture`] can capture. Default: nothing.
    fn graph_support(&self) -> GraphSupport {
        GraphSupport::Never
    }
    /// (optional) Captures the device work `f` queues on this backend's stream into a graph.
    /// Default: `Unsupported`.
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Box<dyn GraphExec>> {
        let _ = f;
        Err(Error::Unsupported { backend: self.name().to_string(), op: "capture".into(), reasons: vec![format!("{} has no device graphs", self.name())] })
    }
}

/// The default plan's run: the ordinary ops with the plan's validated description.
fn run_host_plan<B: AttentionBackend + ?Sized>(be: &B, p: &HostPlan, views: LayerViews<'_>, validated: Validated) -> Result<()> {
    let missing = |what: &str| Error::InvalidArgument(format!("{}: the plan has no {what}", be.name()));
    let desc = p.desc.clone();
    match views {
        LayerViews::Rope { q, k } => {
            let (config, freqs) = (p.config.as_ref().ok_or_else(|| missing("RoPE configuration"))?, p.freqs.clone().ok_or_else(|| missing("RoPE table"))?);
            be.rope(RopeArgs { q, k, positions: &p.positions, config, freqs, desc, validated })
        }
        LayerViews::Append { k, v, pools } => be.kv_append(AppendArgs { pools, meta: &p.meta, k, v, batch: &p.batch, start: p.start.clone(), desc, validated }),
        LayerViews::Attention { q, pools, out, sinks, lse } => {
            be.attention(AttentionArgs { q, pools, meta: &p.meta, batch: &p.batch, kv_lens: p.kv_lens.clone(), params: p.params, sinks, lse, out, desc, validated })
        }
        LayerViews::Step { q, k, v, pools, out, sinks } => {
            let (config, freqs) = (p.config.as_ref().ok_or_else(|| missing("RoPE configuration"))?, p.freqs.clone().ok_or_else(|| missing("RoPE table"))?);
            be.rope_append_attend(StepArgs {
                q,
                k,
                v,
                positions: &p.positions,
                config,
                freqs,
                pools,
                meta: &p.meta,
                batch: &p.batch,
                start: p.start.clone(),
                kv_lens: p.kv_lens.clone(),
                params: p.params,
                sinks,
                out,
                desc,
                validated,
            })
        }
    }
}

/// What an engine passes to [`Backend::step`]: views and pools in its memory, metadata it owns.
#[derive(Debug)]
pub struct StepViews<'a> {
    /// Queries `[T, H, D]`, may be strided (scratch afterwards).
    pub q: &'a mut Tensor,
    /// New keys `[T, Hkv, D]`, may be strided (scratch afterwards).
    pub k: &'a mut Tensor,
    /// New values `[T, Hkv, D]`, may be strided.
    pub v: &'a Tensor,
    /// One position id per new token (M-RoPE: three, `[3, T]`).
    pub positions: &'a [u32],
    /// RoPE configuration.
    pub rope: &'a RopeConfig,
    /// This layer's pools.
    pub pools: &'a mut KvPools,
    /// Lengths (already counting the step's tokens: [`KvMetadata::extend`]) and page tables.
    pub meta: &'a KvMetadata,
    /// Which sequences, how many new tokens each.
    pub batch: &'a Batch,
    /// Causal flag and scale.
    pub params: AttentionParams,
    /// Attention sinks (gpt-oss): f32 `[H]` (dense), one learned logit per query head that joins each
    /// row's softmax denominator (`out = sum_j e^(s_j) v_j / (e^sink + sum_j e^(s_j))`; the
    /// sink is neither scaled nor soft-capped). `None`: no sinks.
    pub sinks: Option<&'a Tensor>,
    /// Output `[T, H, D]`, may be strided.
    pub out: &'a mut Tensor,
}

/// What a caller must pass to [`Backend::rope_append_attend`].
#[derive(Debug)]
pub struct StepInputs<'a> {
    /// Queries `[T, H, D]` (scratch afterwards).
    pub q: &'a mut Tensor,
    /// New keys `[T, Hkv, D]` (scratch afterwards).
    pub k: &'a mut Tensor,
    /// New values `[T, Hkv, D]`.
    pub v: &'a Tensor,
    /// One position id per new token (M-RoPE: three, `[3, T]`).
    pub positions: &'a [u32],
    /// RoPE configuration.
    pub rope: &'a RopeConfig,
    /// Cache appended to and attended over.
    pub cache: &'a mut KvCache,
    /// Which sequences, how many new tokens each.
    pub batch: &'a Batch,
    /// Causal flag and scale.
    pub params: AttentionParams,
    /// Attention sinks (gpt-oss): f32 `[H]` (dense), one learned logit per query head that joins each
    /// row's softmax denominator (`out = sum_j e^(s_j) v_j / (e^sink + sum_j e^(s_j))`; the
    /// sink is neither scaled nor soft-capped). `None`: no sinks.
    pub sinks: Option<&'a Tensor>,
    /// Output `[T, H, D]`.
    pub out: &'a mut Tensor,
}

/// The optional inputs and outputs of an attention call, beyond Q, the keys and the output
/// ([`Backend::attention_with`], [`Backend::attend_with`], [`Backend::attention_plain_with`]).
#[derive(Debug, Default)]
pub struct AttentionExtras<'a> {
    /// Attention sinks, f32 `[H]` (see [`AttentionArgs::sinks`]).
    pub sinks: Option<&'a Tensor>,
    /// Written with each row's log-sum-exp, f32 `[T, H]` (see [`AttentionArgs::lse`]).
    pub lse: Option<&'a mut Tensor>,
}

impl<'a> AttentionExtras<'a> {
    /// Sinks only.
    pub fn sinks(sinks: &'a Tensor) -> Self {
        AttentionExtras { sinks: Some(sinks), lse: None }
    }

    /// The log-sum-exp output only.
    pub fn lse(lse: &'a mut Tensor) -> Self {
        AttentionExtras { sinks: None, lse: Some(lse) }
    }

    /// The same with sinks.
    pub fn with_sinks(self, sinks: &'a Tensor) -> Self {
        AttentionExtras { sinks: Some(sinks), ..self }
    }

    /// The same with the log-sum-exp output.
    pub fn with_lse(self, lse: &'a mut Tensor) -> Self {
        AttentionExtras { lse: Some(lse), ..self }
    }
}

/// A shared handle to a backend: the API users call. Every op validates its input (typed
/// errors, never a panic), asks the backend's capability query (an `Unsupported` error with the
/// reasons, never a silent fallback), then runs the op inside a `tracing` span.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<dyn AttentionBackend>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({} on {})", self.inner.name(), self.inner.device())
    }
}

impl Backend {
    /// Wraps a backend implementation.
    pub fn new(inner: Arc<dyn AttentionBackend>) -> Self {
        Backend { inner }
    }

    /// The implementation behind the handle.
    pub fn inner(&self) -> &dyn AttentionBackend {
        self.inner.as_ref()
    }

    /// Registry name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Device of its tensors.
    pub fn device(&self) -> Device {
        self.inner.device()
    }

    /// `Ok` if `op` can run `problem`, else [`Error::Unsupported`] with the reasons. An invalid
    /// description is refused first with its typed error ([`ProblemDesc::validate`]).
    pub fn supports(&self, op: Op, problem: &ProblemDesc) -> Result<()> {
        problem.validate()?;
        self.inner.supports(op, problem).map_err(|reasons| self.unsupported(op, reasons))
    }

    /// The ops' check: `desc` was built from checked arguments and the op computes (and
    /// checks) the one RoPE table it uses, so the tables at both ends of the position range
    /// are not built on every call (host cost per call stays that of the launches).
    fn supports_call(&self, op: Op, desc: &ProblemDesc) -> Result<()> {
        desc.validate_call()?;
        record_problem(desc);
        self.inner.supports(op, desc).map_err(|reasons| self.unsupported(op, reasons))
    }

    fn unsupported(&self, op: Op, reasons: Vec<String>) -> Error {
        Error::Unsupported { backend: self.name().to_string(), op: op.name().to_string(), reasons }
    }

    /// `Ok` if every op of `problem` (see [`ProblemDesc::ops`]) is supported, else the reasons
    /// of all unsupported ops.
    pub fn supports_problem(&self, problem: &ProblemDesc) -> Result<()> {
        problem.validate()?;
        let mut reasons = Vec::new();
        for op in problem.ops() {
            if let Err(r) = self.inner.supports(op, problem) {
                for reason in r {
                    let reason = format!("{op}: {reason}");
                    if !reasons.contains(&reason) {
                        reasons.push(reason);
                    }
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Error::Unsupported { backend: self.name().to_string(), op: "this problem".into(), reasons })
        }
    }

    /// A zero-filled tensor of `shape`.
    pub fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        crate::tensor::checked_bytes(shape, dtype)?;
        let t = self.inner.alloc(shape, dtype)?;
        self.check_made("allocated tensor", &t, shape, dtype)?;
        Ok(t)
    }

    /// A backend's new tensor must be what was asked for (a backend bug otherwise, reported
    /// instead of trusted).
    fn check_made(&self, what: &str, t: &Tensor, shape: &[usize], dtype: DType) -> Result<()> {
        self.check_tensor(what, t, shape, dtype)
    }

    /// A tensor of `shape` holding `data` rounded to `dtype`.
    pub fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel = crate::tensor::checked_bytes(shape, dtype)? / dtype.size();
        if data.len() != numel {
            return Err(Error::InvalidArgument(format!("upload of {} values into shape {shape:?} ({numel} elements)", data.len())));
        }
        let mut t = self.alloc(shape, dtype)?;
        self.inner.write(&mut t, data)?;
        Ok(t)
    }

    /// Overwrites `dst` with host values.
    pub fn write(&self, dst: &mut Tensor, data: &[f32]) -> Result<()> {
        self.check_device("destination tensor", dst.device())?;
        dst.check_storage("destination tensor")?;
        if data.len() != dst.numel() {
            return Err(Error::InvalidArgument(format!("write of {} values into a tensor of {} elements", data.len(), dst.numel())));
        }
        self.inner.write(dst, data)
    }

    /// The tensor's values on the host, as f32.
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.check_device("tensor", t.device())?;
        t.check_storage("tensor")?;
        self.inner.read(t)
    }

    /// Sets every element to `value`.
    pub fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        self.check_device("tensor", t.device())?;
        t.check_storage("tensor")?;
        self.inner.fill(t, value)
    }

    /// Waits for queued device work.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    /// The device's memory `(in use, total)` in bytes as the driver reports it (all processes),
    /// `None` on the host: an engine sizes its KV pool from it; tests check for leaks with it.
    pub fn memory_info(&self) -> Result<Option<(usize, usize)>> {
        self.inner.memory_info()
    }

    /// A tensor over `base`'s memory (no copy) from element `offset` on, of `shape` with rows
    /// `row_stride` elements apart: e.g. q, k and v as views into one fused QKV buffer
    /// `[T, (H + 2 Hkv) D]` (`offset` 0, `H D` and `(H + Hkv) D`, stride `(H + 2 Hkv) D`), or
    /// one layer of a pool allocation. `base` must be dense; the view must lie inside it and
    /// have `row_stride >=` its row; views may overlap each other (an op refuses an output
    /// that overlaps its inputs). The memory lives as long as the last view or `base`. A
    /// backend that makes no views answers `Unsupported`.
    pub fn view(&self, base: &Tensor, offset: usize, shape: &[usize], row_stride: usize) -> Result<Tensor> {
        self.check_tensor_storage("view base", base)?;
        if !base.is_contiguous() {
            return Err(Error::InvalidArgument(format!("views are taken of dense tensors; the base has rows of {} elements {} apart", base.row_len(), base.row_stride())));
        }
        crate::tensor::checked_bytes(shape, base.dtype())?;
        let row: usize = shape.iter().skip(1).product();
        if !shape.is_empty() && row_stride < row {
            return Err(Error::InvalidArgument(format!("row stride {row_stride} is smaller than a row of shape {shape:?} ({row} elements)")));
        }
        let span = match shape.first() {
            None => 1,
            Some(0) => 0,
            Some(&n) => (n - 1)
                .checked_mul(row_stride)
                .and_then(|x| x.checked_add(row))
                .ok_or_else(|| Error::InvalidArgument(format!("view of shape {shape:?} with row stride {row_stride} overflows")))?,
        };
        match offset.checked_add(span) {
            Some(end) if end <= base.numel() => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "view of shape {shape:?} (row stride {row_stride}) at element {offset} runs past its base of {} elements",
                    base.numel()
                )))
            }
        }
        let t = self.inner.view(base, offset, shape, row_stride)?;
        self.check_made("view", &t, shape, base.dtype())?;
        if t.row_stride() != row_stride && shape.first().is_some_and(|&n| n > 1) {
            return Err(Error::InvalidArgument(format!("{} made a view with row stride {} instead of {row_stride}", self.name(), t.row_stride())));
        }
        Ok(t)
    }

    /// A new, empty KV cache (pools zero-filled, backend-allocated).
    pub fn create_kv_cache(&self, spec: &KvCacheSpec) -> Result<KvCache> {
        spec.validate()?;
        let shape = spec.pool_shape();
        let k = self.alloc(&shape, spec.storage_dtype())?;
        let v = self.alloc(&shape, spec.storage_dtype())?;
        KvCache::new(self.kv_pools(spec, k, v)?)
    }

    /// KV pools over two tensors, typically views of the caller's memory (one layer of an
    /// engine's `[layers, pages, page_size, kv_heads, head_dim]` allocation each for K and V):
    /// dense, of [`KvCacheSpec::pool_shape`] and the spec's dtype, on this backend's device,
    /// not overlapping. Address them with a [`KvMetadata`] the caller owns. FP8 pools
    /// (`kv_dtype` e4m3) get scale tensors of this backend, all 1 ([`Backend::set_kv_scales`]
    /// sets them; [`KvPools::with_scales`] takes the caller's instead).
    pub fn kv_pools(&self, spec: &KvCacheSpec, k: Tensor, v: Tensor) -> Result<KvPools> {
        spec.validate()?;
        self.check_device("K pool", k.device())?;
        self.check_device("V pool", v.device())?;
        let state = self.inner.kv_pool_state(spec)?;
        let pools = KvPools::from_tensors(spec.clone(), self.device(), k, v, state)?;
        if !spec.is_fp8() {
            return Ok(pools);
        }
        let ones = vec![1.0f32; spec.num_kv_heads];
        let (ks, vs) = (self.upload(&ones, &[spec.num_kv_heads], DType::F32)?, self.upload(&ones, &[spec.num_kv_heads], DType::F32)?);
        pools.with_scales(ks, vs)
    }

    /// Sets FP8 pools' scales: `k` and `v` hold one scale per kv head, or one for every head
    /// (per tensor); each finite and positive. The stored values are `x / scale` rounded to
    /// e4m3 (largest finite 448), so a scale of `max |x| / 448` over what a head will hold uses
    /// the whole range. Changing scales does not rewrite what the pools hold: set them before
    /// the first append (as engines load calibrated `k_scale` / `v_scale` with the weights).
    pub fn set_kv_scales(&self, pools: &mut KvPools, k: &[f32], v: &[f32]) -> Result<()> {
        self.check_pools_storage(pools)?;
        let hk = pools.spec().num_kv_heads;
        let expand = |what: &str, s: &[f32]| -> Result<Vec<f32>> {
            if let Some(x) = s.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(Error::InvalidArgument(format!("{what} scale {x}: FP8 KV scales must be finite and positive")));
            }
            match s.len() {
                1 => Ok(vec![s[0]; hk]),
                n if n == hk => Ok(s.to_vec()),
                n => Err(Error::InvalidArgument(format!("{n} {what} scales for {hk} kv heads (one per kv head, or one for all)"))),
            }
        };
        let (k, v) = (expand("K", k)?, expand("V", v)?);
        let spec = format!("{}", pools.spec().storage_dtype());
        let Some((ks, vs)) = pools.scales_mut() else {
            return Err(Error::InvalidArgument(format!("set_kv_scales on pools stored in {spec}: only FP8 pools (kv_dtype e4m3) have scales")));
        };
        self.inner.write(ks, &k)?;
        self.inner.write(vs, &v)
    }

    /// [`Backend::set_kv_scales`] of a cache's pools.
    pub fn set_kv_cache_scales(&self, cache: &mut KvCache, k: &[f32], v: &[f32]) -> Result<()> {
        self.set_kv_scales(cache.parts_mut().0, k, v)
    }

    /// Both pools in the physical layout, on the host.
    pub fn read_kv_pool(&self, cache: &KvCache) -> Result<KvPool> {
        self.read_kv_pools(cache.pools())
    }

    /// [`Backend::read_kv_pool`] of bare pools.
    pub fn read_kv_pools(&self, pools: &KvPools) -> Result<KvPool> {
        self.check_pools_storage(pools)?;
        Ok(KvPool { k: self.inner.read(pools.k())?, v: self.inner.read(pools.v())? })
    }

    /// Overwrites both pools (tests use it to plant sentinels).
    pub fn write_kv_pool(&self, cache: &mut KvCache, pool: &KvPool) -> Result<()> {
        self.write_kv_pools(cache.parts_mut().0, pool)
    }

    /// [`Backend::write_kv_pool`] of bare pools.
    pub fn write_kv_pools(&self, pools: &mut KvPools, pool: &KvPool) -> Result<()> {
        self.check_pools_storage(pools)?;
        let n = pools.spec().pool_len();
        if pool.k.len() != n || pool.v.len() != n {
            return Err(Error::shape("KV pool", &pools.spec().pool_shape(), &[pool.k.len(), pool.v.len()]));
        }
        let (k, v, _) = pools.parts_mut();
        self.inner.write(k, &pool.k)?;
        self.inner.write(v, &pool.v)
    }

    /// Copies whole pages within paged pools, `(from, to)` pairs (K, V and any per-slot state
    /// of the backend): the copy-on-write of a fork ([`KvMetadata::fork`] names it) in each
    /// layer's pools. Every page must be in the pool, every `to` distinct and never a `from`.
    pub fn copy_kv_pages(&self, pools: &mut KvPools, pages: &[(u32, u32)]) -> Result<()> {
        self.check_pools_storage(pools)?;
        let CacheLayout::Paged { num_pages, .. } = pools.spec().layout else {
            return Err(Error::InvalidArgument("copy_kv_pages on a contiguous KV cache".into()));
        };
        let mut to = std::collections::HashSet::new();
        for &(f, t) in pages {
            if f as usize >= num_pages || t as usize >= num_pages || f == t || !to.insert(t) || pages.iter().any(|&(g, _)| g == t) {
                return Err(Error::InvalidArgument(format!("copy of page {f} to page {t} among {pages:?} in a pool of {num_pages} pages (each target once, never a source)")));
            }
        }
        if pages.is_empty() {
            return Ok(());
        }
        self.inner.copy_kv_pages(pools, pages)
    }

    /// Every sequence's cached tokens in canonical form `[seq_len, Hkv, D]`, read through the
    /// page tables. For tests and debugging.
    pub fn read_kv_cache(&self, cache: &KvCache) -> Result<Vec<CachedSeq>> {
        let pool = self.read_kv_pool(cache)?;
        let spec = cache.spec();
        let (hk, d) = (spec.num_kv_heads, spec.head_dim);
        Ok((0..spec.num_seqs)
            .map(|s| {
                let len = cache.seq_len(s);
                let mut k = Vec::with_capacity(len * hk * d);
                let mut v = Vec::with_capacity(len * hk * d);
                for t in 0..len {
                    for h in 0..hk {
                        let o = cache.slot_offset(s, t, h);
                        k.extend_from_slice(&pool.k[o..o + d]);
                        v.extend_from_slice(&pool.v[o..o + d]);
                    }
                }
                CachedSeq { k, v }
            })
            .collect())
    }

    /// RoPE on Q `[T, H, D]` and K `[T, Hkv, D]` in place, token `t` at `positions[t]` (M-RoPE:
    /// pair `i` at `positions[c(i) * T + t]`, three ids per token; see [`crate::RopeScaling::MRope`]).
    pub fn rope(&self, q: &mut Tensor, k: &mut Tensor, positions: &[u32], config: &RopeConfig) -> Result<()> {
        let _span = op_span!("rope", self.name());
        let desc = self.check_rope(q, k, positions, config)?;
        Self::check_disjoint(&[("q", q, "k", k)])?;
        self.supports_call(Op::Rope, &desc)?;
        let freqs = config.frequencies(max_position(positions))?;
        self.inner.rope(RopeArgs { q, k, positions, config, freqs, desc, validated: Validated(()) })
    }

    /// Appends entry `i`'s rows of K/V `[T, Hkv, D]` to sequence `batch.seq_ids()[i]`. Refused
    /// (nothing written) when a sequence would overflow its capacity or write into a page
    /// another sequence reads.
    pub fn kv_append(&self, cache: &mut KvCache, k: &Tensor, v: &Tensor, batch: &Batch) -> Result<()> {
        self.check_owned_append(cache, k, v, batch)?;
        let (pools, meta) = cache.parts_mut();
        Self::extended(meta, batch, |meta| self.append_kv(pools, meta, k, v, batch))
    }

    /// The engine path of an append: writes entry `i`'s rows of K/V `[T, Hkv, D]` (views, may
    /// be strided) as the last `q_lens[i]` tokens of sequence `batch.seq_ids()[i]`, whose
    /// length in `meta` already counts them ([`KvMetadata::extend`], once per step for all
    /// layers). `meta` is not changed. Writing into a page another sequence still reads is the
    /// caller's duty to avoid ([`KvMetadata::append_conflict`]).
    pub fn append_kv(&self, pools: &mut KvPools, meta: &KvMetadata, k: &Tensor, v: &Tensor, batch: &Batch) -> Result<()> {
        let _span = op_span!("kv_append", self.name());
        let (start, mut desc) = self.check_append(pools, meta, k, v, batch)?;
        desc.max_kv_len = batch.seq_ids().iter().map(|&s| meta.seq_len(s)).max().unwrap_or(0);
        self.supports_call(Op::KvAppend, &desc)?;
        self.inner.kv_append(AppendArgs { pools, meta, k, v, batch, start, desc, validated: Validated(()) })
    }

    /// Attention of Q `[T, H, D]` over the cache (each sequence's current tokens) into `out`.
    pub fn attention(&self, q: &Tensor, cache: &KvCache, batch: &Batch, params: AttentionParams, out: &mut Tensor) -> Result<()> {
        self.attention_with(q, cache, batch, params, AttentionExtras::default(), out)
    }

    /// [`Backend::attention`] with attention sinks (gpt-oss): f32 `[H]`, one learned logit per
    /// query head in each row's softmax denominator (see [`AttentionArgs::sinks`]).
    pub fn attention_with_sinks(&self, q: &Tensor, cache: &KvCache, batch: &Batch, params: AttentionParams, sinks: &Tensor, out: &mut Tensor) -> Result<()> {
        self.attention_with(q, cache, batch, params, AttentionExtras::sinks(sinks), out)
    }

    /// [`Backend::attention`] with the optional inputs and outputs of [`AttentionExtras`]
    /// (sinks, each row's log-sum-exp).
    pub fn attention_with(&self, q: &Tensor, cache: &KvCache, batch: &Batch, params: AttentionParams, extras: AttentionExtras<'_>, out: &mut Tensor) -> Result<()> {
        self.check_cache(cache)?;
        self.attend_with(q, cache.pools(), cache.metadata(), batch, params, extras, out)
    }

    /// The engine path of attention: Q `[T, H, D]` (may be strided) over each sequence's
    /// `meta.seq_len` tokens in `pools`, into `out` (may be strided; must not overlap `q`).
    pub fn attend(&self, q: &Tensor, pools: &KvPools, meta: &KvMetadata, batch: &Batch, params: AttentionParams, out: &mut Tensor) -> Result<()> {
        self.attend_with(q, pools, meta, batch, params, AttentionExtras::default(), out)
    }

    /// [`Backend::attend`] with attention sinks, f32 `[H]` (see [`AttentionArgs::sinks`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attend_with_sinks(&self, q: &Tensor, pools: &KvPools, meta: &KvMetadata, batch: &Batch, params: AttentionParams, sinks: &Tensor, out: &mut Tensor) -> Result<()> {
        self.attend_with(q, pools, meta, batch, params, AttentionExtras::sinks(sinks), out)
    }

    /// [`Backend::attend`] with the optional inputs and outputs of [`AttentionExtras`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend_with(&self, q: &Tensor, pools: &KvPools, meta: &KvMetadata, batch: &Batch, params: AttentionParams, extras: AttentionExtras<'_>, out: &mut Tensor) -> Result<()> {
        let _span = op_span!("attention", self.name());
        let AttentionExtras { sinks, lse } = extras;
        let kv_lens: Vec<usize> = batch.seq_ids().iter().map(|&s| meta.seq_len(s)).collect();
        let desc = self.check_attention(q, pools, meta, batch, &kv_lens, params, out)?;
        self.check_sinks(sinks, desc.num_heads, out)?;
        self.check_lse(lse.as_deref(), batch.total_tokens(), desc.num_heads, &[("out", out), ("q", q), ("K pool", pools.k()), ("V pool", pools.v())], sinks)?;
        self.supports_call(Op::Attention, &desc)?;
        self.inner.attention(AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, desc, validated: Validated(()) })
    }

    /// Attention over Q `[Tq, H, D]`, K and V `[Tk, Hkv, D]` into `out` `[Tq, H, D]` (any of
    /// them may be strided; `out` must not overlap the inputs).
    pub fn attention_plain(&self, q: &Tensor, k: &Tensor, v: &Tensor, batch: &PlainBatch, params: AttentionParams, out: &mut Tensor) -> Result<()> {
        self.attention_plain_with(q, k, v, batch, params, AttentionExtras::default(), out)
    }

    /// [`Backend::attention_plain`] with attention sinks, f32 `[H]` (see [`AttentionArgs::sinks`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_plain_with_sinks(&self, q: &Tensor, k: &Tensor, v: &Tensor, batch: &PlainBatch, params: AttentionParams, sinks: &Tensor, out: &mut Tensor) -> Result<()> {
        self.attention_plain_with(q, k, v, batch, params, AttentionExtras::sinks(sinks), out)
    }

    /// [`Backend::attention_plain`] with the optional inputs and outputs of [`AttentionExtras`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_plain_with(&self, q: &Tensor, k: &Tensor, v: &Tensor, batch: &PlainBatch, params: AttentionParams, extras: AttentionExtras<'_>, out: &mut Tensor) -> Result<()> {
        let _span = op_span!("attention_plain", self.name());
        let AttentionExtras { sinks, lse } = extras;
        let desc = self.check_plain(q, k, v, batch, params, out)?;
        Self::check_disjoint(&[("out", out, "q", q), ("out", out, "k", k), ("out", out, "v", v)])?;
        self.check_sinks(sinks, desc.num_heads, out)?;
        self.check_lse(lse.as_deref(), q.shape()[0], desc.num_heads, &[("out", out), ("q", q), ("k", k), ("v", v)], sinks)?;
        self.supports_call(Op::AttentionPlain, &desc)?;
        self.inner.attention_plain(PlainAttentionArgs { q, k, v, batch, params, sinks, lse, out, desc, validated: Validated(()) })
    }

    /// Attention sinks: f32 `[heads]`, dense (kernels read one float per head), this
    /// backend's, apart from `out`.
    fn check_sinks(&self, sinks: Option<&Tensor>, heads: usize, out: &Tensor) -> Result<()> {
        if let Some(s) = sinks {
            self.check_tensor("sinks", s, &[heads], DType::F32)?;
            if !s.is_contiguous() {
                return Err(Error::InvalidArgument(format!("sinks must be dense (one f32 per head), got a view with row stride {}", s.row_stride())));
            }
            Self::check_disjoint(&[("out", out, "sinks", s)])?;
        }
        Ok(())
    }

    /// A log-sum-exp output: f32 `[rows, heads]`, dense, this backend's, apart from every
    /// tensor of the op (`others`, and the sinks).
    fn check_lse(&self, lse: Option<&Tensor>, rows: usize, heads: usize, others: &[(&str, &Tensor)], sinks: Option<&Tensor>) -> Result<()> {
        let Some(l) = lse else { return Ok(()) };
        self.check_tensor("lse", l, &[rows, heads], DType::F32)?;
        if !l.is_contiguous() {
            return Err(Error::InvalidArgument(format!("lse must be dense (one f32 per row and head), got a view with row stride {}", l.row_stride())));
        }
        for &(what, t) in others.iter().chain(sinks.map(|s| ("sinks", s)).as_slice()) {
            Self::check_disjoint(&[("lse", l, what, t)])?;
        }
        Ok(())
    }

    /// Merges partial attention states into the state of attention over the union of their
    /// keys (cascade / shared-prefix attention, context parallelism, split-KV across calls):
    /// `states[i] = (out_i, lse_i)`, each the output `[T, H, D]` and log-sum-exp f32 `[T, H]`
    /// of one attention call over a disjoint key set ([`AttentionExtras::lse`]); the merged
    /// output goes to `out` (same shape and dtype; may be strided, must not overlap a state)
    /// and, when given, the merged log-sum-exp to `lse` (so merges chain). See [`MergeArgs`]
    /// for the formula. With sinks, pass them to one of the partial calls only.
    pub fn merge_states(&self, states: &[(&Tensor, &Tensor)], out: &mut Tensor, lse: Option<&mut Tensor>) -> Result<()> {
        let _span = op_span!("merge_states", self.name());
        let Some(&(first, _)) = states.first() else {
            return Err(Error::EmptyBatch { detail: "merge_states needs at least one state".into() });
        };
        let (t, h, d) = self.check_heads_tensor("states[0].0", first, None)?;
        if t == 0 || h == 0 {
            return Err(Error::EmptyBatch { detail: format!("merge_states over {t} rows of {h} heads") });
        }
        let dtype = first.dtype();
        for (i, &(o, l)) in states.iter().enumerate() {
            self.check_tensor(&format!("states[{i}].0 (output)"), o, &[t, h, d], dtype)?;
            self.check_tensor(&format!("states[{i}].1 (lse)"), l, &[t, h], DType::F32)?;
            if !l.is_contiguous() {
                return Err(Error::InvalidArgument(format!("states[{i}].1 (lse) must be dense, got a view with row stride {}", l.row_stride())));
            }
        }
        self.check_tensor("out", out, &[t, h, d], dtype)?;
        for (i, &(o, l)) in states.iter().enumerate() {
            Self::check_disjoint(&[("out", out, &format!("states[{i}].0"), o), ("out", out, &format!("states[{i}].1"), l)])?;
        }
        if let Some(l) = lse.as_deref() {
            let others: Vec<(String, &Tensor)> = states.iter().enumerate().flat_map(|(i, &(o, s))| [(format!("states[{i}].0"), o), (format!("states[{i}].1"), s)]).collect();
            let mut all: Vec<(&str, &Tensor)> = others.iter().map(|(w, t)| (w.as_str(), *t)).collect();
            all.push(("out", out));
            self.check_lse(Some(l), t, h, &all, None)?;
        }
        let desc = ProblemDesc {
            dtype,
            num_heads: h,
            num_kv_heads: h,
            head_dim: d,
            rope: None,
            layout: None,
            kv_dtype: None,
            causal: false,
            batch_size: states.len(),
            max_q_len: t,
            max_kv_len: 0,
            window: None,
        };
        self.supports_call(Op::MergeStates, &desc)?;
        self.inner.merge_states(MergeArgs { states, out, lse, desc, validated: Validated(()) })
    }

    /// The composite step: RoPE on Q and K, append K/V, attend. See [`StepArgs`] for what it
    /// leaves in `q`, `k` and the cache.
    pub fn rope_append_attend(&self, s: StepInputs<'_>) -> Result<()> {
        let StepInputs { q, k, v, positions, rope, cache, batch, params, sinks, out } = s;
        self.check_rope(q, k, positions, rope)?;
        self.check_owned_append(cache, k, v, batch)?;
        let (pools, meta) = cache.parts_mut();
        Self::extended(meta, batch, |meta| self.step(StepViews { q, k, v, positions, rope, pools, meta, batch, params, sinks, out }))
    }

    /// The engine path of the composite step (see [`Backend::rope_append_attend`]) on views
    /// and pools in the caller's memory, with metadata the caller owns (already counting the
    /// step's tokens, as for [`Backend::append_kv`]).
    pub fn step(&self, s: StepViews<'_>) -> Result<()> {
        let _span = op_span!("rope_append_attend", self.name());
        let StepViews { q, k, v, positions, rope, pools, meta, batch, params, sinks, out } = s;
        let rope_desc = self.check_rope(q, k, positions, rope)?;
        let (start, _) = self.check_append(pools, meta, k, v, batch)?;
        let kv_lens: Vec<usize> = batch.seq_ids().iter().map(|&s| meta.seq_len(s)).collect();
        let mut desc = self.check_attention(q, pools, meta, batch, &kv_lens, params, out)?;
        Self::check_step_disjoint(q, k, v, pools, out)?;
        self.check_sinks(sinks, desc.num_heads, out)?;
        desc.rope = rope_desc.rope;
        desc.validate_call()?;
        record_problem(&desc);
        for op in [Op::Rope, Op::KvAppend, Op::Attention, Op::Step] {
            self.inner.supports(op, &desc).map_err(|reasons| self.unsupported(op, reasons))?;
        }
        let freqs = rope.frequencies(max_position(positions))?;
        self.inner.rope_append_attend(StepArgs { q, k, v, positions, config: rope, freqs, pools, meta, batch, start, kv_lens, params, sinks, out, desc, validated: Validated(()) })
    }

    /// Runs `f` with `batch`'s sequences grown by their new tokens; puts the lengths back if it
    /// fails, so a refused op leaves the cache as it was.
    fn extended(meta: &mut KvMetadata, batch: &Batch, f: impl FnOnce(&KvMetadata) -> Result<()>) -> Result<()> {
        let before: Vec<usize> = batch.seq_ids().iter().map(|&s| meta.seq_len(s)).collect();
        meta.extend(batch)?;
        let r = f(meta);
        if r.is_err() {
            for (&s, &len) in batch.seq_ids().iter().zip(&before) {
                meta.truncate(s, len).expect("the length grew just before");
            }
        }
        r
    }

    /// Forks sequence `src` into the empty sequence `dst` of a paged cache (prefix caching, beam
    /// search, parallel sampling): `dst` reads `src`'s full pages in place (shared, refcounted)
    /// and gets a copy of its last partial page in `spare_page` (copy-on-write, so both can
    /// append). `spare_page` must be a page no sequence uses; it is required when `src`'s length
    /// is not a multiple of the page size. Give `dst` more pages with
    /// [`KvCache::set_page_table`] (keeping these first) before it grows past them. The engine
    /// path is [`KvMetadata::fork`] then [`Backend::copy_kv_pages`] per layer.
    pub fn fork_sequence(&self, cache: &mut KvCache, src: usize, dst: usize, spare_page: Option<u32>) -> Result<()> {
        let _span = tracing::debug_span!("fork_sequence", backend = self.name()).entered();
        self.check_cache(cache)?;
        let (pools, meta) = cache.parts_mut();
        let mut forked = meta.clone();
        if let Some(copy) = forked.fork(src, dst, spare_page)? {
            self.copy_kv_pages(pools, &[copy])?;
        }
        *meta = forked;
        Ok(())
    }

    /// Context shift: the cached tokens `tokens` of sequence `seq` move by `delta` positions
    /// (llama.cpp's `seq_add`; an engine drops old tokens and shifts the rest back with a
    /// negative `delta`). Every later attention sees those keys as if rotated for their old
    /// position plus `delta`. `rope` must be the configuration the keys were rotated with; a
    /// length-dependent scaling (dynamic NTK, LongRoPE) is refused, because the table each key
    /// used is not recorded. See [`ShiftArgs`].
    pub fn shift_positions(&self, cache: &mut KvCache, seq: usize, tokens: std::ops::Range<usize>, delta: i64, rope: &RopeConfig) -> Result<()> {
        let (pools, meta) = cache.parts_mut();
        self.shift_positions_in(pools, meta, seq, tokens, delta, rope)
    }

    /// [`Backend::shift_positions`] on pools and metadata the caller owns (one layer's pools).
    pub fn shift_positions_in(&self, pools: &mut KvPools, meta: &KvMetadata, seq: usize, tokens: std::ops::Range<usize>, delta: i64, rope: &RopeConfig) -> Result<()> {
        let _span = op_span!("shift_positions", self.name());
        self.check_pools(pools, meta)?;
        rope.validate_params()?;
        let spec = pools.spec().clone();
        if rope.head_dim != spec.head_dim {
            // The variant the composite step reports for the same mismatch (its K against the cache).
            return Err(Error::shape("RoPE head_dim against the KV cache's", &[spec.head_dim], &[rope.head_dim]));
        }
        if rope.is_length_dependent() {
            return Err(Error::InvalidArgument(format!("context shift needs a position-independent RoPE table; {} scaling changes the table with the context length", rope.scaling.name())));
        }
        if spec.is_fp8() {
            return Err(Error::InvalidArgument(
                "context shift of an FP8 KV cache: rotating its keys would round every shifted key to e4m3 a second time (shift an f16/bf16 cache, or recompute the shifted keys and append them)".into(),
            ));
        }
        if seq >= meta.num_seqs() {
            return Err(Error::InvalidArgument(format!("sequence {seq} is outside the cache ({} sequences)", meta.num_seqs())));
        }
        let len = meta.seq_len(seq);
        if tokens.start > tokens.end || tokens.end > len {
            return Err(Error::InvalidArgument(format!("tokens {tokens:?} of sequence {seq}, which holds {len}")));
        }
        if delta.unsigned_abs() >= rope.max_position as u64 {
            return Err(Error::InvalidArgument(format!("shift by {delta} positions; |delta| must be below max_position {}", rope.max_position)));
        }
        if tokens.is_empty() || delta == 0 {
            return Ok(());
        }
        let desc = ProblemDesc {
            dtype: spec.dtype,
            num_heads: spec.num_kv_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            rope: Some(rope.clone()),
            layout: Some(spec.layout),
            kv_dtype: spec.kv_dtype,
            causal: false,
            batch_size: 1,
            max_q_len: tokens.len(),
            max_kv_len: len,
            window: None,
        };
        self.supports_call(Op::Shift, &desc)?;
        let freqs = rope.frequencies(0)?;
        self.inner.shift_positions(ShiftArgs { pools, meta, seq, tokens, delta, config: rope, freqs, desc, validated: Validated(()) })
    }

    // ---- plan / run ----

    fn instance(&self) -> usize {
        Arc::as_ptr(&self.inner) as *const () as usize
    }

    /// Plans a step for every layer ([`crate::plan`]): validates the description once (the same
    /// checks and capability query as the eager op), then the backend does its host work
    /// (kernel choice, metadata, device buffers). Run it per layer with [`Backend::run`].
    pub fn plan(&self, d: StepDesc<'_>) -> Result<StepPlan> {
        let _span = tracing::debug_span!("plan", backend = self.name(), op = d.op.name()).entered();
        let args = self.check_plan(&d, d.max_kv_len)?;
        let (max_kv_len, desc, freqs) = (args.max_kv_len, args.desc.clone(), args.freqs.clone());
        let state = self.inner.plan(args)?;
        Ok(self.step_plan(&d, max_kv_len, desc, freqs, state))
    }

    fn step_plan(&self, d: &StepDesc<'_>, max_kv_len: usize, desc: ProblemDesc, freqs: Option<RopeFrequencies>, state: Box<dyn PlanState>) -> StepPlan {
        StepPlan {
            instance: self.instance(),
            backend: self.name().to_string(),
            device: self.device(),
            op: d.op,
            spec: d.spec.clone(),
            num_heads: d.num_heads,
            q_lens: d.batch.q_lens().to_vec(),
            params: d.params,
            rope: d.rope.cloned(),
            freqs,
            max_kv_len,
            desc,
            state,
        }
    }

    /// Device bytes [`Backend::plan_in`] needs for `d` (validated as [`Backend::plan`] does):
    /// the step's metadata (page tables as wide as the bucket), the split-K scratch and
    /// counters, hip-separate's score buffer; 0 on host backends.
    pub fn plan_workspace_bytes(&self, d: StepDesc<'_>) -> Result<usize> {
        let args = self.check_plan(&d, d.max_kv_len)?;
        self.inner.plan_workspace_bytes(args)
    }

    /// [`Backend::plan`] into the caller's memory: every device buffer of the plan is carved
    /// from `workspace` (a tensor of any dtype and shape on this backend's device, writable,
    /// at least [`Backend::plan_workspace_bytes`] bytes: `StorageTooSmall` otherwise; engine
    /// memory through `HipBackend::borrow`), as FlashInfer's plan takes a workspace buffer.
    /// The plan keeps the tensor for its life and allocates nothing on the device; RoPE tables
    /// stay in the backend's bounded per-instance cache.
    pub fn plan_in(&self, d: StepDesc<'_>, workspace: Tensor) -> Result<StepPlan> {
        let _span = tracing::debug_span!("plan_in", backend = self.name(), op = d.op.name()).entered();
        if workspace.device() != self.device() {
            return Err(Error::WrongDevice { what: "workspace".into(), backend: self.name().into(), expected: self.device(), got: workspace.device() });
        }
        workspace.check_storage("workspace")?;
        let args = self.check_plan(&d, d.max_kv_len)?;
        let (max_kv_len, desc, freqs) = (args.max_kv_len, args.desc.clone(), args.freqs.clone());
        let state = self.inner.plan_in(args, workspace)?;
        Ok(self.step_plan(&d, max_kv_len, desc, freqs, state))
    }

    /// Rewrites `plan` for the next step in place: same op, spec, heads, query rows per entry,
    /// params and RoPE configuration, every sequence within the plan's bucket
    /// ([`StepPlan::max_kv_len`]); the sequences and their lengths, page tables and positions
    /// may change, as long as the RoPE table stays the one the plan was made with (a scaling
    /// whose table depends on the positions, dynamic NTK past its original length, refuses
    /// with `InvalidArgument`: make a new plan). A device backend writes the new metadata into the plan's buffers, ordered
    /// after the work already queued, so a captured graph replays the new step. On error the
    /// plan is unchanged.
    pub fn update_plan(&self, plan: &mut StepPlan, d: StepDesc<'_>) -> Result<()> {
        let _span = tracing::debug_span!("update_plan", backend = self.name(), op = d.op.name()).entered();
        self.check_instance(plan)?;
        let same = d.op == plan.op
            && *d.spec == plan.spec
            && d.num_heads == plan.num_heads
            && d.batch.q_lens() == plan.q_lens.as_slice()
            && d.params == plan.params
            && d.rope == plan.rope.as_ref()
            && d.max_kv_len.is_none_or(|m| m == plan.max_kv_len);
        if !same {
            return Err(Error::InvalidArgument(format!(
                "update_plan: the step differs from the plan in more than its sequences, lengths, page tables or positions (op, spec, heads, query rows {:?} per entry, params, RoPE or bucket {}): make a new plan",
                plan.q_lens, plan.max_kv_len
            )));
        }
        let args = self.check_plan(&d, Some(plan.max_kv_len))?;
        // The table is uploaded once per plan (a captured graph reads it at a fixed address):
        // one that changes with the positions (dynamic NTK past its original length) needs a
        // new plan, on every backend alike.
        if let (Some(have), Some(f)) = (&plan.freqs, &args.freqs) {
            if !have.same_bits(f) {
                return Err(Error::InvalidArgument(
                    "update_plan: this step's RoPE table differs from the plan's (length-dependent scaling past its original length): make a new plan".into(),
                ));
            }
        }
        let desc = args.desc.clone();
        self.inner.update_plan(plan.state.as_mut(), args)?;
        plan.desc = desc;
        Ok(())
    }

    /// Runs one layer of `plan` on `views` (the layer's tensors and pools): checks them against
    /// the plan (shapes, dtypes, device, storage, the pools' spec, overlaps), then the backend
    /// only launches.
    pub fn run(&self, plan: &StepPlan, views: LayerViews<'_>) -> Result<()> {
        let _span = tracing::trace_span!("run", backend = self.name(), op = plan.op.name()).entered();
        self.check_instance(plan)?;
        if views.op() != plan.op {
            return Err(Error::InvalidArgument(format!("run: the plan is for {}, the views for {}", plan.op.name(), views.op().name())));
        }
        let spec = &plan.spec;
        let (t, h, hk, d, dt) = (plan.tokens(), plan.num_heads, spec.num_kv_heads, spec.head_dim, spec.dtype);
        let pools_ok = |pools: &KvPools| -> Result<()> {
            self.check_pools_storage(pools)?;
            if pools.spec() != spec {
                return Err(Error::InvalidArgument(format!("run: the pools' spec {:?} is not the plan's {spec:?}", pools.spec())));
            }
            Ok(())
        };
        match &views {
            LayerViews::Rope { q, k } => {
                self.check_tensor("q", q, &[t, h, d], dt)?;
                self.check_tensor("k", k, &[t, hk, d], dt)?;
                Self::check_disjoint(&[("q", q, "k", k)])?;
            }
            LayerViews::Append { k, v, pools } => {
                self.check_tensor("k", k, &[t, hk, d], dt)?;
                self.check_tensor("v", v, &[t, hk, d], dt)?;
                pools_ok(pools)?;
                Self::check_disjoint(&[("K pool", pools.k(), "k", k), ("K pool", pools.k(), "v", v), ("V pool", pools.v(), "k", k), ("V pool", pools.v(), "v", v)])?;
            }
            LayerViews::Attention { q, pools, out, sinks, lse } => {
                self.check_tensor("q", q, &[t, h, d], dt)?;
                self.check_tensor("out", out, &[t, h, d], dt)?;
                pools_ok(pools)?;
                Self::check_disjoint(&[("out", out, "q", q), ("out", out, "K pool", pools.k()), ("out", out, "V pool", pools.v())])?;
                self.check_sinks(*sinks, h, out)?;
                self.check_lse(lse.as_deref(), t, h, &[("out", out), ("q", q), ("K pool", pools.k()), ("V pool", pools.v())], *sinks)?;
            }
            LayerViews::Step { q, k, v, pools, out, sinks } => {
                self.check_tensor("q", q, &[t, h, d], dt)?;
                self.check_tensor("k", k, &[t, hk, d], dt)?;
                self.check_tensor("v", v, &[t, hk, d], dt)?;
                self.check_tensor("out", out, &[t, h, d], dt)?;
                pools_ok(pools)?;
                Self::check_step_disjoint(q, k, v, pools, out)?;
                self.check_sinks(*sinks, h, out)?;
            }
        }
        self.inner.run(plan.state.as_ref(), views, Validated(()))
    }

    /// What [`Backend::capture`] can capture.
    pub fn graph_support(&self) -> GraphSupport {
        self.inner.graph_support()
    }

    /// Captures the device work `f` queues on this backend's stream (its [`Backend::run`]s)
    /// into a graph to [`Graph::replay`]. `f` must only run plans (eager ops upload metadata
    /// and are refused or break the capture); a failure inside ends the capture and is
    /// returned.
    pub fn capture(&self, mut f: impl FnMut() -> Result<()>) -> Result<Graph> {
        let _span = tracing::debug_span!("capture", backend = self.name()).entered();
        Ok(Graph { exec: self.inner.capture(&mut f)? })
    }

    fn check_instance(&self, plan: &StepPlan) -> Result<()> {
        if plan.instance != self.instance() {
            return Err(Error::InvalidArgument(format!(
                "the plan was made by another backend instance ({} on {}); plans hold that instance's device buffers and stream",
                plan.backend, plan.device
            )));
        }
        Ok(())
    }

    /// A step description's checks: the eager op's, without tensors.
    fn check_plan<'a>(&self, d: &StepDesc<'a>, bucket: Option<usize>) -> Result<PlanArgs<'a>> {
        let (spec, meta, batch) = (d.spec, d.meta, d.batch);
        spec.validate()?;
        meta.check_pools(spec)?;
        Self::check_heads(d.num_heads, spec.num_kv_heads)?;
        Self::check_seq_ids(meta, batch)?;
        let (appends, attends, ropes) = (matches!(d.op, PlanOp::Append | PlanOp::Step), matches!(d.op, PlanOp::Attention | PlanOp::Step), matches!(d.op, PlanOp::Rope | PlanOp::Step));
        let t = batch.total_tokens();
        let lens: Vec<usize> = batch.seq_ids().iter().map(|&s| meta.seq_len(s)).collect();
        let start = if appends { Self::append_starts(meta, batch)? } else { Vec::new() };
        let kv_lens = if attends {
            Self::check_params(d.params)?;
            Self::check_q_within_kv(batch, &lens)?;
            lens.clone()
        } else {
            Vec::new()
        };
        let (config, freqs) = if ropes {
            let c = d.rope.ok_or_else(|| Error::InvalidArgument(format!("plan: {} needs a RoPE configuration", d.op.name())))?;
            c.validate_params()?;
            if c.head_dim != spec.head_dim {
                return Err(Error::shape("q", &[t, d.num_heads, c.head_dim], &[t, d.num_heads, spec.head_dim]));
            }
            Self::check_positions(d.positions, t, c)?;
            (Some(c), Some(c.frequencies(max_position(d.positions))?))
        } else {
            (None, None)
        };
        let longest = lens.iter().copied().max().unwrap_or(0);
        let max_kv_len = match bucket {
            Some(m) if m < longest => return Err(Error::InvalidArgument(format!("plan: a sequence holds {longest} tokens, past the plan's bucket of {m}: make a new plan"))),
            Some(m) => m,
            None => longest,
        };
        let base = ProblemDesc {
            dtype: spec.dtype,
            num_heads: d.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            rope: None,
            layout: Some(spec.layout),
            kv_dtype: spec.kv_dtype,
            causal: d.params.causal,
            batch_size: batch.len(),
            max_q_len: batch.q_lens().iter().copied().max().unwrap_or(0),
            max_kv_len,
            window: d.params.window,
        };
        let desc = match d.op {
            PlanOp::Rope => {
                let desc = ProblemDesc { rope: config.cloned(), layout: None, kv_dtype: None, causal: false, batch_size: 1, max_q_len: t, max_kv_len: 0, ..base };
                self.supports_call(Op::Rope, &desc)?;
                desc
            }
            PlanOp::Append => {
                let desc = ProblemDesc { num_heads: spec.num_kv_heads, causal: false, ..base };
                self.supports_call(Op::KvAppend, &desc)?;
                desc
            }
            PlanOp::Attention => {
                self.supports_call(Op::Attention, &base)?;
                base
            }
            PlanOp::Step => {
                let desc = ProblemDesc { rope: config.cloned(), ..base };
                desc.validate_call()?;
                for op in [Op::Rope, Op::KvAppend, Op::Attention, Op::Step] {
                    self.inner.supports(op, &desc).map_err(|reasons| self.unsupported(op, reasons))?;
                }
                desc
            }
        };
        Ok(PlanArgs { op: d.op, spec, num_heads: d.num_heads, meta, batch, positions: d.positions, config, freqs, start, kv_lens, params: d.params, max_kv_len, desc, validated: Validated(()) })
    }

    // ---- validation: one place, so every backend rejects the same input the same way ----

    fn check_device(&self, what: &str, got: Device) -> Result<()> {
        if got != self.device() {
            return Err(Error::WrongDevice { what: what.into(), backend: self.name().into(), expected: self.device(), got });
        }
        Ok(())
    }

    /// Device, then the storage against the tensor's own shape and dtype.
    fn check_tensor_storage(&self, what: &str, t: &Tensor) -> Result<()> {
        self.check_device(what, t.device())?;
        t.check_storage(what)
    }

    fn check_cache(&self, cache: &KvCache) -> Result<()> {
        self.check_device("KV cache", cache.device())?;
        cache.check_storage()
    }

    fn check_pools_storage(&self, pools: &KvPools) -> Result<()> {
        self.check_device("KV cache", pools.device())?;
        pools.check_storage()
    }

    fn check_pools(&self, pools: &KvPools, meta: &KvMetadata) -> Result<()> {
        self.check_pools_storage(pools)?;
        meta.check_pools(pools.spec())
    }

    /// An output (or a tensor written in place) must not share an element with a tensor it is
    /// computed from: the kernels read and write without ordering between them.
    fn check_disjoint(pairs: &[(&str, &Tensor, &str, &Tensor)]) -> Result<()> {
        for &(wa, a, wb, b) in pairs {
            if a.overlaps(b) {
                return Err(Error::InvalidArgument(format!("{wa} overlaps {wb} in memory (views of one buffer must not share elements where one is written)")));
            }
        }
        Ok(())
    }

    /// The composite step's tensors: q and k may be rotated in place, the pools and `out` are
    /// written, so none of them may share memory with another (the eager step and a planned run
    /// check the same list).
    fn check_step_disjoint(q: &Tensor, k: &Tensor, v: &Tensor, pools: &KvPools, out: &Tensor) -> Result<()> {
        Self::check_disjoint(&[
            ("q", q, "k", k),
            ("q", q, "v", v),
            ("k", k, "v", v),
            ("out", out, "q", q),
            ("out", out, "k", k),
            ("out", out, "v", v),
            ("K pool", pools.k(), "q", q),
            ("V pool", pools.v(), "q", q),
            ("K pool", pools.k(), "k", k),
            ("K pool", pools.k(), "v", v),
            ("V pool", pools.v(), "k", k),
            ("V pool", pools.v(), "v", v),
            ("out", out, "K pool", pools.k()),
            ("out", out, "V pool", pools.v()),
        ])
    }

    /// The owned path's own refusals before its lengths grow: the tensors, sequences in range,
    /// capacity, and no append into a page another sequence reads.
    fn check_owned_append(&self, cache: &KvCache, k: &Tensor, v: &Tensor, batch: &Batch) -> Result<()> {
        self.check_cache(cache)?;
        let spec = cache.spec();
        let shape = [batch.total_tokens(), spec.num_kv_heads, spec.head_dim];
        self.check_tensor("k", k, &shape, spec.dtype)?;
        self.check_tensor("v", v, &shape, spec.dtype)?;
        Self::check_seq_ids(cache.metadata(), batch)?;
        for (&s, &q) in batch.seq_ids().iter().zip(batch.q_lens()) {
            let len = cache.seq_len(s);
            if len + q > cache.seq_capacity(s) {
                return Err(Error::KvCacheOverflow { seq: s, needed: len + q, capacity: cache.seq_capacity(s) });
            }
            if let CacheLayout::Paged { page_size, .. } = spec.layout {
                // Writing into a page another sequence reads would change its keys.
                let table = cache.page_table(s);
                for &page in &table[len / page_size..(len + q).div_ceil(page_size)] {
                    if cache.page_shared(page) {
                        return Err(Error::InvalidArgument(format!(
                            "sequence {s} would append into page {page} that another sequence also reads: fork it first (Backend::fork_sequence copies the partial page) or give it a page of its own"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_tensor(&self, what: &str, t: &Tensor, shape: &[usize], dtype: DType) -> Result<()> {
        self.check_tensor_storage(what, t)?;
        if t.dtype() != dtype {
            return Err(Error::DtypeMismatch { what: what.into(), expected: dtype, got: t.dtype() });
        }
        if t.shape() != shape {
            return Err(Error::shape(what, shape, t.shape()));
        }
        Ok(())
    }

    /// Checks a `[tokens, heads, head_dim]` tensor's rank and head_dim; returns (tokens, heads).
    fn check_heads_tensor(&self, what: &str, t: &Tensor, head_dim: Option<usize>) -> Result<(usize, usize, usize)> {
        self.check_tensor_storage(what, t)?;
        let s = t.shape();
        if s.len() != 3 {
            let expected = [s.first().copied().unwrap_or(0), s.get(1).copied().unwrap_or(0), head_dim.unwrap_or(0)];
            return Err(Error::shape(&format!("{what} ([tokens, heads, head_dim])"), &expected, s));
        }
        if let Some(d) = head_dim {
            if s[2] != d {
                return Err(Error::shape(what, &[s[0], s[1], d], s));
            }
        }
        if s[2] == 0 || !s[2].is_multiple_of(2) {
            return Err(Error::OddHeadDim { head_dim: s[2] });
        }
        if s[0] == 0 {
            return Err(Error::EmptyBatch { detail: format!("{what} has no tokens") });
        }
        if s[1] == 0 {
            return Err(Error::InvalidArgument(format!("{what} has 0 heads")));
        }
        Ok((s[0], s[1], s[2]))
    }

    fn check_heads(num_heads: usize, num_kv_heads: usize) -> Result<()> {
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(Error::HeadsNotDivisible { num_heads, num_kv_heads });
        }
        Ok(())
    }

    fn check_rope(&self, q: &Tensor, k: &Tensor, positions: &[u32], config: &RopeConfig) -> Result<ProblemDesc> {
        config.validate_params()?;
        let (t, h, d) = self.check_heads_tensor("q", q, Some(config.head_dim))?;
        let (tk, hk, _) = self.check_heads_tensor("k", k, Some(d))?;
        if tk != t {
            return Err(Error::shape("k", &[t, hk, d], k.shape()));
        }
        if k.dtype() != q.dtype() {
            return Err(Error::DtypeMismatch { what: "k".into(), expected: q.dtype(), got: k.dtype() });
        }
        Self::check_heads(h, hk)?;
        Self::check_positions(positions, t, config)?;
        Ok(ProblemDesc {
            dtype: q.dtype(),
            num_heads: h,
            num_kv_heads: hk,
            head_dim: d,
            rope: Some(config.clone()),
            layout: None,
            kv_dtype: None,
            causal: false,
            batch_size: 1,
            max_q_len: t,
            max_kv_len: 0,
            window: None,
        })
    }

    /// One position per token (M-RoPE: three, `[3, T]`), each below the table's `max_position`.
    fn check_positions(positions: &[u32], tokens: usize, config: &RopeConfig) -> Result<()> {
        let c = config.position_components();
        if positions.len() != c * tokens {
            let (expected, got) = if c == 1 { (vec![tokens], vec![positions.len()]) } else { (vec![c, tokens], vec![positions.len()]) };
            return Err(Error::shape("positions", &expected, &got));
        }
        if let Some((i, &p)) = positions.iter().enumerate().find(|(_, &p)| p as usize >= config.max_position) {
            return Err(Error::PositionOutOfRange { token: i % tokens.max(1), position: p as usize, max_position: config.max_position });
        }
        Ok(())
    }

    /// The engine path's append: `meta` already counts the new tokens, which go to tokens
    /// `seq_len - q_len..seq_len` of each sequence, within its capacity. Returns the first token
    /// written per entry.
    fn append_starts(meta: &KvMetadata, batch: &Batch) -> Result<Vec<usize>> {
        let mut start = Vec::with_capacity(batch.len());
        for (&s, &q) in batch.seq_ids().iter().zip(batch.q_lens()) {
            let len = meta.seq_len(s);
            if q > len {
                return Err(Error::InvalidArgument(format!("sequence {s} holds {len} tokens, fewer than its {q} new ones: grow the metadata first (KvMetadata::extend)")));
            }
            if len > meta.seq_capacity(s) {
                return Err(Error::KvCacheOverflow { seq: s, needed: len, capacity: meta.seq_capacity(s) });
            }
            start.push(len - q);
        }
        Ok(start)
    }

    /// No entry has more new queries than keys to attend over.
    fn check_q_within_kv(batch: &Batch, kv_lens: &[usize]) -> Result<()> {
        for (i, (&q_len, &kv_len)) in batch.q_lens().iter().zip(kv_lens).enumerate() {
            if q_len > kv_len {
                return Err(Error::QLenExceedsKvLen { seq: batch.seq_ids()[i], q_len, kv_len });
            }
        }
        Ok(())
    }

    fn check_seq_ids(meta: &KvMetadata, batch: &Batch) -> Result<()> {
        let n = meta.num_seqs();
        if let Some(&s) = batch.seq_ids().iter().find(|&&s| s >= n) {
            return Err(Error::InvalidArgument(format!("sequence {s} is outside the cache ({n} sequences)")));
        }
        Ok(())
    }

    /// The engine path's append: `meta` already counts the new tokens, which go to tokens
    /// `seq_len - q_len..seq_len`. Returns the first token written per entry.
    fn check_append(&self, pools: &KvPools, meta: &KvMetadata, k: &Tensor, v: &Tensor, batch: &Batch) -> Result<(Vec<usize>, ProblemDesc)> {
        self.check_pools(pools, meta)?;
        let spec = pools.spec();
        let shape = [batch.total_tokens(), spec.num_kv_heads, spec.head_dim];
        self.check_tensor("k", k, &shape, spec.dtype)?;
        self.check_tensor("v", v, &shape, spec.dtype)?;
        Self::check_seq_ids(meta, batch)?;
        let start = Self::append_starts(meta, batch)?;
        Self::check_disjoint(&[("K pool", pools.k(), "k", k), ("K pool", pools.k(), "v", v), ("V pool", pools.v(), "k", k), ("V pool", pools.v(), "v", v)])?;
        let desc = ProblemDesc {
            dtype: spec.dtype,
            num_heads: spec.num_kv_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            rope: None,
            layout: Some(spec.layout),
            kv_dtype: spec.kv_dtype,
            causal: false,
            batch_size: batch.len(),
            max_q_len: batch.q_lens().iter().copied().max().unwrap_or(0),
            max_kv_len: 0,
            window: None,
        };
        Ok((start, desc))
    }

    fn check_params(params: AttentionParams) -> Result<()> {
        if !params.scale.is_finite() {
            return Err(Error::InvalidArgument(format!("softmax scale must be finite, got {}", params.scale)));
        }
        if let Some(cap) = params.softcap {
            if !(cap.is_finite() && cap > 0.0) {
                return Err(Error::InvalidArgument(format!("logit soft-cap must be finite and positive, got {cap}")));
            }
        }
        match params.window {
            Some(0) => return Err(Error::InvalidArgument("sliding window must hold at least 1 key, got 0".into())),
            Some(w) if !params.causal => return Err(Error::InvalidArgument(format!("sliding window of {w} keys needs causal attention"))),
            Some(w) if w > i32::MAX as usize => return Err(Error::InvalidArgument(format!("sliding window of {w} keys is past i32::MAX"))),
            _ => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn check_attention(&self, q: &Tensor, pools: &KvPools, meta: &KvMetadata, batch: &Batch, kv_lens: &[usize], params: AttentionParams, out: &Tensor) -> Result<ProblemDesc> {
        self.check_pools(pools, meta)?;
        let spec = pools.spec();
        let (_, h, d) = self.check_heads_tensor("q", q, Some(spec.head_dim))?;
        self.check_tensor("q", q, &[batch.total_tokens(), h, d], spec.dtype)?;
        Self::check_heads(h, spec.num_kv_heads)?;
        self.check_tensor("out", out, q.shape(), spec.dtype)?;
        Self::check_params(params)?;
        Self::check_seq_ids(meta, batch)?;
        Self::check_q_within_kv(batch, kv_lens)?;
        Self::check_disjoint(&[("out", out, "q", q), ("out", out, "K pool", pools.k()), ("out", out, "V pool", pools.v())])?;
        Ok(ProblemDesc {
            dtype: spec.dtype,
            num_heads: h,
            num_kv_heads: spec.num_kv_heads,
            head_dim: d,
            rope: None,
            layout: Some(spec.layout),
            kv_dtype: spec.kv_dtype,
            causal: params.causal,
            batch_size: batch.len(),
            max_q_len: batch.q_lens().iter().copied().max().unwrap_or(0),
            max_kv_len: kv_lens.iter().copied().max().unwrap_or(0),
            window: params.window,
        })
    }

    fn check_plain(&self, q: &Tensor, k: &Tensor, v: &Tensor, batch: &PlainBatch, params: AttentionParams, out: &Tensor) -> Result<ProblemDesc> {
        let (_, h, d) = self.check_heads_tensor("q", q, None)?;
        let (_, hk, _) = self.check_heads_tensor("k", k, Some(d))?;
        let dtype = q.dtype();
        let tq = *batch.q_offsets().last().unwrap_or(&0);
        let tk = *batch.kv_offsets().last().unwrap_or(&0);
        self.check_tensor("q", q, &[tq, h, d], dtype)?;
        self.check_tensor("k", k, &[tk, hk, d], dtype)?;
        self.check_tensor("v", v, &[tk, hk, d], dtype)?;
        Self::check_heads(h, hk)?;
        self.check_tensor("out", out, q.shape(), dtype)?;
        Self::check_params(params)?;
        if params.causal {
            // Causal rows see keys up to kv_len - q_len + i: with more queries than keys the
            // first rows would see none.
            for (i, (&q_len, &kv_len)) in batch.q_lens().iter().zip(batch.kv_lens()).enumerate() {
                if q_len > kv_len {
                    return Err(Error::QLenExceedsKvLen { seq: i, q_len, kv_len });
                }
            }
        }
        Ok(ProblemDesc {
            dtype,
            num_heads: h,
            num_kv_heads: hk,
            head_dim: d,
            rope: None,
            layout: None,
            kv_dtype: None,
            causal: params.causal,
            batch_size: batch.len(),
            max_q_len: batch.q_lens().iter().copied().max().unwrap_or(0),
            max_kv_len: batch.kv_lens().iter().copied().max().unwrap_or(0),
            window: params.window,
        })
    }
}

fn max_position(positions: &[u32]) -> usize {
    positions.iter().copied().max().unwrap_or(0) as usize
}
