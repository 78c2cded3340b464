//! Attention: kernel choice (the capability query's answer and the dispatch are this one
//! function, [`plan`]), metadata, launches. Prefill/chunked prefill use the FlashAttention-2
//! tiled kernel; decode (q_len <= 4) uses flash-decoding with split-K over the cache and a merge.
//! Both exist with RoPE inside (`_rope` kernels: hip-hybrid rotates Q as it is loaded, hip-fused
//! also every cached key). hip-separate uses three kernels over a score buffer instead.

use backend_api::{DType, ProblemDesc, Result};

use crate::runtime::{DeviceBuffer, Gpu};
use crate::storage::i32_bytes;

/// Mirrors `AttnParams` in kernels/attention.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub q_off: u64,
    pub kv_len: u64,
    pub kv_base: u64,
    pub block_table: u64,
    pub tiles: u64,
    pub part: u64,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub page_size: i32,
    pub max_pages: i32,
    pub causal: i32,
    pub splits: i32,
    pub rows_per_block: i32,
    pub scale_log2: f32,
    pub pad: i32,
    pub q_pos: u64,
    pub k_pos: u64,
    pub inv_freq: u64,
    pub rotary_dim: i32,
    pub rope_inter: i32,
    pub rope_factor: f32,
    pub pad2: i32,
}

/// Mirrors `SepParams` in kernels/separate.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SepParams {
    pub a: AttnParams,
    pub row_entry: u64,
    pub s_off: u64,
}

/// RoPE applied inside attention (the `_rope` kernels).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnRope {
    /// int32 `[Tq]` position of each query token, or 0: queries as given.
    pub q_pos: u64,
    /// int32 [pool slots] position of each cached key, or 0: keys as given.
    pub k_pos: u64,
    /// f64 [rotary_dim / 2] inverse frequencies.
    pub inv_freq: u64,
    pub rotary_dim: i32,
    pub interleaved: bool,
    pub factor: f32,
}

/// Mirrors `MergeParams` in kernels/attention.hip.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeParams {
    pub part: u64,
    pub out: u64,
    pub rows: i32,
    pub splits: i32,
    pub head_dim: i32,
    pub pad: i32,
}

/// Longest q_len the decode kernel takes.
pub const DECODE_MAX_Q: usize = 4;
/// Keys one decode block handles at most (`DC_MAXK` in kernels/attention.hip).
pub const DECODE_MAX_KEYS: usize = 1024;
/// Query rows of the prefill tile.
pub const PREFILL_BR: usize = 64;

/// Which kernel runs a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKernel {
    /// Tiled prefill, compiled for head dims up to `dmax`.
    Prefill { dmax: usize },
    /// Split-K decode, up to `rows` (query, head) rows per block.
    Decode { dmax: usize, rows: usize },
    /// hip-separate: scores, softmax, P.V as three kernels over a score buffer.
    Separate,
    /// Head dims past 256 (up to [`WIDE_MAX_D`]): one block per (query row, head).
    Wide,
}

/// Largest head_dim of the wide kernel (`WIDE_DMAX` in kernels/include/af_attention.h).
pub const WIDE_MAX_D: usize = 4096;

/// Largest head_dim of the separate kernels (`SEP_DMAX` in kernels/separate.hip).
pub const SEPARATE_MAX_D: usize = 4096;

/// The separate kernels for `problem`, or why not.
pub fn plan_separate(problem: &ProblemDesc) -> std::result::Result<AttnKernel, Vec<String>> {
    let d = problem.head_dim;
    if d > SEPARATE_MAX_D {
        return Err(vec![format!("head_dim {d} > {SEPARATE_MAX_D}: the separate score kernel stages a query row in shared memory")]);
    }
    Ok(AttnKernel::Separate)
}

/// The flash kernel for `problem`, or every reason it cannot run.
pub fn plan(problem: &ProblemDesc) -> std::result::Result<AttnKernel, Vec<String>> {
    let d = problem.head_dim;
    let mut why: Vec<String> = super::head_dim_reason(d).into_iter().collect();
    if d > WIDE_MAX_D {
        why.push(format!("head_dim {d} > {WIDE_MAX_D}: the wide-head kernel stages a query row in shared memory"));
    }
    if !why.is_empty() {
        return Err(why);
    }
    if d > 256 {
        return Ok(AttnKernel::Wide);
    }
    let dmax = if d <= 64 { 64 } else if d <= 128 { 128 } else { 256 };
    if problem.max_q_len <= DECODE_MAX_Q {
        // Rows per block: the smallest compiled size that holds one kv head's (query, head)
        // rows, or the largest and several row chunks.
        let need = problem.max_q_len * (problem.num_heads / problem.num_kv_heads.max(1));
        let sizes: &[usize] = if dmax == 256 { &[1, 4] } else { &[1, 4, 8] };
        let rows = sizes.iter().copied().find(|&r| r >= need).unwrap_or(*sizes.last().unwrap());
        Ok(AttnKernel::Decode { dmax, rows })
    } else {
        Ok(AttnKernel::Prefill { dmax })
    }
}

/// Whether a prefill runs on the matrix-core kernel (kernels/attention_mma.hip): f16/bf16,
/// head_dim exactly 64 or 128, no RoPE inside attention or queries-only RoPE (hip-hybrid);
/// hip-fused's key rotation stays on the vector units, and so does f32 (its results do not
/// change).
pub fn uses_matrix_cores(dtype: DType, head_dim: usize, dmax: usize, rope: Option<&AttnRope>) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && head_dim == dmax && dmax <= 128 && rope.is_none_or(|r| r.k_pos == 0)
}

/// Where K/V rows of each batch entry are.
pub enum KvSource<'a> {
    /// Entry b's token t is row `base[b] + t`.
    Rows(&'a [i32]),
    /// Entry b's token t is in page `tables[b][t / page_size]`.
    Pages { page_size: usize, tables: Vec<&'a [u32]> },
}

/// Everything one attention launch needs besides Q/K/V/out addresses.
pub struct Shape<'a> {
    pub dtype: DType,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub q_lens: &'a [usize],
    pub kv_lens: &'a [usize],
    pub causal: bool,
    pub scale: f32,
}

/// Launches attention (and the split-K merge when used). Returns the scratch buffers, which
/// must live until the work is done (the stream is ordered; dropping them frees after queued
/// work with the stream-ordered allocator).
#[allow(clippy::too_many_arguments)]
pub fn launch(gpu: &Gpu, kernel: AttnKernel, s: &Shape<'_>, kv: KvSource<'_>, q: u64, k: u64, v: u64, out: u64, rope: Option<&AttnRope>) -> Result<Vec<DeviceBuffer>> {
    let b = s.q_lens.len();
    let mut meta: Vec<i32> = Vec::new();
    // q_off
    let mut acc = 0i32;
    meta.push(0);
    for &n in s.q_lens {
        acc += n as i32;
        meta.push(acc);
    }
    let kv_len_at = meta.len();
    meta.extend(s.kv_lens.iter().map(|&n| n as i32));
    let kv_base_at = meta.len();
    let (page_size, max_pages) = match &kv {
        KvSource::Rows(base) => {
            meta.extend_from_slice(base);
            (0, 0)
        }
        KvSource::Pages { page_size, tables } => {
            meta.extend(std::iter::repeat(0).take(b));
            (*page_size, tables.iter().map(|t| t.len()).max().unwrap_or(1).max(1))
        }
    };
    let bt_at = meta.len();
    if let KvSource::Pages { tables, .. } = &kv {
        for t in tables {
            meta.extend(t.iter().map(|&p| p as i32));
            meta.extend(std::iter::repeat(0).take(max_pages - t.len()));
        }
    }
    let tiles_at = meta.len();
    let mut num_tiles = 0usize;
    if kernel == AttnKernel::Wide {
        for (i, &n) in s.q_lens.iter().enumerate() {
            meta.extend(std::iter::repeat(i as i32).take(n));
        }
    }
    if let AttnKernel::Prefill { .. } = kernel {
        for (i, &n) in s.q_lens.iter().enumerate() {
            for q0 in (0..n).step_by(PREFILL_BR) {
                meta.push(i as i32);
                meta.push(q0 as i32);
                num_tiles += 1;
            }
        }
    }
    let meta_buf = gpu.upload(&i32_bytes(&meta))?;
    let at = |i: usize| meta_buf.addr() + 4 * i as u64;
    let mut p = AttnParams {
        q,
        k,
        v,
        out,
        q_off: at(0),
        kv_len: at(kv_len_at),
        kv_base: at(kv_base_at),
        block_table: at(bt_at),
        tiles: at(tiles_at),
        part: 0,
        heads: s.heads as i32,
        kv_heads: s.kv_heads as i32,
        head_dim: s.head_dim as i32,
        page_size: page_size as i32,
        max_pages: max_pages as i32,
        causal: s.causal as i32,
        splits: 1,
        rows_per_block: 0,
        scale_log2: s.scale * std::f32::consts::LOG2_E,
        ..Default::default()
    };
    let kind = match rope {
        Some(r) => {
            p.q_pos = r.q_pos;
            p.k_pos = r.k_pos;
            p.inv_freq = r.inv_freq;
            p.rotary_dim = r.rotary_dim;
            p.rope_inter = r.interleaved as i32;
            p.rope_factor = r.factor;
            "_rope"
        }
        None => "",
    };
    let mut keep = vec![meta_buf];
    let dt = s.dtype.name();
    match kernel {
        AttnKernel::Prefill { dmax } => {
            let grid = (num_tiles as u32, s.heads as u32, 1);
            if uses_matrix_cores(s.dtype, s.head_dim, dmax, rope) {
                let kind = if rope.is_some() { "_qrope" } else { "" };
                gpu.launch(&format!("attn_prefill_mma{kind}_d{dmax}_{dt}"), grid, 128, p)?;
            } else {
                gpu.launch(&format!("attn_prefill{kind}_d{dmax}_{dt}"), grid, 256, p)?;
            }
        }
        AttnKernel::Wide => {
            let rows: usize = s.q_lens.iter().sum();
            gpu.launch(&format!("attn_wide{kind}_{dt}"), (rows as u32, s.heads as u32, 1), 256, p)?;
        }
        AttnKernel::Separate => {
            // Scores of entry b: [q_len, H, kv_len] f32 from s_off[b].
            let mut row_entry: Vec<i32> = Vec::with_capacity(s.q_lens.iter().sum());
            let mut s_off: Vec<u8> = Vec::with_capacity(8 * b);
            let mut total = 0u64;
            for (i, (&ql, &kl)) in s.q_lens.iter().zip(s.kv_lens).enumerate() {
                row_entry.extend(std::iter::repeat(i as i32).take(ql));
                s_off.extend_from_slice(&total.to_le_bytes());
                total += (ql * s.heads * kl) as u64;
            }
            let mut bytes = i32_bytes(&row_entry);
            let s_off_at = bytes.len().next_multiple_of(8);
            bytes.resize(s_off_at, 0);
            bytes.extend_from_slice(&s_off);
            let sep_meta = gpu.upload(&bytes)?;
            let scores = gpu.alloc(total as usize * 4)?;
            p.part = scores.addr();
            let sp = SepParams { a: p, row_entry: sep_meta.addr(), s_off: sep_meta.addr() + s_off_at as u64 };
            let grid = (row_entry.len() as u32, s.heads as u32, 1);
            gpu.launch(&format!("attn_scores_{dt}"), grid, 128, sp)?;
            gpu.launch("attn_softmax_f32", grid, 256, sp)?;
            gpu.launch(&format!("attn_pv_{dt}"), grid, 128, sp)?;
            keep.push(sep_meta);
            keep.push(scores);
        }
        AttnKernel::Decode { dmax, rows } => {
            let group = s.heads / s.kv_heads;
            let max_q = s.q_lens.iter().copied().max().unwrap_or(1);
            let row_chunks = (group * max_q).div_ceil(rows);
            let max_kv = s.kv_lens.iter().copied().max().unwrap_or(1);
            let blocks = b * s.kv_heads * row_chunks;
            // Enough splits to put ~4 blocks on every SM with at least 128 keys per split, and
            // never more than DECODE_MAX_KEYS keys per split (the kernel keeps a split's logits
            // in shared memory).
            let want = (4 * gpu.sm_count as usize).div_ceil(blocks.max(1));
            let splits = want.clamp(1, max_kv.div_ceil(128).max(1)).max(max_kv.div_ceil(DECODE_MAX_KEYS));
            p.splits = splits as i32;
            p.rows_per_block = rows as i32;
            let total_rows: usize = s.q_lens.iter().sum::<usize>() * s.heads;
            if splits > 1 {
                let part = gpu.alloc(total_rows * splits * (s.head_dim + 2) * 4)?;
                p.part = part.addr();
                keep.push(part);
            }
            let grid = ((b * s.kv_heads * splits) as u32, row_chunks as u32, 1);
            // Queries-only RoPE has its own decode kernels (fewer registers than the key path).
            let kind = if rope.is_some_and(|r| r.k_pos == 0) { "_qrope" } else { kind };
            gpu.launch(&format!("attn_decode{kind}_d{dmax}_r{rows}_{dt}"), grid, 128, p)?;
            if splits > 1 {
                let m = MergeParams { part: p.part, out, rows: total_rows as i32, splits: splits as i32, head_dim: s.head_dim as i32, pad: 0 };
                gpu.launch(&format!("attn_merge_{dt}"), (total_rows as u32, 1, 1), 128, m)?;
            }
        }
    }
    Ok(keep)
}
