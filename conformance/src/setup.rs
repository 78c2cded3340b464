//! Building one case's inputs on a backend: tensors, positions, caches with random page tables.

use backend_api::{Backend, Batch, DType, KvCache, KvCacheSpec, Result, Tensor};

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
    /// Position id per prefix token.
    pub pos_prefix: Vec<u32>,
    /// Position id per new token.
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
        let pool = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: hk, head_dim: d, dtype: case.dtype, layout }.pool_len();
        let mut page_tables = Vec::new();
        if let backend_api::CacheLayout::Paged { page_size, num_pages } = layout {
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
            pos_prefix: positions(&mut rng, tp, case.rope.max_position),
            pos: positions(&mut rng, tn, case.rope.max_position),
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
    let spec = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: case.kv_heads, head_dim: case.head_dim(), dtype: case.dtype, layout: case.layout() };
    let mut c = be.create_kv_cache(&spec)?;
    for (s, t) in data.page_tables.iter().enumerate() {
        c.set_page_table(s, t)?;
    }
    be.write_kv_pool(&mut c, &backend_api::KvPool { k: data.sentinel_k.clone(), v: data.sentinel_v.clone() })?;
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
