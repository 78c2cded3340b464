//! Attention launches (kernels/attention*.hip, separate.hip): the per-call metadata (query
//! offsets, key lengths, where each entry's K/V rows are, the prefill tile list) is built here
//! from typed host input, checked against the views, uploaded, and the kernels the plan chose
//! are launched (with the split-K merge, or hip-separate's three kernels).

use backend_api::{DType, Error, Result};

use super::rope::RopeTable;
use super::{bytes_of, i32_of, need, need_mut, need_ref, span_bytes, Strided};
use crate::contract::{
    AttnParams, InKernelRope, Kernel, MergeParams, SepParams, HEAD_DIM_MULTIPLE, MERGE_THREADS, MMA_DC_MAX_STAGES, SEP_DMAX, SEP_SOFTMAX_THREADS, SEP_THREADS, WIDE_DMAX,
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

/// The head dims the kernel serves: (largest, exact, multiple of).
fn head_dims(k: Kernel) -> Result<(usize, bool, usize)> {
    Ok(match k {
        Kernel::Prefill { dim, .. } | Kernel::Decode { dim, .. } => (dim as usize, false, HEAD_DIM_MULTIPLE),
        Kernel::MmaPrefill { dim, .. } | Kernel::MmaDecode { dim, .. } => (dim as usize, true, HEAD_DIM_MULTIPLE),
        Kernel::Wide { .. } => (WIDE_DMAX, false, HEAD_DIM_MULTIPLE),
        Kernel::Scores { .. } => (SEP_DMAX, false, 2),
        other => return Err(Error::Device { code: -1, message: format!("{} is not an attention kernel", other.symbol()) }),
    })
}

/// Checks the call against the views, builds and uploads its metadata, launches.
pub(crate) fn attention(gpu: &Gpu, l: &AttnLaunch, c: AttnCall<'_>) -> Result<()> {
    let b = c.q_lens.len();
    let (d, es) = (c.head_dim, c.dtype.size());
    let main = match l {
        AttnLaunch::Tiled { kernel, .. } | AttnLaunch::Decode { kernel, .. } | AttnLaunch::Wide { kernel } => *kernel,
        AttnLaunch::Separate { scores, .. } => *scores,
    };
    let (dmax, exact, multiple) = head_dims(main)?;
    if d == 0 || d % multiple != 0 || d > dmax || (exact && d != dmax) {
        return Err(Error::InvalidArgument(format!("{}: head_dim {d} is not one this kernel serves", main.symbol())));
    }
    // A rotating kernel may run without RoPE (its fields stay null); a plain one would ignore it.
    if c.rope.is_some() && !rotates(main) {
        return Err(Error::Device { code: -1, message: format!("{} does not rotate; RoPE inside attention was asked for", main.symbol()) });
    }
    if b == 0 || c.kv_lens.len() != b || c.kv.kv_heads == 0 || !c.heads.is_multiple_of(c.kv.kv_heads) {
        return Err(Error::InvalidArgument(format!("attention: {b} query lengths, {} key lengths, {} heads over {} kv heads", c.kv_lens.len(), c.heads, c.kv.kv_heads)));
    }
    let total_q: usize = c.q_lens.iter().try_fold(0usize, |a, &x| a.checked_add(x)).ok_or_else(|| Error::InvalidArgument("query rows overflow".into()))?;
    bytes_of("q", &[total_q, c.heads, d], es)?;
    need_ref(gpu, "q", &c.q.mem, span_bytes("q", total_q, c.heads * d, c.q.stride, es)?)?;
    need_mut(gpu, "out", &c.out.mem, span_bytes("out", total_q, c.heads * d, c.out.stride, es)?)?;
    bytes_of("K", &[c.kv.rows, c.kv.kv_heads, d], es)?;
    need_ref(gpu, "K", &c.kv.k.mem, span_bytes("K", c.kv.rows, c.kv.kv_heads * d, c.kv.k.stride, es)?)?;
    need_ref(gpu, "V", &c.kv.v.mem, span_bytes("V", c.kv.rows, c.kv.kv_heads * d, c.kv.v.stride, es)?)?;
    i32_of(total_q, "query rows")?;
    i32_of(c.kv.rows, "K/V rows")?;
    i32_of(c.heads * d, "heads x head_dim")?;

    // Metadata: q_off [B + 1], kv_len [B], kv_base [B], block_table [B x max_pages], tiles.
    let mut q_off = Vec::with_capacity(b + 1);
    q_off.push(0i32);
    let mut acc = 0usize;
    for (&ql, &kl) in c.q_lens.iter().zip(c.kv_lens) {
        if ql == 0 || ql > kl {
            return Err(Error::InvalidArgument(format!("attention: q_len {ql} over kv_len {kl}")));
        }
        acc += ql;
        q_off.push(i32_of(acc, "query rows")?);
    }
    let kv_len: Vec<i32> = c.kv_lens.iter().map(|&n| i32_of(n, "kv_len")).collect::<Result<_>>()?;
    let mut kv_base = vec![0i32; b];
    let mut table: Vec<i32> = Vec::new();
    let (page_size, max_pages) = match &c.kv.at {
        KvAddressing::Rows(base) => {
            if base.len() != b {
                return Err(Error::InvalidArgument(format!("attention: {} row bases for {b} entries", base.len())));
            }
            for (i, (&r, &n)) in base.iter().zip(c.kv_lens).enumerate() {
                if r.checked_add(n).is_none_or(|end| end > c.kv.rows) {
                    return Err(Error::InvalidArgument(format!("attention: entry {i}'s keys {r}..{} run past the {} K/V rows", r.saturating_add(n), c.kv.rows)));
                }
                kv_base[i] = r as i32;
            }
            (0, 0)
        }
        KvAddressing::Pages { page_size: ps, tables } => {
            let ps = *ps;
            if ps == 0 || tables.len() != b || !c.kv.rows.is_multiple_of(ps) {
                return Err(Error::InvalidArgument(format!("attention: page size {ps}, {} page tables for {b} entries, {} rows", tables.len(), c.kv.rows)));
            }
            let pages = c.kv.rows / ps;
            let width = tables.iter().map(|t| t.len()).max().unwrap_or(1).max(1);
            table = vec![0i32; b * width];
            for (i, (t, &n)) in tables.iter().zip(c.kv_lens).enumerate() {
                let used = n.div_ceil(ps);
                if used > t.len() {
                    return Err(Error::InvalidArgument(format!("attention: entry {i} has {n} keys, its page table {} pages of {ps}", t.len())));
                }
                if let Some(&p) = t[..used].iter().find(|&&p| p as usize >= pages) {
                    return Err(Error::PageTableOutOfRange { seq: i, page: p as usize, num_pages: pages });
                }
                for (j, &p) in t.iter().enumerate() {
                    table[i * width + j] = p as i32;
                }
            }
            (i32_of(ps, "page size")? as usize, width)
        }
    };
    let max_q = c.q_lens.iter().copied().max().unwrap_or(0);
    let max_kv = c.kv_lens.iter().copied().max().unwrap_or(0);
    let mut tiles: Vec<i32> = Vec::new();
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
                    (c.kv_lens[i] + (q0 + rows).min(c.q_lens[i])).saturating_sub(c.q_lens[i])
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
        AttnLaunch::Decode { splits, max_keys_per_split, .. } => {
            if let Some(most) = max_keys_per_split {
                if max_kv.div_ceil((*splits).max(1)) > *most {
                    return Err(Error::InvalidArgument(format!("decode: {splits} splits of {max_kv} keys exceed {most} keys per split")));
                }
            }
        }
        AttnLaunch::Separate { .. } => {}
    }
    let meta = gpu.upload_meta(&[&q_off, &kv_len, &kv_base, &table, &tiles])?;
    let mut p = AttnParams {
        q: c.q.mem.addr,
        k: c.kv.k.mem.addr,
        v: c.kv.v.mem.addr,
        out: c.out.mem.addr,
        q_stride: c.q.stride as i32,
        o_stride: c.out.stride as i32,
        k_stride: c.kv.k.stride as i32,
        v_stride: c.kv.v.stride as i32,
        q_off: meta.part(0).addr,
        kv_len: meta.part(1).addr,
        kv_base: meta.part(2).addr,
        block_table: meta.part(3).addr,
        tiles: meta.part(4).addr,
        part: 0,
        heads: i32_of(c.heads, "heads")?,
        kv_heads: i32_of(c.kv.kv_heads, "kv heads")?,
        head_dim: d as i32,
        page_size: page_size as i32,
        max_pages: i32_of(max_pages, "page table width")?,
        causal: c.causal as i32,
        splits: 1,
        rows_per_block: 0,
        scale_log2: c.scale * std::f32::consts::LOG2_E,
        stages: 1,
        ..Default::default()
    };
    if let Some(r) = &c.rope {
        {
            let half = r.table.rotary_dim / 2;
            if r.table.rotary_dim == 0 || r.table.rotary_dim % 2 != 0 || r.table.rotary_dim > d {
                return Err(Error::InvalidArgument(format!("attention: rotary_dim {} for head_dim {d}", r.table.rotary_dim)));
            }
            need_ref(gpu, "RoPE table", &r.table.inv_freq, 8 * half)?;
            if let Some(qp) = &r.q_pos {
                super::need_meta(gpu, "query positions", qp, total_q, i32::MIN as i64, i32::MAX as i64 + 1)?;
                p.q_pos = qp.addr;
            }
            if let Some(kp) = &r.k_pos {
                need_ref(gpu, "key positions", kp, 4 * c.kv.rows)?;
                p.k_pos = kp.addr;
            }
            (p.inv_freq, p.rotary_dim, p.rope_inter, p.rope_factor) = (r.table.inv_freq.addr, r.table.rotary_dim as i32, r.interleaved as i32, r.table.factor);
        }
    }
    let max_grid = gpu.props().max_grid;
    let too_big = |what: &str, g: [u64; 3]| -> Result<()> {
        if g.iter().zip(max_grid).any(|(&x, m)| x > m) {
            return Err(Error::InvalidArgument(format!("{what}: grid {g:?} exceeds the device's {max_grid:?}")));
        }
        Ok(())
    };
    match *l {
        AttnLaunch::Tiled { kernel, block, shared, .. } => {
            let grid = [(tiles.len() / 2) as u64, c.heads as u64, 1];
            too_big("prefill", grid)?;
            // SAFETY: q/out hold every query row, K/V every row any entry addresses (bases and
            // pages checked against `rows`), tiles name existing (entry, first row) pairs, the
            // RoPE fields are sized for the rows and the table.
            unsafe { gpu.launch(kernel, grid, block, shared, &p) }
        }
        AttnLaunch::Wide { kernel } => {
            let grid = [total_q as u64, c.heads as u64, 1];
            too_big("wide attention", grid)?;
            // SAFETY: as for the tiled kernels; `tiles` holds each query row's entry.
            unsafe { gpu.launch(kernel, grid, WIDE_THREADS, 0, &p) }
        }
        AttnLaunch::Decode { kernel, rows_per_block, splits, stages, block, shared, merge, .. } => {
            if rows_per_block == 0 || splits == 0 || !(1..=MMA_DC_MAX_STAGES).contains(&stages) {
                return Err(Error::InvalidArgument(format!("decode launch with {rows_per_block} rows, {splits} splits, {stages} stages")));
            }
            let group = c.heads / c.kv.kv_heads;
            let chunks = (group * max_q).div_ceil(rows_per_block);
            let grid = [(b * c.kv.kv_heads * splits) as u64, chunks as u64, 1];
            too_big("decode", grid)?;
            (p.splits, p.rows_per_block, p.stages) = (i32_of(splits, "splits")?, rows_per_block as i32, stages as i32);
            let rows = total_q * c.heads;
            let part = if splits > 1 {
                let part = gpu.alloc_uninit(bytes_of("split-K partials", &[rows, splits, d + 2], 4)?)?;
                p.part = part.view().addr;
                Some(part)
            } else {
                None
            };
            // SAFETY: as for the tiled kernels; `part` holds every (row, split) partial, and no
            // split holds more keys than the kernel's shared memory (checked above).
            unsafe { gpu.launch(kernel, grid, block, shared, &p) }?;
            if let Some(part) = &part {
                let m = MergeParams {
                    part: part.view().addr,
                    out: c.out.mem.addr,
                    rows: i32_of(rows, "rows")?,
                    splits: splits as i32,
                    head_dim: d as i32,
                    heads: c.heads as i32,
                    o_stride: c.out.stride as i32,
                    pad: 0,
                };
                // SAFETY: `part` holds rows x splits partials, `out` rows x head_dim elements.
                unsafe { gpu.launch(merge, [rows as u64, 1, 1], MERGE_THREADS, 0, &m) }?;
            }
            // `part` is freed stream-ordered, after the merge.
            Ok(())
        }
        AttnLaunch::Separate { scores, softmax, pv } => {
            // Scores of entry b: [q_len, H, kv_len] f32 from s_off[b].
            let mut row_entry: Vec<i32> = Vec::with_capacity(total_q);
            let mut s_off: Vec<u8> = Vec::with_capacity(8 * b);
            let mut total = 0usize;
            for (i, (&ql, &kl)) in c.q_lens.iter().zip(c.kv_lens).enumerate() {
                row_entry.extend(std::iter::repeat_n(i as i32, ql));
                s_off.extend_from_slice(&(total as u64).to_le_bytes());
                total = total.checked_add(ql * c.heads * kl).ok_or_else(|| Error::InvalidArgument("score buffer size overflows".into()))?;
            }
            let mut bytes: Vec<u8> = row_entry.iter().flat_map(|x| x.to_le_bytes()).collect();
            let s_at = bytes.len().next_multiple_of(8);
            bytes.resize(s_at, 0);
            bytes.extend_from_slice(&s_off);
            let sep = gpu.upload(&bytes)?;
            let buf = gpu.alloc_uninit(bytes_of("scores", &[total], 4)?)?;
            need("scores", buf.len(), 4 * total)?;
            p.part = buf.view().addr;
            let sp = SepParams { a: p, row_entry: sep.view().addr, s_off: sep.view().addr + s_at as u64 };
            let grid = [total_q as u64, c.heads as u64, 1];
            too_big("separate attention", grid)?;
            // SAFETY: as for the tiled kernels; the score buffer holds every entry's
            // [q_len, H, kv_len] block at its offset.
            unsafe {
                gpu.launch(scores, grid, SEP_THREADS, 0, &sp)?;
                gpu.launch(softmax, grid, SEP_SOFTMAX_THREADS, 0, &sp)?;
                gpu.launch(pv, grid, SEP_THREADS, 0, &sp)
            }
        }
    }
}
