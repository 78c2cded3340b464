//! Attention: kernel choice (the capability query's answer and the dispatch are this one
//! function, [`plan`]), metadata, launches. Prefill/chunked prefill use the FlashAttention-2
//! tiled kernel; decode (q_len <= 4) uses flash-decoding with split-K over the cache and a merge.
//! Both exist with RoPE inside (`_rope` kernels: hip-hybrid rotates Q as it is loaded, hip-fused
//! also every cached key). hip-separate uses three kernels over a score buffer instead.

use backend_api::{DType, ProblemDesc, Result};

use crate::runtime::{DeviceBuffer, Gpu, Vendor};
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

/// Whether a prefill runs on the matrix-core kernel (kernels/attention_mma.hip): a GPU with
/// matrix cores ([`Gpu::matrix_cores`]), f16/bf16, head_dim exactly 64, 128 or 256, no RoPE
/// inside attention or queries-only RoPE (hip-hybrid); hip-fused's key rotation stays on the
/// vector units, and so does f32 (its results do not change).
pub fn uses_matrix_cores(gpu: &Gpu, dtype: DType, head_dim: usize, dmax: usize, rope: Option<&AttnRope>) -> bool {
    gpu.matrix_cores && matches!(dtype, DType::F16 | DType::BF16) && head_dim == dmax && rope.is_none_or(|r| r.k_pos == 0)
}

/// Whether a decode runs on the matrix-core decode kernel (kernels/attention_mma.hip): as
/// [`uses_matrix_cores`], head_dim 64 or 128.
pub fn decode_uses_matrix_cores(gpu: &Gpu, dtype: DType, head_dim: usize, dmax: usize, rope: Option<&AttnRope>) -> bool {
    dmax <= 128 && uses_matrix_cores(gpu, dtype, head_dim, dmax, rope)
}

/// Dynamic shared memory of the matrix-core decode (`decode_mma_body`): 16 query rows and
/// `MMA_DC_STAGES` stages (3 on NVIDIA, 1 on AMD) of a 64-key K and V tile, rows of `dmax + 8`
/// 16-bit elements.
pub fn mma_decode_shared_bytes(dmax: usize, vendor: Vendor) -> u32 {
    let stages = match vendor {
        Vendor::Nvidia => 3,
        Vendor::Amd => 1,
    };
    ((16 + stages * 2 * 64) * (dmax + 8) * 2) as u32
}

/// Matrix-core decode blocks resident on one SM / CU at once (bounded by shared memory: 227 KiB
/// per SM on NVIDIA, 64 KiB per CU on AMD).
pub fn mma_decode_blocks_per_sm(dmax: usize, vendor: Vendor) -> usize {
    let per_sm = match vendor {
        Vendor::Nvidia => 227 << 10,
        Vendor::Amd => 64 << 10,
    };
    (per_sm / (mma_decode_shared_bytes(dmax, vendor) as usize + 1024)).max(1)
}

/// KV splits of a matrix-core decode of `blocks` (entry, kv head, row chunk) blocks over at most
/// `max_kv` keys on a GPU with `slots` resident blocks: the count that minimises the modelled
/// time, waves x keys per split (a split costs its keys; a partly filled last wave costs as
/// much as a full one), at least 256 keys per split; more splits only for a gain of 5 % or more
/// (each adds merging and a pipeline ramp the model leaves out).
pub fn mma_decode_splits(blocks: usize, max_kv: usize, slots: usize) -> usize {
    let (blocks, slots) = (blocks.max(1), slots.max(1));
    let most = max_kv.div_ceil(256).max(1);
    let cost = |s: usize| (blocks * s).div_ceil(slots) as f64 / s as f64;
    (1..=most).fold(1, |best, s| if cost(s) < 0.95 * cost(best) { s } else { best })
}

/// Groups (warps / wavefronts) of one matrix-core block (`MMA_GROUPS`).
pub const MMA_GROUPS: u32 = 4;

/// Query rows of a matrix-core prefill tile (`MmaTile::BR` in kernels/attention_mma.hip).
pub fn mma_tile_rows(dmax: usize) -> usize {
    if dmax <= 128 { 128 } else { 64 }
}

/// Keys of a matrix-core prefill tile (`MmaTile::BC`): AMD blocks get 64 KiB of LDS.
fn mma_tile_keys(dmax: usize, vendor: Vendor) -> usize {
    match vendor {
        Vendor::Nvidia => if dmax <= 128 { 64 } else { 32 },
        Vendor::Amd => if dmax <= 64 { 64 } else if dmax <= 128 { 32 } else { 16 },
    }
}

/// Dynamic shared memory of the matrix-core prefill for head dim `dmax`, mirroring `MmaTile`:
/// the query tile and one key and one value tile, each row `dmax + 8` 16-bit elements.
pub fn mma_shared_bytes(dmax: usize, vendor: Vendor) -> u32 {
    ((mma_tile_rows(dmax) + 2 * mma_tile_keys(dmax, vendor)) * (dmax + 8) * 2) as u32
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
    let mma_prefill = matches!(kernel, AttnKernel::Prefill { dmax } if uses_matrix_cores(gpu, s.dtype, s.head_dim, dmax, rope));
    if let AttnKernel::Prefill { dmax } = kernel {
        let rows = if mma_prefill { mma_tile_rows(dmax) } else { PREFILL_BR };
        // (entry, first row), heaviest first: a causal tile's keys grow with its rows, and
        // blocks start in list order, so the long ones do not trail at the end.
        let mut tiles: Vec<(usize, usize)> = Vec::new();
        for (i, &n) in s.q_lens.iter().enumerate() {
            tiles.extend((0..n).step_by(rows).map(|q0| (i, q0)));
        }
        let keys = |&(i, q0): &(usize, usize)| if s.causal { (s.kv_lens[i] + (q0 + rows).min(s.q_lens[i])).saturating_sub(s.q_lens[i]) } else { s.kv_lens[i] };
        tiles.sort_by_key(|t| std::cmp::Reverse(keys(t)));
        for (i, q0) in tiles {
            meta.push(i as i32);
            meta.push(q0 as i32);
            num_tiles += 1;
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
            if mma_prefill {
                let kind = if rope.is_some() { "_qrope" } else { "" };
                let block = MMA_GROUPS * gpu.warp_size;
                gpu.launch_shared(&format!("attn_prefill_mma{kind}_d{dmax}_{dt}"), grid, block, mma_shared_bytes(dmax, gpu.vendor), p)?;
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
            let max_kv = s.kv_lens.iter().copied().max().unwrap_or(1);
            let mma = decode_uses_matrix_cores(gpu, s.dtype, s.head_dim, dmax, rope);
            // Matrix cores: 16 rows per block; vector units: the compiled row count.
            let rows = if mma { 16 } else { rows };
            let row_chunks = (group * max_q).div_ceil(rows);
            let blocks = b * s.kv_heads * row_chunks;
            let splits = if mma {
                mma_decode_splits(blocks, max_kv, gpu.sm_count as usize * mma_decode_blocks_per_sm(dmax, gpu.vendor))
            } else {
                // Enough splits to put ~4 blocks on every SM with at least 128 keys per split, and
                // never more than DECODE_MAX_KEYS keys per split (the kernel keeps a split's logits
                // in shared memory).
                let want = (4 * gpu.sm_count as usize).div_ceil(blocks.max(1));
                want.clamp(1, max_kv.div_ceil(128).max(1)).max(max_kv.div_ceil(DECODE_MAX_KEYS))
            };
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
            if mma {
                let block = MMA_GROUPS * gpu.warp_size;
                gpu.launch_shared(&format!("attn_decode_mma{kind}_d{dmax}_{dt}"), grid, block, mma_decode_shared_bytes(dmax, gpu.vendor), p)?;
            } else {
                gpu.launch(&format!("attn_decode{kind}_d{dmax}_r{rows}_{dt}"), grid, 128, p)?;
            }
            if splits > 1 {
                let m = MergeParams { part: p.part, out, rows: total_rows as i32, splits: splits as i32, head_dim: s.head_dim as i32, pad: 0 };
                gpu.launch(&format!("attn_merge_{dt}"), (total_rows as u32, 1, 1), 128, m)?;
            }
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_fill_the_gpu_without_a_long_tail() {
        // H100, head_dim 128: 2 blocks per SM, 264 slots.
        assert_eq!(mma_decode_blocks_per_sm(128, Vendor::Nvidia), 2);
        let slots = 264;
        // B=1, 8 kv heads, L=131072: one full wave of 33 splits.
        assert_eq!(mma_decode_splits(8, 131072, slots), 33);
        // B=1, L=8192: about as many as 256-key splits allow (32; 31 is within 5 %).
        assert_eq!(mma_decode_splits(8, 8192, slots), 31);
        // B=16: two splits make one full wave.
        assert_eq!(mma_decode_splits(128, 8192, slots), 2);
        // B=64: enough blocks without splitting.
        assert_eq!(mma_decode_splits(512, 131072, slots), 1);
        // Short caches never split below 256 keys.
        assert_eq!(mma_decode_splits(8, 100, slots), 1);
        // Every choice is in range.
        for blocks in [1, 3, 16, 128, 1000] {
            for kv in [1, 255, 256, 4097, 100_000] {
                let s = mma_decode_splits(blocks, kv, slots);
                assert!(s >= 1 && s <= kv.div_ceil(256).max(1));
            }
        }
    }
}
