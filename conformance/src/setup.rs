//! Building one case's inputs on a backend: tensors, positions, caches with random page tables.

use attnforge_api::{
    AttentionExtras, AttentionParams, Backend, Batch, CacheLayout, DType, Error, KvCache, KvCacheSpec, KvMetadata, KvPool, KvPools, LayerViews, Op, PlanOp, Result, RopeConfig, StepDesc, StepInputs, StepViews, Tensor,
};

use crate::case::Case;
use crate::rng::Rng;

/// The host data of one case, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Data {
    /// Queries of the prefix tokens `[sum cached, H, D]`.
    pub q_prefix: Vec<f32>,
    /// Keys of the prefix tokens `[sum cached, Hkv, D]`.
    pub k_prefix: Vec<f32>,
    /// Values of the prefix tokens.
    pub v_prefix: Vec<f32>,
    /// Queries of the new tokens `[sum q_len, H, D]`.
    pub q: Vec<f32>,
    /// Keys of the new tokens.
    pub k: Vec<f32>,
    /// Values of the new tokens.
    pub v: Vec<f32>,
    /// Position id per prefix token (M-RoPE: three, `[3, sum cached]`).
    pub pos_prefix: Vec<u32>,
    /// Position id per new token (M-RoPE: three, `[3, sum q_len]`).
    pub pos: Vec<u32>,
    /// A page table per sequence (paged layouts).
    pub page_tables: Vec<Vec<u32>>,
    /// Pool contents before anything is appended (sentinels).
    pub sentinel_k: Vec<f32>,
    /// V pool sentinels.
    pub sentinel_v: Vec<f32>,
}

/// Arbitrary position ids: uniform over the range, near `max_position` (where precision bugs
/// live), small, and repeats of the previous one.
fn positions(rng: &mut Rng, n: usize, max_position: usize) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rng.next_u64();
        let m = max_position as u64;
        let p = match r % 4 {
            0 => (rng.next_u64() % m) as u32,
            1 => (m - 1 - rng.next_u64() % m.min(64)) as u32,
            2 => (rng.next_u64() % m.min(16)) as u32,
            _ => out.last().copied().unwrap_or(0),
        };
        out.push(p);
    }
    out
}

impl Data {
    /// Draws everything for `case`.
    pub fn new(case: &Case) -> Self {
        let mut rng = Rng::new(case.seed);
        let (h, hk, d, a) = (case.heads, case.kv_heads, case.head_dim(), case.amplitude);
        let tp: usize = case.seqs.iter().map(|s| s.cached).sum();
        let tn: usize = case.seqs.iter().map(|s| s.q_len).sum();
        let layout = case.layout();
        let pool = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: hk, head_dim: d, dtype: case.dtype, kv_dtype: None, layout }.pool_len();
        let mut page_tables = Vec::new();
        if let attnforge_api::CacheLayout::Paged { page_size, num_pages } = layout {
            // A random permutation of the pool, dealt out to the sequences.
            let mut pages: Vec<u32> = (0..num_pages as u32).collect();
            for i in (1..pages.len()).rev() {
                pages.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let mut it = pages.into_iter();
            for s in &case.seqs {
                page_tables.push(it.by_ref().take((s.cached + s.q_len).div_ceil(page_size)).collect());
            }
        }
        Data {
            q_prefix: rng.normals(tp * h * d, a),
            k_prefix: rng.normals(tp * hk * d, a),
            v_prefix: rng.normals(tp * hk * d, a),
            q: rng.normals(tn * h * d, a),
            k: rng.normals(tn * hk * d, a),
            v: rng.normals(tn * hk * d, a),
            // M-RoPE: three ids per token, component-major ([3, T]).
            pos_prefix: positions(&mut rng, tp * case.rope.position_components(), case.rope.max_position),
            pos: positions(&mut rng, tn * case.rope.position_components(), case.rope.max_position),
            page_tables,
            sentinel_k: rng.normals(pool, 100.0),
            sentinel_v: rng.normals(pool, 100.0),
        }
    }
}

/// Batch entries of the prefix (sequences with cached tokens) and of the new tokens.
pub fn batches(case: &Case) -> (Option<Batch>, Batch) {
    let (ids, lens): (Vec<usize>, Vec<usize>) = case.seqs.iter().enumerate().filter(|(_, s)| s.cached > 0).map(|(i, s)| (i, s.cached)).unzip();
    let prefix = if ids.is_empty() { None } else { Batch::new(ids, lens).ok() };
    let new = Batch::new((0..case.seqs.len()).collect(), case.seqs.iter().map(|s| s.q_len).collect()).expect("cases have q_len >= 1");
    (prefix, new)
}

/// An empty cache for `case` with its page tables set and its pools filled with sentinels.
pub fn cache(be: &Backend, case: &Case, data: &Data) -> Result<KvCache> {
    let spec = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: case.kv_heads, head_dim: case.head_dim(), dtype: case.dtype, kv_dtype: case.kv_dtype(), layout: case.layout() };
    let mut c = be.create_kv_cache(&spec)?;
    if let Some((ks, vs)) = case.kv_scales() {
        be.set_kv_cache_scales(&mut c, &ks, &vs)?;
    }
    for (s, t) in data.page_tables.iter().enumerate() {
        c.set_page_table(s, t)?;
    }
    be.write_kv_pool(&mut c, &attnforge_api::KvPool { k: data.sentinel_k.clone(), v: data.sentinel_v.clone() })?;
    Ok(c)
}

/// Appends the case's prefix tokens, then its new tokens, to `c` (two appends, so the second
/// lands after existing tokens); returns the batch of new tokens.
pub fn append_case(be: &Backend, case: &Case, data: &Data, c: &mut KvCache) -> Result<Batch> {
    let (prefix, new) = batches(case);
    if let Some(p) = prefix {
        let (k, v) = (upload(be, &data.k_prefix, case.kv_heads, case)?, upload(be, &data.v_prefix, case.kv_heads, case)?);
        be.kv_append(c, &k, &v, &p)?;
    }
    let (k, v) = (upload(be, &data.k, case.kv_heads, case)?, upload(be, &data.v, case.kv_heads, case)?);
    be.kv_append(c, &k, &v, &new)?;
    Ok(new)
}

/// Uploads `[tokens, heads, head_dim]` data.
pub fn upload(be: &Backend, data: &[f32], heads: usize, case: &Case) -> Result<Tensor> {
    let d = case.head_dim();
    be.upload(data, &[data.len() / (heads * d), heads, d], case.dtype)
}

/// A NaN-poisoned output of `[tokens, heads, head_dim]`.
pub fn poisoned(be: &Backend, tokens: usize, heads: usize, case: &Case) -> Result<Tensor> {
    let mut t = be.alloc(&[tokens, heads, case.head_dim()], case.dtype)?;
    be.fill(&mut t, f32::NAN)?;
    Ok(t)
}

/// `data` rounded to `dtype`, as f64: what the golden computation starts from.
pub fn rounded(data: &[f32], dtype: DType) -> Vec<f64> {
    data.iter().map(|&x| dtype.round(x as f64)).collect()
}

/// How a check hands its data to the backend: the owned API (tensors and caches the backend
/// allocates) or the engine path (views into buffers the "engine" allocated: q, k and v strided
/// into one fused QKV buffer, outputs strided, KV pools as one layer of a two-layer allocation,
/// metadata the engine owns with pages shared between sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// `upload`, `alloc`, `create_kv_cache`.
    Owned,
    /// `view`, `kv_pools`, `KvMetadata`, `append_kv` / `attend` / `step`.
    Views,
    /// The views of [`Path::Views`], run through `plan` (bucketed to the cache's capacity),
    /// `update_plan` and `run`.
    Plan,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 3] = [Path::Owned, Path::Views, Path::Plan];

    /// Whether `op` runs through this path (plans run RoPE, append, attention and the step).
    pub fn runs(self, op: Op) -> bool {
        self != Path::Plan || matches!(op, Op::Rope | Op::KvAppend | Op::Attention | Op::Step)
    }

    /// Suffix of the report's op column: `` or `/views`.
    pub fn suffix(self) -> &'static str {
        match self {
            Path::Owned => "",
            Path::Views => "/views",
            Path::Plan => "/plan",
        }
    }
}

/// Elements of padding at the end of every fused row, so a view's row stride is never the
/// packed one (16 bytes in f16/bf16, 32 in f32: keeps rows 16-byte aligned).
pub const ROW_PAD: usize = 8;

/// Whether `be` makes views (a backend that does not is checked on the owned path only).
pub fn views_supported(be: &Backend) -> std::result::Result<(), Vec<String>> {
    let base = be.alloc(&[2, 16], DType::F32).map_err(|e| vec![e.to_string()])?;
    match be.view(&base, 8, &[2, 8], 16) {
        Ok(_) => Ok(()),
        Err(Error::Unsupported { reasons, .. }) => Err(reasons),
        Err(e) => Err(vec![format!("view of a dense tensor failed: {e}")]),
    }
}

/// Tensors of one case on one backend, by [`Path`].
#[derive(Debug, Clone, Copy)]
pub struct Io<'a> {
    /// The backend.
    pub be: &'a Backend,
    /// The case.
    pub case: &'a Case,
    /// Owned or views.
    pub path: Path,
}

impl Io<'_> {
    fn d(&self) -> usize {
        self.case.head_dim()
    }

    /// `parts` (data, heads) as `[tokens, heads, D]` tensors holding the data: uploaded
    /// (owned), or views side by side in one fused buffer `[tokens, sum heads * D + ROW_PAD]`.
    pub fn fused(&self, parts: &[(&[f32], usize)]) -> Result<Vec<Tensor>> {
        let d = self.d();
        if self.path == Path::Owned {
            return parts.iter().map(|&(x, h)| upload(self.be, x, h, self.case)).collect();
        }
        let tokens = parts[0].0.len() / (parts[0].1 * d);
        let width: usize = parts.iter().map(|&(_, h)| h * d).sum::<usize>() + ROW_PAD;
        let mut base = self.be.alloc(&[tokens, width], self.case.dtype)?;
        self.be.fill(&mut base, 1e4)?; // between-column garbage: a kernel that reads it shows
        let mut out = Vec::new();
        let mut col = 0;
        for &(x, h) in parts {
            let mut t = self.be.view(&base, col, &[tokens, h, d], width)?;
            self.be.write(&mut t, x)?;
            out.push(t);
            col += h * d;
        }
        Ok(out)
    }

    /// A NaN-poisoned log-sum-exp output f32 `[tokens, heads]` when the case draws one.
    pub fn lse(&self, tokens: usize) -> Result<Option<Tensor>> {
        if !self.case.lse {
            return Ok(None);
        }
        let mut t = self.be.alloc(&[tokens, self.case.heads], DType::F32)?;
        self.be.fill(&mut t, f32::NAN)?;
        Ok(Some(t))
    }

    /// The case's attention sinks on the backend (f32 `[heads]`), if it draws them.
    pub fn sinks(&self) -> Result<Option<Tensor>> {
        self.case.sink_values().map(|s| self.be.upload(&s, &[self.case.heads], DType::F32)).transpose()
    }

    /// Q, K and V of `tokens` rows: owned, or views into one fused QKV projection buffer.
    pub fn qkv(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<(Tensor, Tensor, Tensor)> {
        let mut t = self.fused(&[(q, self.case.heads), (k, self.case.kv_heads), (v, self.case.kv_heads)])?.into_iter();
        Ok((t.next().unwrap(), t.next().unwrap(), t.next().unwrap()))
    }

    /// A NaN-poisoned output `[tokens, heads, D]`: owned, or a strided view (column 8 of rows
    /// `heads * D + 2 ROW_PAD` wide, the rest of the buffer left as it is).
    pub fn out(&self, tokens: usize, heads: usize) -> Result<Tensor> {
        if self.path == Path::Owned {
            return poisoned(self.be, tokens, heads, self.case);
        }
        let width = heads * self.d() + 2 * ROW_PAD;
        let base = self.be.alloc(&[tokens, width], self.case.dtype)?;
        let mut t = self.be.view(&base, ROW_PAD, &[tokens, heads, self.d()], width)?;
        self.be.fill(&mut t, f32::NAN)?;
        Ok(t)
    }

    /// An empty KV state for the case, page tables set, pools filled with sentinels: a
    /// [`KvCache`] (owned) or pools viewed out of a two-layer allocation with engine-owned
    /// metadata (views; a paged pool gets one spare page, for the fork that shares pages).
    pub fn kv(&self, data: &Data) -> Result<Kv> {
        if self.path == Path::Owned {
            return Ok(Kv::Owned(cache(self.be, self.case, data)?));
        }
        let case = self.case;
        let n = case.seqs.len();
        let (layout, spare) = match case.layout() {
            CacheLayout::Paged { page_size, num_pages } => (CacheLayout::Paged { page_size, num_pages: num_pages + 1 }, Some(num_pages as u32)),
            l => (l, None),
        };
        // One more sequence than the case: the fork of sequence 0.
        let seqs = if spare.is_some() { n + 1 } else { n };
        let spec = KvCacheSpec { num_seqs: seqs, num_kv_heads: case.kv_heads, head_dim: case.head_dim(), dtype: case.dtype, kv_dtype: case.kv_dtype(), layout };
        let len = spec.pool_len();
        // [K layer 0, K layer 1, V layer 0, V layer 1]; the case uses layer 1.
        let base = self.be.alloc(&[4 * len], spec.storage_dtype())?;
        let shape = spec.pool_shape();
        let row = shape[1] * shape[2] * shape[3];
        let k = self.be.view(&base, len, &shape, row)?;
        let v = self.be.view(&base, 3 * len, &shape, row)?;
        let mut pools = self.be.kv_pools(&spec, k, v)?;
        if let Some((ks, vs)) = case.kv_scales() {
            self.be.set_kv_scales(&mut pools, &ks, &vs)?;
        }
        let mut meta = KvMetadata::new(&spec)?;
        for (s, t) in data.page_tables.iter().enumerate() {
            meta.set_page_table(s, t)?;
        }
        let extra = len - data.sentinel_k.len();
        let pad = |x: &[f32]| x.iter().chain(x.iter().take(extra)).copied().collect::<Vec<f32>>();
        self.be.write_kv_pools(&mut pools, &KvPool { k: pad(&data.sentinel_k), v: pad(&data.sentinel_v) })?;
        Ok(Kv::Engine { pools, meta, spare, fork: None, planned: self.path == Path::Plan })
    }
}

/// A case's KV state on one path; the ops run through the owned API or the engine path.
#[derive(Debug)]
pub enum Kv {
    /// The owned convenience type.
    Owned(KvCache),
    /// Engine-owned pools and metadata.
    Engine {
        /// One layer's pools.
        pools: KvPools,
        /// Lengths and page tables.
        meta: KvMetadata,
        /// The spare page a fork copies into (paged).
        spare: Option<u32>,
        /// The page copy the fork made, if any.
        fork: Option<(u32, u32)>,
        /// Ops run through plan / run.
        planned: bool,
    },
}

/// The step description of a planned op, bucketed to the longest capacity of the batch's
/// sequences (so the plan's shapes are not this step's exact ones).
#[allow(clippy::too_many_arguments)]
fn desc<'a>(op: PlanOp, spec: &'a KvCacheSpec, meta: &'a KvMetadata, batch: &'a Batch, heads: usize, positions: &'a [u32], rope: Option<&'a RopeConfig>, params: AttentionParams) -> StepDesc<'a> {
    let bucket = batch.seq_ids().iter().map(|&s| meta.seq_capacity(s)).max();
    StepDesc { op, spec, num_heads: heads, meta, batch, positions, rope, params, max_kv_len: bucket }
}

/// Plans a decoy of `d` first (every position one further on; every sequence one token longer
/// where its capacity and the bucket allow), rewrites the plan to `d` with `update_plan`, then
/// runs `views` once: a plan that kept any of the decoy's metadata gives other results. Where
/// the RoPE table moves with the positions, `update_plan` must refuse and the step is planned
/// afresh.
fn planned(be: &Backend, d: StepDesc<'_>, views: LayerViews<'_>) -> Result<()> {
    let positions: Vec<u32> = match d.rope {
        Some(r) => d.positions.iter().map(|&p| (p + 1) % r.max_position as u32).collect(),
        None => d.positions.to_vec(),
    };
    let mut meta = d.meta.clone();
    for &s in d.batch.seq_ids() {
        let len = meta.seq_len(s);
        if len < meta.seq_capacity(s) && d.max_kv_len.is_none_or(|m| len < m) {
            meta.set_seq_len(s, len + 1)?;
        }
    }
    let mut plan = be.plan(StepDesc { positions: &positions, meta: &meta, ..d })?;
    // A table that depends on the positions (dynamic NTK past its original length) differs
    // between the decoy and the step: update_plan must refuse the step, and the step gets a
    // plan of its own (a backend that kept the decoy's table would rotate with it).
    let top = |p: &[u32]| p.iter().copied().max().unwrap_or(0) as usize;
    let moves = match d.rope {
        Some(r) => !r.frequencies(top(&positions))?.same_bits(&r.frequencies(top(d.positions))?),
        None => false,
    };
    if moves {
        match be.update_plan(&mut plan, d) {
            Err(Error::InvalidArgument(_)) => plan = be.plan(d)?,
            Err(e) => return Err(e),
            Ok(()) => return Err(Error::Device { code: -1, message: "update_plan accepted a step whose RoPE table differs from the plan's".into() }),
        }
    } else {
        be.update_plan(&mut plan, d)?;
    }
    be.run(&plan, views)
}

impl Io<'_> {
    /// RoPE in place: the op, or (plan path) a plan of it (over a one-sequence description).
    pub fn rope(&self, q: &mut Tensor, k: &mut Tensor, positions: &[u32], rope: &RopeConfig) -> Result<()> {
        if self.path != Path::Plan {
            return self.be.rope(q, k, positions, rope);
        }
        let t = q.shape()[0];
        let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: k.shape()[1], head_dim: k.shape()[2], dtype: k.dtype(), kv_dtype: None, layout: CacheLayout::Contiguous { capacity: t.max(1) } };
        let meta = KvMetadata::new(&spec)?;
        let batch = Batch::new(vec![0], vec![t])?;
        let d = StepDesc { op: PlanOp::Rope, spec: &spec, num_heads: q.shape()[1], meta: &meta, batch: &batch, positions, rope: Some(rope), params: AttentionParams::causal(spec.head_dim), max_kv_len: None };
        planned(self.be, d, LayerViews::Rope { q, k })
    }
}

impl Kv {
    /// Appends through [`Backend::kv_append`], or [`KvMetadata::extend`] + [`Backend::append_kv`].
    pub fn append(&mut self, be: &Backend, k: &Tensor, v: &Tensor, batch: &Batch) -> Result<()> {
        match self {
            Kv::Owned(c) => be.kv_append(c, k, v, batch),
            Kv::Engine { pools, meta, planned: true, .. } => {
                meta.extend(batch)?;
                let spec = pools.spec().clone();
                let d = desc(PlanOp::Append, &spec, meta, batch, k.shape()[1], &[], None, AttentionParams::causal(k.shape()[2]));
                planned(be, d, LayerViews::Append { k, v, pools })
            }
            Kv::Engine { pools, meta, .. } => {
                meta.extend(batch)?;
                be.append_kv(pools, meta, k, v, batch)
            }
        }
    }

    /// Attention over the state (with the case's sinks, if any).
    pub fn attend(&self, be: &Backend, q: &Tensor, batch: &Batch, params: AttentionParams, sinks: Option<&Tensor>, lse: Option<&mut Tensor>, out: &mut Tensor) -> Result<()> {
        match (self, sinks, lse) {
            (Kv::Owned(c), None, None) => be.attention(q, c, batch, params, out),
            (Kv::Owned(c), Some(s), None) => be.attention_with_sinks(q, c, batch, params, s, out),
            (Kv::Owned(c), sinks, lse) => be.attention_with(q, c, batch, params, AttentionExtras { sinks, lse }, out),
            (Kv::Engine { pools, meta, planned: true, .. }, sinks, lse) => {
                planned(be, desc(PlanOp::Attention, pools.spec(), meta, batch, q.shape()[1], &[], None, params), LayerViews::Attention { q, pools, out, sinks, lse })
            }
            (Kv::Engine { pools, meta, .. }, None, None) => be.attend(q, pools, meta, batch, params, out),
            (Kv::Engine { pools, meta, .. }, Some(s), None) => be.attend_with_sinks(q, pools, meta, batch, params, s, out),
            (Kv::Engine { pools, meta, .. }, sinks, lse) => be.attend_with(q, pools, meta, batch, params, AttentionExtras { sinks, lse }, out),
        }
    }

    /// The composite step.
    #[allow(clippy::too_many_arguments)]
    pub fn step(&mut self, be: &Backend, q: &mut Tensor, k: &mut Tensor, v: &Tensor, positions: &[u32], rope: &RopeConfig, batch: &Batch, params: AttentionParams, sinks: Option<&Tensor>, out: &mut Tensor) -> Result<()> {
        match self {
            Kv::Owned(c) => be.rope_append_attend(StepInputs { q, k, v, positions, rope, cache: c, batch, params, out, sinks }),
            Kv::Engine { pools, meta, planned: true, .. } => {
                meta.extend(batch)?;
                let spec = pools.spec().clone();
                let d = desc(PlanOp::Step, &spec, meta, batch, q.shape()[1], positions, Some(rope), params);
                planned(be, d, LayerViews::Step { q, k, v, pools, out, sinks })
            }
            Kv::Engine { pools, meta, .. } => {
                meta.extend(batch)?;
                be.step(StepViews { q, k, v, positions, rope, pools, meta, batch, params, out, sinks })
            }
        }
    }

    /// Context shift of sequence `seq`'s tokens.
    pub fn shift(&mut self, be: &Backend, seq: usize, tokens: std::ops::Range<usize>, delta: i64, rope: &RopeConfig) -> Result<()> {
        match self {
            Kv::Owned(c) => be.shift_positions(c, seq, tokens, delta, rope),
            Kv::Engine { pools, meta, .. } => be.shift_positions_in(pools, meta, seq, tokens, delta, rope),
        }
    }

    /// Engine path, paged: forks sequence 0 into the extra last sequence, so sequence 0's full
    /// pages are shared (read by both) and its partial page is copied into the spare page. A
    /// no-op otherwise.
    pub fn share_pages(&mut self, be: &Backend) -> Result<()> {
        if let Kv::Engine { pools, meta, spare: Some(spare), fork, .. } = self {
            let dst = meta.num_seqs() - 1;
            if meta.seq_len(0) > 0 {
                *fork = meta.fork(0, dst, Some(*spare))?;
                if let Some(c) = *fork {
                    be.copy_kv_pages(pools, &[c])?;
                }
            }
        }
        Ok(())
    }

    /// Both pools on the host.
    pub fn read_pool(&self, be: &Backend) -> Result<KvPool> {
        match self {
            Kv::Owned(c) => be.read_kv_pool(c),
            Kv::Engine { pools, .. } => be.read_kv_pools(pools),
        }
    }

    /// Tokens sequence `s` holds.
    pub fn seq_len(&self, s: usize) -> usize {
        match self {
            Kv::Owned(c) => c.seq_len(s),
            Kv::Engine { meta, .. } => meta.seq_len(s),
        }
    }

    /// Element offset of (token `t`, kv head `h`) of sequence `s` in a pool.
    pub fn slot_offset(&self, s: usize, t: usize, h: usize) -> usize {
        match self {
            Kv::Owned(c) => c.slot_offset(s, t, h),
            Kv::Engine { pools, meta, .. } => (meta.slot(s, t) * pools.spec().num_kv_heads + h) * pools.spec().head_dim,
        }
    }

    /// Elements of one page of a pool (paged), for the fork's copy.
    pub fn page_len(&self) -> usize {
        match self {
            Kv::Engine { pools, .. } => match pools.spec().layout {
                CacheLayout::Paged { page_size, .. } => page_size * pools.spec().num_kv_heads * pools.spec().head_dim,
                _ => 0,
            },
            Kv::Owned(_) => 0,
        }
    }

    /// The page copy of [`Kv::share_pages`], if one was made.
    pub fn fork_copy(&self) -> Option<(u32, u32)> {
        match self {
            Kv::Engine { fork, .. } => *fork,
            Kv::Owned(_) => None,
        }
    }
}

/// [`append_case`] on either path: the prefix, then (engine path, paged) the fork that shares
/// sequence 0's pages, then the new tokens; returns the batch of new tokens.
pub fn append_case_io(io: &Io<'_>, data: &Data, kv: &mut Kv) -> Result<Batch> {
    let (prefix, new) = batches(io.case);
    let (be, case) = (io.be, io.case);
    if let Some(p) = prefix {
        let mut t = io.fused(&[(&data.k_prefix, case.kv_heads), (&data.v_prefix, case.kv_heads)])?.into_iter();
        let (k, v) = (t.next().unwrap(), t.next().unwrap());
        kv.append(be, &k, &v, &p)?;
    }
    kv.share_pages(be)?;
    let mut t = io.fused(&[(&data.k, case.kv_heads), (&data.v, case.kv_heads)])?.into_iter();
    let (k, v) = (t.next().unwrap(), t.next().unwrap());
    kv.append(be, &k, &v, &new)?;
    Ok(new)
}
