//! KV caches: contiguous (a capacity per sequence) and paged (a pool of pages and a page table
//! per sequence).
//!
//! Physical layout, the same for every backend (what [`KvPool`] holds):
//! - contiguous: K and V each `[num_seqs, capacity, num_kv_heads, head_dim]`;
//! - paged: K and V each `[num_pages, page_size, num_kv_heads, head_dim]` (vLLM/FlashInfer
//!   "NHD"); token `t` of sequence `s` lives in page `page_table(s)[t / page_size]`, slot
//!   `t % page_size`.
//!
//! Pages may be shared: several sequences' tables can hold one page (prefix caching, beam
//! search). Every op reads shared pages; an append that would write into a shared page is
//! refused (`InvalidArgument`, nothing written). [`crate::Backend::fork_sequence`] forks a
//! sequence: full pages shared, the partial last page copied (copy-on-write).
//! [`KvCache::truncate`] rolls a sequence back (speculative decoding).

use crate::{try_vec, DType, Device, Error, Result, Storage, Tensor};

/// How a cache stores its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheLayout {
    /// Each sequence owns `capacity` consecutive token slots.
    Contiguous {
        /// Token slots per sequence.
        capacity: usize,
    },
    /// A pool of `num_pages` pages of `page_size` tokens; sequences map their tokens to pages
    /// through a page table set with [`KvCache::set_page_table`].
    Paged {
        /// Tokens per page.
        page_size: usize,
        /// Pages in the pool.
        num_pages: usize,
    },
}

impl CacheLayout {
    /// Short name for reports: `contiguous` or `paged`.
    pub fn name(&self) -> &'static str {
        match self {
            CacheLayout::Contiguous { .. } => "contiguous",
            CacheLayout::Paged { .. } => "paged",
        }
    }
}

/// What a backend needs to create a [`KvCache`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvCacheSpec {
    /// Sequences the cache holds.
    pub num_seqs: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Element type of the K/V rows appended and of the queries and outputs that attend over
    /// the cache (f32, f16 or bf16).
    pub dtype: DType,
    /// Contiguous or paged.
    pub layout: CacheLayout,
    /// How the pools store K and V: `None` in `dtype`; `Some(DType::F8E4M3)` as FP8 e4m3 with
    /// an f32 scale per kv head for K and one for V (per tensor: the same value for every head;
    /// [`crate::Backend::set_kv_scales`], all 1 when made), for f16/bf16 caches at half the
    /// memory and bandwidth. An append stores `e4m3(fl32(x / scale_h))` (rounded to nearest
    /// even, saturating at +-448: [`crate::e4m3_quantise`]); attention reads `e4m3 * scale_h`.
    pub kv_dtype: Option<DType>,
}

impl KvCacheSpec {
    /// Checks the spec; [`crate::Backend::create_kv_cache`] calls it.
    pub fn validate(&self) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::OddHeadDim { head_dim: self.head_dim });
        }
        if self.num_seqs == 0 {
            return Err(Error::EmptyBatch { detail: "KV cache spec with num_seqs = 0".into() });
        }
        if self.num_kv_heads == 0 {
            return Err(Error::InvalidArgument("KV cache spec with num_kv_heads = 0".into()));
        }
        if self.dtype.is_float8() {
            return Err(Error::InvalidArgument("KV cache spec with dtype e4m3: dtype is the K/V rows' and queries' type (f16 or bf16); e4m3 storage is kv_dtype: Some(DType::F8E4M3)".into()));
        }
        match self.kv_dtype {
            None => {}
            Some(DType::F8E4M3) if matches!(self.dtype, DType::F16 | DType::BF16) => {}
            Some(DType::F8E4M3) => {
                return Err(Error::InvalidArgument(format!("an FP8 KV cache holds the K/V of an f16 or bf16 model, not {} (kv_dtype e4m3 with dtype {})", self.dtype, self.dtype)))
            }
            Some(other) => return Err(Error::InvalidArgument(format!("KV cache storage type {other}: kv_dtype is None (stored in dtype) or Some(DType::F8E4M3)"))),
        }
        match self.layout {
            CacheLayout::Contiguous { capacity: 0 } => Err(Error::InvalidArgument("contiguous KV cache with capacity 0".into())),
            CacheLayout::Paged { page_size, num_pages } if page_size == 0 || num_pages == 0 => {
                Err(Error::InvalidArgument(format!("paged KV cache needs page_size and num_pages > 0, got {page_size} and {num_pages}")))
            }
            _ => {
                let bytes = self.pool_shape().iter().try_fold(self.storage_dtype().size(), |a, &d| a.checked_mul(d));
                match bytes {
                    Some(b) if b <= isize::MAX as usize => Ok(()),
                    _ => Err(Error::InvalidArgument(format!("KV cache pools of shape {:?} are too large to address", self.pool_shape()))),
                }
            }
        }
    }

    /// Shape of the K pool (and of the V pool).
    pub fn pool_shape(&self) -> [usize; 4] {
        match self.layout {
            CacheLayout::Contiguous { capacity } => [self.num_seqs, capacity, self.num_kv_heads, self.head_dim],
            CacheLayout::Paged { page_size, num_pages } => [num_pages, page_size, self.num_kv_heads, self.head_dim],
        }
    }

    /// Elements in the K pool (and in the V pool). Cannot overflow for a spec that passed
    /// [`KvCacheSpec::validate`].
    pub fn pool_len(&self) -> usize {
        self.pool_shape().iter().product()
    }

    /// Bytes of the K pool (and of the V pool).
    pub fn pool_bytes(&self) -> usize {
        self.pool_len() * self.storage_dtype().size()
    }

    /// The pools' element type: `kv_dtype`, else `dtype`.
    pub fn storage_dtype(&self) -> DType {
        self.kv_dtype.unwrap_or(self.dtype)
    }

    /// Whether the pools store FP8 with per-head scales.
    pub fn is_fp8(&self) -> bool {
        self.kv_dtype == Some(DType::F8E4M3)
    }

    /// Token slots in a pool: `num_seqs * capacity` (contiguous) or `num_pages * page_size`.
    pub fn pool_slots(&self) -> usize {
        let s = self.pool_shape();
        s[0] * s[1]
    }
}

/// K and V pools on a backend's device: two tensors of [`KvCacheSpec::pool_shape`] (dense), in
/// memory the backend allocated ([`crate::Backend::create_kv_cache`]) or the caller's
/// ([`crate::Backend::kv_pools`] over views of an engine's buffer, e.g. one layer of
/// `[layers, pages, page_size, kv_heads, head_dim]`), plus whatever per-slot state a backend
/// keeps beside them (hip-fused: each slot's key position). Holds no lengths and no page
/// tables: those are a [`KvMetadata`], which one engine step passes to every layer's pools.
#[derive(Debug)]
pub struct KvPools {
    spec: KvCacheSpec,
    device: Device,
    k: Tensor,
    v: Tensor,
    state: Option<Box<dyn Storage>>,
    /// FP8 pools: the K and V scales, f32 `[num_kv_heads]` each.
    scales: Option<(Tensor, Tensor)>,
}

impl KvPools {
    /// Pools from two tensors (for backend implementors and [`crate::Backend::kv_pools`]): both
    /// on `device`, of the spec's storage dtype and exactly [`KvCacheSpec::pool_shape`], dense.
    /// FP8 pools take their scales with [`KvPools::with_scales`] before any op uses them.
    pub fn from_tensors(spec: KvCacheSpec, device: Device, k: Tensor, v: Tensor, state: Option<Box<dyn Storage>>) -> Result<Self> {
        spec.validate()?;
        check_pair(device, spec.storage_dtype(), &spec.pool_shape(), ("K pool", &k), ("V pool", &v), "K and V pools")?;
        Ok(KvPools { spec, device, k, v, state, scales: None })
    }

    /// FP8 pools' scales: f32 `[num_kv_heads]` tensors on the pools' device, dense, K's and
    /// V's (the caller's memory or the backend's: [`crate::Backend::kv_pools`] makes them, all
    /// 1). Refused for pools that are not FP8.
    pub fn with_scales(mut self, k_scale: Tensor, v_scale: Tensor) -> Result<Self> {
        if !self.spec.is_fp8() {
            return Err(Error::InvalidArgument(format!("KV scales for pools stored in {}: only FP8 pools (kv_dtype e4m3) take scales", self.spec.storage_dtype())));
        }
        check_pair(self.device, DType::F32, &[self.spec.num_kv_heads], ("K scales", &k_scale), ("V scales", &v_scale), "K and V scales")?;
        for (what, t) in [("K scales", &k_scale), ("V scales", &v_scale)] {
            if t.overlaps(&self.k) || t.overlaps(&self.v) {
                return Err(Error::InvalidArgument(format!("the {what} overlap a pool")));
            }
        }
        self.scales = Some((k_scale, v_scale));
        Ok(self)
    }

    /// FP8 pools' K and V scales (f32 `[num_kv_heads]`); `None` for other pools.
    pub fn scales(&self) -> Option<(&Tensor, &Tensor)> {
        self.scales.as_ref().map(|(k, v)| (k, v))
    }

    /// The scales, writable (for [`crate::Backend::set_kv_scales`]).
    pub fn scales_mut(&mut self) -> Option<(&mut Tensor, &mut Tensor)> {
        self.scales.as_mut().map(|(k, v)| (k, v))
    }

    /// The spec (shape of each pool, layout, dtype).
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }

    /// The device the pools live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The K pool `[pool_shape]`.
    pub fn k(&self) -> &Tensor {
        &self.k
    }

    /// The V pool.
    pub fn v(&self) -> &Tensor {
        &self.v
    }

    /// Both pools and the backend's per-slot state, writable (for backends).
    pub fn parts_mut(&mut self) -> (&mut Tensor, &mut Tensor, Option<&mut (dyn Storage + 'static)>) {
        (&mut self.k, &mut self.v, self.state.as_deref_mut())
    }

    /// Both pools and the backend's per-slot state, writable, with the FP8 scales read-only
    /// (for backends: an append reads the scales while it writes the pools).
    #[allow(clippy::type_complexity)]
    pub fn parts_and_scales_mut(&mut self) -> (&mut Tensor, &mut Tensor, Option<&mut (dyn Storage + 'static)>, Option<(&Tensor, &Tensor)>) {
        (&mut self.k, &mut self.v, self.state.as_deref_mut(), self.scales.as_ref().map(|(k, v)| (k, v)))
    }

    /// The backend's per-slot state, if it keeps any.
    pub fn state(&self) -> Option<&dyn Storage> {
        self.state.as_deref()
    }

    /// Checks both pools' storage again (ops call this before every use), and that FP8 pools
    /// have their scales.
    pub fn check_storage(&self) -> Result<()> {
        self.k.check_storage("K pool")?;
        self.v.check_storage("V pool")?;
        match &self.scales {
            Some((k, v)) => {
                k.check_storage("K scales")?;
                v.check_storage("V scales")
            }
            None if self.spec.is_fp8() => Err(Error::InvalidArgument("FP8 KV pools without scales (KvPools::with_scales)".into())),
            None => Ok(()),
        }
    }

    /// Gives the tensors back (e.g. an engine's views).
    pub fn into_tensors(self) -> (Tensor, Tensor) {
        (self.k, self.v)
    }
}

/// Per-sequence metadata of KV pools: lengths and page tables (block tables). Owned by the
/// caller and shared by every layer's [`KvPools`] in a step, as an engine keeps one page table
/// for all layers; [`KvCache`] bundles one with its pools. The slot mapping of an append
/// follows from it ([`KvMetadata::slot`]).
///
/// The engine path of a step: [`KvMetadata::extend`] once (every sequence's length grows by its
/// new tokens), then per layer [`crate::Backend::append_kv`] (writes the new tokens at the end
/// of each sequence) and [`crate::Backend::attend`] (reads each sequence's whole length).
///
/// Pages may be shared by several sequences' tables (prefix caching, beam search); every op
/// reads them. Appending into a page another sequence still reads is the caller's duty to
/// avoid ([`KvMetadata::append_conflict`] says whether a batch would; [`KvCache`] refuses it
/// for you; [`KvMetadata::fork`] shares full pages and names the partial one to copy).
#[derive(Debug, Clone)]
pub struct KvMetadata {
    layout: CacheLayout,
    seq_lens: Vec<usize>,
    page_tables: Vec<Vec<u32>>,
    /// Per page, how many sequences' tables hold it (paged; empty otherwise).
    page_refs: Vec<u32>,
    page_table_version: u64,
}

impl KvMetadata {
    /// Empty sequences (`num_seqs`, no pages) for pools of `spec`.
    pub fn new(spec: &KvCacheSpec) -> Result<Self> {
        spec.validate()?;
        let n = spec.num_seqs;
        let pages = match spec.layout {
            CacheLayout::Paged { num_pages, .. } => num_pages,
            CacheLayout::Contiguous { .. } => 0,
        };
        Ok(KvMetadata {
            layout: spec.layout,
            seq_lens: try_vec(n, 0usize, "KV cache sequence lengths")?,
            page_tables: try_vec(n, Vec::new(), "KV cache page tables")?,
            page_refs: try_vec(pages, 0u32, "KV cache page references")?,
            page_table_version: 0,
        })
    }

    /// Contiguous or paged, and its sizes.
    pub fn layout(&self) -> CacheLayout {
        self.layout
    }

    /// Sequences described.
    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    /// Checks that pools of `spec` can be addressed with this metadata (same layout; a
    /// contiguous pool holds a row per sequence).
    pub fn check_pools(&self, spec: &KvCacheSpec) -> Result<()> {
        let ok = match (self.layout, spec.layout) {
            (CacheLayout::Contiguous { capacity: a }, CacheLayout::Contiguous { capacity: b }) => a == b && self.num_seqs() <= spec.num_seqs,
            (a, b) => a == b,
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "KV metadata for a {:?} cache of {} sequences does not address pools of {:?} ({} sequences)",
                self.layout,
                self.num_seqs(),
                spec.layout,
                spec.num_seqs
            )));
        }
        Ok(())
    }

    fn check_seq(&self, seq: usize) -> Result<()> {
        if seq >= self.num_seqs() {
            return Err(Error::InvalidArgument(format!("sequence {seq} is outside the cache ({} sequences)", self.num_seqs())));
        }
        Ok(())
    }

    /// Tokens sequence `seq` holds (0 for an index out of range).
    pub fn seq_len(&self, seq: usize) -> usize {
        self.seq_lens.get(seq).copied().unwrap_or(0)
    }

    /// Tokens each sequence can hold: its capacity (contiguous) or its pages times page size.
    pub fn seq_capacity(&self, seq: usize) -> usize {
        match self.layout {
            CacheLayout::Contiguous { capacity } => capacity,
            CacheLayout::Paged { page_size, .. } => self.page_table(seq).len() * page_size,
        }
    }

    /// The page table of sequence `seq` (empty for contiguous caches).
    pub fn page_table(&self, seq: usize) -> &[u32] {
        self.page_tables.get(seq).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Bumped by every page-table change, so a backend can keep a device copy and refresh it
    /// only when this changes.
    pub fn page_table_version(&self) -> u64 {
        self.page_table_version
    }

    /// Sets the pages of sequence `seq` (paged only). Every page must be in the pool and appear
    /// once in the table, and the table must keep the tokens already stored. A page may also be
    /// in other sequences' tables: they all read it.
    pub fn set_page_table(&mut self, seq: usize, pages: &[u32]) -> Result<()> {
        let CacheLayout::Paged { page_size, num_pages } = self.layout else {
            return Err(Error::InvalidArgument("set_page_table on a contiguous KV cache".into()));
        };
        self.check_seq(seq)?;
        let mut seen = std::collections::HashSet::new();
        for &p in pages {
            if p as usize >= num_pages || !seen.insert(p) {
                return Err(Error::PageTableOutOfRange { seq, page: p as usize, num_pages });
            }
        }
        let len = self.seq_lens[seq];
        if pages.len() * page_size < len {
            return Err(Error::KvCacheOverflow { seq, needed: len, capacity: pages.len() * page_size });
        }
        let mut table = try_vec(0, 0u32, "page table")?;
        table.try_reserve_exact(pages.len()).map_err(|_| Error::OutOfMemory { what: "page table".into(), bytes: 4 * pages.len() })?;
        table.extend_from_slice(pages);
        for &p in &self.page_tables[seq] {
            self.page_refs[p as usize] -= 1;
        }
        for &p in pages {
            self.page_refs[p as usize] += 1;
        }
        self.page_tables[seq] = table;
        self.page_table_version += 1;
        Ok(())
    }

    /// Whether page `page` is in more than one sequence's table.
    pub fn page_shared(&self, page: u32) -> bool {
        self.page_refs.get(page as usize).is_some_and(|&r| r > 1)
    }

    /// Whether page `page` is in any sequence's table.
    pub fn page_in_use(&self, page: u32) -> bool {
        self.page_refs.get(page as usize).is_some_and(|&r| r > 0)
    }

    /// Sets the length of sequence `seq` (the engine owns lengths): at most its capacity.
    pub fn set_seq_len(&mut self, seq: usize, len: usize) -> Result<()> {
        self.check_seq(seq)?;
        if len > self.seq_capacity(seq) {
            return Err(Error::KvCacheOverflow { seq, needed: len, capacity: self.seq_capacity(seq) });
        }
        self.seq_lens[seq] = len;
        Ok(())
    }

    /// Forgets the tokens of sequence `seq` (length back to 0; pages stay assigned).
    pub fn reset(&mut self, seq: usize) -> Result<()> {
        self.check_seq(seq)?;
        self.seq_lens[seq] = 0;
        Ok(())
    }

    /// Drops the tokens of sequence `seq` from position `len` on: speculative decoding's
    /// rollback of rejected draft tokens. The next append writes at `len`; pool contents past a
    /// sequence's length are never read by any op. Growing a sequence this way is an error.
    pub fn truncate(&mut self, seq: usize, len: usize) -> Result<()> {
        self.check_seq(seq)?;
        let cur = self.seq_lens[seq];
        if len > cur {
            return Err(Error::InvalidArgument(format!("truncate sequence {seq} to {len} tokens: it holds {cur} (truncation only drops tokens)")));
        }
        self.seq_lens[seq] = len;
        Ok(())
    }

    /// Grows every sequence of `batch` by its new tokens (`q_lens`), all or none: a sequence
    /// outside the metadata, listed twice, or growing past its capacity is an error and
    /// changes nothing. Call once per step, before the layers' appends.
    pub fn extend(&mut self, batch: &crate::Batch) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (&s, &q) in batch.seq_ids().iter().zip(batch.q_lens()) {
            self.check_seq(s)?;
            if !seen.insert(s) {
                return Err(Error::InvalidArgument(format!("sequence {s} appears twice in the batch")));
            }
            let need = self.seq_lens[s] + q;
            if need > self.seq_capacity(s) {
                return Err(Error::KvCacheOverflow { seq: s, needed: need, capacity: self.seq_capacity(s) });
            }
        }
        for (&s, &q) in batch.seq_ids().iter().zip(batch.q_lens()) {
            self.seq_lens[s] += q;
        }
        Ok(())
    }

    /// The first page of `batch`'s appended tokens (the last `q_lens[i]` of each sequence)
    /// that another sequence also reads, if any: `(seq, page)`.
    pub fn append_conflict(&self, batch: &crate::Batch) -> Option<(usize, u32)> {
        let CacheLayout::Paged { page_size, .. } = self.layout else {
            return None;
        };
        for (&s, &q) in batch.seq_ids().iter().zip(batch.q_lens()) {
            let len = self.seq_len(s);
            let table = self.page_table(s);
            let (first, end) = (len.saturating_sub(q) / page_size, len.div_ceil(page_size).min(table.len()));
            if let Some(&p) = table.get(first..end).unwrap_or(&[]).iter().find(|&&p| self.page_shared(p)) {
                return Some((s, p));
            }
        }
        None
    }

    /// Forks sequence `src` into the empty sequence `dst` (paged): `dst` shares `src`'s full
    /// pages and gets `spare_page` for a copy of the last partial one; returns `(from, to)`, the
    /// page copy the caller must make in every layer's pools
    /// ([`crate::Backend::copy_kv_pages`]), or `None` when `src` ends on a page boundary.
    pub fn fork(&mut self, src: usize, dst: usize, spare_page: Option<u32>) -> Result<Option<(u32, u32)>> {
        let CacheLayout::Paged { page_size, num_pages } = self.layout else {
            return Err(Error::InvalidArgument("fork_sequence needs a paged KV cache (a contiguous one has no pages to share)".into()));
        };
        let n = self.num_seqs();
        if src >= n || dst >= n || src == dst {
            return Err(Error::InvalidArgument(format!("fork of sequence {src} into {dst}: both must be distinct sequences of the cache ({n})")));
        }
        if self.seq_len(dst) != 0 {
            return Err(Error::InvalidArgument(format!("fork into sequence {dst}: it holds {} tokens (reset it first)", self.seq_len(dst))));
        }
        let len = self.seq_len(src);
        let (full, partial) = (len / page_size, !len.is_multiple_of(page_size));
        let mut table: Vec<u32> = self.page_table(src)[..full].to_vec();
        let mut copy = None;
        if partial {
            let Some(spare) = spare_page else {
                return Err(Error::InvalidArgument(format!(
                    "fork of sequence {src} ({len} tokens, pages of {page_size}): its last page is partial, so a spare page is needed for the copy"
                )));
            };
            if spare as usize >= num_pages || self.page_in_use(spare) {
                return Err(Error::PageTableOutOfRange { seq: dst, page: spare as usize, num_pages });
            }
            copy = Some((self.page_table(src)[full], spare));
            table.push(spare);
        }
        self.set_page_table(dst, &table)?;
        self.seq_lens[dst] = len;
        Ok(copy)
    }

    /// Pool slot (row of `[slots, kv_heads, head_dim]`) of token `t` of sequence `seq`; `t` must
    /// be below [`KvMetadata::seq_capacity`].
    pub fn slot(&self, seq: usize, t: usize) -> usize {
        match self.layout {
            CacheLayout::Contiguous { capacity } => seq * capacity + t,
            CacheLayout::Paged { page_size, .. } => self.page_tables[seq][t / page_size] as usize * page_size + t % page_size,
        }
    }
}

/// A KV cache on a backend's device: [`KvPools`] and the [`KvMetadata`] that addresses them,
/// the convenience type for callers that do not manage pages themselves. Created by
/// [`crate::Backend::create_kv_cache`]. Lengths grow only through appends
/// ([`crate::Backend::kv_append`], [`crate::Backend::rope_append_attend`]) and forks
/// ([`crate::Backend::fork_sequence`]), and shrink through [`KvCache::truncate`] and
/// [`KvCache::reset`]; an append into a page another sequence reads is refused. Every op runs
/// through the same code as the engine path ([`crate::Backend::append_kv`],
/// [`crate::Backend::attend`]) on the parts.
#[derive(Debug)]
pub struct KvCache {
    pools: KvPools,
    meta: KvMetadata,
}

impl KvCache {
    /// A cache over `pools` with empty sequences.
    pub fn new(pools: KvPools) -> Result<Self> {
        let meta = KvMetadata::new(pools.spec())?;
        Ok(KvCache { pools, meta })
    }

    /// Checks the storage again (ops call this before every use).
    pub fn check_storage(&self) -> Result<()> {
        self.pools.check_storage()
    }

    /// The spec it was created from.
    pub fn spec(&self) -> &KvCacheSpec {
        self.pools.spec()
    }

    /// The device its pools live on.
    pub fn device(&self) -> Device {
        self.pools.device()
    }

    /// The pools.
    pub fn pools(&self) -> &KvPools {
        &self.pools
    }

    /// The metadata (lengths, page tables).
    pub fn metadata(&self) -> &KvMetadata {
        &self.meta
    }

    /// Pools (writable) and metadata, borrowed apart.
    pub fn parts_mut(&mut self) -> (&mut KvPools, &mut KvMetadata) {
        (&mut self.pools, &mut self.meta)
    }

    /// Tokens currently held by sequence `seq` (0 for an index out of range).
    pub fn seq_len(&self, seq: usize) -> usize {
        self.meta.seq_len(seq)
    }

    /// Tokens each sequence can hold: its capacity (contiguous) or its pages times page size.
    pub fn seq_capacity(&self, seq: usize) -> usize {
        self.meta.seq_capacity(seq)
    }

    /// The page table of sequence `seq` (empty for contiguous caches).
    pub fn page_table(&self, seq: usize) -> &[u32] {
        self.meta.page_table(seq)
    }

    /// See [`KvMetadata::page_table_version`].
    pub fn page_table_version(&self) -> u64 {
        self.meta.page_table_version()
    }

    /// Sets the pages of sequence `seq` (see [`KvMetadata::set_page_table`]). Appends into a
    /// page that is in several tables are refused (fork with
    /// [`crate::Backend::fork_sequence`], which copies the last partial page).
    pub fn set_page_table(&mut self, seq: usize, pages: &[u32]) -> Result<()> {
        self.meta.set_page_table(seq, pages)
    }

    /// Whether page `page` is in more than one sequence's table.
    pub fn page_shared(&self, page: u32) -> bool {
        self.meta.page_shared(page)
    }

    /// Whether page `page` is in any sequence's table.
    pub fn page_in_use(&self, page: u32) -> bool {
        self.meta.page_in_use(page)
    }

    /// Forgets the tokens of sequence `seq` (length back to 0; pages stay assigned).
    pub fn reset(&mut self, seq: usize) -> Result<()> {
        self.meta.reset(seq)
    }

    /// Element offset in a pool of token `t`, head `h`, dim 0 of sequence `seq`. `t` must be
    /// below [`KvCache::seq_capacity`].
    pub fn slot_offset(&self, seq: usize, t: usize, h: usize) -> usize {
        let spec = self.pools.spec();
        (self.meta.slot(seq, t) * spec.num_kv_heads + h) * spec.head_dim
    }

    /// See [`KvMetadata::truncate`].
    pub fn truncate(&mut self, seq: usize, len: usize) -> Result<()> {
        self.meta.truncate(seq, len)
    }
}

/// Host copy of a cache's K and V pools in the physical layout of the module docs, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct KvPool {
    /// K pool.
    pub k: Vec<f32>,
    /// V pool.
    pub v: Vec<f32>,
}

/// One sequence's cached tokens in canonical form: K and V each `[seq_len, num_kv_heads, head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedSeq {
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

/// The checks both pools (and both scale tensors) pass: on `device`, of `dtype` and `shape`,
/// dense, storage long enough, and not overlapping each other (`both` names the pair).
fn check_pair(device: Device, dtype: DType, shape: &[usize], a: (&str, &Tensor), b: (&str, &Tensor), both: &str) -> Result<()> {
    for (what, t) in [a, b] {
        if t.device() != device {
            return Err(Error::WrongDevice { what: what.into(), backend: "KV pools".into(), expected: device, got: t.device() });
        }
        if t.dtype() != dtype {
            return Err(Error::DtypeMismatch { what: what.into(), expected: dtype, got: t.dtype() });
        }
        if t.shape() != shape {
            return Err(Error::shape(what, shape, t.shape()));
        }
        if !t.is_contiguous() {
            return Err(Error::InvalidArgument(format!("{what} must be dense (row stride {}, rows of {})", t.row_stride(), t.row_len())));
        }
        t.check_storage(what)?;
    }
    if a.1.overlaps(b.1) {
        return Err(Error::InvalidArgument(format!("the {both} overlap")));
    }
    Ok(())
}
