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

use crate::tensor::check_storage;
use crate::{try_vec, DType, Device, Error, Result, Storage};

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
    /// Element type of K and V.
    pub dtype: DType,
    /// Contiguous or paged.
    pub layout: CacheLayout,
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
        match self.layout {
            CacheLayout::Contiguous { capacity: 0 } => {
                Err(Error::InvalidArgument("contiguous KV cache with capacity 0".into()))
            }
            CacheLayout::Paged { page_size, num_pages } if page_size == 0 || num_pages == 0 => Err(
                Error::InvalidArgument(format!("paged KV cache needs page_size and num_pages > 0, got {page_size} and {num_pages}")),
            ),
            _ => {
                let bytes = self.pool_shape().iter().try_fold(self.dtype.size(), |a, &d| a.checked_mul(d));
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
        self.pool_len() * self.dtype.size()
    }

    /// Token slots in a pool: `num_seqs * capacity` (contiguous) or `num_pages * page_size`.
    pub fn pool_slots(&self) -> usize {
        let s = self.pool_shape();
        s[0] * s[1]
    }
}

/// A KV cache on a backend's device: K and V pools (backend storage) plus host-side metadata
/// (sequence lengths, page tables). Created by [`crate::Backend::create_kv_cache`]. Lengths
/// grow only through appends ([`crate::Backend::kv_append`],
/// [`crate::Backend::rope_append_attend`]) and forks ([`crate::Backend::fork_sequence`]), and
/// shrink through [`KvCache::truncate`] and [`KvCache::reset`].
#[derive(Debug)]
pub struct KvCache {
    spec: KvCacheSpec,
    device: Device,
    seq_lens: Vec<usize>,
    page_tables: Vec<Vec<u32>>,
    /// Per page, how many sequences' tables hold it (paged caches; empty otherwise).
    page_refs: Vec<u32>,
    page_table_version: u64,
    storage: Box<dyn Storage>,
}

impl KvCache {
    /// Wraps backend storage holding both pools (for backend implementors). Errors when the
    /// spec is invalid, when the storage holds fewer bytes than a pool of the spec
    /// ([`Error::StorageTooSmall`]) or another dtype, or when the per-sequence metadata cannot
    /// be allocated ([`Error::OutOfMemory`]).
    pub fn from_storage(spec: KvCacheSpec, device: Device, storage: Box<dyn Storage>) -> Result<Self> {
        spec.validate()?;
        check_storage("KV cache pools", storage.as_ref(), spec.pool_bytes(), spec.dtype)?;
        let n = spec.num_seqs;
        let seq_lens = try_vec(n, 0usize, "KV cache sequence lengths")?;
        let page_tables = try_vec(n, Vec::new(), "KV cache page tables")?;
        let pages = match spec.layout {
            CacheLayout::Paged { num_pages, .. } => num_pages,
            CacheLayout::Contiguous { .. } => 0,
        };
        let page_refs = try_vec(pages, 0u32, "KV cache page references")?;
        Ok(KvCache { spec, device, seq_lens, page_tables, page_refs, page_table_version: 0, storage })
    }

    /// Checks the storage against the spec again (ops call this before every use).
    pub fn check_storage(&self) -> Result<()> {
        check_storage("KV cache pools", self.storage.as_ref(), self.spec.pool_bytes(), self.spec.dtype)
    }

    /// The spec it was created from.
    pub fn spec(&self) -> &KvCacheSpec {
        &self.spec
    }

    /// The device its pools live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Tokens currently held by sequence `seq` (0 for an index out of range).
    pub fn seq_len(&self, seq: usize) -> usize {
        self.seq_lens.get(seq).copied().unwrap_or(0)
    }

    /// Tokens each sequence can hold: its capacity (contiguous) or its pages times page size.
    pub fn seq_capacity(&self, seq: usize) -> usize {
        match self.spec.layout {
            CacheLayout::Contiguous { capacity } => capacity,
            CacheLayout::Paged { page_size, .. } => self.page_table(seq).len() * page_size,
        }
    }

    /// The page table of sequence `seq` (empty for contiguous caches).
    pub fn page_table(&self, seq: usize) -> &[u32] {
        self.page_tables.get(seq).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Bumped by every page-table change, so a GPU backend can keep a device copy and refresh it
    /// only when this changes.
    pub fn page_table_version(&self) -> u64 {
        self.page_table_version
    }

    /// Sets the pages of sequence `seq` (paged caches only). Every page must be in the pool and
    /// appear once in the table, and the table must keep the tokens already stored. A page may
    /// also be in other sequences' tables (prefix caching, beam search): they all read it, and
    /// appends into a shared page are refused (fork with
    /// [`crate::Backend::fork_sequence`], which copies the last partial page).
    pub fn set_page_table(&mut self, seq: usize, pages: &[u32]) -> Result<()> {
        let CacheLayout::Paged { page_size, num_pages } = self.spec.layout else {
            return Err(Error::InvalidArgument("set_page_table on a contiguous KV cache".into()));
        };
        if seq >= self.spec.num_seqs {
            return Err(Error::InvalidArgument(format!("sequence {seq} is outside the cache ({} sequences)", self.spec.num_seqs)));
        }
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

    /// Forgets the tokens of sequence `seq` (length back to 0; pages stay assigned).
    pub fn reset(&mut self, seq: usize) -> Result<()> {
        match self.seq_lens.get_mut(seq) {
            Some(l) => {
                *l = 0;
                Ok(())
            }
            None => Err(Error::InvalidArgument(format!("sequence {seq} is outside the cache ({} sequences)", self.spec.num_seqs))),
        }
    }

    /// Element offset in a pool of token `t`, head `h`, dim 0 of sequence `seq`. `t` must be
    /// below [`KvCache::seq_capacity`].
    pub fn slot_offset(&self, seq: usize, t: usize, h: usize) -> usize {
        let (hk, d) = (self.spec.num_kv_heads, self.spec.head_dim);
        let slot = match self.spec.layout {
            CacheLayout::Contiguous { capacity } => seq * capacity + t,
            CacheLayout::Paged { page_size, .. } => self.page_tables[seq][t / page_size] as usize * page_size + t % page_size,
        };
        (slot * hk + h) * d
    }

    /// The backend's storage, for downcasting by the backend that made it.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The backend's storage, mutably.
    pub fn storage_mut(&mut self) -> &mut dyn Storage {
        self.storage.as_mut()
    }

    /// Drops the tokens of sequence `seq` from position `len` on: speculative decoding's
    /// rollback of rejected draft tokens. The next append writes at `len`; pool contents past a
    /// sequence's length are never read by any op. Growing a sequence this way is an error
    /// (append instead), as is a sequence outside the cache.
    pub fn truncate(&mut self, seq: usize, len: usize) -> Result<()> {
        let n = self.spec.num_seqs;
        let cur = *self.seq_lens.get(seq).ok_or_else(|| Error::InvalidArgument(format!("sequence {seq} is outside the cache ({n} sequences)")))?;
        if len > cur {
            return Err(Error::InvalidArgument(format!("truncate sequence {seq} to {len} tokens: it holds {cur} (truncation only drops tokens)")));
        }
        self.seq_lens[seq] = len;
        Ok(())
    }

    pub(crate) fn set_seq_len(&mut self, seq: usize, len: usize) {
        self.seq_lens[seq] = len;
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
