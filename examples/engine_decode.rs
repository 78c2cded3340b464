//! An engine-shaped decode loop: the program owns every buffer and attnforge works on views of
//! them, on the program's stream, with metadata the program owns.
//!
//!     cargo run --release --example engine_decode            # the backend `select` picks
//!     ATTNFORGE_BACKEND=cpu cargo run --release --example engine_decode
//!
//! What an inference engine does, in small: one paged KV pool allocation for all layers
//! (`[layers, pages, page_size, kv_heads, head_dim]` for K and for V), one fused QKV projection
//! buffer per step (`[tokens, (H + 2 Hkv) D]`; the projection is a random matrix applied on the
//! host here, standing in for the engine's GEMM), block tables and lengths in a `KvMetadata` the
//! engine owns and passes to every layer. Each step: `extend` the lengths once and `plan` the
//! step once (validation, kernel choice, the step's metadata uploaded once), then per layer
//! RoPE + append + attention (`Backend::run` of the plan: launches only, on a GPU) on views of
//! the fused buffer into a view of the engine's output buffer. Along the way it forks a sequence (prefix sharing: full pages
//! shared, the partial one copied in every layer's pools) and rolls another back (speculative
//! decoding's rejected tokens).
//!
//! The model is shaped like gpt-oss: even layers attend through a sliding window of `WINDOW`
//! keys, odd layers over the whole context (one plan per kind of layer and step), and every
//! layer has its own attention sinks (a learned logit per query head, an f32 `[H]` tensor the
//! engine uploads with the weights and passes with the layer's views).
//!
//! On NVIDIA the memory is cudarc's (`CudaSlice`, borrowed without copies through
//! `HipBackend::borrow_cudarc_mut`) and the backend runs on the engine's cudarc stream; on the
//! CPU backend it is host buffers (`HostBuffer`, viewed with `CpuBackend::tensor_in`). The
//! attnforge calls are the same. A GPU run is checked in lockstep against the CPU reference:
//! every layer of every step gets the same inputs on both and the outputs must agree.
use attnforge::attnforge_cpu::storage::HostBuffer;
use attnforge::attnforge_cpu::CpuBackend;
use attnforge::*;

/// The model and the run.
const LAYERS: usize = 4;
const H: usize = 8;
const HKV: usize = 2;
const D: usize = 64;
const PAGE: usize = 16;
const PAGES: usize = 32;
const SEQS: usize = 4; // three prompts, plus one slot for the fork
const STEPS: usize = 12;
const DTYPE: DType = DType::F16;
const W: usize = (H + 2 * HKV) * D; // a fused QKV row
const WINDOW: usize = 16; // keys an even (sliding-window) layer sees: shorter than the prompts
const HIDDEN: usize = H * D;

fn spec() -> KvCacheSpec {
    KvCacheSpec { num_seqs: SEQS, num_kv_heads: HKV, head_dim: D, dtype: DTYPE, kv_dtype: None, layout: CacheLayout::Paged { page_size: PAGE, num_pages: PAGES } }
}

/// The op an engine runs per layer on views of its memory: `(q, k, v, out, this layer's pools)`.
type LayerOp<'f> = dyn FnMut(&mut Tensor, &mut Tensor, &Tensor, &mut Tensor, &mut KvPools) -> Result<()> + 'f;

/// Where one backend's engine keeps its memory.
trait Memory {
    /// Writes `qkv` (`[tokens, W]`, host) into the engine's fused buffer, then runs `f` with q,
    /// k and v viewed in it, an output view into the engine's output buffer and layer `l`'s
    /// pools; returns the output rows on the host (the next layer's input).
    fn layer(&mut self, be: &Backend, l: usize, tokens: usize, qkv: &[f32], f: &mut LayerOp<'_>) -> Result<Vec<f32>>;
    /// Layer `l`'s pools, viewed out of the one allocation.
    fn pools(&mut self, l: usize) -> &mut KvPools;
}

/// Host buffers the program owns (the CPU backend).
struct HostMemory {
    qkv: HostBuffer,
    out: HostBuffer,
    pools: Vec<KvPools>,
}

impl HostMemory {
    fn new(be: &Backend, max_tokens: usize) -> Result<Self> {
        let s = spec();
        let n = s.pool_len();
        let (kpool, vpool) = (HostBuffer::zeros(LAYERS * n, DTYPE)?, HostBuffer::zeros(LAYERS * n, DTYPE)?);
        let shape = s.pool_shape();
        let row = PAGE * HKV * D;
        let pools = (0..LAYERS)
            .map(|l| be.kv_pools(&s, CpuBackend::tensor_in(&kpool, l * n, &shape, row, DTYPE)?, CpuBackend::tensor_in(&vpool, l * n, &shape, row, DTYPE)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(HostMemory { qkv: HostBuffer::zeros(max_tokens * W, DTYPE)?, out: HostBuffer::zeros(max_tokens * HIDDEN, DTYPE)?, pools })
    }
}

impl Memory for HostMemory {
    fn layer(&mut self, _be: &Backend, l: usize, tokens: usize, qkv: &[f32], f: &mut LayerOp<'_>) -> Result<Vec<f32>> {
        self.qkv.write_f32(0, qkv)?;
        let mut q = CpuBackend::tensor_in(&self.qkv, 0, &[tokens, H, D], W, DTYPE)?;
        let mut k = CpuBackend::tensor_in(&self.qkv, H * D, &[tokens, HKV, D], W, DTYPE)?;
        let v = CpuBackend::tensor_in(&self.qkv, (H + HKV) * D, &[tokens, HKV, D], W, DTYPE)?;
        let mut out = CpuBackend::tensor_in(&self.out, 0, &[tokens, H, D], HIDDEN, DTYPE)?;
        f(&mut q, &mut k, &v, &mut out, &mut self.pools[l])?;
        self.out.read_f32(0..tokens * HIDDEN)
    }
    fn pools(&mut self, l: usize) -> &mut KvPools {
        &mut self.pools[l]
    }
}

#[cfg(feature = "cudarc")]
mod cuda {
    //! cudarc memory and stream the program owns (NVIDIA).
    use super::*;
    use attnforge::attnforge_hip::cudarc::driver::{CudaSlice, CudaStream, DriverError};
    use attnforge::attnforge_hip::{Borrowed, ForeignStream, HipBackend, Strategy};
    use std::sync::Arc;

    pub fn dev(e: DriverError) -> Error {
        Error::Device { code: -1, message: e.to_string() }
    }

    pub struct CudaMemory<'a> {
        stream: Arc<CudaStream>,
        hip: Arc<HipBackend>,
        qkv: CudaSlice<u16>,
        out: CudaSlice<u16>,
        pools: Vec<KvPools>,
        /// The pool allocations' borrows: the pools' views are refused once these end.
        _k: Borrowed<'a>,
        _v: Borrowed<'a>,
    }

    /// Opens backend `name` on the program's stream and views its pool allocations (one for K,
    /// one for V, every layer in each).
    pub fn memory<'a>(name: &'static str, stream: Arc<CudaStream>, kpool: &'a mut CudaSlice<u16>, vpool: &'a mut CudaSlice<u16>, max_tokens: usize) -> Result<(Backend, CudaMemory<'a>)> {
        let strategy = match name {
            "hip-flash" => Strategy::Flash,
            "hip-hybrid" => Strategy::Hybrid,
            "hip-fused" => Strategy::Fused,
            _ => Strategy::Separate,
        };
        let hip = Arc::new(HipBackend::open_on_stream(name, strategy, 0, ForeignStream::from_cudarc(&stream)).map_err(|e| Error::Device { code: -1, message: e })?);
        let be = Backend::new(hip.clone());
        let s = spec();
        let n = s.pool_len();
        let (shape, row) = (s.pool_shape(), PAGE * HKV * D);
        let k = hip.borrow_cudarc_mut(kpool, &[LAYERS * n], 1, DTYPE)?;
        let v = hip.borrow_cudarc_mut(vpool, &[LAYERS * n], 1, DTYPE)?;
        let pools = (0..LAYERS).map(|l| be.kv_pools(&s, be.view(&k, l * n, &shape, row)?, be.view(&v, l * n, &shape, row)?)).collect::<Result<Vec<_>>>()?;
        let qkv = stream.alloc_zeros::<u16>(max_tokens * W).map_err(dev)?;
        let out = stream.alloc_zeros::<u16>(max_tokens * HIDDEN).map_err(dev)?;
        Ok((be, CudaMemory { stream, hip, qkv, out, pools, _k: k, _v: v }))
    }

    impl Memory for CudaMemory<'_> {
        fn layer(&mut self, be: &Backend, l: usize, tokens: usize, qkv: &[f32], f: &mut LayerOp<'_>) -> Result<Vec<f32>> {
            // The engine's write, queued on its stream: attnforge's work follows in stream order,
            // with no synchronisation in between.
            let host: Vec<u16> = qkv.iter().map(|&x| half_bits(x)).collect();
            self.stream.memcpy_htod(&host, &mut self.qkv).map_err(dev)?;
            {
                let base = self.hip.borrow_cudarc_mut(&mut self.qkv, &[tokens, W], W, DTYPE)?;
                let mut out = self.hip.borrow_cudarc_mut(&mut self.out, &[tokens, H, D], HIDDEN, DTYPE)?;
                let mut q = be.view(&base, 0, &[tokens, H, D], W)?;
                let mut k = be.view(&base, H * D, &[tokens, HKV, D], W)?;
                let v = be.view(&base, (H + HKV) * D, &[tokens, HKV, D], W)?;
                f(&mut q, &mut k, &v, &mut out, &mut self.pools[l])?;
            }
            let all = self.stream.clone_dtoh(&self.out).map_err(dev)?;
            Ok(all[..tokens * HIDDEN].iter().map(|&b| half_f32(b)).collect())
        }
        fn pools(&mut self, l: usize) -> &mut KvPools {
            &mut self.pools[l]
        }
    }

    /// The engine's own conversions to and from f16 bits.
    fn half_bits(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }
    fn half_f32(b: u16) -> f32 {
        half::f16::from_bits(b).to_f32()
    }
}

/// Seeded normals (rand's StdRng, the generator the whole repository uses).
struct Rng(rand::rngs::StdRng);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| rand::Rng::sample::<f32, _>(&mut self.0, rand_distr::StandardNormal)).collect()
    }
}

/// The model: per layer a random projection `[HIDDEN, W]` (the engine's GEMM, on the host).
struct Model {
    wqkv: Vec<Vec<f32>>,
    /// Per layer, one sink logit per query head.
    sinks: Vec<Vec<f32>>,
    rope: RopeConfig,
}

impl Model {
    fn new() -> Self {
        let mut r = Rng::new(7);
        let scale = 1.0 / (HIDDEN as f32).sqrt();
        let wqkv = (0..LAYERS).map(|_| r.normals(HIDDEN * W).iter().map(|x| x * scale).collect()).collect();
        let sinks = (0..LAYERS).map(|_| r.normals(H).iter().map(|x| 1.0 + x).collect()).collect();
        Model { wqkv, sinks, rope: RopeConfig::new(D, 500000.0, 4096) }
    }
    /// Layer `l`'s attention: a sliding window on even layers, the whole context on odd ones.
    fn params(l: usize) -> AttentionParams {
        if l % 2 == 0 {
            AttentionParams::causal(D).with_window(WINDOW)
        } else {
            AttentionParams::causal(D)
        }
    }
    /// RMS-normalised rows of `x` (`[tokens, HIDDEN]`) times layer `l`'s projection.
    fn project(&self, l: usize, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len() / HIDDEN * W];
        for (row, o) in x.chunks(HIDDEN).zip(out.chunks_mut(W)) {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / HIDDEN as f32 + 1e-6).sqrt();
            for (i, &xi) in row.iter().enumerate() {
                for (oj, wj) in o.iter_mut().zip(&self.wqkv[l][i * W..(i + 1) * W]) {
                    *oj += xi / rms * wj;
                }
            }
        }
        out
    }
}

/// One engine: a backend, the memory it owns, the metadata it owns.
struct Engine<M: Memory> {
    be: Backend,
    mem: M,
    meta: KvMetadata,
    /// Each layer's attention sinks on the backend's device (uploaded once, with the weights).
    sinks: Vec<Tensor>,
}

impl<M: Memory> Engine<M> {
    fn new(model: &Model, be: Backend, mem: M) -> Result<Self> {
        let sinks = model.sinks.iter().map(|s| be.upload(s, &[H], DType::F32)).collect::<Result<Vec<_>>>()?;
        let mut meta = KvMetadata::new(&spec())?;
        // Block tables the engine owns: sequence s gets pages 8s..8s+8; the fork gets 24.. later.
        for s in 0..3u32 {
            meta.set_page_table(s as usize, &(8 * s..8 * s + 8).collect::<Vec<_>>())?;
        }
        Ok(Engine { be, mem, meta, sinks })
    }

    /// The step's plans, once for every layer of each kind (sliding window, full): validation,
    /// kernel choice and the metadata (lengths, block tables, positions, slots) uploaded once.
    fn plans(&self, model: &Model, batch: &Batch, positions: &[u32]) -> Result<[StepPlan; 2]> {
        let spec = spec();
        let plan = |params| self.be.plan(StepDesc { op: PlanOp::Step, spec: &spec, num_heads: H, meta: &self.meta, batch, positions, rope: Some(&model.rope), params, max_kv_len: None });
        Ok([plan(Model::params(0))?, plan(Model::params(1))?])
    }

    /// Layer `l` of a step: RoPE + append + attention on views, run from the step's plan (only
    /// launches on a GPU).
    fn layer(&mut self, l: usize, qkv: &[f32], plans: &[StepPlan; 2]) -> Result<Vec<f32>> {
        let Engine { be, mem, sinks, .. } = self;
        let (plan, sinks) = (&plans[l % 2], Some(&sinks[l]));
        let mut op = |q: &mut Tensor, k: &mut Tensor, v: &Tensor, out: &mut Tensor, pools: &mut KvPools| be.run(plan, LayerViews::Step { q, k, v, pools, out, sinks });
        mem.layer(be, l, plan.tokens(), qkv, &mut op)
    }

    /// Prefix sharing: sequence `dst` forks `src` (full pages shared; the partial one copied into
    /// `spare` in every layer's pools), then gets pages of its own to grow into.
    fn fork(&mut self, src: usize, dst: usize, spare: u32, more: &[u32]) -> Result<()> {
        if let Some(copy) = self.meta.fork(src, dst, Some(spare))? {
            for l in 0..LAYERS {
                self.be.copy_kv_pages(self.mem.pools(l), &[copy])?;
            }
        }
        let mut table = self.meta.page_table(dst).to_vec();
        table.extend_from_slice(more);
        self.meta.set_page_table(dst, &table)
    }
}

/// Every layer of one step on `a` (and, in lockstep from the same inputs, on the reference
/// `b`); returns the last layer's output and the largest disagreement relative to the rms.
fn forward<A: Memory, B: Memory>(model: &Model, a: &mut Engine<A>, mut b: Option<&mut Engine<B>>, batch: &Batch, x: &[f32]) -> Result<(Vec<f32>, f32)> {
    // The step's positions: each new token at its sequence's length so far.
    let positions: Vec<u32> = batch.seq_ids().iter().zip(batch.q_lens()).flat_map(|(&s, &n)| { let l = a.meta.seq_len(s) as u32; l..l + n as u32 }).collect();
    // Once per step, for all layers: the lengths grow; nothing writes into a page another
    // sequence still reads (the engine's duty on this path).
    assert_eq!(a.meta.append_conflict(batch), None);
    a.meta.extend(batch)?;
    if let Some(b) = b.as_deref_mut() {
        b.meta.extend(batch)?;
    }
    // Once per step, for all layers: the plan.
    let plan_a = a.plans(model, batch, &positions)?;
    let plan_b = match b.as_deref() {
        Some(b) => Some(b.plans(model, batch, &positions)?),
        None => None,
    };
    let (mut x, mut worst) = (x.to_vec(), 0f32);
    for l in 0..LAYERS {
        let qkv = model.project(l, &x);
        let out = a.layer(l, &qkv, &plan_a)?;
        x = match (b.as_deref_mut(), &plan_b) {
            (Some(b), Some(plan_b)) => {
                let reference = b.layer(l, &qkv, plan_b)?;
                let rms = (reference.iter().map(|v| v * v).sum::<f32>() / reference.len() as f32).sqrt().max(1e-6);
                worst = worst.max(out.iter().zip(&reference).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / rms);
                reference
            }
            _ => out,
        };
    }
    Ok((x, worst))
}

/// The decode loop: a prefill of three prompts, then one token per sequence per step; sequence 0
/// is forked into 3 at step 4, sequence 1 rolled back by two tokens at step 8.
fn run<A: Memory, B: Memory>(model: &Model, a: &mut Engine<A>, mut b: Option<&mut Engine<B>>) -> Result<f32> {
    let prompts = [37usize, 20, 5];
    let mut rng = Rng::new(11);
    let mut active: Vec<usize> = vec![0, 1, 2];
    let mut batch = Batch::new(active.clone(), prompts.to_vec())?;
    let mut x = rng.normals(batch.total_tokens() * HIDDEN);
    let mut worst = 0f32;
    for step in 0..=STEPS {
        let (out, diff) = forward(model, a, b.as_deref_mut(), &batch, &x)?;
        worst = worst.max(diff);
        // Each sequence's next input: its last output row.
        let last: Vec<&[f32]> = batch.offsets()[1..].iter().map(|&end| &out[(end - 1) * HIDDEN..end * HIDDEN]).collect();
        let mut next: Vec<f32> = last.concat();
        let sum: f32 = out.iter().sum();
        let lens: Vec<usize> = (0..SEQS).map(|s| a.meta.seq_len(s)).collect();
        let vs = if b.is_some() { format!(", largest difference from the reference {diff:.2e}") } else { String::new() };
        println!("step {step:>2}: {} tokens, lengths {lens:?}, output sum {sum:>10.4}{vs}", batch.total_tokens());
        if step == 4 {
            // Prefix sharing (parallel sampling): sequence 3 continues from sequence 0's state.
            a.fork(0, 3, 24, &(25..32).collect::<Vec<_>>())?;
            if let Some(b) = b.as_deref_mut() {
                b.fork(0, 3, 24, &(25..32).collect::<Vec<_>>())?;
            }
            next.extend_from_slice(last[0]);
            active.push(3);
            println!("         sequence 0 forked into 3: {} full pages shared", a.meta.seq_len(0) / PAGE);
        }
        if step == 8 {
            // Speculative decoding rejected sequence 1's last two tokens.
            let len = a.meta.seq_len(1) - 2;
            a.meta.truncate(1, len)?;
            if let Some(b) = b.as_deref_mut() {
                b.meta.truncate(1, len)?;
            }
            println!("         sequence 1 rolled back to {len} tokens");
        }
        batch = Batch::new(active.clone(), vec![1; active.len()])?;
        x = next;
    }
    Ok(worst)
}

fn main() -> Result<()> {
    // The libraries' spans and events (per op: backend, shapes, dtype, the plan; selection
    // decisions) on stderr when RUST_LOG asks, e.g. RUST_LOG=attnforge_api=debug,attnforge_hip=debug.
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let model = Model::new();
    let problem = ProblemDesc::step(DTYPE, H, HKV, model.rope.clone(), spec().layout);
    let chosen = registry::select(&problem)?;
    let name = chosen.backend.name().to_string();
    println!("backend: {name} ({})", chosen.reason);
    let max_tokens = 64;
    let cpu = CpuBackend::handle();
    #[cfg(feature = "cudarc")]
    if let Some(&static_name) = attnforge::attnforge_hip::NAMES.iter().find(|&&n| n == name) {
        use attnforge::attnforge_hip::cudarc::driver::CudaContext;
        let ctx = CudaContext::new(0).map_err(cuda::dev)?;
        let stream = ctx.new_stream().map_err(cuda::dev)?;
        let n = LAYERS * spec().pool_len();
        let (mut kpool, mut vpool) = (stream.alloc_zeros::<u16>(n).map_err(cuda::dev)?, stream.alloc_zeros::<u16>(n).map_err(cuda::dev)?);
        let (be, mem) = cuda::memory(static_name, stream.clone(), &mut kpool, &mut vpool, max_tokens)?;
        let mut gpu = Engine::new(&model, be, mem)?;
        let mut reference = Engine::new(&model, cpu.clone(), HostMemory::new(&cpu, max_tokens)?)?;
        println!("memory: cudarc buffers on the program's stream; checked in lockstep against the cpu reference");
        let worst = run(&model, &mut gpu, Some(&mut reference))?;
        drop(gpu);
        stream.synchronize().map_err(cuda::dev)?;
        println!("largest difference from the reference over every layer and step: {worst:.2e} (of the output rms)");
        if worst > 2e-2 {
            eprintln!("{name} disagrees with the reference beyond f16 tolerance");
            std::process::exit(1);
        }
        return Ok(());
    }
    // The host path: the registry's cpu backend (or any backend on the host).
    if chosen.backend.device() != Device::CPU {
        eprintln!("{name} runs on {}; this example views host buffers for it only on the CPU (and cudarc memory on NVIDIA)", chosen.backend.device());
        std::process::exit(2);
    }
    let be = chosen.backend;
    let mut engine = Engine::new(&model, be.clone(), HostMemory::new(&be, max_tokens)?)?;
    println!("memory: host buffers the program owns");
    run::<HostMemory, HostMemory>(&model, &mut engine, None)?;
    Ok(())
}
