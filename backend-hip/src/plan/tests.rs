//! Plans for the limits of real parts (no GPU needed): every accepted problem fits the device,
//! every kernel a plan can choose is compiled, and the per-device choices the issue named.

use std::collections::HashSet;

use attnforge_api::{CacheLayout, DType, Op, ProblemDesc, RopeConfig, RopeScaling};

use super::*;
use crate::runtime::launch::attention::AttnLaunch;

fn nvidia(name: &str, arch: &str, sms: usize, optin: usize, per_sm: usize) -> DeviceProps {
    DeviceProps {
        vendor: Vendor::Nvidia,
        name: name.into(),
        arch: arch.into(),
        sm_count: sms,
        warp_size: 32,
        max_threads_per_block: 1024,
        smem_per_block_optin: optin,
        smem_per_sm: per_sm,
        max_grid: [i32::MAX as u64, 65_535, 65_535],
        matrix_cores: true,
        wgmma: arch == "sm_90",
    }
}

fn amd(name: &str, arch: &str, cus: usize, warp: usize) -> DeviceProps {
    DeviceProps {
        vendor: Vendor::Amd,
        name: name.into(),
        arch: arch.into(),
        sm_count: cus,
        warp_size: warp,
        max_threads_per_block: 1024,
        smem_per_block_optin: 65_536,
        smem_per_sm: 65_536,
        max_grid: [i32::MAX as u64, 65_536, 65_536],
        matrix_cores: warp == 64,
        wgmma: false,
    }
}

/// The parts the issue names, with their datasheet limits.
fn devices() -> Vec<DeviceProps> {
    vec![
        nvidia("H100", "sm_90", 132, 232_448, 233_472),
        nvidia("A100", "sm_80", 108, 166_912, 167_936),
        nvidia("L4", "sm_89", 58, 101_376, 102_400),
        nvidia("RTX 4090", "sm_89", 128, 101_376, 102_400),
        nvidia("RTX 3090", "sm_86", 82, 101_376, 102_400),
        nvidia("RTX 5090", "sm_120", 170, 101_376, 102_400),
        amd("MI250", "gfx90a", 104, 64),
        amd("RX 6800", "gfx1030", 60, 32),
    ]
}

const STRATEGIES: [Strategy; 4] = [Strategy::Flash, Strategy::Hybrid, Strategy::Fused, Strategy::Separate];

fn problem(dtype: DType, (h, hk): (usize, usize), d: usize, batch: usize, q: usize, kv: usize, layout: Option<CacheLayout>) -> ProblemDesc {
    ProblemDesc { dtype, num_heads: h, num_kv_heads: hk, head_dim: d, rope: Some(RopeConfig::new(d, 10000.0, 1 << 20)), layout, kv_dtype: None, causal: true, batch_size: batch, max_q_len: q, max_kv_len: kv, window: None }
}

/// Every (device, strategy, op, problem) of a grid wide enough to reach every kernel.
fn grid() -> Vec<(DeviceProps, Strategy, Op, ProblemDesc)> {
    let mut v = Vec::new();
    let layouts = [None, Some(CacheLayout::Contiguous { capacity: 1 << 17 }), Some(CacheLayout::Paged { page_size: 16, num_pages: 1 << 16 })];
    for dev in devices() {
        for strategy in STRATEGIES {
            for op in Op::ALL {
                for dtype in DType::ALL {
                    for d in [32usize, 64, 80, 128, 192, 256, 512, 4096, 72, 8192] {
                        for heads in [(1usize, 1usize), (32, 8), (16, 1), (70_000, 70_000)] {
                            for (batch, q, kv) in [(1usize, 1usize, 4096usize), (16, 1, 8192), (64, 4, 131_072), (1, 5, 5), (4, 1000, 1000), (2, 64, 3000)] {
                                for layout in layouts {
                                    let p = problem(dtype, heads, d, batch, q, kv, layout);
                                    if p.validate().is_ok() {
                                        v.push((dev.clone(), strategy, op, p));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // FP8 pools: every strategy, the ops on a cache, head dims in and out of the matrix-core kernels.
    for dev in devices() {
        for strategy in STRATEGIES {
            for op in [Op::KvAppend, Op::Attention, Op::Step] {
                for dtype in [DType::F16, DType::BF16] {
                    for d in [64usize, 96, 128, 256] {
                        for (batch, q, kv) in [(16usize, 1usize, 8192usize), (1, 3, 3000), (2, 600, 4096)] {
                            for layout in &layouts[1..] {
                                let mut p = problem(dtype, (32, 8), d, batch, q, kv, *layout);
                                p.kv_dtype = Some(DType::F8E4M3);
                                if p.validate().is_ok() {
                                    v.push((dev.clone(), strategy, op, p));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // RoPE variety: partial rotary (down to one pair) and both pairings, for the ops that rotate.
    for dev in devices() {
        for dtype in DType::ALL {
            for d in [32usize, 64, 128, 256] {
                for rotary in [d, d / 2, d / 4, 2, 4, 12] {
                    for style in [attnforge_api::RopeStyle::HalfSplit, attnforge_api::RopeStyle::Interleaved] {
                        for op in [Op::Rope, Op::Step, Op::Shift] {
                            let mut p = problem(dtype, (8, 2), d, 2, 3, 40, layouts[1]);
                            p.rope = Some(RopeConfig { rotary_dim: rotary, style, ..RopeConfig::new(d, 1e4, 4096) });
                            v.push((dev.clone(), Strategy::Flash, op, p));
                        }
                    }
                }
            }
        }
    }
    v
}

fn kernels_of(p: &OpPlan) -> Vec<Kernel> {
    let mut k = Vec::new();
    let att = |a: &AttnLaunch, k: &mut Vec<Kernel>| match a {
        AttnLaunch::Tiled { kernel, .. } | AttnLaunch::Wide { kernel } => k.push(*kernel),
        AttnLaunch::Decode { kernel, merge, .. } => k.extend([*kernel, *merge]),
        AttnLaunch::Separate { scores, softmax, pv } => k.extend([*scores, *softmax, *pv]),
    };
    match p {
        OpPlan::Rope(r) => k.push(r.kernel),
        OpPlan::Append(kernel) | OpPlan::MergeStates(kernel) => k.push(*kernel),
        OpPlan::Attention(a) => att(a, &mut k),
        OpPlan::Step { rope, append, attention } => {
            k.extend(rope.iter().map(|r| r.kernel));
            k.extend(append.iter().copied());
            att(attention, &mut k);
        }
    }
    k
}

/// Checks one accepted attention launch against the device and the problem.
fn fits(dev: &DeviceProps, p: &ProblemDesc, a: &AttnLaunch) -> Result<(), String> {
    let y = dev.max_grid[1];
    match a {
        AttnLaunch::Tiled { kernel, tile_rows, block, shared } => {
            if *shared > dev.smem_per_block_optin || *block > dev.max_threads_per_block || p.num_heads as u64 > y || *tile_rows == 0 {
                return Err(format!("tiled {kernel:?}: block {block}, {shared} B, heads {}", p.num_heads));
            }
            if let Kernel::WgPrefill { dim, .. } = kernel {
                if *dim as usize != p.head_dim || !dev.wgmma || *block != WG_THREADS || *shared != wgmma_shared_bytes(p.head_dim) || matches!(p.layout, Some(CacheLayout::Paged { .. })) || p.kv_dtype.is_some() {
                    return Err(format!("{kernel:?} for head_dim {} on {}", p.head_dim, dev.name));
                }
            }
            if let Kernel::MmaPrefill { dim, fp8, .. } = kernel {
                if *dim as usize != p.head_dim || *fp8 != p.kv_dtype.is_some() || !dev.matrix_cores || *block != MMA_GROUPS * dev.warp_size || *shared != mma_prefill_shared_bytes(p.head_dim, dev.vendor) {
                    return Err(format!("{kernel:?} for head_dim {} on {}", p.head_dim, dev.name));
                }
            }
        }
        AttnLaunch::Decode { kernel, rows_per_block, splits, stages, block, shared, max_keys_per_split, .. } => {
            let chunks = (p.num_heads / p.num_kv_heads * p.max_q_len).div_ceil(*rows_per_block);
            let x = (p.batch_size * p.num_kv_heads * splits) as u64;
            if *shared > dev.smem_per_block_optin || *shared + 1024 > dev.smem_per_sm + 1024 || *block > dev.max_threads_per_block || x > dev.max_grid[0] || chunks as u64 > y {
                return Err(format!("decode {kernel:?}: {shared} B, grid ({x}, {chunks})"));
            }
            if max_keys_per_split.is_some_and(|m| p.max_kv_len.div_ceil(*splits) > m) {
                return Err(format!("decode {kernel:?}: {splits} splits of {} keys", p.max_kv_len));
            }
            if let Kernel::MmaDecode { dim, fp8, .. } = kernel {
                let bytes = if *fp8 { mma_decode_fp8_shared_bytes(p.head_dim, *stages, dev.vendor) } else { mma_decode_shared_bytes(p.head_dim, *stages) };
                if *dim as usize != p.head_dim || !dev.matrix_cores || *shared != bytes || *fp8 != p.kv_dtype.is_some() {
                    return Err(format!("{kernel:?} for head_dim {} on {}", p.head_dim, dev.name));
                }
            }
        }
        AttnLaunch::Wide { .. } | AttnLaunch::Separate { .. } => {
            if p.num_heads as u64 > y {
                return Err(format!("{} heads in grid.y", p.num_heads));
            }
        }
    }
    Ok(())
}

#[test]
fn every_accepted_problem_fits_its_device_and_every_chosen_kernel_is_compiled() {
    let all: HashSet<Kernel> = Kernel::all().into_iter().collect();
    let mut chosen: HashSet<Kernel> = HashSet::new();
    let (mut accepted, mut refused) = (0, 0);
    for (dev, strategy, op, p) in grid() {
        match plan(&dev, strategy, op, &p) {
            Ok(plan) => {
                accepted += 1;
                for k in kernels_of(&plan) {
                    assert!(all.contains(&k), "{} chose {k:?}, which is not compiled", dev.name);
                    chosen.insert(k);
                }
                let a = match &plan {
                    OpPlan::Attention(a) | OpPlan::Step { attention: a, .. } => Some(a),
                    _ => None,
                };
                if let Some(a) = a {
                    if let Err(e) = fits(&dev, &p, a) {
                        panic!("{} {strategy:?} {op:?} {p:?}: {e}", dev.name);
                    }
                }
            }
            Err(reasons) => {
                refused += 1;
                assert!(!reasons.is_empty());
                assert!(reasons.iter().all(|r| !r.to_string().is_empty()));
            }
        }
    }
    assert!(accepted > 10_000 && refused > 1_000, "{accepted} accepted, {refused} refused");
    let unreachable: Vec<String> = all.difference(&chosen).map(|k| k.symbol()).collect();
    // Compiled but never chosen by a plan: fill (the API's `fill`, not an op) and rope with 8
    // pairs per thread in f32 (a thread moves 16 bytes: 4 pairs).
    assert!(unreachable.iter().all(|s| s.starts_with("fill_") || s.starts_with("rope_v8h_f32") || s.starts_with("rope_v8i_f32")), "never chosen: {unreachable:?}");
}

fn decode_plan(dev: &DeviceProps, dtype: DType, d: usize, batch: usize, kv: usize) -> AttnLaunch {
    let p = problem(dtype, (32, 8), d, batch, 1, kv, Some(CacheLayout::Contiguous { capacity: kv }));
    match plan(dev, Strategy::Flash, Op::Attention, &p).unwrap() {
        OpPlan::Attention(a) => a,
        other => panic!("{other:?}"),
    }
}

#[test]
fn matrix_core_decode_fits_parts_with_99_kib_per_block() {
    for dev in devices() {
        let a = decode_plan(&dev, DType::BF16, 128, 16, 8192);
        let AttnLaunch::Decode { kernel, stages, shared, .. } = a else { panic!("{a:?}") };
        match dev.name.as_str() {
            // 227 / 163 KiB: the three-stage pipeline (108,800 B).
            "H100" | "A100" => assert_eq!((stages, shared), (3, 108_800), "{}", dev.name),
            // 99 KiB per block: two stages (73,984 B); three would not launch.
            "L4" | "RTX 4090" | "RTX 3090" | "RTX 5090" => assert_eq!((stages, shared), (2, 73_984), "{}", dev.name),
            // AMD copies are synchronous: one stage.
            "MI250" => assert_eq!(stages, 1),
            // No matrix cores: the vector kernel.
            "RX 6800" => assert!(matches!(kernel, Kernel::Decode { .. }), "{kernel:?}"),
            other => panic!("{other}"),
        }
        assert!(shared <= dev.smem_per_block_optin, "{}: {shared} B", dev.name);
    }
}

#[test]
fn decode_splits_come_from_the_devices_shared_memory() {
    let h100 = &devices()[0];
    let a100 = &devices()[1];
    assert_eq!(blocks_per_sm(h100, 108_800), 2);
    assert_eq!(blocks_per_sm(a100, 108_800), 1, "A100 holds one 108,800-byte block per SM, not two");
    for (dev, slots) in [(h100, 132 * 2), (a100, 108)] {
        let AttnLaunch::Decode { splits, .. } = decode_plan(dev, DType::BF16, 128, 1, 131_072) else { panic!() };
        assert_eq!(splits, mma_decode_splits(8, 131_072, slots), "{}", dev.name);
    }
    // H100, head_dim 128: the shapes the split model was tuned on.
    let slots = 264;
    assert_eq!(mma_decode_splits(8, 131072, slots), 33);
    assert_eq!(mma_decode_splits(8, 8192, slots), 31);
    assert_eq!(mma_decode_splits(128, 8192, slots), 2);
    assert_eq!(mma_decode_splits(512, 131072, slots), 1);
    assert_eq!(mma_decode_splits(8, 100, slots), 1);
    for blocks in [1, 3, 16, 128, 1000] {
        for kv in [1, 255, 256, 4097, 100_000] {
            let s = mma_decode_splits(blocks, kv, slots);
            assert!(s >= 1 && s <= kv.div_ceil(256).max(1));
        }
    }
}

/// A sliding window's decode splits its window's keys, not the context's: at L = 131072 with a
/// window of 4096 the plan is the one of a 4096-key context, on every device and both kernels.
#[test]
fn a_sliding_window_decode_is_split_like_a_context_of_the_window() {
    for dev in devices() {
        for dtype in [DType::BF16, DType::F32] {
            let mut p = problem(dtype, (32, 8), 128, 1, 1, 131_072, Some(CacheLayout::Contiguous { capacity: 131_072 }));
            p.window = Some(4096);
            assert_eq!(p.max_visible_keys(), 4096);
            let short = problem(dtype, (32, 8), 128, 1, 1, 4096, Some(CacheLayout::Contiguous { capacity: 4096 }));
            let split = |p: &ProblemDesc| match plan(&dev, Strategy::Flash, Op::Attention, p).unwrap() {
                OpPlan::Attention(AttnLaunch::Decode { splits, .. }) => splits,
                other => panic!("{other:?}"),
            };
            assert_eq!(split(&p), split(&short), "{} {dtype:?}", dev.name);
        }
    }
}

#[test]
fn reasons_are_typed_and_name_the_limit() {
    let h100 = &devices()[0];
    let layout = Some(CacheLayout::Contiguous { capacity: 64 });
    let reasons = |s: Strategy, op: Op, p: &ProblemDesc| plan(h100, s, op, p).unwrap_err();
    // More heads than grid.y: refused by the plan, never a failed launch.
    let many = problem(DType::BF16, (70_000, 70_000), 128, 1, 300, 300, layout);
    assert_eq!(reasons(Strategy::Flash, Op::Attention, &many), vec![Reason::TooManyHeads { heads: 70_000, limit: 65_535 }]);
    let odd = problem(DType::F16, (8, 8), 72, 1, 1, 8, layout);
    assert_eq!(reasons(Strategy::Flash, Op::Attention, &odd), vec![Reason::HeadDimMultiple { head_dim: 72 }]);
    assert!(plan(h100, Strategy::Separate, Op::Attention, &odd).is_ok(), "hip-separate's attention takes any even head_dim");
    assert_eq!(reasons(Strategy::Separate, Op::Step, &odd), vec![Reason::HeadDimMultiple { head_dim: 72 }], "its step's RoPE does not");
    let huge = problem(DType::F16, (8, 8), 8192, 1, 1, 8, layout);
    assert!(matches!(reasons(Strategy::Flash, Op::Attention, &huge)[..], [Reason::HeadDimTooLarge { max: 4096, .. }]));
    let mut dynamic = problem(DType::F16, (8, 8), 128, 1, 1, 8, layout);
    dynamic.rope = Some(RopeConfig { scaling: RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 16 }, ..RopeConfig::new(128, 1e4, 1 << 20) });
    assert_eq!(reasons(Strategy::Fused, Op::Step, &dynamic), vec![Reason::LengthDependentRope { scaling: "dynamic-ntk" }]);
    assert!(plan(h100, Strategy::Hybrid, Op::Step, &dynamic).is_ok());
    // One reason per requirement, no duplicates across the step's parts.
    let both = problem(DType::F16, (70_000, 70_000), 72, 1, 1, 8, layout);
    assert_eq!(reasons(Strategy::Flash, Op::Step, &both), vec![Reason::HeadDimMultiple { head_dim: 72 }, Reason::TooManyHeads { heads: 70_000, limit: 65_535 }]);
    assert!(Reason::TooManyHeads { heads: 70_000, limit: 65_535 }.to_string().contains("65535"));
}

#[test]
fn the_plan_picks_the_path_from_the_device() {
    let by_name = |n: &str| devices().into_iter().find(|d| d.name == n).unwrap();
    let prefill = |dev: &DeviceProps, dtype: DType, s: Strategy, op: Op| {
        let p = problem(dtype, (32, 8), 128, 1, 4096, 4096, Some(CacheLayout::Contiguous { capacity: 4096 }));
        plan(dev, s, op, &p).unwrap()
    };
    let tiled = |p: OpPlan| match p {
        OpPlan::Attention(AttnLaunch::Tiled { kernel, shared, .. }) | OpPlan::Step { attention: AttnLaunch::Tiled { kernel, shared, .. }, .. } => (kernel, shared),
        other => panic!("{other:?}"),
    };
    // sm_90 takes the warpgroup-MMA prefill over contiguous rows, sm_80 the mma.sync one.
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Flash, Op::Attention)), (Kernel::WgPrefill { dim: 128, .. }, 164_864)));
    assert!(matches!(tiled(prefill(&by_name("A100"), DType::BF16, Strategy::Flash, Op::Attention)), (Kernel::MmaPrefill { dim: 128, qrope: false, .. }, 69_632)));
    let paged = problem(DType::BF16, (32, 8), 128, 1, 4096, 4096, Some(CacheLayout::Paged { page_size: 16, num_pages: 256 }));
    assert!(matches!(tiled(plan(&by_name("H100"), Strategy::Flash, Op::Attention, &paged).unwrap()).0, Kernel::MmaPrefill { qrope: false, .. }), "pages are not TMA boxes");
    let d256 = problem(DType::BF16, (32, 8), 256, 1, 4096, 4096, None);
    assert!(matches!(tiled(plan(&by_name("H100"), Strategy::Flash, Op::AttentionPlain, &d256).unwrap()).0, Kernel::MmaPrefill { dim: 256, .. }));
    assert!(matches!(tiled(prefill(&by_name("MI250"), DType::BF16, Strategy::Flash, Op::Attention)), (Kernel::MmaPrefill { dim: 128, .. }, 52_224)));
    assert!(matches!(tiled(prefill(&by_name("RX 6800"), DType::BF16, Strategy::Flash, Op::Attention)).0, Kernel::Prefill { dim: 128, rope: false, .. }));
    // Strategies: hybrid rotates Q inside (matrix cores keep it), fused rotates keys too (vector
    // units), f32 stays on the vector units everywhere.
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Hybrid, Op::Step)).0, Kernel::MmaPrefill { qrope: true, .. }));
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Fused, Op::Step)).0, Kernel::Prefill { rope: true, .. }));
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::F32, Strategy::Flash, Op::Attention)).0, Kernel::Prefill { rope: false, .. }));
    // hip-fused's attention over its cache always takes the key-rotating kernels; its plain
    // attention does not.
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Fused, Op::Attention)).0, Kernel::Prefill { rope: true, .. }));
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Fused, Op::AttentionPlain)).0, Kernel::WgPrefill { .. }));
    assert!(matches!(tiled(prefill(&by_name("H100"), DType::BF16, Strategy::Hybrid, Op::Attention)).0, Kernel::WgPrefill { .. }), "no RoPE inside: any strategy's attention");
}

#[test]
fn fp8_pools_take_the_matrix_core_kernels_or_a_reason() {
    let h100 = devices().into_iter().find(|d| d.name == "H100").unwrap();
    let fp8 = |d: usize, q: usize| {
        let mut p = problem(DType::BF16, (32, 8), d, 16, q, 8192, Some(CacheLayout::Paged { page_size: 16, num_pages: 1 << 14 }));
        p.kv_dtype = Some(DType::F8E4M3);
        p
    };
    // Decode and prefill over FP8 pools: the e4m3 matrix-core kernels, with the scales folded in;
    // the decode's e4m3 stages take less shared memory than 16-bit ones.
    for s in [Strategy::Flash, Strategy::Hybrid, Strategy::Fused] {
        match plan(&h100, s, Op::Attention, &fp8(128, 1)).unwrap() {
            OpPlan::Attention(AttnLaunch::Decode { kernel: Kernel::MmaDecode { dim: 128, qrope: false, fp8: true, .. }, shared, stages: 3, splits, .. }) => {
                // The splits fill one wave of the blocks the launch bound keeps resident (16
                // entries x 8 kv heads x 3 splits on 132 SMs x 3), not of the four that shared
                // memory alone would allow (4 splits: a second wave, 29 % full).
                assert_eq!(splits, 3, "{s:?}");
                // Three e4m3 stages, converted in registers: at least three blocks per SM fit
                // (bf16's three stages: two); AMD keeps a 16-bit tile as well.
                assert_eq!(shared, mma_decode_fp8_shared_bytes(128, 3, Vendor::Nvidia));
                assert!(blocks_per_sm(&h100, shared) >= MMA_DC_FP8_BLOCKS);
                assert_eq!(blocks_per_sm(&h100, mma_decode_shared_bytes(128, 3)), 2);
                assert_eq!(mma_decode_fp8_shared_bytes(128, 3, Vendor::Amd), shared + MMA_DC_BC * (128 + MMA_PAD) * 2);
            }
            other => panic!("{s:?}: {other:?}"),
        }
        assert!(matches!(plan(&h100, s, Op::Attention, &fp8(64, 200)).unwrap(), OpPlan::Attention(AttnLaunch::Tiled { kernel: Kernel::MmaPrefill { dim: 64, fp8: true, .. }, .. })));
        assert_eq!(plan(&h100, s, Op::KvAppend, &fp8(128, 1)).unwrap(), OpPlan::Append(Kernel::KvAppend { dtype: DType::BF16, fp8: true }));
    }
    // hip-flash's and hip-hybrid's step: RoPE in place, the quantising append, attention that
    // rotates nothing.
    for s in [Strategy::Flash, Strategy::Hybrid] {
        match plan(&h100, s, Op::Step, &fp8(128, 1)).unwrap() {
            OpPlan::Step { rope: Some(_), append: Some(Kernel::KvAppend { fp8: true, .. }), attention: AttnLaunch::Decode { kernel: Kernel::MmaDecode { qrope: false, fp8: true, .. }, .. } } => {}
            other => panic!("{s:?}: {other:?}"),
        }
    }
    // What cannot run says why.
    let why = |s: Strategy, op: Op, p: &ProblemDesc| plan(&h100, s, op, p).unwrap_err();
    assert!(why(Strategy::Fused, Op::Step, &fp8(128, 1)).iter().any(|r| matches!(r, Reason::Fp8Cache { .. })));
    assert!(why(Strategy::Separate, Op::Attention, &fp8(128, 1)).iter().any(|r| matches!(r, Reason::Fp8Cache { .. })));
    for d in [96, 256] {
        let r = why(Strategy::Flash, Op::Attention, &fp8(d, 1));
        assert!(r.iter().any(|r| r.to_string().contains("head_dim 64 or 128")), "{r:?}");
    }
    let mut f32p = fp8(128, 1);
    f32p.dtype = DType::F32;
    assert!(f32p.validate().is_err(), "FP8 caches hold f16/bf16 models' K/V");
}
