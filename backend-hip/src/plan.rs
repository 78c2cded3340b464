//! Capability and dispatch in one place: [`plan`] turns a device's properties, a strategy, an
//! op and a validated problem into the exact launches (kernel, tile, head-dim bucket, split
//! count, pipeline depth, block, shared memory), or every [`Reason`] it cannot run. The
//! backend's `supports()` is `plan(..).map(|_| ())`; its ops call the same function and execute
//! what it returns. Nothing here touches a device, so every device's plans are unit-tested below
//! against that device's limits.

use std::fmt;

use attnforge_api::{CacheLayout, DType, Op, ProblemDesc, RopeStyle};

use crate::contract::*;
use crate::runtime::launch::attention::AttnLaunch;
use crate::runtime::launch::rope::RopeLaunch;
use crate::runtime::DeviceProps;

/// The fusion strategy of a registered backend (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// `hip-flash`: fused RoPE + append (Q rotated in place), then attention without RoPE.
    Flash,
    /// `hip-hybrid`: K rotated by fused RoPE + append, Q rotated inside attention.
    Hybrid,
    /// `hip-fused`: K cached unrotated with its position; attention rotates Q and K.
    Fused,
    /// `hip-separate`: RoPE, append, then scores / softmax / P.V kernels.
    Separate,
}

/// Why a problem cannot run here: one per unmet requirement, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Rows move in 16-byte chunks.
    HeadDimMultiple { head_dim: usize },
    /// Past the largest head_dim of the kernels that would run it.
    HeadDimTooLarge { head_dim: usize, max: usize, why: &'static str },
    /// More heads than the device's grid allows in the dimension that holds them.
    TooManyHeads { heads: usize, limit: u64 },
    /// More rows (tokens, pool slots) than the kernels' 32-bit indices.
    TooManyRows { what: &'static str, rows: usize },
    /// hip-fused keeps keys unrotated with one table per cache.
    LengthDependentRope { scaling: &'static str },
    /// The op needs a RoPE configuration the problem does not carry.
    NoRope,
    /// hip-fused's step rotates cached keys inside attention from one position per key.
    MRopeUnrotatedCache,
    /// merge_states takes at most MERGE_MAX_STATES states per launch.
    TooManyStates { states: usize },
    /// FP8 e4m3 pools: only the matrix-core kernels dequantise them.
    Fp8Cache { why: &'static str },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::HeadDimMultiple { head_dim } => write!(f, "head_dim {head_dim} is not a multiple of {HEAD_DIM_MULTIPLE} (the kernels move 16-byte chunks of every row)"),
            Reason::HeadDimTooLarge { head_dim, max, why } => write!(f, "head_dim {head_dim} > {max}: {why}"),
            Reason::TooManyHeads { heads, limit } => write!(f, "{heads} heads exceed this GPU's grid limit of {limit} blocks in the dimension that holds heads"),
            Reason::TooManyRows { what, rows } => write!(f, "{rows} {what} exceed the kernels' 32-bit indices"),
            Reason::LengthDependentRope { scaling } => write!(
                f,
                "hip-fused keeps keys unrotated and rotates them with one table per cache; {scaling} scaling changes the table with the context length (use hip-hybrid or hip-flash)"
            ),
            Reason::NoRope => write!(f, "the op needs a RoPE configuration"),
            Reason::MRopeUnrotatedCache => write!(
                f,
                "hip-fused's cache keeps keys unrotated with one position each; M-RoPE needs three per token (use hip-flash, hip-hybrid or hip-separate)"
            ),
            Reason::Fp8Cache { why } => write!(f, "FP8 (e4m3) KV cache: {why}"),
            Reason::TooManyStates { states } => write!(
                f,
                "{states} states exceed the {MERGE_MAX_STATES} one merge_states launch takes (merge them in groups, passing each group's lse on)"
            ),
        }
    }
}

/// What an op runs.
#[derive(Debug, Clone, PartialEq)]
pub enum OpPlan {
    /// RoPE in place (Op::Rope) or the context shift (Op::Shift).
    Rope(RopeLaunch),
    /// The append kernel (`Kernel::KvAppend` of the dtype).
    Append(Kernel),
    /// Attention over a cache or plain K/V.
    Attention(AttnLaunch),
    /// merge_states (`Kernel::MergeStates` of the dtype).
    MergeStates(Kernel),
    /// The composite step: hip-flash and hip-hybrid run the fused RoPE + append kernel (`rope`,
    /// no `append`); hip-fused appends unrotated keys (`append`, no `rope`); hip-separate runs
    /// RoPE in place, then the append (both). Then attention.
    Step { rope: Option<RopeLaunch>, append: Option<Kernel>, attention: AttnLaunch },
}

/// Capability and dispatch: the launches `op` needs for `problem` on `props` with `strategy`,
/// or every reason it cannot run. `problem` has passed `ProblemDesc::validate`.
pub fn plan(props: &DeviceProps, strategy: Strategy, op: Op, problem: &ProblemDesc) -> Result<OpPlan, Vec<Reason>> {
    let mut why = common_reasons(problem, strategy, op);
    let result = match op {
        Op::KvAppend => Ok(OpPlan::Append(Kernel::KvAppend { dtype: problem.dtype, fp8: is_fp8(problem) })),
        Op::Rope | Op::Shift => rope_launch(problem).map(OpPlan::Rope),
        Op::Attention | Op::AttentionPlain => attention(props, strategy, op, problem).map(OpPlan::Attention),
        // A merge_states problem: `batch_size` states of `max_q_len` tokens; any even head_dim,
        // one block per (token, head) row.
        Op::MergeStates => {
            let mut r = Vec::new();
            if problem.batch_size > MERGE_MAX_STATES {
                r.push(Reason::TooManyStates { states: problem.batch_size });
            }
            let rows = problem.max_q_len.saturating_mul(problem.num_heads);
            if rows as u64 > props.max_grid[0].min(i32::MAX as u64) {
                r.push(Reason::TooManyRows { what: "(token, head) rows", rows });
            }
            if r.is_empty() { Ok(OpPlan::MergeStates(Kernel::MergeStates { dtype: problem.dtype })) } else { Err(r) }
        }
        Op::Step => {
            let mut r = Vec::new();
            if strategy == Strategy::Fused {
                if let Some(c) = problem.rope.as_ref().filter(|c| c.is_length_dependent()) {
                    r.push(Reason::LengthDependentRope { scaling: c.scaling_name() });
                }
            }
            if strategy == Strategy::Fused && problem.rope.as_ref().is_some_and(|c| c.position_components() > 1) {
                r.push(Reason::MRopeUnrotatedCache);
            }
            let fp8 = is_fp8(problem);
            if strategy == Strategy::Fused && fp8 {
                r.push(Reason::Fp8Cache {
                    why: "hip-fused's step keeps keys unrotated and rotates them on the vector units as attention loads them, which read 16-bit keys; its FP8 pools take kv_append and attention (use hip-flash or hip-hybrid for the step)",
                });
            }
            let rope = match strategy {
                Strategy::Fused => Ok(None),
                _ => rope_launch(problem).map(Some),
            };
            // Over FP8 pools hip-flash and hip-hybrid rotate in place and append with the
            // quantising kernel (their fused RoPE + append writes 16-bit rows).
            let append = (matches!(strategy, Strategy::Fused | Strategy::Separate) || fp8).then_some(Kernel::KvAppend { dtype: problem.dtype, fp8 });
            match (rope, attention(props, strategy, op, problem)) {
                (Ok(rope), Ok(attention)) if r.is_empty() => Ok(OpPlan::Step { rope, append, attention }),
                (rope, att) => {
                    r.extend(rope.err().into_iter().flatten());
                    r.extend(att.err().into_iter().flatten());
                    Err(r)
                }
            }
        }
    };
    match result {
        Ok(p) if why.is_empty() => Ok(p),
        Ok(_) => Err(why),
        Err(r) => {
            for x in r {
                if !why.contains(&x) {
                    why.push(x);
                }
            }
            Err(why)
        }
    }
}

/// Requirements of every kernel: 16-element rows (hip-separate's attention kernels take any even
/// head_dim), 32-bit row and slot indices.
fn common_reasons(p: &ProblemDesc, strategy: Strategy, op: Op) -> Vec<Reason> {
    let mut r = Vec::new();
    let any_even = (strategy == Strategy::Separate && matches!(op, Op::Attention | Op::AttentionPlain)) || op == Op::MergeStates;
    if !p.head_dim.is_multiple_of(HEAD_DIM_MULTIPLE) && !any_even {
        r.push(Reason::HeadDimMultiple { head_dim: p.head_dim });
    }
    let rows = if op == Op::MergeStates { p.max_q_len } else { p.batch_size.saturating_mul(p.max_q_len.max(p.max_kv_len)) };
    if rows > i32::MAX as usize {
        r.push(Reason::TooManyRows { what: "token rows", rows });
    }
    if let Some(layout) = p.layout {
        let slots = match layout {
            CacheLayout::Contiguous { capacity } => p.batch_size.saturating_mul(capacity),
            CacheLayout::Paged { page_size, num_pages } => page_size.saturating_mul(num_pages),
        };
        if slots > i32::MAX as usize {
            r.push(Reason::TooManyRows { what: "KV pool slots", rows: slots });
        }
    }
    r
}

/// The rope kernel: the widest pairs-per-thread of `AF_ROPE_VPS` that divides `rotary_dim / 2`
/// and keeps one access within a 16-byte chunk.
fn rope_launch(p: &ProblemDesc) -> Result<RopeLaunch, Vec<Reason>> {
    let Some(c) = &p.rope else { return Err(vec![Reason::NoRope]) };
    let half = c.rotary_dim / 2;
    let chunk = CHUNK_BYTES / p.dtype.size();
    let vp = ROPE_VPS.iter().rev().copied().find(|&v| half % v == 0 && v <= chunk).unwrap_or(1);
    Ok(RopeLaunch { kernel: Kernel::Rope { vp: vp as u8, interleaved: c.style == RopeStyle::Interleaved, dtype: p.dtype } })
}

/// RoPE inside attention for this strategy and op.
fn in_kernel_rope(strategy: Strategy, op: Op) -> InKernelRope {
    match (strategy, op) {
        (Strategy::Hybrid, Op::Step) => InKernelRope::Queries,
        // hip-fused's cache may hold unrotated keys (appended by its step): its attention over a
        // cache always takes the kernels that rotate them.
        (Strategy::Fused, Op::Step | Op::Attention) => InKernelRope::QueriesAndKeys,
        _ => InKernelRope::None,
    }
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// Whether the problem's cache stores FP8 e4m3.
fn is_fp8(p: &ProblemDesc) -> bool {
    p.kv_dtype.is_some_and(DType::is_float8)
}

/// Dynamic shared memory of the matrix-core decode over FP8 pools with `stages` stages of e4m3
/// K/V tiles (mma_decode.h): the query rows and the e4m3 stages (on AMD also one tile converted
/// to 16 bits, the keys then the values; NVIDIA's m16n8k16 fragments are converted in
/// registers); at least the groups' final merge (maxima, sums, accumulators in f32 rows of
/// `dim + 4`).
pub fn mma_decode_fp8_shared_bytes(dim: usize, stages: usize, vendor: Vendor) -> usize {
    let converted = if vendor == Vendor::Amd { MMA_DC_BC * (dim + MMA_PAD) * 2 } else { 0 };
    let kv = stages * 2 * MMA_DC_BC * dim + converted;
    let merge = MMA_GROUPS * 16 * (2 + dim + 4) * 4;
    16 * (dim + MMA_PAD) * 2 + kv.max(merge)
}

/// Dynamic shared memory of the matrix-core decode with `stages` K/V stages (mma_decode.h).
pub fn mma_decode_shared_bytes(dim: usize, stages: usize) -> usize {
    (16 + stages * 2 * MMA_DC_BC) * (dim + MMA_PAD) * 2
}

/// Query rows of a matrix-core prefill tile (`MmaTile::BR`).
pub fn mma_tile_rows(dim: usize) -> usize {
    let mt = match dim {
        64 => MMA_PF_MT_D64,
        128 => MMA_PF_MT_D128,
        _ => MMA_PF_MT_D256,
    };
    MMA_GROUPS * 16 * mt
}

/// Keys of a matrix-core prefill tile (`MmaTile::BC`).
fn mma_tile_keys(dim: usize, vendor: Vendor) -> usize {
    match dim {
        64 => MMA_PF_BC_D64,
        128 => MMA_PF_BC_D128,
        _ => MMA_PF_BC_D256,
    }
    .get(vendor)
}

/// Dynamic shared memory of the matrix-core prefill: the query tile and one key and one value
/// tile, rows of `dim + MMA_PAD` 16-bit elements.
pub fn mma_prefill_shared_bytes(dim: usize, vendor: Vendor) -> usize {
    (mma_tile_rows(dim) + 2 * mma_tile_keys(dim, vendor)) * (dim + MMA_PAD) * 2
}

/// Dynamic shared memory of the sm_90a prefill (`wg_shared_bytes` in
/// kernels/attention/wgmma_prefill.h): the Q tile, `WG_STAGES` K and V tiles, 1024 bytes to align
/// the swizzled regions.
pub fn wgmma_shared_bytes(dim: usize) -> usize {
    WG_BM * dim * 2 + WG_STAGES * 2 * WG_BN * dim * 2 + 1024
}

/// Blocks of `shared` bytes resident on one SM / CU at once (the driver reserves 1 KiB per
/// block on NVIDIA).
fn blocks_per_sm(props: &DeviceProps, shared: usize) -> usize {
    let reserved = if props.vendor == Vendor::Nvidia { 1024 } else { 0 };
    (props.smem_per_sm / (shared + reserved).max(1)).max(1)
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

fn attention(props: &DeviceProps, strategy: Strategy, op: Op, p: &ProblemDesc) -> Result<AttnLaunch, Vec<Reason>> {
    let d = p.head_dim;
    let mut why = Vec::new();
    let grid_y = props.max_grid[1];
    if p.num_heads as u64 > grid_y {
        why.push(Reason::TooManyHeads { heads: p.num_heads, limit: grid_y });
    }
    let fp8 = is_fp8(p);
    if fp8 && strategy == Strategy::Separate {
        why.push(Reason::Fp8Cache { why: "hip-separate's score and P.V kernels read 16-bit keys and values (use hip-flash, hip-hybrid or hip-fused)" });
    }
    if fp8 && !(props.matrix_cores && is_half(p.dtype) && MMA_DECODE_DIMS.contains(&d) && MMA_FP8_PREFILL_DIMS.contains(&d)) {
        why.push(Reason::Fp8Cache { why: "only the matrix-core kernels dequantise e4m3 as they load it: f16 or bf16 queries, head_dim 64 or 128, a GPU with matrix instructions" });
    }
    if strategy == Strategy::Separate {
        if d > SEP_DMAX {
            why.push(Reason::HeadDimTooLarge { head_dim: d, max: SEP_DMAX, why: "the separate score kernel stages a query row in shared memory" });
        }
        if !why.is_empty() {
            return Err(why);
        }
        return Ok(AttnLaunch::Separate { scores: Kernel::Scores { dtype: p.dtype }, softmax: Kernel::Softmax, pv: Kernel::Pv { dtype: p.dtype } });
    }
    if d > WIDE_DMAX {
        why.push(Reason::HeadDimTooLarge { head_dim: d, max: WIDE_DMAX, why: "the wide-head kernel stages a query row in shared memory" });
    }
    if !why.is_empty() {
        return Err(why);
    }
    // Over FP8 pools no kernel rotates: hip-hybrid's step rotates Q in place first, and
    // hip-fused's pools hold rotated keys only (its step refuses them).
    let rope = if fp8 { InKernelRope::None } else { in_kernel_rope(strategy, op) };
    let dtype = p.dtype;
    if d > TILED_DMAX {
        return Ok(AttnLaunch::Wide { kernel: Kernel::Wide { rope: rope != InKernelRope::None, dtype } });
    }
    let dmax = PREFILL_DIMS.iter().copied().find(|&x| x >= d).unwrap_or(TILED_DMAX);
    let warp = props.warp_size;
    // Matrix cores: f16/bf16 at an exact head dim, no key rotation (hip-fused's stays on the
    // vector units), a GPU with matrix instructions.
    let mma_ok = props.matrix_cores && is_half(dtype) && rope != InKernelRope::QueriesAndKeys;
    let qrope = rope == InKernelRope::Queries;
    let group = p.num_heads / p.num_kv_heads.max(1);
    if p.max_q_len <= DECODE_MAX_Q {
        let merge = Kernel::Merge { dtype };
        if mma_ok && MMA_DECODE_DIMS.contains(&d) {
            // Deepest pipeline that fits a block's shared memory; AMD's copies are synchronous, so
            // more stages only cost LDS there.
            let deepest = if props.vendor == Vendor::Amd { 1 } else { MMA_DC_MAX_STAGES };
            let bytes = |s| if fp8 { mma_decode_fp8_shared_bytes(d, s, props.vendor) } else { mma_decode_shared_bytes(d, s) };
            let fitting = (1..=deepest).rev().filter(|&s| bytes(s) <= props.smem_per_block_optin);
            // FP8: the deepest pipeline that keeps MMA_DC_FP8_BLOCKS blocks resident (the kernel's
            // launch bound, its registers sized for them), else the one that keeps the most: its
            // pace is set by how many groups hide each other's latency (H200: three stages at
            // three blocks per SM; see mma_decode.h for what was measured).
            let depth = if fp8 {
                let fitting: Vec<usize> = fitting.collect();
                let resident = |s: usize| blocks_per_sm(props, bytes(s)).min(MMA_DC_FP8_BLOCKS);
                fitting.iter().copied().find(|&s| resident(s) == MMA_DC_FP8_BLOCKS).or_else(|| fitting.iter().copied().max_by_key(|&s| (resident(s), s)))
            } else {
                fitting.max()
            };
            if let Some(stages) = depth {
                let shared = bytes(stages);
                let chunks = (group * p.max_q_len).div_ceil(16);
                let blocks = p.batch_size * p.num_kv_heads * chunks;
                // Resident blocks: by shared memory, and for FP8 at most the kernel's launch bound
                // (its registers are sized for MMA_DC_FP8_BLOCKS: more would not be resident).
                let resident = if fp8 { blocks_per_sm(props, shared).min(MMA_DC_FP8_BLOCKS) } else { blocks_per_sm(props, shared) };
                let splits = mma_decode_splits(blocks, p.max_visible_keys(), props.sm_count * resident);
                return Ok(AttnLaunch::Decode {
                    kernel: Kernel::MmaDecode { dim: d as u16, qrope, dtype, fp8 },
                    rows_per_block: 16,
                    splits,
                    stages,
                    block: MMA_GROUPS * warp,
                    shared,
                    max_keys_per_split: None,
                    merge,
                });
            }
        }
        if fp8 {
            return Err(vec![Reason::Fp8Cache { why: "the matrix-core decode does not fit this GPU's shared memory" }]);
        }
        // Vector units: rows per block, the smallest compiled size that holds one kv head's
        // (query, head) rows, or the largest and several row chunks.
        let need = p.max_q_len * group;
        let sizes: Vec<usize> = DECODE_SHAPES.iter().filter(|(dm, _)| *dm == dmax).map(|&(_, r)| r).collect();
        let rows = sizes.iter().copied().find(|&r| r >= need).unwrap_or(*sizes.last().expect("AF_DECODE_SHAPES covers every bucket"));
        let chunks = need.div_ceil(rows);
        let blocks = p.batch_size * p.num_kv_heads * chunks;
        // Enough splits to put ~4 blocks on every SM with at least 128 keys per split, and never
        // more than DC_MAXK keys per split (the kernel keeps a split's logits in shared memory).
        // Under a sliding window a block reads the keys of its queries' windows only.
        let keys = p.max_visible_keys();
        let want = (4 * props.sm_count).div_ceil(blocks.max(1));
        let splits = want.clamp(1, keys.div_ceil(128).max(1)).max(keys.div_ceil(DC_MAXK));
        return Ok(AttnLaunch::Decode {
            kernel: Kernel::Decode { dim: dmax as u16, rows: rows as u8, rope, dtype },
            rows_per_block: rows,
            splits,
            stages: 1,
            block: DC_THREADS,
            shared: 0,
            max_keys_per_split: Some(DC_MAXK),
            merge,
        });
    }
    // sm_90 devices: the warpgroup-MMA prefill where it applies (its loads are TMA boxes of
    // contiguous rows; queries as given; 16-bit K/V), the mma.sync one for the rest.
    let contiguous = !matches!(p.layout, Some(CacheLayout::Paged { .. }));
    if mma_ok && props.wgmma && !qrope && !fp8 && contiguous && WGMMA_PREFILL_DIMS.contains(&d) {
        let shared = wgmma_shared_bytes(d);
        if shared <= props.smem_per_block_optin {
            return Ok(AttnLaunch::Tiled { kernel: Kernel::WgPrefill { dim: d as u16, dtype }, tile_rows: WG_BM, block: WG_THREADS, shared });
        }
    }
    if mma_ok && MMA_PREFILL_DIMS.contains(&d) {
        let shared = mma_prefill_shared_bytes(d, props.vendor);
        if shared <= props.smem_per_block_optin {
            return Ok(AttnLaunch::Tiled { kernel: Kernel::MmaPrefill { dim: d as u16, qrope, dtype, fp8 }, tile_rows: mma_tile_rows(d), block: MMA_GROUPS * warp, shared });
        }
    }
    if fp8 {
        return Err(vec![Reason::Fp8Cache { why: "the matrix-core kernels do not fit this GPU's shared memory" }]);
    }
    Ok(AttnLaunch::Tiled { kernel: Kernel::Prefill { dim: dmax as u16, rope: rope != InKernelRope::None, dtype }, tile_rows: PF_BR, block: PF_THREADS, shared: 0 })
}

#[cfg(test)]
mod tests;
