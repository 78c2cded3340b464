//! The body of `attnforge bench` (the CLI, package attnforge-cli), inside the
//! crate because it times with device events on the backend's stream and launches the fused
//! RoPE + append kernel alone; it uses nothing that takes a device address.
//!
//! Benchmarks of the hip-* backends on the GPU, timed with device events: warm-up, then the
//! median of several timed batches. Problems are larger than L2 (50 MB on the H100), so repeated
//! runs do not measure the cache. Prints a table and writes JSON (`--json FILE`).
//!
//! ```text
//! cargo run -p attnforge-cli --release -- bench [--json bench.json] [--quick] [--mode all|strategies|mma|engine|decode-graph|profile-mma]
//!     [--torch torch.json --plots DIR]
//! ```
//!
//! `--mode profile-mma`: for a kernel profiler, runs twice each, untimed: the matrix-core prefill
//! (bf16, B=1, GQA 32/8, S=4096, D=128) as hip-flash's attention and inside hip-flash's and
//! hip-hybrid's steps (hip-hybrid's kernel rotates Q inside), and decode bf16 B=16 L=8192.
//!
//! `--mode mma`: only the matrix-core shapes (the device copy, then causal prefill f16/bf16 at
//! D=64/128, S=1024/4096/16384, B=1/4, GQA 32/8 and MHA 32/32; decode bf16 at B=1/16/64,
//! L=4096/8192/131072); `bench/torch_baseline.py --mma` times the same with PyTorch.
//!
//! `--mode engine`: one decode step (hip-flash's composite step, bf16, GQA 32/8, D=128, paged
//! pages of 16, L=8192, B=1/16/64) through the owned API (separate q/k/v tensors, a `KvCache`)
//! and through the engine path (q/k/v views into one fused QKV buffer, pools viewed out of a
//! two-layer allocation, engine-owned `KvMetadata`), alternating in the same run: the boundary
//! must cost nothing.
//!
//! `--mode merge`: `merge_states` (`merge_states` in shapes.json): bf16 partial outputs and their
//! f32 lse merged into an output and its lse, against the same merge in PyTorch
//! (`bench/torch_baseline.py --merge`).
//!
//! `--mode fp8`: the decode of `--mode decode-graph` (hip-flash's step, bf16 model, GQA 32/8,
//! D=128, pages of 16, 32 layers; `fp8_decode` in shapes.json: B=1/16/64 at L=8192 and 32768)
//! over a bf16 KV cache and over an FP8 e4m3 one, alternating; `bench/torch_baseline.py --fp8`
//! times SDPA over bf16 K/V and PyTorch's dequantise-then-SDPA over e4m3 K/V.
//!
//! `--mode decode-graph`: time per layer of a decode step over 32 layers (hip-flash's composite
//! step, bf16, GQA 32/8, D=128, pages of 16; B = 1/16/64 x L = 4096/8192/131072; layers have
//! pools of their own up to 64 GB, then reuse them, so no layer's keys are in L2): the owned
//! API (eager: validation, metadata and uploads per layer), plan once + run per layer, and a
//! graph of the 32 runs captured once and replayed after `update_plan`; plus the host time of
//! `plan` itself. `bench/torch_baseline.py --decode-graph` times PyTorch's SDPA flash and cuDNN
//! over 32 layers, eager and under a CUDA graph. `--quick`: B=1 and 16 at L=8192 only.
//!
//! The second part times the composite step (RoPE + append + attention) of each fusion
//! strategy: hip-separate, hip-fused, hip-hybrid, hip-flash.
use std::fmt::Write as _;

use attnforge_api::*;

use crate::plan::{plan, OpPlan, Strategy as Variant};
use crate::runtime::launch::rope::{into_cache, RopeShape, RopeTable};
use crate::runtime::launch::PoolMut;
use crate::runtime::launch::Strided;
use crate::runtime::Gpu;
use crate::storage::{pool_state_mut, pools, tensor};
use crate::HipBackend;

struct Row {
    /// (table, shape, series) of rows that have a PyTorch counterpart (plotted per shape).
    key: Option<(&'static str, String, String)>,
    name: String,
    dtype: DType,
    ms: f64,
    bytes: f64,
    flops: f64,
}

/// `--profile NAME`: run each strategy problem of NAME twice, untimed, for a kernel profiler
/// (`ncu --metrics gpu__time_duration.sum ... bench --profile hip-hybrid`).
static PROFILE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn profiling() -> bool {
    PROFILE.get().is_some_and(|p| p.is_some())
}

fn run_twice(be: &HipBackend, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    be.gpu.synchronize()?;
    Ok(f64::NAN)
}

fn median_ms(be: &HipBackend, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    if profiling() {
        return run_twice(be, &mut f);
    }
    for _ in 0..3 {
        f()?;
    }
    be.gpu.synchronize()?;
    let mut v = Vec::new();
    for _ in 0..9 {
        v.push(be.gpu.time(5, &mut f)?);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// Fewer repetitions, for the slow strategies (median of 3 batches of 2 after 1 warm-up).
fn median_ms_few(be: &HipBackend, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    if profiling() {
        return run_twice(be, &mut f);
    }
    f()?;
    be.gpu.synchronize()?;
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(be.gpu.time(2, &mut f)?);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[1])
}

/// `n` standard normals from `seed` (rand's StdRng, as the test data everywhere).
fn randn(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng as _, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.sample::<f32, _>(rand_distr::StandardNormal)).collect()
}

/// The shapes of the `mma` and `decode-graph` modes (`bench/shapes.json` in this package, read
/// by `bench/torch_baseline.py` too, so both sides time the same problems).
static SHAPES: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::from_str(include_str!("../bench/shapes.json")).expect("bench/shapes.json is valid JSON"));

fn num(v: &serde_json::Value) -> usize {
    v.as_u64().expect("a number in bench/shapes.json") as usize
}

fn nums(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().expect("a list in bench/shapes.json").iter().map(num).collect()
}

/// What to time (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// RoPE, append, attention per dtype, then the fusion strategies.
    #[default]
    All,
    /// The composite step of each fusion strategy only.
    Strategies,
    /// The matrix-core shapes (`bench/shapes.json`: `mma_prefill`, `mma_decode`).
    Mma,
    /// The owned and the engine path of one decode step.
    Engine,
    /// A decode step over 32 layers: eager, plan + run, graph replay (`decode_graph`).
    DecodeGraph,
    /// Sliding-window decode against full attention over the same long context, as
    /// `DecodeGraph` (`window_decode`): the window's work should not grow with the context.
    Window,
    /// The matrix-core prefill and decode, twice each, untimed (for a kernel profiler).
    ProfileMma,
    /// `merge_states` (`merge_states` in shapes.json): partial outputs and their lse merged.
    Merge,
    /// Decode over an FP8 e4m3 KV cache against the same decode over a bf16 one, as
    /// `DecodeGraph` (`fp8_decode`): the step should take about half the time.
    Fp8,
}

/// Options of a benchmark run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// What to time.
    pub mode: Mode,
    /// Fewer shapes.
    pub quick: bool,
    /// Run each strategy problem of this backend twice, untimed, for a kernel profiler.
    pub profile: Option<String>,
}

/// One timed problem.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// What was timed, with its shape.
    pub name: String,
    /// For rows with a PyTorch counterpart: the table (`decode-graph`, `mma-prefill`,
    /// `mma-decode`), the shape (`B=16 L=8192`) and the series (`graph replay`), the keys the
    /// plots group by; `bench/torch_baseline.py` writes the same fields.
    pub table: Option<String>,
    /// See `table`.
    pub shape: Option<String>,
    /// See `table`.
    pub series: Option<String>,
    /// Dtype of the data.
    pub dtype: DType,
    /// Median milliseconds per call (NaN where not measured).
    pub ms: f64,
    /// Bytes read and written per call (NaN where not meaningful).
    pub bytes: f64,
    /// Floating-point operations per call.
    pub flops: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// `NVIDIA H200 (sm_90, 132 SMs)`.
    pub device: String,
    /// Every timed problem, the device copy (the bandwidth ceiling) first where it was run.
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// Bandwidth of the 1 GiB device copy, GB/s (NaN if not run).
    pub fn copy_gbps(&self) -> f64 {
        self.rows.iter().find(|r| r.name.starts_with("device copy")).map(|r| r.bytes / r.ms / 1e6).unwrap_or(f64::NAN)
    }

    /// The table the CLI prints: ms, TB/s, % of the copy's bandwidth, TFLOP/s per row.
    pub fn table(&self) -> String {
        let copy = self.copy_gbps() / 1e3;
        let mut out = format!("device: {}\n", self.device);
        let _ = writeln!(out, "{:<58} {:<5} {:>9} {:>8} {:>7} {:>9}", "op", "dtype", "ms", "TB/s", "% copy", "TFLOP/s");
        for r in &self.rows {
            let tbs = r.bytes / r.ms / 1e9;
            let _ = writeln!(out, "{:<58} {:<5} {:>9.4} {:>8.3} {:>6.1}% {:>9.2}", r.name, r.dtype, r.ms, tbs, 100.0 * tbs / copy, r.flops / r.ms / 1e9);
        }
        out
    }
}

/// Runs the benchmark on GPU 0 (hip-flash's instance; other strategies open their own), or
/// says why it cannot.
pub fn run_bench(opts: &Options) -> std::result::Result<BenchReport, String> {
    // One instance: the events that time a call must be on the stream the call runs on (every
    // instance has its own).
    let hb = std::sync::Arc::new(HipBackend::open("hip-flash", Variant::Flash).map_err(|e| format!("no GPU backend here: {e}"))?);
    let be: &HipBackend = &hb;
    let h = Backend::new(hb.clone());
    let only_strategies = opts.profile.is_some() || opts.mode == Mode::Strategies;
    if PROFILE.set(opts.profile.clone()).is_err() && PROFILE.get() != Some(&opts.profile) {
        return Err("one profile per process".into());
    }
    let mut rows = Vec::new();
    let quick = opts.quick;
    let r = match opts.mode {
        Mode::DecodeGraph => copy_row(be, &mut rows).and_then(|_| decode_graph_rows(be, &h, quick, &mut rows)),
        Mode::Window => copy_row(be, &mut rows).and_then(|_| window_rows(be, &h, &mut rows)),
        Mode::Merge => copy_row(be, &mut rows).and_then(|_| merge_rows(be, &h, &mut rows)),
        Mode::Fp8 => copy_row(be, &mut rows).and_then(|_| fp8_rows(be, &h, &mut rows)),
        Mode::Engine => engine_rows(be, &h, &mut rows),
        Mode::ProfileMma => profile_mma(&h),
        Mode::Mma => copy_row(be, &mut rows).and_then(|_| mma_shapes(be, &h, &mut rows)),
        _ if only_strategies => strategies(&mut rows),
        _ => run(be, &h, quick, &mut rows).and_then(|_| strategies(&mut rows)),
    };
    r.map_err(|e| e.to_string())?;
    let p = be.gpu.props();
    Ok(BenchReport {
        device: format!("{} ({}, {} SMs)", p.name, p.arch, p.sm_count),
        rows: rows
            .into_iter()
            .map(|r| {
                let (table, shape, series) = match r.key {
                    Some((t, sh, se)) => (Some(t.to_string()), Some(sh), Some(se)),
                    None => (None, None, None),
                };
                BenchRow { name: r.name, table, shape, series, dtype: r.dtype, ms: r.ms, bytes: r.bytes, flops: r.flops }
            })
            .collect(),
    })
}

/// Ceiling: a 1 GiB device-to-device copy, bytes read + written.
fn copy_row(be: &HipBackend, rows: &mut Vec<Row>) -> Result<()> {
    let n = 1usize << 30;
    let gpu: &Gpu = &be.gpu;
    let src = gpu.alloc(n)?;
    let mut dst = gpu.alloc(n)?;
    let ms = median_ms(be, || gpu.copy(dst.view_mut(), src.view(), n))?;
    rows.push(Row { key: None, name: "device copy 1 GiB (read + write)".into(), dtype: DType::F32, ms, bytes: 2.0 * n as f64, flops: 0.0 });
    Ok(())
}

/// `--profile-mma`: one prefill and one decode, twice each, and the two steps.
fn profile_mma(h: &Backend) -> Result<()> {
    let (hq, hk, d, s, dt) = (32usize, 8usize, 128usize, 4096usize, DType::BF16);
    let q = h.upload(&randn(s * hq * d, 50), &[s, hq, d], dt)?;
    let k = h.upload(&randn(s * hk * d, 51), &[s, hk, d], dt)?;
    let v = h.upload(&randn(s * hk * d, 52), &[s, hk, d], dt)?;
    let mut out = h.alloc(&[s, hq, d], dt)?;
    let pb = PlainBatch::new(vec![s], vec![s])?;
    for _ in 0..2 {
        h.attention_plain(&q, &k, &v, &pb, AttentionParams::causal(d), &mut out)?;
    }
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 131072) };
    let positions: Vec<u32> = (0..s as u32).collect();
    for (name, variant) in [("hip-flash", Variant::Flash), ("hip-hybrid", Variant::Hybrid)] {
        let be = Backend::new(std::sync::Arc::new(HipBackend::open(name, variant).expect("GPU opened above")));
        let mut q = be.upload(&randn(s * hq * d, 53), &[s, hq, d], dt)?;
        let mut k = be.upload(&randn(s * hk * d, 54), &[s, hk, d], dt)?;
        let mut cache = be.create_kv_cache(&KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: s } })?;
        let batch = Batch::uniform(1, s)?;
        for _ in 0..2 {
            cache.reset(0)?;
            be.rope_append_attend(StepInputs {
                q: &mut q,
                k: &mut k,
                v: &v,
                positions: &positions,
                rope: &rope,
                cache: &mut cache,
                batch: &batch,
                params: AttentionParams::causal(d),
                out: &mut out,
                sinks: None,
            })?;
        }
    }
    let b = 16usize;
    let cache = filled_cache(h, b, 8192, hk, d, dt)?;
    let q1 = h.upload(&randn(b * hq * d, 56), &[b, hq, d], dt)?;
    let mut o1 = h.alloc(&[b, hq, d], dt)?;
    for _ in 0..2 {
        h.attention(&q1, &cache, &Batch::uniform(b, 1)?, AttentionParams::causal(d), &mut o1)?;
    }
    h.synchronize()
}

/// A contiguous cache of `b` sequences holding `l` random tokens each (K = V), filled by
/// appending one random chunk repeatedly, then a random tail: host memory stays small at
/// B=64, L=131072 (34 GB of cache).
fn filled_cache(h: &Backend, b: usize, l: usize, hk: usize, d: usize, dt: DType) -> Result<KvCache> {
    let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: l } };
    let mut cache = h.create_kv_cache(&spec)?;
    let chunk = 1024usize.min(l);
    let src = h.upload(&randn(b * chunk * hk * d, 43), &[b * chunk, hk, d], dt)?;
    let mut have = 0;
    while have + chunk < l {
        h.kv_append(&mut cache, &src, &src, &Batch::uniform(b, chunk)?)?;
        have += chunk;
    }
    let rest = l - have;
    let tail = h.upload(&randn(b * rest * hk * d, 44), &[b * rest, hk, d], dt)?;
    h.kv_append(&mut cache, &tail, &tail, &Batch::uniform(b, rest)?)?;
    Ok(cache)
}

/// The matrix-core issue's shapes (hip-flash).
fn mma_shapes(be: &HipBackend, h: &Backend, rows: &mut Vec<Row>) -> Result<()> {
    let p = &SHAPES["mma_prefill"];
    let hq = num(&p["heads"]);
    let dtypes: Vec<DType> = p["dtypes"].as_array().into_iter().flatten().filter_map(|v| DType::ALL.into_iter().find(|d| Some(d.name()) == v.as_str())).collect();
    for dt in dtypes {
        let es = dt.size() as f64;
        for d in nums(&p["head_dim"]) {
            for s in nums(&p["seq_len"]) {
                for b in nums(&p["batch"]) {
                    for hk in nums(&p["kv_heads"]) {
                        let q = h.upload(&randn(b * s * hq * d, 40), &[b * s, hq, d], dt)?;
                        let k = h.upload(&randn(b * s * hk * d, 41), &[b * s, hk, d], dt)?;
                        let v = h.upload(&randn(b * s * hk * d, 42), &[b * s, hk, d], dt)?;
                        let mut out = h.alloc(&[b * s, hq, d], dt)?;
                        let pb = PlainBatch::new(vec![s; b], vec![s; b])?;
                        let ms = median_ms(be, || h.attention_plain(&q, &k, &v, &pb, AttentionParams::causal(d), &mut out))?;
                        let flops = 4.0 * (b * hq * d) as f64 * (s * (s + 1) / 2) as f64;
                        let bytes = (2 * b * s * hq * d + 2 * b * s * hk * d) as f64 * es;
                        let shape = format!("{dt} B={b} H={hq}/{hk} S={s} D={d}");
                        rows.push(Row { key: Some(("mma-prefill", shape, "hip-flash".into())), name: format!("mma prefill causal B={b} H={hq}/{hk} S={s} D={d}"), dtype: dt, ms, bytes, flops });
                    }
                }
            }
        }
    }
    // Decode: bf16, GQA 32/8, D=128, one new token over L cached ones.
    let p = &SHAPES["mma_decode"];
    let (hq, hk, d, dt) = (num(&p["heads"]), num(&p["kv_heads"]), num(&p["head_dim"]), DType::BF16);
    let es = dt.size() as f64;
    for b in nums(&p["batch"]) {
        for l in nums(&p["kv_len"]) {
            let cache = filled_cache(h, b, l, hk, d, dt)?;
            let q = h.upload(&randn(b * hq * d, 45), &[b, hq, d], dt)?;
            let mut out = h.alloc(&[b, hq, d], dt)?;
            // One query per sequence, the last of its L cached tokens: it attends to all of them.
            let batch = Batch::uniform(b, 1)?;
            let ms = median_ms(be, || h.attention(&q, &cache, &batch, AttentionParams::causal(d), &mut out))?;
            let bytes = (2 * b * l * hk * d + 2 * b * hq * d) as f64 * es;
            rows.push(Row { key: Some(("mma-decode", format!("B={b} L={l}"), "hip-flash".into())), name: format!("mma decode B={b} L={l} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes, flops: 4.0 * (b * l * hq * d) as f64 });
        }
    }
    Ok(())
}

fn run(be: &HipBackend, h: &Backend, quick: bool, rows: &mut Vec<Row>) -> Result<()> {
    copy_row(be, rows)?;
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    // RoPE and fused RoPE + append: T = 32768 tokens, 32 query / 8 kv heads, D = 128.
    let (t, hq, hk, d) = (if quick { 8192 } else { 32768 }, 32, 8, 128);
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 131072) };
    let positions: Vec<u32> = (0..t as u32).collect();
    for dt in dtypes {
        let es = dt.size() as f64;
        let mut q = h.upload(&randn(t * hq * d, 1), &[t, hq, d], dt)?;
        let mut k = h.upload(&randn(t * hk * d, 2), &[t, hk, d], dt)?;
        let v = h.upload(&randn(t * hk * d, 3), &[t, hk, d], dt)?;
        let ms = median_ms(be, || h.rope(&mut q, &mut k, &positions, &rope))?;
        rows.push(Row { key: None, name: format!("rope q+k T={t} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes: 2.0 * (t * (hq + hk) * d) as f64 * es, flops: 0.0 });
        // Fused: Q rotated in place, rotated K and V written into a contiguous cache (the first
        // kernel of hip-flash's step, alone).
        let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: t } };
        let cache = h.create_kv_cache(&spec)?;
        let desc = ProblemDesc {
            dtype: dt,
            num_heads: hq,
            num_kv_heads: hk,
            head_dim: d,
            rope: Some(rope.clone()),
            layout: Some(spec.layout),
            kv_dtype: spec.kv_dtype,
            causal: true,
            batch_size: 1,
            max_q_len: t,
            max_kv_len: t,
            window: None,
        };
        let Ok(OpPlan::Step { rope: Some(launch), .. }) = plan(be.gpu.props(), Variant::Flash, Op::Step, &desc) else {
            return Err(Error::Device { code: -1, message: "no fused RoPE + append plan".into() });
        };
        let slots: Vec<i32> = (0..t as i32).collect();
        let freqs = rope.frequencies(t - 1)?;
        let table = be.tables.get(&be.gpu, &freqs)?;
        let meta = be.gpu.upload_meta(&[&positions.iter().map(|&p| p as i32).collect::<Vec<_>>(), &slots])?;
        let ms = median_ms(be, || {
            let row = hk * d;
            let kv = Strided { mem: tensor(&k, "k", "bench", &be.gpu)?.view(), stride: row };
            let vv = Strided { mem: tensor(&v, "v", "bench", &be.gpu)?.view(), stride: row };
            let qv = Strided { mem: tensor(&q, "q", "bench", &be.gpu)?.view_mut(), stride: hq * d };
            let (pk, pv, _) = pools(cache.pools(), "bench", &be.gpu)?;
            let pool = PoolMut { k: pk.view_mut(), v: pv.view_mut(), pos: None, slots: t, scales: None };
            let s = RopeShape { tokens: t, q_heads: hq, k_heads: hk, head_dim: d, mrope: None };
            let tb = RopeTable { inv_freq: table.view(), rotary_dim: d, factor: 1.0 };
            into_cache(&be.gpu, &launch, s, Some(qv), kv, vv, pool, meta.part(0), meta.part(1), tb)
        })?;
        // Q read + written, K read, V read, K and V written to the cache.
        let bytes = (2 * t * hq * d + 4 * t * hk * d) as f64 * es;
        rows.push(Row { key: None, name: format!("fused rope+append T={t} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes, flops: 0.0 });
    }
    // Decode: GQA 32/8, D = 128, one new token per sequence over L cached tokens.
    for &(b, l) in &[(16usize, 8192usize), (1, 8192)] {
        for dt in dtypes {
            let es = dt.size() as f64;
            let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: l } };
            let mut cache = h.create_kv_cache(&spec)?;
            let kv = randn(b * (l - 1) * hk * d, 4);
            let kt = h.upload(&kv, &[b * (l - 1), hk, d], dt)?;
            h.kv_append(&mut cache, &kt, &kt, &Batch::uniform(b, l - 1)?)?;
            let k1 = h.upload(&randn(b * hk * d, 5), &[b, hk, d], dt)?;
            let batch = Batch::uniform(b, 1)?;
            h.kv_append(&mut cache, &k1, &k1, &batch)?;
            let q = h.upload(&randn(b * hq * d, 6), &[b, hq, d], dt)?;
            let mut out = h.alloc(&[b, hq, d], dt)?;
            let ms = median_ms(be, || h.attention(&q, &cache, &batch, AttentionParams::causal(d), &mut out))?;
            let bytes = (2 * b * l * hk * d + 2 * b * hq * d) as f64 * es;
            rows.push(Row { key: None, name: format!("decode B={b} L={l} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes, flops: 4.0 * (b * l * hq * d) as f64 });
        }
    }
    // Prefill: causal, B = 8, H = 32 (MHA), S = 1024, D = 64, plain attention.
    for dt in dtypes {
        let (b, hh, s, dd) = (8usize, 32usize, 1024usize, 64usize);
        let es = dt.size() as f64;
        let n = b * s * hh * dd;
        let q = h.upload(&randn(n, 7), &[b * s, hh, dd], dt)?;
        let k = h.upload(&randn(n, 8), &[b * s, hh, dd], dt)?;
        let v = h.upload(&randn(n, 9), &[b * s, hh, dd], dt)?;
        let mut out = h.alloc(&[b * s, hh, dd], dt)?;
        let pb = PlainBatch::new(vec![s; b], vec![s; b])?;
        let ms = median_ms(be, || h.attention_plain(&q, &k, &v, &pb, AttentionParams::causal(dd), &mut out))?;
        let flops = 4.0 * (b * hh * dd) as f64 * (s * (s + 1) / 2) as f64;
        rows.push(Row { key: None, name: format!("prefill causal B={b} H={hh} S={s} D={dd}"), dtype: dt, ms, bytes: 4.0 * n as f64 * es, flops });
    }
    // Prefill at the tensor-core issue's shapes: B=1, GQA 32/8, D=128, S=4096 (every dtype) and
    // S=16384 (f16/bf16: the f32 kernel would take seconds per batch).
    let long = [(4096usize, DType::F32), (4096, DType::F16), (4096, DType::BF16), (16384, DType::F16), (16384, DType::BF16)];
    for (s, dt) in long {
        if quick && s > 4096 {
            continue;
        }
        let dd = 128usize;
        let es = dt.size() as f64;
        let q = h.upload(&randn(s * hq * dd, 10), &[s, hq, dd], dt)?;
        let k = h.upload(&randn(s * hk * dd, 11), &[s, hk, dd], dt)?;
        let mut out = h.alloc(&[s, hq, dd], dt)?;
        let pb = PlainBatch::new(vec![s], vec![s])?;
        let ms = median_ms(be, || h.attention_plain(&q, &k, &k, &pb, AttentionParams::causal(dd), &mut out))?;
        let flops = 4.0 * (hq * dd) as f64 * (s * (s + 1) / 2) as f64;
        rows.push(Row { key: None, name: format!("prefill causal B=1 H={hq}/{hk} S={s} D={dd}"), dtype: dt, ms, bytes: (2 * s * hq * dd + 2 * s * hk * dd) as f64 * es, flops });
    }
    Ok(())
}

const STRATEGIES: [(&str, Variant); 4] = [("hip-separate", Variant::Separate), ("hip-fused", Variant::Fused), ("hip-hybrid", Variant::Hybrid), ("hip-flash", Variant::Flash)];

/// The composite step of each strategy: the study's shapes (f32, one head, 64 new tokens into an
/// empty cache, so 64 queries x 64 keys, not causal) and realistic ones (prefill B=1 S=4096, decode
/// B=16 and B=1 over L=8192, GQA 32/8, D=128, f32 and bf16).
fn strategies(rows: &mut Vec<Row>) -> Result<()> {
    // Each strategy's instance times itself (its own stream).
    let handles: Vec<(&str, std::sync::Arc<HipBackend>, Backend)> = STRATEGIES
        .iter()
        .filter(|(n, _)| PROFILE.get().and_then(|p| p.as_deref()).is_none_or(|p| p == *n))
        .map(|&(n, v)| {
            let hb = std::sync::Arc::new(HipBackend::open(n, v).expect("GPU opened above"));
            (n, hb.clone(), Backend::new(hb))
        })
        .collect();
    // The study: one head, 64 x 64, head_dim / rotary_dim 128/64, 512/128, 2048/128.
    for &(d, rot) in &[(128usize, 64usize), (512, 128), (2048, 128)] {
        let n = 64usize;
        let rope = RopeConfig { rotary_dim: rot, ..RopeConfig::new(d, 10000.0, 4096) };
        let positions: Vec<u32> = (0..n as u32).collect();
        for (name, timer, h) in &handles {
            let dt = DType::F32;
            let mut q = h.upload(&randn(n * d, 20), &[n, 1, d], dt)?;
            let mut k = h.upload(&randn(n * d, 21), &[n, 1, d], dt)?;
            let v = h.upload(&randn(n * d, 22), &[n, 1, d], dt)?;
            let mut out = h.alloc(&[n, 1, d], dt)?;
            let mut cache = h.create_kv_cache(&KvCacheSpec { num_seqs: 1, num_kv_heads: 1, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: n } })?;
            let batch = Batch::uniform(1, n)?;
            let params = AttentionParams { causal: false, scale: 1.0 / (d as f32).sqrt(), softcap: None, window: None };
            let ms = median_ms(timer, || {
                cache.reset(0)?;
                h.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut cache, batch: &batch, params, out: &mut out, sinks: None })
            })?;
            let flops = 4.0 * (n * n * d) as f64;
            rows.push(Row { key: None, name: format!("step {name} study 64x64 H=1 D={d} rot={rot}"), dtype: dt, ms, bytes: (5 * n * d) as f64 * 4.0, flops });
        }
    }
    // Realistic shapes.
    let (hq, hk, d) = (32usize, 8usize, 128usize);
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 131072) };
    for dt in [DType::F32, DType::BF16] {
        let es = dt.size() as f64;
        for (name, timer, h) in &handles {
            // Prefill: B=1, S=4096, causal, from an empty cache (not under a profiler: slow there).
            let s = if profiling() { 256 } else { 4096usize };
            let positions: Vec<u32> = (0..s as u32).collect();
            let mut q = h.upload(&randn(s * hq * d, 30), &[s, hq, d], dt)?;
            let mut k = h.upload(&randn(s * hk * d, 31), &[s, hk, d], dt)?;
            let v = h.upload(&randn(s * hk * d, 32), &[s, hk, d], dt)?;
            let mut out = h.alloc(&[s, hq, d], dt)?;
            let mut cache = h.create_kv_cache(&KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: s } })?;
            let batch = Batch::uniform(1, s)?;
            let ms = median_ms_few(timer, || {
                cache.reset(0)?;
                h.rope_append_attend(StepInputs {
                    q: &mut q,
                    k: &mut k,
                    v: &v,
                    positions: &positions,
                    rope: &rope,
                    cache: &mut cache,
                    batch: &batch,
                    params: AttentionParams::causal(d),
                    out: &mut out,
                    sinks: None,
                })
            })?;
            let flops = 4.0 * (hq * d) as f64 * (s * (s + 1) / 2) as f64;
            rows.push(Row { key: None, name: format!("step {name} prefill B=1 S={s} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes: (2 * s * hq * d + 4 * s * hk * d) as f64 * es, flops });
            drop((q, k, v, out, cache));
            // Decode: B sequences of L - 1 cached tokens (hip-fused's slots hold their positions,
            // as its own step would leave them), one new token each per step.
            for &b in &[16usize, 1] {
                let l = 8192usize;
                let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: l + 64 } };
                let mut cache = h.create_kv_cache(&spec)?;
                let kv = h.upload(&randn(b * (l - 1) * hk * d, 33), &[b * (l - 1), hk, d], dt)?;
                h.kv_append(&mut cache, &kv, &kv, &Batch::uniform(b, l - 1)?)?;
                drop(kv);
                if let Some(st) = pool_state_mut(cache.parts_mut().0) {
                    let pos = &st.pos;
                    let p: Vec<i32> = (0..b).flat_map(|_| (0..(l + 64) as i32).map(|t| t.min(l as i32 - 2).max(0))).collect();
                    let p: Vec<i32> = p.iter().enumerate().map(|(i, &x)| if i % (l + 64) < l - 1 { x } else { i32::MIN }).collect();
                    timer.gpu.write(pos.slice_mut(0), 0, &crate::storage::i32_bytes(&p))?;
                }
                let batch = Batch::uniform(b, 1)?;
                let mut q = h.upload(&randn(b * hq * d, 34), &[b, hq, d], dt)?;
                let mut k = h.upload(&randn(b * hk * d, 35), &[b, hk, d], dt)?;
                let v = h.upload(&randn(b * hk * d, 36), &[b, hk, d], dt)?;
                let mut out = h.alloc(&[b, hq, d], dt)?;
                let positions: Vec<u32> = vec![l as u32 - 1; b];
                let ms = median_ms_few(timer, || {
                    h.rope_append_attend(StepInputs {
                        q: &mut q,
                        k: &mut k,
                        v: &v,
                        positions: &positions,
                        rope: &rope,
                        cache: &mut cache,
                        batch: &batch,
                        params: AttentionParams::causal(d),
                        out: &mut out,
                        sinks: None,
                    })
                })?;
                let bytes = (2 * b * l * hk * d + 2 * b * hq * d) as f64 * es;
                rows.push(Row { key: None, name: format!("step {name} decode B={b} L={l} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes, flops: 4.0 * (b * l * hq * d) as f64 });
            }
        }
    }
    Ok(())
}

/// `--decode-graph` (see the module docs).
fn decode_graph_rows(hbe: &HipBackend, h: &Backend, quick: bool, rows: &mut Vec<Row>) -> Result<()> {
    let p = &SHAPES["decode_graph"];
    let shapes: Vec<(usize, usize)> = if quick {
        p["quick"].as_array().into_iter().flatten().map(|bl| (num(&bl[0]), num(&bl[1]))).collect()
    } else {
        nums(&p["batch"]).into_iter().flat_map(|b| nums(&p["kv_len"]).into_iter().map(move |l| (b, l))).collect()
    };
    for (b, l) in shapes {
        decode_graph_shape(hbe, h, p, "decode-graph", b, l, None, None, rows)?;
    }
    Ok(())
}

/// `fp8_decode`: each shape's decode over a bf16 cache, then over an FP8 e4m3 one (scales 1,
/// zeros: the time does not depend on the values), alternating in one run.
fn fp8_rows(hbe: &HipBackend, h: &Backend, rows: &mut Vec<Row>) -> Result<()> {
    let p = &SHAPES["fp8_decode"];
    for b in nums(&p["batch"]) {
        for l in nums(&p["kv_len"]) {
            for kv in [None, Some(DType::F8E4M3)] {
                decode_graph_shape(hbe, h, p, "fp8-decode", b, l, None, kv, rows)?;
            }
        }
    }
    Ok(())
}

/// `merge_states`: `n` bf16 partial outputs `[T, H, D]` and their f32 lse merged into an output
/// and its lse (bytes: every state read, the output and its lse written).
fn merge_rows(hbe: &HipBackend, h: &Backend, rows: &mut Vec<Row>) -> Result<()> {
    let p = &SHAPES["merge_states"];
    let (hq, d, dt) = (num(&p["heads"]), num(&p["head_dim"]), DType::BF16);
    for t in nums(&p["tokens"]) {
        for n in nums(&p["states"]) {
            let mut states = Vec::new();
            for i in 0..n {
                let o = h.upload(&randn(t * hq * d, 50 + i as u64), &[t, hq, d], dt)?;
                let l = h.upload(&randn(t * hq, 60 + i as u64), &[t, hq], DType::F32)?;
                states.push((o, l));
            }
            let refs: Vec<(&Tensor, &Tensor)> = states.iter().map(|(o, l)| (o, l)).collect();
            let mut out = h.alloc(&[t, hq, d], dt)?;
            let mut lse = h.alloc(&[t, hq], DType::F32)?;
            let ms = median_ms(hbe, || h.merge_states(&refs, &mut out, Some(&mut lse)))?;
            let bytes = ((n + 1) * t * hq * d * dt.size() + (n + 1) * t * hq * 4) as f64;
            let shape = format!("T={t} states={n}");
            rows.push(Row { key: Some(("merge-states", shape.clone(), "hip-flash".into())), name: format!("merge_states {shape} H={hq} D={d}"), dtype: dt, ms, bytes, flops: 0.0 });
        }
    }
    Ok(())
}

/// `window_decode`: each batch size at one long context, full attention and a sliding window.
fn window_rows(hbe: &HipBackend, h: &Backend, rows: &mut Vec<Row>) -> Result<()> {
    let p = &SHAPES["window_decode"];
    let (l, w) = (num(&p["kv_len"]), num(&p["window"]));
    for b in nums(&p["batch"]) {
        for window in [None, Some(w)] {
            decode_graph_shape(hbe, h, p, "window-decode", b, l, window, None, rows)?;
        }
    }
    // Prefill (plain causal attention over S tokens), full and windowed: TFLOP/s count the
    // products of the keys each query sees.
    let (hq, hk, d, dt) = (num(&p["heads"]), num(&p["kv_heads"]), num(&p["head_dim"]), DType::BF16);
    for s in nums(&p["prefill_seq_len"]) {
        let q = h.upload(&randn(s * hq * d, 40), &[s, hq, d], dt)?;
        let k = h.upload(&randn(s * hk * d, 41), &[s, hk, d], dt)?;
        let v = h.upload(&randn(s * hk * d, 42), &[s, hk, d], dt)?;
        let mut out = h.alloc(&[s, hq, d], dt)?;
        let pb = PlainBatch::new(vec![s], vec![s])?;
        for window in [None, Some(w)] {
            let params = window.map_or(AttentionParams::causal(d), |w| AttentionParams::causal(d).with_window(w));
            let ms = median_ms(hbe, || h.attention_plain(&q, &k, &v, &pb, params, &mut out))?;
            let keys: usize = (0..s).map(|i| window.map_or(i + 1, |w| (i + 1).min(w))).sum();
            let flops = 4.0 * (hq * d) as f64 * keys as f64;
            let bytes = (2 * s * hq * d + 2 * s * hk * d) as f64 * dt.size() as f64;
            let shape = match window {
                Some(w) => format!("prefill S={s} W={w}"),
                None => format!("prefill S={s} full"),
            };
            rows.push(Row { key: Some(("window-prefill", shape.clone(), "hip-flash".into())), name: format!("window {shape} H={hq}/{hk} D={d}"), dtype: dt, ms, bytes, flops });
        }
    }
    Ok(())
}

/// One decode shape of `p` (a `decode_graph`-like entry of shapes.json) over `layers` layers:
/// eager, plan + run, graph replay, attention alone; under `window`, sliding-window attention
/// (bytes: the keys the window reads); with `kv_dtype`, over pools of that storage type (FP8:
/// half the bytes; the series say which cache). Rows keyed (`table`, shape, series).
#[allow(clippy::too_many_arguments)]
fn decode_graph_shape(hbe: &HipBackend, h: &Backend, p: &serde_json::Value, table: &'static str, b: usize, l: usize, window: Option<usize>, kv_dtype: Option<DType>, rows: &mut Vec<Row>) -> Result<()> {
    let layers = num(&p["layers"]);
    let (hq, hk, d, ps) = (num(&p["heads"]), num(&p["kv_heads"]), num(&p["head_dim"]), num(&p["page_size"]));
    let dt = DType::BF16;
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 1 << 18) };
    let params = match window {
        Some(w) => AttentionParams::causal(d).with_window(w),
        None => AttentionParams::causal(d),
    };
    let shape = match window {
        Some(w) => format!("B={b} L={l} W={w}"),
        None if table == "window-decode" => format!("B={b} L={l} full"),
        None => format!("B={b} L={l}"),
    };
    {
        let pages_per_seq = l.div_ceil(ps);
        let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype, layout: CacheLayout::Paged { page_size: ps, num_pages: b * pages_per_seq } };
        let layer_bytes = 2 * spec.pool_bytes();
        let distinct = (64usize << 30).div_ceil(layer_bytes).clamp(1, layers);
        let tables: Vec<Vec<u32>> = (0..b).map(|s| ((s * pages_per_seq) as u32..((s + 1) * pages_per_seq) as u32).collect()).collect();
        // The pools hold zeros: the time does not depend on the values.
        let mut caches = Vec::new();
        for _ in 0..distinct {
            let mut c = h.create_kv_cache(&spec)?;
            for (s, t) in tables.iter().enumerate() {
                c.set_page_table(s, t)?;
                c.parts_mut().1.set_seq_len(s, l - 1)?;
            }
            caches.push(c);
        }
        let mut meta = KvMetadata::new(&spec)?;
        for (s, t) in tables.iter().enumerate() {
            meta.set_page_table(s, t)?;
            meta.set_seq_len(s, l - 1)?;
        }
        let batch = Batch::uniform(b, 1)?;
        let positions = vec![(l - 1) as u32; b];
        let mut q = h.upload(&randn(b * hq * d, 41), &[b, hq, d], dt)?;
        let mut k = h.upload(&randn(b * hk * d, 42), &[b, hk, d], dt)?;
        let v = h.upload(&randn(b * hk * d, 43), &[b, hk, d], dt)?;
        let mut out = h.alloc(&[b, hq, d], dt)?;
        // Bytes of K/V the attention reads: under a window, the window's; FP8: one per element.
        let bytes = (2 * b * window.map_or(l, |w| w.min(l)) * hk * d) as f64 * spec.storage_dtype().size() as f64;
        let many = bytes * (layers as f64) < 8e9;
        let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> { Ok(if many { median_ms(hbe, f)? } else { median_ms_few(hbe, f)? } / layers as f64) };
        // Eager: each layer's step through the owned API (lengths rolled back: the same step).
        let eager = time(&mut || {
            for li in 0..layers {
                let cache = &mut caches[li % distinct];
                for s in 0..b {
                    cache.truncate(s, l - 1)?;
                }
                h.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache, batch: &batch, params, out: &mut out, sinks: None })?;
            }
            Ok(())
        })?;
        meta.extend(&batch)?;
        let desc = |meta: &KvMetadata| -> Result<StepPlan> {
            h.plan(StepDesc { op: PlanOp::Step, spec: &spec, num_heads: hq, meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: Some(l) })
        };
        // Plan once per step, run per layer.
        let planned = time(&mut || {
            let plan = desc(&meta)?;
            for li in 0..layers {
                let pools = caches[li % distinct].parts_mut().0;
                h.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools, out: &mut out, sinks: None })?;
            }
            Ok(())
        })?;
        // Captured once; per step: update_plan (the metadata rewritten in place) and a replay.
        let mut plan = desc(&meta)?;
        let graph = h.capture(|| {
            for li in 0..layers {
                let pools = caches[li % distinct].parts_mut().0;
                h.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools, out: &mut out, sinks: None })?;
            }
            Ok(())
        })?;
        let replay = time(&mut || {
            h.update_plan(&mut plan, StepDesc { op: PlanOp::Step, spec: &spec, num_heads: hq, meta: &meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: None })?;
            graph.replay()
        })?;
        // Attention alone (the op PyTorch's SDPA rows time), captured and replayed the same way.
        let adesc = StepDesc { op: PlanOp::Attention, spec: &spec, num_heads: hq, meta: &meta, batch: &batch, positions: &[], rope: None, params, max_kv_len: Some(l) };
        let mut aplan = h.plan(adesc)?;
        let agraph = h.capture(|| {
            for li in 0..layers {
                let pools = caches[li % distinct].pools();
                h.run(&aplan, LayerViews::Attention { q: &q, pools, out: &mut out, sinks: None, lse: None })?;
            }
            Ok(())
        })?;
        let attn_replay = time(&mut || {
            h.update_plan(&mut aplan, StepDesc { max_kv_len: None, ..adesc })?;
            agraph.replay()
        })?;
        drop(agraph);
        // Host time of plan() alone.
        hbe.gpu.synchronize()?;
        let reps = 50;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            drop(desc(&meta)?);
        }
        let plan_host = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        hbe.gpu.synchronize()?;
        let cache = match kv_dtype {
            Some(k) => format!("{k} KV "),
            None if table == "fp8-decode" => format!("{dt} KV "),
            None => String::new(),
        };
        let label = format!("{shape} x{layers} layers ({distinct} pools)");
        let key = |series: &str| Some((table, shape.clone(), format!("{cache}{series}")));
        rows.push(Row { key: key("eager owned"), name: format!("decode/layer {cache}eager owned {label}"), dtype: dt, ms: eager, bytes, flops: 0.0 });
        rows.push(Row { key: key("plan+run"), name: format!("decode/layer {cache}plan+run {label}"), dtype: dt, ms: planned, bytes, flops: 0.0 });
        rows.push(Row { key: key("graph replay"), name: format!("decode/layer {cache}graph replay {label}"), dtype: dt, ms: replay, bytes, flops: 0.0 });
        rows.push(Row { key: key("attention only, graph replay"), name: format!("decode/layer {cache}attention only, graph replay {label}"), dtype: dt, ms: attn_replay, bytes, flops: 0.0 });
        rows.push(Row { key: None, name: format!("  host time of plan() {cache}{shape}"), dtype: dt, ms: plan_host, bytes: f64::NAN, flops: 0.0 });
        for s in 0..b {
            meta.truncate(s, l - 1)?;
        }
        drop(graph);
        drop(caches);
        hbe.gpu.synchronize()?;
    }
    Ok(())
}

/// `--engine`: the owned path and the engine path of one decode step, in the same run
/// (owned, views, owned, views: drift shows as a difference between the two owned rows).
fn engine_rows(hbe: &HipBackend, h: &Backend, rows: &mut Vec<Row>) -> Result<()> {
    let (hq, hk, d, l, ps) = (32usize, 8usize, 128usize, 8192usize, 16usize);
    let dt = DType::BF16;
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 131072) };
    let w = (hq + 2 * hk) * d;
    for &b in &[1usize, 16, 64] {
        let pages_per_seq = (l + ps) / ps;
        let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: dt, kv_dtype: None, layout: CacheLayout::Paged { page_size: ps, num_pages: b * pages_per_seq } };
        let tables: Vec<Vec<u32>> = (0..b).map(|s| ((s * pages_per_seq) as u32..((s + 1) * pages_per_seq) as u32).collect()).collect();
        let prefix = Batch::uniform(b, l - 1)?;
        let kv = h.upload(&randn(b * (l - 1) * hk * d, 40), &[b * (l - 1), hk, d], dt)?;
        // Owned.
        let mut cache = h.create_kv_cache(&spec)?;
        for (s, t) in tables.iter().enumerate() {
            cache.set_page_table(s, t)?;
        }
        h.kv_append(&mut cache, &kv, &kv, &prefix)?;
        let mut q = h.upload(&randn(b * hq * d, 41), &[b, hq, d], dt)?;
        let mut k = h.upload(&randn(b * hk * d, 42), &[b, hk, d], dt)?;
        let v = h.upload(&randn(b * hk * d, 43), &[b, hk, d], dt)?;
        let mut out = h.alloc(&[b, hq, d], dt)?;
        // Engine: the same, in views.
        let n = spec.pool_len();
        let pool_base = h.alloc(&[4 * n], dt)?;
        let row = ps * hk * d;
        let mut pools = h.kv_pools(&spec, h.view(&pool_base, n, &spec.pool_shape(), row)?, h.view(&pool_base, 3 * n, &spec.pool_shape(), row)?)?;
        let mut meta = KvMetadata::new(&spec)?;
        for (s, t) in tables.iter().enumerate() {
            meta.set_page_table(s, t)?;
        }
        meta.extend(&prefix)?;
        h.append_kv(&mut pools, &meta, &kv, &kv, &prefix)?;
        drop(kv);
        let fused = h.upload(&randn(b * w, 44), &[b, w], dt)?;
        let mut qv = h.view(&fused, 0, &[b, hq, d], w)?;
        let mut kv_ = h.view(&fused, hq * d, &[b, hk, d], w)?;
        let vv = h.view(&fused, (hq + hk) * d, &[b, hk, d], w)?;
        let out_base = h.alloc(&[b, hq * d], dt)?;
        let mut ov = h.view(&out_base, 0, &[b, hq, d], hq * d)?;
        let batch = Batch::uniform(b, 1)?;
        let positions = vec![(l - 1) as u32; b];
        let params = AttentionParams::causal(d);
        let bytes = (2 * b * l * hk * d) as f64 * dt.size() as f64;
        // Two controls: the engine path with dense q/k/v (separate buffers), and with each pool
        // in an allocation of its own (the owned cache's placement).
        let mut qd = h.upload(&randn(b * hq * d, 41), &[b, hq, d], dt)?;
        let mut kd = h.upload(&randn(b * hk * d, 42), &[b, hk, d], dt)?;
        let vd = h.upload(&randn(b * hk * d, 43), &[b, hk, d], dt)?;
        let (kown, vown) = (h.alloc(&spec.pool_shape(), dt)?, h.alloc(&spec.pool_shape(), dt)?);
        let mut pools_own = h.kv_pools(&spec, kown, vown)?;
        {
            let kv = h.upload(&randn(b * (l - 1) * hk * d, 40), &[b * (l - 1), hk, d], dt)?;
            h.append_kv(&mut pools_own, &meta, &kv, &kv, &prefix)?;
        }
        // One step each way (the lengths rolled back first, so every call is the same step).
        let owned_step = |cache: &mut KvCache, q: &mut Tensor, k: &mut Tensor, v: &Tensor, out: &mut Tensor| -> Result<()> {
            for s in 0..b {
                cache.truncate(s, l - 1)?;
            }
            h.rope_append_attend(StepInputs { q, k, v, positions: &positions, rope: &rope, cache, batch: &batch, params, out, sinks: None })
        };
        let views_step = |meta: &mut KvMetadata, q: &mut Tensor, k: &mut Tensor, v: &Tensor, pools: &mut KvPools, out: &mut Tensor| -> Result<()> {
            for s in 0..b {
                meta.truncate(s, l - 1)?;
            }
            meta.extend(&batch)?;
            h.step(StepViews { q, k, v, positions: &positions, rope: &rope, pools, meta, batch: &batch, params, out, sinks: None })
        };
        for round in 0..2 {
            let mut row = |name: String, ms: f64| rows.push(Row { key: None, name: format!("{name} ({})", round + 1), dtype: dt, ms, bytes, flops: 0.0 });
            row(format!("engine decode step owned B={b} L={l}"), median_ms(hbe, || owned_step(&mut cache, &mut q, &mut k, &v, &mut out))?);
            row(format!("engine decode step views B={b} L={l}"), median_ms(hbe, || views_step(&mut meta, &mut qv, &mut kv_, &vv, &mut pools, &mut ov))?);
            row(format!("  views, q/k/v dense B={b}"), median_ms(hbe, || views_step(&mut meta, &mut qd, &mut kd, &vd, &mut pools, &mut ov))?);
            row(format!("  views, pools in own allocations B={b}"), median_ms(hbe, || views_step(&mut meta, &mut qv, &mut kv_, &vv, &mut pools_own, &mut ov))?);
        }
        // Host time of one call (validation, metadata, launches; few enough calls that the
        // launch queue never fills, so no wait on the device is counted), both paths.
        let reps = 40;
        hbe.gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            owned_step(&mut cache, &mut q, &mut k, &v, &mut out)?;
        }
        let owned_host = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        hbe.gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            views_step(&mut meta, &mut qv, &mut kv_, &vv, &mut pools, &mut ov)?;
        }
        let views_host = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        hbe.gpu.synchronize()?;
        rows.push(Row { key: None, name: format!("  host time per call, owned B={b}"), dtype: dt, ms: owned_host, bytes: f64::NAN, flops: 0.0 });
        rows.push(Row { key: None, name: format!("  host time per call, views B={b}"), dtype: dt, ms: views_host, bytes: f64::NAN, flops: 0.0 });
    }
    Ok(())
}

