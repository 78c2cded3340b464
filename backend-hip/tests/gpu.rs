//! hip-flash on a real GPU: the conformance suite in one call, device errors, and the fused
//! step. Without a GPU (or without kernels) each test prints why it skipped and passes; on a
//! GPU machine the same tests run for real.

use attnforge_api::registry;
use attnforge_api::{DType, Error, Op};
use serial_test::serial;

fn gpu_backend(name: &str) -> Option<attnforge_api::Backend> {
    attnforge_hip::link();
    match registry::get(name) {
        Ok(b) => Some(b),
        Err(e) => {
            // Straight to the stderr handle: libtest captures println!, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {name} GPU test (no GPU here): {e}");
            None
        }
    }
}

#[test]
#[serial]
fn hip_flash_passes_conformance() {
    let Some(be) = gpu_backend("hip-flash") else { return };
    let cfg = attnforge_conformance::Config { cases: 24, ..attnforge_conformance::Config::default() };
    let report = attnforge_conformance::check_backend(&be, &cfg);
    println!("{}", report.to_markdown());
    assert!(report.passed());
    for c in report.cells.iter().filter(|c| c.op != "errors") {
        assert!(c.passed > 0, "{} {} ran no supported case", c.op, c.dtype);
    }
}

#[test]
#[serial]
fn unsupported_problems_say_why() {
    let Some(be) = gpu_backend("hip-flash") else { return };
    // The RoPE config's head_dim must match the problem's (ProblemDesc::validate checks it).
    let problem = |d: usize| attnforge_api::ProblemDesc::step(DType::BF16, 8, 8, attnforge_api::RopeConfig::new(d, 1e4, 64), attnforge_api::CacheLayout::Contiguous { capacity: 8 });
    let e = be.supports(Op::Attention, &problem(8192)).unwrap_err();
    assert!(e.to_string().contains("head_dim 8192 > 4096"), "{e}");
    assert!(be.supports(Op::Attention, &problem(512)).is_ok(), "head_dim 512 runs on the wide-head kernel");
    let p = problem(72);
    let e = be.supports(Op::Attention, &p).unwrap_err();
    assert!(e.to_string().contains("multiple of 16"), "{e}");
    assert!(be.supports(Op::Rope, &problem(512)).is_ok());
}

#[test]
#[serial]
fn device_errors_are_typed() {
    let Some(be) = gpu_backend("hip-flash") else { return };
    // 2^46 bytes: more than any GPU has.
    let e = be.alloc(&[1 << 44], DType::F32).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { bytes, .. } if bytes == 1 << 46), "{e}");
    println!("{e}");
    // A CPU tensor handed to the GPU backend.
    let cpu = attnforge_cpu::CpuBackend::handle();
    let t = cpu.upload(&[1.0; 4], &[4], DType::F32).unwrap();
    assert_eq!(be.download(&t).unwrap_err().kind(), "WrongDevice");
}

/// CI sets ATTNFORGE_REQUIRE_KERNELS=1 after installing both toolchains: then every wanted
/// vendor's code objects must be embedded, every kernel present: NVIDIA's (sm_80/sm_90 + PTX)
/// always, AMD's (gfx90a/gfx1030) when ROCm is wanted (the `rocm` feature or
/// ATTNFORGE_AMD_ARCHS set: CI builds them in its `--features rocm` step).
#[test]
fn kernels_embedded_for_every_wanted_vendor_when_required() {
    let nvidia = attnforge_hip::kernels::NVIDIA;
    let amd = attnforge_hip::kernels::AMD;
    println!("NVIDIA archs {}: {:?}", attnforge_hip::kernels::CUDA_ARCHS, nvidia.map(|m| m.iter().map(|(n, b)| (*n, b.len())).collect::<Vec<_>>()));
    println!("AMD archs {}: {:?}", attnforge_hip::kernels::AMD_ARCHS, amd.map(|m| m.iter().map(|(n, b)| (*n, b.len())).collect::<Vec<_>>()));
    if std::env::var("ATTNFORGE_REQUIRE_KERNELS").as_deref() != Ok("1") {
        return;
    }
    let amd_wanted = cfg!(feature = "rocm") || std::env::var("ATTNFORGE_AMD_ARCHS").is_ok_and(|a| a.trim() != "none");
    let wanted = [("NVIDIA", nvidia, attnforge_hip::kernels::NVIDIA_MISSING), ("AMD", amd, attnforge_hip::kernels::AMD_MISSING)];
    for (vendor, mods, why) in wanted.into_iter().filter(|(v, _, _)| *v == "NVIDIA" || amd_wanted) {
        let mods = mods.unwrap_or_else(|| panic!("{vendor} kernels missing: {why}"));
        // Every kernels/*.hip, whatever files exist (a fixed list went stale once).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut want: Vec<String> = std::fs::read_dir(&dir)
            .expect("kernels/ folder")
            .filter_map(|e| e.ok()?.path().file_name()?.to_str()?.strip_suffix(".hip").map(String::from))
            .collect();
        want.sort();
        let mut names: Vec<String> = mods.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(names, want, "{vendor}");
        assert!(want.len() >= 6, "kernels/ should hold at least six sources, found {want:?}");
        assert!(mods.iter().all(|(_, b)| b.len() > 1000), "{vendor} code objects look empty");
    }
}

/// Long problems the random suite does not reach (it keeps sizes small for the CPU reference):
/// matrix-core prefill over many query and key tiles, and matrix-core decode split over the KV
/// length (merged by attn_merge), on hip-flash and hip-hybrid (Q rotated inside), f16/bf16,
/// head dims 64/128/256, GQA and MHA, contiguous and paged caches, against the reference.
#[test]
#[serial]
fn long_problems_match_the_reference() {
    use attnforge_conformance::case::{Case, SeqCase};
    use attnforge_conformance::ops::Outcome;
    let cpu = registry::get("cpu").expect("the reference is always registered");
    for name in ["hip-flash", "hip-hybrid"] {
        let Some(be) = gpu_backend(name) else { return };
        let mut checked = 0;
        for dtype in [DType::F16, DType::BF16] {
            for d in [64usize, 128, 256] {
                for (heads, kv_heads) in [(8usize, 2usize), (4, 4)] {
                    // (op, cached, q_len, page size): decode split over thousands of keys, a few
                    // queries (decode kernel, q_len <= 4), prefill with a prefix, from empty. The
                    // composite step (hip-hybrid's Q rotation inside attention) gets shorter
                    // caches: its reference check appends the prefix step by step.
                    let shapes = [
                        (Op::Attention, 3000usize, 1usize, None),
                        (Op::Attention, 1900, 3, Some(16usize)),
                        (Op::Attention, 300, 150, None),
                        (Op::Attention, 0, 230, Some(32)),
                        (Op::Step, 700, 1, None),
                        (Op::Step, 500, 3, Some(16)),
                        (Op::Step, 200, 150, None),
                        (Op::Step, 0, 270, Some(32)),
                        // Cascade: a long shared prefix (unmasked) and the new tokens (causal),
                        // each with its lse, merged (merge_states).
                        (Op::MergeStates, 2500, 1, None),
                        (Op::MergeStates, 400, 200, None),
                        // A long prefill (S = 4096, 32 query tiles, 32 key tiles for the last),
                        // one sequence, MQA: on sm_90 the warpgroup-MMA kernel.
                        (Op::Attention, 0, 4096, None),
                    ];
                    for (i, &(op, cached, q_len, page_size)) in shapes.iter().enumerate() {
                        if d != 128 && heads == 4 {
                            continue; // MHA at head_dim 128 only (the reference's time)
                        }
                        let long = q_len >= 4096;
                        if long && (d == 256 || heads == 4) {
                            continue; // the reference's time: head dims 64 and 128, once each
                        }
                        let (heads, kv_heads) = if long { (4, 1) } else { (heads, kv_heads) };
                        // Sliding windows that cut: across the decode's splits, and key tiles
                        // of a multi-tile prefill skipped wholly.
                        let window = match i {
                            0 => Some(1000),
                            2 => Some(200),
                            3 => Some(100),
                            6 => Some(64),
                            _ => None,
                        };
                        let case = Case {
                            cross: false,
                            softcap: None,
                            window,
                            // Sinks on a split decode (the merge adds them) and a multi-tile prefill.
                            sinks: matches!(i, 0 | 1 | 2 | 5 | 9),
                            // Each row's lse from a split decode (the merge writes it), the
                            // matrix-core decode and multi-tile prefills.
                            lse: matches!(i, 0 | 1 | 2 | 3),
                            // FP8 caches (head dims 64 and 128, the matrix-core kernels'): a
                            // split decode over 3000 keys, a prefill over a prefix, the step's
                            // decode and prefill.
                            fp8: d != 256 && matches!(i, 0 | 2 | 5 | 7),
                            dtype,
                            heads,
                            kv_heads,
                            rope: attnforge_api::RopeConfig::new(d, 10000.0, 8192),
                            page_size,
                            causal: true,
                            seqs: if long { vec![SeqCase { cached, q_len }] } else { vec![SeqCase { cached, q_len }, SeqCase { cached: cached / 3, q_len }] },
                            amplitude: 1.0,
                            scale: 1.0,
                            seed: 0xA77 + i as u64,
                        };
                        // Owned and engine views (strided q/k/v/out, pools viewed out of a
                        // two-layer allocation, shared pages) alternate over shapes and head dims.
                        let path = if (i + d / 64) % 2 == 0 { attnforge_conformance::setup::Path::Owned } else { attnforge_conformance::setup::Path::Views };
                        match attnforge_conformance::ops::check(op, path, &be, &cpu, &case) {
                            Outcome::Pass => checked += 1,
                            Outcome::Unsupported(why) => panic!("{name} declined {op:?} {case:?}: {why:?}"),
                            Outcome::Fail(m) => panic!("{name} {op:?} {path:?} {dtype:?} D={d} H={heads}/{kv_heads} cached={cached} q={q_len}: {m}"),
                        }
                    }
                }
            }
        }
        println!("{name}: {checked} long problems match the reference");
    }
}

/// Device memory handed out through the API reads as zeros until written (never whatever the
/// allocator returned), and a hip-fused cache's slot positions start "stored rotated".
#[test]
#[serial]
fn device_memory_starts_zeroed() {
    for name in ["hip-flash", "hip-fused"] {
        let Some(be) = gpu_backend(name) else { return };
        let t = be.alloc(&[3, 5, 64], DType::BF16).unwrap();
        assert!(be.download(&t).unwrap().iter().all(|&x| x == 0.0));
        let spec = attnforge_api::KvCacheSpec { num_seqs: 2, num_kv_heads: 2, head_dim: 64, dtype: DType::F16, kv_dtype: None, layout: attnforge_api::CacheLayout::Paged { page_size: 16, num_pages: 5 } };
        let c = be.create_kv_cache(&spec).unwrap();
        let pool = be.read_kv_pool(&c).unwrap();
        assert!(pool.k.iter().chain(&pool.v).all(|&x| x == 0.0), "{name}");
    }
}

/// Tensor parallelism on every visible GPU (one instance per device, one thread each; N = 1 on
/// a single-GPU machine runs the same code path), for f32 and bf16.
#[test]
#[serial]
fn sharded_over_every_gpu_matches_the_reference() {
    let Some(_) = gpu_backend("hip-flash") else { return };
    let n = registry::device_count("hip-flash").unwrap();
    let reference = registry::get("cpu").unwrap();
    for name in ["hip-flash", "hip-hybrid"] {
        let shards: Vec<_> = (0..n).map(|i| registry::get_on(name, i).unwrap()).collect();
        for dtype in [DType::F32, DType::BF16] {
            let p = attnforge_conformance::sharded::ShardProblem { dtype, ..Default::default() };
            let r = attnforge_conformance::sharded::check_sharded(&shards, &reference, &p).unwrap_or_else(|e| panic!("{name} {dtype}: {e}"));
            println!("{name} {dtype}: {n} GPU(s), {} steps, max |err| {:.3e}", r.steps, r.max_abs_err);
        }
    }
    let e = registry::get_on("hip-flash", n).unwrap_err();
    assert_eq!(e.kind(), "NoSuchDevice", "{e}");
}

/// Two instances on one GPU, each with its own stream, driven from two threads at once,
/// compute the same bits as one instance alone; split over the two (as two shards) they match
/// the reference.
#[test]
#[serial]
fn two_instances_on_one_gpu_from_two_threads_match_one() {
    let Some(one) = gpu_backend("hip-flash") else { return };
    let p = attnforge_conformance::sharded::ShardProblem { dtype: DType::BF16, decode_steps: 16, ..Default::default() };
    let alone = attnforge_conformance::sharded::run_all_heads(&one, &p).unwrap();
    let (a, b) = (registry::create_on("hip-flash", 0).unwrap(), registry::create_on("hip-flash", 0).unwrap());
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| attnforge_conformance::sharded::run_all_heads(&a, &p));
        let tb = s.spawn(|| attnforge_conformance::sharded::run_all_heads(&b, &p));
        (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
    });
    for (step, ((x, y), z)) in ra.iter().zip(&rb).zip(&alone).enumerate() {
        attnforge_conformance::tolerance::exact(&format!("instance A, step {step}"), x, z).unwrap();
        attnforge_conformance::tolerance::exact(&format!("instance B, step {step}"), y, z).unwrap();
    }
    // A tensor of one instance is refused by the other (its work is ordered on another stream).
    let t = a.alloc(&[1, 8, 64], DType::BF16).unwrap();
    assert_eq!(b.download(&t).unwrap_err().kind(), "WrongInstance");
    let reference = registry::get("cpu").unwrap();
    attnforge_conformance::sharded::check_sharded(&[a, b], &reference, &p).unwrap();
}

/// The engine's stream: an engine (cudarc here) owns Q/K/V and the outputs in its own device
/// memory and writes new Q/K/V on its own stream every step; attnforge, opened on that stream
/// and viewing those buffers without copies, rotates, appends and attends on the same stream,
/// with no synchronisation in between for 40 steps. Every step's output matches the reference.
#[test]
#[serial]
fn engine_stream_orders_engine_writes_and_attnforge_ops() {
    use attnforge_api::{AttentionParams, Backend, Batch, CacheLayout, KvCacheSpec, RopeConfig, StepInputs};
    use attnforge_hip::{ForeignMemory, ForeignStream, HipBackend, Strategy};
    use cudarc::driver::{CudaContext, CudaSlice, DevicePtr};
    use std::sync::Arc;
    let Some(_) = gpu_backend("hip-flash") else { return };
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    // SAFETY: a live stream of GPU 0's primary context; `stream` outlives the backend (dropped
    // at the end of the test, after `be` and `hb`).
    let fs = unsafe { ForeignStream::from_raw(stream.cu_stream() as *mut std::ffi::c_void) };
    let hb = Arc::new(HipBackend::open_on_stream("hip-flash", Strategy::Flash, 0, fs).unwrap());
    let be = Backend::new(hb.clone());
    let cpu = registry::get("cpu").unwrap();
    let (h, hk, d, steps) = (8usize, 2usize, 64usize, 40usize);
    let rope = RopeConfig::new(d, 10000.0, steps);
    let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: steps } };
    let (mut cache, mut cpu_cache) = (be.create_kv_cache(&spec).unwrap(), cpu.create_kv_cache(&spec).unwrap());
    let mut qb = stream.alloc_zeros::<f32>(h * d).unwrap();
    let mut kb = stream.alloc_zeros::<f32>(hk * d).unwrap();
    let mut vb = stream.alloc_zeros::<f32>(hk * d).unwrap();
    let outs: Vec<CudaSlice<f32>> = (0..steps).map(|_| stream.alloc_zeros::<f32>(h * d).unwrap()).collect();
    let ptr = |s: &CudaSlice<f32>| s.device_ptr(&stream).0;
    // SAFETY: every buffer is the engine's and outlives the views (all work is synchronised
    // before they are dropped); they are written only on `stream`.
    let view = |p: u64, n: usize, shape: &[usize]| hb.borrow(unsafe { ForeignMemory::from_raw(p, 4 * n) }, shape, DType::F32).unwrap();
    let batch = Batch::uniform(1, 1).unwrap();
    let mut rng = attnforge_conformance::rng::Rng::new(77);
    let mut want = Vec::new();
    for (step, out_buf) in outs.iter().enumerate() {
        let (qh, kh, vh) = (rng.normals(h * d, 1.0), rng.normals(hk * d, 1.0), rng.normals(hk * d, 1.0));
        // The engine's writes, queued on its stream (no wait).
        stream.memcpy_htod(&qh, &mut qb).unwrap();
        stream.memcpy_htod(&kh, &mut kb).unwrap();
        stream.memcpy_htod(&vh, &mut vb).unwrap();
        let (mut q, mut k, v) = (view(ptr(&qb), h * d, &[1, h, d]), view(ptr(&kb), hk * d, &[1, hk, d]), view(ptr(&vb), hk * d, &[1, hk, d]));
        let mut out = view(ptr(out_buf), h * d, &[1, h, d]);
        let positions = [step as u32];
        be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut cache, batch: &batch, params: AttentionParams::causal(d), out: &mut out, sinks: None })
            .unwrap();
        // The reference, on the host.
        let (mut cq, mut ck, cv) = (cpu.upload(&qh, &[1, h, d], DType::F32).unwrap(), cpu.upload(&kh, &[1, hk, d], DType::F32).unwrap(), cpu.upload(&vh, &[1, hk, d], DType::F32).unwrap());
        let mut co = cpu.alloc(&[1, h, d], DType::F32).unwrap();
        cpu.rope_append_attend(StepInputs { q: &mut cq, k: &mut ck, v: &cv, positions: &positions, rope: &rope, cache: &mut cpu_cache, batch: &batch, params: AttentionParams::causal(d), out: &mut co, sinks: None })
            .unwrap();
        want.push(cpu.download(&co).unwrap());
    }
    stream.synchronize().unwrap();
    for (step, (w, o)) in want.iter().zip(&outs).enumerate() {
        let got = stream.clone_dtoh(o).unwrap();
        let golden: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        attnforge_conformance::tolerance::compare(&format!("step {step} on the engine's stream"), &got, w, &golden, DType::F32).unwrap();
    }
    drop(be);
    drop(hb);
}

/// Memory borrowed from cudarc for a Rust lifetime: usable while the borrow lasts (views of it
/// too), refused by every op after it ends; a shared borrow is read-only; memory of a stream
/// the instance does not run on, and strides that break 16-byte rows, are refused.
#[cfg(feature = "cudarc")]
#[test]
#[serial]
fn cudarc_borrows_end_with_their_lifetime() {
    use attnforge_api::Backend;
    use attnforge_hip::{ForeignStream, HipBackend, Strategy};
    use cudarc::driver::CudaContext;
    use std::sync::Arc;
    let Some(_) = gpu_backend("hip-flash") else { return };
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let hb = Arc::new(HipBackend::open_on_stream("hip-flash", Strategy::Flash, 0, ForeignStream::from_cudarc(&stream)).unwrap());
    let be = Backend::new(hb.clone());
    let mut buf = stream.alloc_zeros::<f32>(64).unwrap();
    let escaped;
    {
        let mut t = hb.borrow_cudarc_mut(&mut buf, &[4, 16], 16, DType::F32).unwrap();
        be.fill(&mut t, 2.0).unwrap();
        assert_eq!(be.download(&t).unwrap(), vec![2.0; 64]);
        escaped = be.view(&t, 16, &[2, 8], 16).unwrap();
        assert_eq!(be.download(&escaped).unwrap(), vec![2.0; 16]);
    }
    assert_eq!(be.download(&escaped).unwrap_err().kind(), "InvalidArgument", "a view outlived its borrow");
    assert_eq!(stream.clone_dtoh(&buf).unwrap(), vec![2.0; 64], "the engine's memory holds what attnforge wrote");
    let r = hb.borrow_cudarc(&buf, &[64], 1, DType::F32).unwrap();
    assert_eq!(be.download(&r).unwrap(), vec![2.0; 64]);
    let mut r2 = hb.borrow_cudarc(&buf, &[64], 1, DType::F32).unwrap();
    assert_eq!(be.fill(&mut r2, 1.0).unwrap_err().kind(), "InvalidArgument", "written through a shared borrow");
    drop((r, r2));
    let other = ctx.new_stream().unwrap();
    let mut ob = other.alloc_zeros::<f32>(64).unwrap();
    assert_eq!(hb.borrow_cudarc_mut(&mut ob, &[64], 1, DType::F32).unwrap_err().kind(), "InvalidArgument", "memory of another stream");
    assert_eq!(hb.borrow_cudarc_mut(&mut buf, &[3, 16], 17, DType::F32).unwrap_err().kind(), "InvalidArgument", "strided rows 68 bytes apart");
    drop(hb.borrow_cudarc_mut(&mut buf, &[3, 17], 17, DType::F32).unwrap()); // dense: any row length
    let mut halves = stream.alloc_zeros::<u16>(64).unwrap();
    assert_eq!(hb.borrow_cudarc_mut(&mut halves, &[64], 1, DType::F32).unwrap_err().kind(), "InvalidArgument", "u16 as f32");
    stream.synchronize().unwrap();
}

/// A decode step over several layers captured once into a device graph, then replayed for
/// later steps with the plan's metadata rewritten in place (growing lengths, new positions):
/// every layer's output equals a fresh plan's eager `run` of the same step, bit for bit, on
/// every strategy. The captured plan's buffers are carved from a workspace the caller
/// allocated (`plan_in`); the fresh plans allocate their own.
#[test]
#[serial]
fn a_captured_decode_step_replays_with_updated_metadata() {
    use attnforge_api::*;
    for name in ["hip-flash", "hip-hybrid", "hip-fused", "hip-separate"] {
        let Some(be) = gpu_backend(name) else { return };
        assert_eq!(be.graph_support(), GraphSupport::Always);
        let (h, hk, d, b, layers, ps, pages) = (32usize, 8usize, 128usize, 4usize, 4usize, 16usize, 40usize);
        let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: ps, num_pages: b * pages } };
        let rope = RopeConfig::new(d, 10000.0, 4096);
        let params = AttentionParams::causal(d);
        let new_pools = || be.kv_pools(&spec, be.alloc(&spec.pool_shape(), DType::BF16).unwrap(), be.alloc(&spec.pool_shape(), DType::BF16).unwrap()).unwrap();
        let (mut pa, mut pb): (Vec<KvPools>, Vec<KvPools>) = ((0..layers).map(|_| new_pools()).collect(), (0..layers).map(|_| new_pools()).collect());
        let mut meta = KvMetadata::new(&spec).unwrap();
        for s in 0..b {
            meta.set_page_table(s, &(0..pages as u32).map(|j| j * b as u32 + s as u32).collect::<Vec<_>>()).unwrap();
        }
        let mut rng = attnforge_conformance::rng::Rng::new(7);
        let mut data = |n: usize| rng.normals(n, 1.0);
        // Prefill, eager, into both sets of pools.
        let prefill = Batch::new((0..b).collect(), vec![200, 77, 311, 5]).unwrap();
        let positions: Vec<u32> = prefill.q_lens().iter().flat_map(|&n| 0..n as u32).collect();
        meta.extend(&prefill).unwrap();
        let t = prefill.total_tokens();
        for l in 0..layers {
            let (qd, kd, vd) = (data(t * h * d), data(t * hk * d), data(t * hk * d));
            for pools in [&mut pa[l], &mut pb[l]] {
                let (mut q, mut k, v) = (be.upload(&qd, &[t, h, d], DType::BF16).unwrap(), be.upload(&kd, &[t, hk, d], DType::BF16).unwrap(), be.upload(&vd, &[t, hk, d], DType::BF16).unwrap());
                let mut out = be.alloc(&[t, h, d], DType::BF16).unwrap();
                be.step(StepViews { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, pools, meta: &meta, batch: &prefill, params, out: &mut out, sinks: None }).unwrap();
            }
        }
        // Decode: the graph's tensors stay at their addresses; a step writes new values into them.
        let decode = Batch::uniform(b, 1).unwrap();
        let alloc = |heads: usize| -> Vec<Tensor> { (0..layers).map(|_| be.alloc(&[b, heads, d], DType::BF16).unwrap()).collect() };
        let (mut qa, mut ka, mut va, mut oa) = (alloc(h), alloc(hk), alloc(hk), alloc(h));
        let (mut qb, mut kb, mut vb, mut ob) = (alloc(h), alloc(hk), alloc(hk), alloc(h));
        let bucket = 512;
        let desc = |meta: &KvMetadata| -> (Vec<u32>, KvMetadata) { ((0..b).map(|s| meta.seq_len(s) as u32 - 1).collect(), meta.clone()) };
        meta.extend(&decode).unwrap();
        let (mut pos, mut m) = desc(&meta);
        // The captured plan lives in a workspace the caller allocated (plan_in); the fresh plans
        // it is compared with allocate their own.
        let first = StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &m, batch: &decode, positions: &pos, rope: Some(&rope), params, max_kv_len: Some(bucket) };
        let need = be.plan_workspace_bytes(first).unwrap();
        let workspace = be.alloc(&[need.div_ceil(4)], DType::F32).unwrap();
        let mut plan = be.plan_in(first, workspace).unwrap();
        println!("{name}: plan workspace {} bytes, {need} asked of the caller", plan.workspace_bytes());
        let graph = be
            .capture(|| {
                for l in 0..layers {
                    be.run(&plan, LayerViews::Step { q: &mut qa[l], k: &mut ka[l], v: &va[l], pools: &mut pa[l], out: &mut oa[l], sinks: None })?;
                }
                Ok(())
            })
            .unwrap();
        for step in 0..8 {
            if step > 0 {
                meta.extend(&decode).unwrap();
                (pos, m) = desc(&meta);
                be.update_plan(&mut plan, StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &m, batch: &decode, positions: &pos, rope: Some(&rope), params, max_kv_len: None }).unwrap();
            }
            let inputs: Vec<[Vec<f32>; 3]> = (0..layers).map(|_| [data(b * h * d), data(b * hk * d), data(b * hk * d)]).collect();
            for l in 0..layers {
                for (t, x) in [(&mut qa[l], &inputs[l][0]), (&mut ka[l], &inputs[l][1]), (&mut va[l], &inputs[l][2]), (&mut qb[l], &inputs[l][0]), (&mut kb[l], &inputs[l][1]), (&mut vb[l], &inputs[l][2])] {
                    be.write(t, x).unwrap();
                }
                be.fill(&mut oa[l], f32::NAN).unwrap();
                be.fill(&mut ob[l], f32::NAN).unwrap();
            }
            graph.replay().unwrap();
            let fresh = be.plan(StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &m, batch: &decode, positions: &pos, rope: Some(&rope), params, max_kv_len: Some(bucket) }).unwrap();
            for l in 0..layers {
                be.run(&fresh, LayerViews::Step { q: &mut qb[l], k: &mut kb[l], v: &vb[l], pools: &mut pb[l], out: &mut ob[l], sinks: None }).unwrap();
            }
            for l in 0..layers {
                let (a, e) = (be.download(&oa[l]).unwrap(), be.download(&ob[l]).unwrap());
                assert!(a.iter().all(|x| x.is_finite()), "{name} step {step} layer {l}: the replay left NaN");
                assert_eq!(a, e, "{name} step {step} layer {l}: graph replay vs eager run");
            }
        }
        assert_eq!(be.read_kv_pools(&pa[0]).unwrap(), be.read_kv_pools(&pb[0]).unwrap(), "{name}: pools after the replays");
    }
}
