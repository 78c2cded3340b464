//! Plan once per step, run per layer (FlashInfer's plan/run), replay as a device graph (vLLM's
//! CUDA-graph decode buckets).
//!
//! An engine runs the same step metadata (lengths, page tables, positions) for every layer.
//! [`crate::Backend::plan`] takes the step's description ([`StepDesc`]) and does the host work
//! once: validation, the capability query, kernel choice, the metadata a kernel reads, the
//! device buffers it lives in (at fixed addresses, with the split-K scratch). Then
//! [`crate::Backend::run`] per layer checks the layer's views against the plan and only
//! launches kernels: a GPU backend allocates nothing, copies nothing between host and device,
//! waits for nothing and holds no lock across launches, so a run can be captured into a
//! device graph on the backend's stream ([`crate::Backend::capture`]).
//!
//! A plan made with a bucket ([`StepDesc::max_kv_len`]) keeps its launch shapes (grid, split
//! count, page-table width) for every step whose sequences stay within it:
//! [`crate::Backend::update_plan`] rewrites the metadata in place (stream-ordered, before the
//! work queued after it), so a graph captured once replays for later steps with growing
//! lengths. The batch's shape (how many sequences, query rows each) is fixed by a plan: pad a
//! decode batch with dummy sequences to the bucket's size, as vLLM does. The RoPE table is
//! fixed too: a step whose table differs (dynamic NTK past its original length) is refused by
//! `update_plan` and needs a new plan.
//!
//! The plan's device buffers may live in the engine's memory:
//! [`crate::Backend::plan_workspace_bytes`] says how many bytes a description needs and
//! [`crate::Backend::plan_in`] carves them from a tensor the engine handed in (FlashInfer's
//! workspace buffer), allocating nothing.

use std::any::Any;
use std::fmt;

use crate::args::Validated;
use crate::{AttentionParams, Batch, Device, KvCacheSpec, KvMetadata, KvPools, ProblemDesc, RopeConfig, RopeFrequencies, Tensor};

/// What a plan runs per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanOp {
    /// RoPE on Q and K in place ([`crate::Backend::rope`]).
    Rope,
    /// K/V appended to the pools ([`crate::Backend::append_kv`]).
    Append,
    /// Attention over the pools ([`crate::Backend::attend`]).
    Attention,
    /// The composite step ([`crate::Backend::step`]).
    Step,
}

impl PlanOp {
    /// Name as in reports.
    pub fn name(self) -> &'static str {
        match self {
            PlanOp::Rope => "rope",
            PlanOp::Append => "kv_append",
            PlanOp::Attention => "attention",
            PlanOp::Step => "rope_append_attend",
        }
    }
}

/// One step's description, shared by every layer: what [`crate::Backend::plan`] and
/// [`crate::Backend::update_plan`] take.
#[derive(Debug, Clone, Copy)]
pub struct StepDesc<'a> {
    /// What runs per layer.
    pub op: PlanOp,
    /// Every layer's pools have this spec.
    pub spec: &'a KvCacheSpec,
    /// Query heads (`H`; a multiple of `spec.num_kv_heads`).
    pub num_heads: usize,
    /// Lengths (already counting the step's tokens for [`PlanOp::Append`] and [`PlanOp::Step`]:
    /// [`KvMetadata::extend`]) and page tables.
    pub meta: &'a KvMetadata,
    /// Which sequences, how many new tokens (query rows) each.
    pub batch: &'a Batch,
    /// One position per new token ([`PlanOp::Rope`], [`PlanOp::Step`]; empty otherwise).
    pub positions: &'a [u32],
    /// RoPE configuration ([`PlanOp::Rope`], [`PlanOp::Step`]).
    pub rope: Option<&'a RopeConfig>,
    /// Causal flag and scale ([`PlanOp::Attention`], [`PlanOp::Step`]).
    pub params: AttentionParams,
    /// The bucket: the longest sequence (keys) later steps of this plan may have. `None`: this
    /// step's longest. Launch shapes (split counts, page-table width) are chosen for it.
    pub max_kv_len: Option<usize>,
}

/// Validated input of [`crate::AttentionBackend::plan`] and
/// [`crate::AttentionBackend::update_plan`].
#[derive(Debug)]
pub struct PlanArgs<'a> {
    /// What runs per layer.
    pub op: PlanOp,
    /// The pools' spec.
    pub spec: &'a KvCacheSpec,
    /// Query heads.
    pub num_heads: usize,
    /// Lengths and page tables.
    pub meta: &'a KvMetadata,
    /// Which sequences, how many new tokens each.
    pub batch: &'a Batch,
    /// One position per new token (RoPE ops).
    pub positions: &'a [u32],
    /// RoPE configuration (RoPE ops).
    pub config: Option<&'a RopeConfig>,
    /// `config.frequencies(max(positions))` (RoPE ops).
    pub freqs: Option<RopeFrequencies>,
    /// First token written per entry (append ops).
    pub start: Vec<usize>,
    /// Keys visible per entry (attention ops).
    pub kv_lens: Vec<usize>,
    /// Causal flag and scale.
    pub params: AttentionParams,
    /// The bucket's longest sequence (>= every `kv_lens[i]`).
    pub max_kv_len: usize,
    /// What the capability query saw, per op the plan runs (for [`PlanOp::Step`]: the step's,
    /// with `max_kv_len` the bucket's).
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// A backend's state of a plan (device buffers, launches). Backends downcast it in
/// [`crate::AttentionBackend::run`].
pub trait PlanState: Any + Send + Sync + fmt::Debug {
    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Device memory the plan holds (metadata and scratch), bytes.
    fn workspace_bytes(&self) -> usize {
        0
    }
}

/// A layer's tensors for [`crate::Backend::run`], by the plan's op.
#[derive(Debug)]
pub enum LayerViews<'a> {
    /// Q `[T, H, D]` and K `[T, Hkv, D]`, rotated in place.
    Rope {
        /// Queries.
        q: &'a mut Tensor,
        /// Keys.
        k: &'a mut Tensor,
    },
    /// K and V `[T, Hkv, D]` appended to `pools`.
    Append {
        /// New keys.
        k: &'a Tensor,
        /// New values.
        v: &'a Tensor,
        /// This layer's pools.
        pools: &'a mut KvPools,
    },
    /// Q `[T, H, D]` over `pools` into `out`.
    Attention {
        /// Queries.
        q: &'a Tensor,
        /// This layer's pools.
        pools: &'a KvPools,
        /// Output `[T, H, D]`.
        out: &'a mut Tensor,
        /// This layer's attention sinks, f32 `[H]` (see [`crate::AttentionArgs::sinks`]).
        sinks: Option<&'a Tensor>,
        /// Each row's log-sum-exp, f32 `[T, H]` (see [`crate::AttentionArgs::lse`]); None: not written.
        lse: Option<&'a mut Tensor>,
    },
    /// The composite step (q and k are scratch afterwards).
    Step {
        /// Queries.
        q: &'a mut Tensor,
        /// New keys.
        k: &'a mut Tensor,
        /// New values.
        v: &'a Tensor,
        /// This layer's pools.
        pools: &'a mut KvPools,
        /// Output `[T, H, D]`.
        out: &'a mut Tensor,
        /// This layer's attention sinks, f32 `[H]` (see [`crate::AttentionArgs::sinks`]).
        sinks: Option<&'a Tensor>,
    },
}

impl LayerViews<'_> {
    /// The op these views are for.
    pub fn op(&self) -> PlanOp {
        match self {
            LayerViews::Rope { .. } => PlanOp::Rope,
            LayerViews::Append { .. } => PlanOp::Append,
            LayerViews::Attention { .. } => PlanOp::Attention,
            LayerViews::Step { .. } => PlanOp::Step,
        }
    }
}

/// A step planned by [`crate::Backend::plan`], run per layer by [`crate::Backend::run`].
#[derive(Debug)]
pub struct StepPlan {
    pub(crate) instance: usize,
    pub(crate) backend: String,
    pub(crate) device: Device,
    pub(crate) op: PlanOp,
    pub(crate) spec: KvCacheSpec,
    pub(crate) num_heads: usize,
    pub(crate) q_lens: Vec<usize>,
    pub(crate) params: AttentionParams,
    pub(crate) rope: Option<RopeConfig>,
    /// The RoPE table the plan was made with (fixed for its life).
    pub(crate) freqs: Option<RopeFrequencies>,
    pub(crate) max_kv_len: usize,
    pub(crate) desc: ProblemDesc,
    pub(crate) state: Box<dyn PlanState>,
}

impl StepPlan {
    /// What runs per layer.
    pub fn op(&self) -> PlanOp {
        self.op
    }
    /// New tokens (query rows) per layer.
    pub fn tokens(&self) -> usize {
        self.q_lens.iter().sum()
    }
    /// Query rows per batch entry (fixed for the plan's life).
    pub fn q_lens(&self) -> &[usize] {
        &self.q_lens
    }
    /// The bucket: the longest sequence this plan serves.
    pub fn max_kv_len(&self) -> usize {
        self.max_kv_len
    }
    /// Device memory the plan holds (metadata and scratch), bytes.
    pub fn workspace_bytes(&self) -> usize {
        self.state.workspace_bytes()
    }
    /// The backend's state (for backends).
    pub fn state(&self) -> &dyn PlanState {
        self.state.as_ref()
    }
}

/// Which steps a backend can capture into a device graph (vLLM's `AttentionCGSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphSupport {
    /// No graphs (host backends; a device whose runtime cannot capture).
    Never,
    /// Decode steps only (one query row per sequence).
    DecodeOnly,
    /// Every planned step ([`crate::Backend::run`] of any plan).
    Always,
}

/// A captured device graph, replayed on the stream it was captured on. A backend's graph must
/// hold every device buffer its launches use until it is dropped (and refuse a replay over
/// memory whose borrow has ended), so that [`Graph::replay`] is safe whatever the caller dropped
/// after the capture.
pub trait GraphExec: Send + Sync + fmt::Debug {
    /// Queues one replay (asynchronous, like the launches it holds).
    fn replay(&self) -> crate::Result<()>;
}

/// A graph captured by [`crate::Backend::capture`]: the launches of the runs made inside it,
/// reading the metadata their plans hold at replay time ([`crate::Backend::update_plan`]).
/// The graph holds every device buffer the captured runs use (tensors, pools, the plans'
/// metadata, scratch and RoPE tables): dropping them after the capture frees nothing until the
/// graph goes, so a replay never touches freed memory. A replay over memory borrowed for a
/// lifetime that has ended is refused. To feed a replay new inputs, write them into the
/// captured tensors (the graph reads them at their addresses).
#[derive(Debug)]
pub struct Graph {
    pub(crate) exec: Box<dyn GraphExec>,
}

impl Graph {
    /// Queues one replay on the backend's stream.
    pub fn replay(&self) -> crate::Result<()> {
        self.exec.replay()
    }
}

/// The default plan of host backends: the validated description, owned, run through the
/// backend's ordinary ops (nothing to precompute on the host).
#[derive(Debug)]
pub(crate) struct HostPlan {
    pub meta: KvMetadata,
    pub batch: Batch,
    pub positions: Vec<u32>,
    pub config: Option<RopeConfig>,
    pub freqs: Option<RopeFrequencies>,
    pub start: Vec<usize>,
    pub kv_lens: Vec<usize>,
    pub params: AttentionParams,
    pub desc: ProblemDesc,
}

impl HostPlan {
    pub fn new(a: PlanArgs<'_>) -> Self {
        HostPlan {
            meta: a.meta.clone(),
            batch: a.batch.clone(),
            positions: a.positions.to_vec(),
            config: a.config.cloned(),
            freqs: a.freqs,
            start: a.start,
            kv_lens: a.kv_lens,
            params: a.params,
            desc: a.desc,
        }
    }
}

impl PlanState for HostPlan {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
