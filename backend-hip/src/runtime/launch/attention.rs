//! Attention launches (kernels/attention*.hip, separate.hip): the per-call metadata (query
//! offsets, key lengths, where each entry's K/V rows are, the prefill tile list) is built here
//! from typed host input, checked against the views, uploaded, and the kernels the plan chose
//! are launched (with the split-K merge, or hip-separate's three kernels).

use attnforge_api::{try_vec, DType, Error, Result};

use super::rope::RopeTable;
use super::{bytes_of, i32_of, need_meta, need_mut, need_ref, span_bytes, Strided};
use crate::contract::{
    AttnParams, InKernelRope, Kernel, MergeParams, SepParams, WgParams, HEAD_DIM_MULTIPLE, WG_BM, WG_BN, MERGE_THREADS, MMA_DC_MAX_STAGES, SEP_DMAX, SEP_SOFTMAX_THREADS, SEP_THREADS, WIDE_DMAX,
    WIDE_THREADS,
};
use crate::runtime::{DevMut, DevRef, Gpu, MetaRef};

/// The attention kernels a plan chose, and their launch shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttnLaunch {
    /// Tiled prefill (vector units or matrix cores): one block per (tile of `tile_rows` queries,
    /// head), tiles heaviest first.
    Tiled { kernel: Kernel, tile_rows: usize, block: usize, shared: usize },
    /// Split-K decode: one block per (entry, kv head, split, chunk of `rows_per_block` rows),
    /// partials merged by `merge` when `splits > 1`. `stages`: the matrix-core decode's K/V
    /// pipeline depth. `max_keys_per_split`: the vector decode keeps a split's logits in
    /// shared memory, so no split may hold more.
    Decode { kernel: Kernel, rows_per_block: usize, splits: usize, stages: usize, block: usize, shared: usize, max_keys_per_split: Option<usize>, merge: Kernel },
    /// Head dims past the tiled kernels: one block per (query row, head).
    Wide { kernel: Kernel },
    /// hip-separate: scores, softmax, P.V over a score buffer.
    Separate { scores: Kernel, softmax: Kernel, pv: Kernel },
}

/// Where each batch entry's K/V rows are.
#[derive(Debug, Clone)]
pub(crate) enum KvAddressing<'a> {
    /// Entry `b`'s token `t` is row `base[b] + t`.
    Rows(&'a [usize]),
    /// Entry `b`'s token `t` is row `tables[b][t / page_size] * page_size + t % page_size`.
    Pages { page_size: usize, tables: Vec<&'a [u32]> },
}

/// The keys and values attended over: `[rows, kv_heads, head_dim]` arrays (a pool or plain K/V).
#[derive(Debug)]
pub(crate) struct KvSource<'a> {
    /// K rows, `stride` elements apart (a pool: `kv_heads * head_dim`).
    pub k: Strided<DevRef<'a>>,
    pub v: Strided<DevRef<'a>>,
    pub rows: usize,
    pub kv_heads: usize,
    pub at: KvAddressing<'a>,
    /// FP8 pools: the K and V scales, f32 `[kv_heads]` (K and V hold e4m3).
    pub scales: Option<(DevRef<'a>, DevRef<'a>)>,
}

/// RoPE inside attention.
#[derive(Debug)]
pub(crate) struct AttnRope<'a> {
    /// Position of each query row (None: queries as given).
    pub q_pos: Option<MetaRef<'a>>,
    /// int32 per K/V row: the position of an unrotated key (None: keys as given).
    pub k_pos: Option<DevRef<'a>>,
    pub table: RopeTable<'a>,
    pub interleaved: bool,
    /// M-RoPE's sections for the queries: `q_pos` is `[3, total_q]`. None: one per query.
    pub mrope: Option<[usize; 3]>,
}

/// One attention call.
#[derive(Debug)]
pub(crate) struct AttnCall<'a> {
    pub dtype: DType,
    pub heads: usize,
    pub head_dim: usize,
    /// `[sum q_lens, heads, head_dim]`, tokens `stride` apart.
    pub q: Strided<DevRef<'a>>,
    /// Same shape; fully written (only its rows).
    pub out: Strided<DevMut<'a>>,
    pub q_lens: &'a [usize],
    pub kv_lens: &'a [usize],
    pub kv: KvSource<'a>,
    pub causal: bool,
    pub scale: f32,
    /// Logit soft-cap (0: none).
    pub softcap: f32,
    /// Sliding window in keys (0: none; causal only).
    pub window: usize,
    /// Attention sinks, f32 `[heads]` (None: none).
    pub sinks: Option<DevRef<'a>>,
    /// Each row's log-sum-exp, f32 `[total_q, heads]` (None: not written).
    pub lse: Option<DevMut<'a>>,
    pub rope: Option<AttnRope<'a>>,
}

/// Whether `k` rotates queries or keys inside (and so reads the RoPE fields).
fn rotates(k: Kernel) -> bool {
    match k {
        Kernel::Prefill { rope, .. } | Kernel::Wide { rope, .. } => rope,
        Kernel::Decode { rope, .. } => rope != InKernelRope::None,
        Kernel::MmaPrefill { qrope, .. } | Kernel::MmaDecode { qrope, .. } => qrope,
        _ => false,
    }
}

/// Whether `k` reads FP8 e4m3 K/V (and the scales).
fn fp8_kernel(k: Kernel) -> bool {
    matches!(k, Kernel::MmaPrefill { fp8: true, .. } | Kernel::MmaDecode { fp8: true, .. })
}

/// The head dims the kernel serves: (largest, exact, multiple of).
fn head_dims(k: Kernel) -> Result<(usize, bool, usize)> {
    Ok(match k {
        Kernel::Prefill { dim, .. } | Kernel::Decode { dim, .. } => (dim as usize, false, HEAD_DIM_MULTIPLE),
        Kernel::MmaPrefill { dim, .. } | Kernel::MmaDecode { dim, .. } | Kernel::WgPrefill { dim, .. } => (dim as usize, true, HEAD_DIM_MULTIPLE),
        Kernel::Wide { .. } => (WIDE_DMAX, false, HEAD_DIM_MULTIPLE),
        Kernel::Scores { .. } => (SEP_DMAX, false, 2),
        other => return Err(Error::Device { code: -1, message: format!("{} is not an attention kernel", other.symbol()) }),
    })
}

/// The host side of an attention call: the metadata the kernels read (checked against the
/// call's shape) and what the launch needs to know of it. Built once per call (eager ops) or
/// once per plan and step (`plan::GpuPlan`, whose launches reuse it for every layer).
#[derive(Debug, Clone)]
pub(crate) struct AttnHost {
    /// Int32 metadata: q_off `[B + 1]`, kv_len `[B]`, kv_base `[B]`, block_table
    /// `[B x max_pages]`, tiles.
    pub parts: [Vec<i32>; 5],
    /// hip-separate: row_entry (int32 per query row), then s_off (u64 per entry) at `sep_at`.
    pub sep: Vec<u8>,
    pub sep_at: usize,
    /// Scratch bytes: split-K partials or hip-separate's scores (0: none).
    pub scratch: usize,
    /// Split-K decode: bytes of the zeroed int32 counters (one per (entry, kv head, row
    /// chunk)) with which the last split merges inside the decode kernel (0: no decode splits).
    pub counters: usize,
    pub entries: usize,
    pub total_q: usize,
    pub max_q: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub kv_heads: usize,
    /// K/V rows addressed (pool slots or plain rows).
    pub rows: usize,
    pub page_size: usize,
    pub max_pages: usize,
}

/// What [`prepare`] needs: the call's shape without its memory.
#[derive(Debug)]
pub(crate) struct AttnShape<'a> {
    pub heads: usize,
    pub head_dim: usize,
    pub kv_heads: usize,
    pub rows: usize,
    pub q_lens: &'a [usize],
    pub kv_lens: &'a [usize],
    pub at: &'a KvAddressing<'a>,
    pub causal: bool,
    /// Sliding window in keys (0: none).
    pub window: usize,
    /// The plan's bucket: the longest sequence later steps may have (sizes the page-table
    /// width and the score buffer; the split count is the launch's). None: this call's.
    pub bucket: Option<usize>,
}

/// Checks the call's shape against the kernel and builds its metadata.
pub(crate) fn prepare(l: &AttnLaunch, c: &AttnShape<'_>) -> Result<AttnHost> {
    let b = c.q_lens.len();
    let d = c.head_dim;
    let (dmax, exact, multiple) = head_dims(main_kernel(l))?;
    if d == 0 || !d.is_multiple_of(multiple) || d > dmax || (exact && d != dmax) {
        return Err(Error::InvalidArgument(format!("{}: head_dim {d} is not one this kernel serves", main_kernel(l).symbol())));
    }
    if b == 0 || c.kv_lens.len() != b || c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) {
        return Err(Error::InvalidArgument(format!("attention: {b} query lengths, {} key lengths, {} heads over {} kv heads", c.kv_lens.len(), c.heads, c.kv_heads)));
    }
    let total_q: usize = c.q_lens.iter().try_fold(0usize, |a, &x| a.checked_add(x)).ok_or_else(|| Error::InvalidArgument("query rows overflow".into()))?;
    i32_of(total_q, "query rows")?;
    i32_of(c.rows, "K/V rows")?;
    i32_of(c.heads * d, "heads x head_dim")?;
    let mut q_off = Vec::with_capacity(b + 1);
    q_off.push(0i32);
    let mut acc = 0usize;
    for (&ql, &kl) in c.q_lens.iter().zip(c.kv_lens) {
        // Causal rows see keys up to kl - ql + row: more queries than keys only without the mask
        // (cross-attention); every kernel takes kl as the visible count then.
        if ql == 0 || kl == 0 || (c.causal && ql > kl) || (c.window > 0 && !c.causal) {
            return Err(Error::InvalidArgument(format!("attention: q_len {ql} over kv_len {kl}{}", if c.causal { " (causal)" } else { "" })));
        }
        acc += ql;
        q_off.push(i32_of(acc, "query rows")?);
    }
    let max_q = c.q_lens.iter().copied().max().unwrap_or(0);
    let max_kv = c.kv_lens.iter().copied().max().unwrap_or(0);
    i32_of(c.window, "sliding window")?;
    let bucket = match c.bucket {
        Some(m) if m < max_kv => return Err(Error::InvalidArgument(format!("attention: {max_kv} keys past the plan's bucket of {m}"))),
        Some(m) => m,
        None => max_kv,
    };
    let kv_len: Vec<i32> = c.kv_lens.iter().map(|&n| i32_of(n, "kv_len")).collect::<Result<_>>()?;
    let mut kv_base = vec![0i32; b];
    let mut table: Vec<i32> = Vec::new();
    let (page_size, max_pages) = match c.at {
        KvAddressing::Rows(base) => {
            if base.len() != b {
                return Err(Error::InvalidArgument(format!("attention: {} row bases for {b} entries", base.len())));
            }
            for (i, (&r, &n)) in base.iter().zip(c.kv_lens).enumerate() {
                if r.checked_add(n).is_none_or(|end| end > c.rows) {
                    return Err(Error::InvalidArgument(format!("attention: entry {i}'s keys {r}..{} run past the {} K/V rows", r.saturating_add(n), c.rows)));
                }
                kv_base[i] = r as i32;
            }
            (0, 0)
        }
        KvAddressing::Pages { page_size: ps, tables } => {
            let ps = *ps;
            if ps == 0 || tables.len() != b || !c.rows.is_multiple_of(ps) {
                return Err(Error::InvalidArgument(format!("attention: page size {ps}, {} page tables for {b} entries, {} rows", tables.len(), c.rows)));
            }
            let pages = c.rows / ps;
            // The kernels read a sequence's first ceil(kv_len / page_size) pages: the table is
            // as wide as the bucket's longest sequence needs.
            let width = bucket.div_ceil(ps).max(1);
            table = try_vec(b * width, 0i32, "page tables")?;
            for (i, (t, &n)) in tables.iter().zip(c.kv_lens).enumerate() {
                let used = n.div_ceil(ps);
                if used > t.len() {
                    return Err(Error::InvalidArgument(format!("attention: entry {i} has {n} keys, its page table {} pages of {ps}", t.len())));
                }
                if let Some(&p) = t[..used].iter().find(|&&p| p as usize >= pages) {
                    return Err(Error::PageTableOutOfRange { seq: i, page: p as usize, num_pages: pages });
                }
                for (j, &p) in t[..used].iter().enumerate() {
                    table[i * width + j] = p as i32;
                }
            }
            (i32_of(ps, "page size")? as usize, width)
        }
    };
    let mut tiles: Vec<i32> = Vec::new();
    let (mut sep, mut sep_at, mut scratch, mut counters) = (Vec::new(), 0, 0, 0);
    match l {
        AttnLaunch::Tiled { tile_rows, .. } => {
            let rows = *tile_rows;
            // (entry, first row), heaviest first: a causal tile's keys grow with its rows, and
            // blocks start in list order, so the long ones do not trail at the end.
            let mut list: Vec<(usize, usize)> = Vec::new();
            for (i, &n) in c.q_lens.iter().enumerate() {
                list.extend((0..n).step_by(rows.max(1)).map(|q0| (i, q0)));
            }
            let keys = |&(i, q0): &(usize, usize)| {
                if c.causal {
                    let end = (c.kv_lens[i] + (q0 + rows).min(c.q_lens[i])).saturating_sub(c.q_lens[i]);
                    // A sliding window starts at the first row's window.
                    let first = if c.window > 0 { (c.kv_lens[i] + q0 + 1).saturating_sub(c.q_lens[i] + c.window) } else { 0 };
                    end - first.min(end)
                } else {
                    c.kv_lens[i]
                }
            };
            list.sort_by_key(|t| std::cmp::Reverse(keys(t)));
            tiles = list.into_iter().flat_map(|(i, q0)| [i as i32, q0 as i32]).collect();
        }
        AttnLaunch::Wide { .. } => {
            for (i, &n) in c.q_lens.iter().enumerate() {
                tiles.extend(std::iter::repeat_n(i as i32, n));
            }
        }
        AttnLaunch::Decode { splits, max_keys_per_split, rows_per_block, stages, .. } => {
            if *rows_per_block == 0 || *splits == 0 || !(1..=MMA_DC_MAX_STAGES).contains(stages) {
                return Err(Error::InvalidArgument(format!("decode launch with {rows_per_block} rows, {splits} splits, {stages} stages")));
            }
            if let Some(most) = max_keys_per_split {
                // A block's keys: the bucket, or under a sliding window the window and the
                // block's other queries.
                let span = if c.window > 0 { bucket.min(c.window + max_q - 1) } else { bucket };
                if span.div_ceil((*splits).max(1)) > *most {
                    return Err(Error::InvalidArgument(format!("decode: {splits} splits of {span} keys exceed {most} keys per split")));
                }
            }
            if *splits > 1 {
                scratch = bytes_of("split-K partials", &[total_q * c.heads, *splits, d + 2], 4)?;
                let chunks = (c.heads / c.kv_heads * max_q).div_ceil(*rows_per_block);
                counters = bytes_of("split-K counters", &[b, c.kv_heads, chunks], 4)?;
            }
        }
        AttnLaunch::Separate { .. } => {
            // Scores of entry b: [q_len, H, kv_len] f32 from s_off[b]; the buffer holds the
            // bucket's longest.
            let mut row_entry: Vec<i32> = Vec::with_capacity(total_q);
            let mut s_off: Vec<u8> = Vec::with_capacity(8 * b);
            let mut total = 0usize;
            for (i, (&ql, &kl)) in c.q_lens.iter().zip(c.kv_lens).enumerate() {
                row_entry.extend(std::iter::repeat_n(i as i32, ql));
                s_off.extend_from_slice(&(total as u64).to_le_bytes());
                total = total.checked_add(ql * c.heads * kl).ok_or_else(|| Error::InvalidArgument("score buffer size overflows".into()))?;
            }
            let most = c.q_lens.iter().try_fold(0usize, |a, &ql| a.checked_add(ql.checked_mul(c.heads)?.checked_mul(bucket)?));
            scratch = most.and_then(|x| x.checked_mul(4)).ok_or_else(|| Error::InvalidArgument("score buffer size overflows".into()))?;
            sep = bytemuck::cast_slice(&row_entry).to_vec();
            sep_at = sep.len().next_multiple_of(8);
            sep.resize(sep_at, 0);
            sep.extend_from_slice(&s_off);
        }
    }
    Ok(AttnHost {
        parts: [q_off, kv_len, kv_base, table, tiles],
        sep,
        sep_at,
        scratch,
        counters,
        entries: b,
        total_q,
        max_q,
        heads: c.heads,
        head_dim: d,
        kv_heads: c.kv_heads,
        rows: c.rows,
        page_size,
        max_pages,
    })
}

/// The memory of an attention launch.
#[derive(Debug)]
pub(crate) struct AttnViews<'a> {
    /// `[total_q, heads, head_dim]`, tokens `stride` apart.
    pub q: Strided<DevRef<'a>>,
    /// Same shape; fully written (only its rows).
    pub out: Strided<DevMut<'a>>,
    /// K and V rows, `stride` elements apart.
    pub k: Strided<DevRef<'a>>,
    pub v: Strided<DevRef<'a>>,
    pub dtype: DType,
    pub scale: f32,
    /// Logit soft-cap (0: none).
    pub softcap: f32,
    pub causal: bool,
    /// Sliding window in keys (0: none).
    pub window: usize,
    /// Attention sinks, f32 `[heads]` (None: none).
    pub sinks: Option<DevRef<'a>>,
    /// Each row's log-sum-exp, f32 `[total_q, heads]` (None: not written).
    pub lse: Option<DevMut<'a>>,
    pub rope: Option<AttnRope<'a>>,
    /// FP8 pools: the K and V scales, f32 `[kv_heads]` (K and V hold e4m3; an `_e4m3` kernel).
    pub kv_scales: Option<(DevRef<'a>, DevRef<'a>)>,
}

/// [`AttnHost`] on the device: its metadata parts, scratch and hip-separate's row table; with
/// `counters` (zeroed, `AttnHost::counters` bytes; every launch leaves them zeroed) a split-K
/// decode merges inside its kernel, without them `attn_merge` runs after it.
#[derive(Debug)]
pub(crate) struct AttnDevice<'a> {
    pub meta: [MetaRef<'a>; 5],
    pub scratch: Option<DevMut<'a>>,
    pub sep: Option<DevRef<'a>>,
    pub counters: Option<DevMut<'a>>,
}

/// Checks the call against the views, builds and uploads its metadata, launches (the eager
/// path: metadata and scratch per call).
pub(crate) fn attention(gpu: &Gpu, l: &AttnLaunch, c: AttnCall<'_>) -> Result<()> {
    let shape = AttnShape { heads: c.heads, head_dim: c.head_dim, kv_heads: c.kv.kv_heads, rows: c.kv.rows, q_lens: c.q_lens, kv_lens: c.kv_lens, at: &c.kv.at, causal: c.causal, window: c.window, bucket: None };
    let host = prepare(l, &shape)?;
    let [a, b, cc, d, e] = &host.parts;
    let meta = gpu.upload_meta(&[a, b, cc, d, e])?;
    let mut scratch = if host.scratch > 0 { Some(gpu.alloc_uninit(host.scratch)?) } else { None };
    let sep = if host.sep.is_empty() { None } else { Some(gpu.upload(&host.sep)?) };
    let views = AttnViews { q: c.q, out: c.out, k: c.kv.k, v: c.kv.v, dtype: c.dtype, scale: c.scale, softcap: c.softcap, causal: c.causal, window: c.window, sinks: c.sinks, lse: c.lse, rope: c.rope, kv_scales: c.kv.scales };
    // Eager: the merge runs as its own kernel (no counters to zero per call).
    let dev = AttnDevice { meta: [meta.part(0), meta.part(1), meta.part(2), meta.part(3), meta.part(4)], scratch: scratch.as_mut().map(|s| s.view_mut()), sep: sep.as_ref().map(|s| s.view()), counters: None };
    // Scratch and metadata are freed stream-ordered, after the launches.
    launch(gpu, l, &host, views, dev)
}

fn main_kernel(l: &AttnLaunch) -> Kernel {
    match l {
        AttnLaunch::Tiled { kernel, .. } | AttnLaunch::Decode { kernel, .. } | AttnLaunch::Wide { kernel } => *kernel,
        AttnLaunch::Separate { scores, .. } => *scores,
    }
}

/// Checks the views and the device metadata against `host` (which [`prepare`] checked against
/// the kernel) and launches: no allocation, no copy.
pub(crate) fn launch(gpu: &Gpu, l: &AttnLaunch, h: &AttnHost, c: AttnViews<'_>, m: AttnDevice<'_>) -> Result<()> {
    let (b, d, es, total_q) = (h.entries, h.head_dim, c.dtype.size(), h.total_q);
    let main = main_kernel(l);
    // A rotating kernel may run without RoPE (its fields stay null); a plain one would ignore it.
    if c.rope.is_some() && !rotates(main) {
        return Err(Error::Device { code: -1, message: format!("{} does not rotate; RoPE inside attention was asked for", main.symbol()) });
    }
    bytes_of("q", &[total_q, h.heads, d], es)?;
    need_ref(gpu, "q", &c.q.mem, span_bytes("q", total_q, h.heads * d, c.q.stride, es)?)?;
    need_mut(gpu, "out", &c.out.mem, span_bytes("out", total_q, h.heads * d, c.out.stride, es)?)?;
    // K and V: e4m3 for the kernels over FP8 pools, which take the scales.
    if fp8_kernel(main) != c.kv_scales.is_some() {
        return Err(Error::Device { code: -1, message: format!("{} with {} FP8 scales", main.symbol(), if c.kv_scales.is_some() { "" } else { "no" }) });
    }
    let kes = if c.kv_scales.is_some() { DType::F8E4M3.size() } else { es };
    bytes_of("K", &[h.rows, h.kv_heads, d], kes)?;
    need_ref(gpu, "K", &c.k.mem, span_bytes("K", h.rows, h.kv_heads * d, c.k.stride, kes)?)?;
    need_ref(gpu, "V", &c.v.mem, span_bytes("V", h.rows, h.kv_heads * d, c.v.stride, kes)?)?;
    if let Some((ks, vs)) = &c.kv_scales {
        need_ref(gpu, "K scales", ks, 4 * h.kv_heads)?;
        need_ref(gpu, "V scales", vs, 4 * h.kv_heads)?;
    }
    // The device metadata is `h`'s (same lengths and value ranges).
    const PARTS: [&str; 5] = ["query offsets", "key lengths", "key row bases", "page tables", "tiles"];
    for ((dm, hm), what) in m.meta.iter().zip(&h.parts).zip(PARTS) {
        let (lo, hi) = (hm.iter().copied().min().unwrap_or(0) as i64, hm.iter().copied().max().unwrap_or(-1) as i64 + 1);
        need_meta(gpu, what, dm, hm.len(), lo, hi.max(lo + 1))?;
    }
    let mut p = AttnParams {
        q: c.q.mem.addr,
        k: c.k.mem.addr,
        v: c.v.mem.addr,
        out: c.out.mem.addr,
        q_stride: c.q.stride as i32,
        o_stride: c.out.stride as i32,
        k_stride: c.k.stride as i32,
        v_stride: c.v.stride as i32,
        q_off: m.meta[0].addr,
        kv_len: m.meta[1].addr,
        kv_base: m.meta[2].addr,
        block_table: m.meta[3].addr,
        tiles: m.meta[4].addr,
        part: 0,
        heads: i32_of(h.heads, "heads")?,
        kv_heads: i32_of(h.kv_heads, "kv heads")?,
        head_dim: d as i32,
        page_size: h.page_size as i32,
        max_pages: i32_of(h.max_pages, "page table width")?,
        causal: c.causal as i32,
        splits: 1,
        rows_per_block: 0,
        // Soft-capped logits: the kernels take softcap_log2 * tanh(x * scale_log2) for a raw
        // score x, i.e. cap * tanh(scale * x / cap) in base 2; plain: x * scale * log2(e).
        scale_log2: if c.softcap > 0.0 { c.scale / c.softcap } else { c.scale * std::f32::consts::LOG2_E },
        softcap_log2: if c.softcap > 0.0 { c.softcap * std::f32::consts::LOG2_E } else { 0.0 },
        stages: 1,
        window: if c.causal { i32_of(c.window, "sliding window")? } else { 0 },
        ..Default::default()
    };
    if let Some((ks, vs)) = &c.kv_scales {
        p.k_scale = ks.addr;
        p.v_scale = vs.addr;
    }
    if let Some(s) = &c.sinks {
        need_ref(gpu, "attention sinks", s, 4 * h.heads)?;
        p.sinks = s.addr;
    }
    if let Some(l) = &c.lse {
        need_mut(gpu, "attention lse", l, 4 * total_q * h.heads)?;
        p.lse = l.addr;
    }
    if let Some(r) = &c.rope {
        let half = r.table.rotary_dim / 2;
        if r.table.rotary_dim == 0 || r.table.rotary_dim % 2 != 0 || r.table.rotary_dim > d {
            return Err(Error::InvalidArgument(format!("attention: rotary_dim {} for head_dim {d}", r.table.rotary_dim)));
        }
        need_ref(gpu, "RoPE table", &r.table.inv_freq, 8 * half)?;
        if let Some(qp) = &r.q_pos {
            let comps;
            (comps, [p.mrope, p.mrope1, p.mrope2]) = super::mrope_fields(r.mrope, half)?;
            super::need_meta(gpu, "query positions", qp, comps * total_q, i32::MIN as i64, i32::MAX as i64 + 1)?;
            (p.q_pos, p.q_rows) = (qp.addr, i32_of(total_q, "query rows")?);
        }
        if let Some(kp) = &r.k_pos {
            need_ref(gpu, "key positions", kp, 4 * h.rows)?;
            p.k_pos = kp.addr;
        }
        (p.inv_freq, p.rotary_dim, p.rope_inter, p.rope_factor) = (r.table.inv_freq.addr, r.table.rotary_dim as i32, r.interleaved as i32, r.table.factor);
    }
    let scratch = match (&m.scratch, h.scratch) {
        (_, 0) => 0,
        (Some(s), n) => {
            need_mut(gpu, "attention scratch", s, n)?;
            s.addr
        }
        (None, n) => return Err(Error::Device { code: -1, message: format!("attention: {n} bytes of scratch were planned and none given") }),
    };
    let max_grid = gpu.props().max_grid;
    let too_big = |what: &str, g: [u64; 3]| -> Result<()> {
        if g.iter().zip(max_grid).any(|(&x, m)| x > m) {
            return Err(Error::InvalidArgument(format!("{what}: grid {g:?} exceeds the device's {max_grid:?}")));
        }
        Ok(())
    };
    match *l {
        AttnLaunch::Tiled { kernel, block, shared, .. } => {
            let grid = [(h.parts[4].len() / 2) as u64, h.heads as u64, 1];
            too_big("prefill", grid)?;
            if !matches!(kernel, Kernel::WgPrefill { .. }) {
                // SAFETY: q/out hold every query row, K/V every row any entry addresses (bases and
                // pages checked against `rows` by `prepare`, the device metadata is its; e4m3 rows
                // for the FP8 kernels, whose scales hold one f32 per kv head), tiles name existing
                // (entry, first row) pairs, the RoPE fields are sized for the rows and the table.
                return unsafe { gpu.launch(kernel, grid, block, shared, &p) };
            }
            if h.page_size != 0 {
                return Err(Error::Device { code: -1, message: format!("{} reads contiguous K/V rows, not pages: the plan should have chosen another kernel", kernel.symbol()) });
            }
            // The sm_90a prefill loads through tensor maps of exactly the views' rows (the spans
            // checked above).
            let wp = WgParams {
                tq: gpu.tensor_map("q", &c.q.mem, c.dtype, d, h.heads, total_q, c.q.stride, WG_BM)?,
                tk: gpu.tensor_map("K", &c.k.mem, c.dtype, d, h.kv_heads, h.rows, c.k.stride, WG_BN)?,
                tv: gpu.tensor_map("V", &c.v.mem, c.dtype, d, h.kv_heads, h.rows, c.v.stride, WG_BN)?,
                a: p,
                ..Default::default()
            };
            // SAFETY: as for the other tiled kernels; the kernel reads Q, K and V only through the
            // tensor maps, which cover the views' rows and nothing past them (`Gpu::tensor_map`
            // checked each against its view), and K/V rows are contiguous (page_size 0: entry
            // b's keys are rows kv_base[b].., checked by `prepare`).
            unsafe { gpu.launch(kernel, grid, block, shared, &wp) }
        }
        AttnLaunch::Wide { kernel } => {
            let grid = [total_q as u64, h.heads as u64, 1];
            too_big("wide attention", grid)?;
            // SAFETY: as for the tiled kernels; `tiles` holds each query row's entry.
            unsafe { gpu.launch(kernel, grid, WIDE_THREADS, 0, &p) }
        }
        AttnLaunch::Decode { kernel, rows_per_block, splits, stages, block, shared, merge, .. } => {
            let group = h.heads / h.kv_heads;
            let chunks = (group * h.max_q).div_ceil(rows_per_block);
            let grid = [(b * h.kv_heads * splits) as u64, chunks as u64, 1];
            too_big("decode", grid)?;
            (p.splits, p.rows_per_block, p.stages) = (i32_of(splits, "splits")?, rows_per_block as i32, stages as i32);
            let rows = total_q * h.heads;
            if splits > 1 {
                p.part = scratch;
                if let Some(ctr) = &m.counters {
                    // One per (entry, kv head, row chunk) of the grid.
                    need_mut(gpu, "split-K counters", ctr, 4 * b * h.kv_heads * chunks)?;
                    p.counters = ctr.addr;
                }
            }
            // SAFETY: as for the tiled kernels; the scratch holds every (row, split) partial
            // (`prepare` sized it), no split holds more keys than the kernel's shared memory
            // (checked by `prepare` for the bucket), and the counters (when given) hold one
            // zeroed int per (entry, kv head, row chunk) of the grid.
            unsafe { gpu.launch(kernel, grid, block, shared, &p) }?;
            if splits > 1 && m.counters.is_none() {
                let mp = MergeParams {
                    part: scratch,
                    out: c.out.mem.addr,
                    rows: i32_of(rows, "rows")?,
                    splits: splits as i32,
                    head_dim: d as i32,
                    heads: h.heads as i32,
                    o_stride: c.out.stride as i32,
                    pad: 0,
                    sinks: p.sinks,
                    lse: p.lse,
                };
                // SAFETY: the scratch holds rows x splits partials, `out` rows x head_dim elements.
                unsafe { gpu.launch(merge, [rows as u64, 1, 1], MERGE_THREADS, 0, &mp) }?;
            }
            Ok(())
        }
        AttnLaunch::Separate { scores, softmax, pv } => {
            let Some(sep) = &m.sep else {
                return Err(Error::Device { code: -1, message: "hip-separate attention without its row table".into() });
            };
            need_ref(gpu, "separate row table", sep, h.sep.len())?;
            if h.sep.len() != h.sep_at + 8 * b {
                return Err(Error::Device { code: -1, message: "hip-separate row table of the wrong size".into() });
            }
            p.part = scratch;
            let sp = SepParams { a: p, row_entry: sep.addr, s_off: sep.addr + h.sep_at as u64 };
            let grid = [total_q as u64, h.heads as u64, 1];
            too_big("separate attention", grid)?;
            // SAFETY: as for the tiled kernels; the score buffer holds every entry's
            // [q_len, H, kv_len] block at its offset (`prepare` sized it for the bucket).
            unsafe {
                gpu.launch(scores, grid, SEP_THREADS, 0, &sp)?;
                gpu.launch(softmax, grid, SEP_SOFTMAX_THREADS, 0, &sp)?;
                gpu.launch(pv, grid, SEP_THREADS, 0, &sp)
            }
        }
    }
}
