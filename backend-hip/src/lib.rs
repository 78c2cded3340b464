//! # attnforge GPU backends (`hip-*`)
//!
//! Kernels are written once in HIP (`kernels/*.hip`, vendor differences in
//! `kernels/include/af_vendor.h`), compiled ahead of time by `build.rs` for NVIDIA (nvcc:
//! sm_80, sm_90, compute_90 PTX) and AMD (hipcc: gfx90a, gfx1030) and embedded in this crate.
//! The runtime ([`runtime`], the only module with `unsafe`) drives NVIDIA GPUs through the CUDA
//! driver API (cudarc, loaded dynamically) and, with the `rocm` feature, AMD GPUs through the
//! HIP runtime (hip-sys, linking ROCm's libamdhip64). The AMD path is built in CI but has not
//! run on an AMD GPU yet (none is available to the project).
//!
//! Registered implementations (the same primitives; they differ in the composite step
//! [`AttentionBackend::rope_append_attend`] and in how attention runs):
//! - `hip-flash`: RoPE, KV append, fused RoPE + append, FlashAttention-2 tiled prefill and
//!   split-K flash-decoding, all dtypes computing in f32. Its step rotates Q in place and writes
//!   rotated K and V into the cache in one kernel, then attends.
//! - `hip-hybrid`: K rotated once where it is written (fused RoPE + append, Q untouched), Q
//!   rotated inside attention as it is loaded: no separate Q pass.
//! - `hip-fused`: the cache keeps K unrotated with each slot's position; attention rotates Q and
//!   every cached key on the fly. A context shift ([`Backend::shift_positions`]) then only
//!   rewrites positions. Length-dependent RoPE scalings are unsupported for its step (a key's
//!   table would change with the context).
//! - `hip-separate`: the unfused baseline: RoPE kernel, append kernel, and attention as three
//!   kernels (scores, softmax, P.V) over a score buffer; any head_dim up to 4096.
//!
//! Priorities come from the benchmark (BENCHMARKS.md): see [`priority`].
//!
//! Nothing here falls back to the host: a problem the kernels cannot run is `Unsupported` with
//! the reason, from the same [`ops::attention::plan`] that picks the kernel.
#![deny(unsafe_code)]

pub mod ops;
pub mod runtime;
pub mod storage;

/// Code objects embedded by build.rs.
#[allow(missing_docs)]
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backend_api::registry::BackendEntry;
use backend_api::*;
use once_cell::sync::OnceCell;

use ops::attention::{self as attn, AttnKernel, AttnRope, KvSource, Shape};
use ops::kv_append::{self, AppendParams};
use ops::rope::{self, RopeParams};
use runtime::{DeviceBuffer, Gpu};
use storage::{addr, buffer, buffer_mut, decode, encode, i32_bytes, pools, pools_mut, BoundRope, GpuCache, GpuTensor};

/// The fusion strategy of a registered implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `hip-flash`: fused RoPE + append (Q rotated in place), then tiled / split-K attention.
    Flash,
    /// `hip-hybrid`: K rotated by fused RoPE + append, Q rotated inside attention.
    Hybrid,
    /// `hip-fused`: K cached unrotated with its position; attention rotates Q and K.
    Fused,
    /// `hip-separate`: RoPE, append, then scores / softmax / P.V kernels.
    Separate,
}

/// A GPU backend on one device.
pub struct HipBackend {
    name: &'static str,
    variant: Variant,
    gpu: Arc<Gpu>,
    device: Device,
    /// Inverse-frequency tables on the device, keyed by their bits: uploaded once per RoPE
    /// configuration (and per dynamic-scaling table), reused by every later call.
    tables: Mutex<HashMap<Vec<u64>, Arc<DeviceBuffer>>>,
}

impl std::fmt::Debug for HipBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HipBackend({}, {:?})", self.name, self.gpu)
    }
}

/// The process-wide GPU, opened once (or the reason it cannot be).
fn shared_gpu() -> std::result::Result<Arc<Gpu>, String> {
    static GPU: OnceCell<std::result::Result<Arc<Gpu>, String>> = OnceCell::new();
    GPU.get_or_init(|| Gpu::open(0).map(Arc::new)).clone()
}

impl HipBackend {
    /// Opens the backend on GPU 0, or says why it is unavailable here.
    pub fn open(name: &'static str, variant: Variant) -> std::result::Result<Self, String> {
        let gpu = shared_gpu()?;
        let device = gpu.device();
        Ok(HipBackend { name, variant, gpu, device, tables: Mutex::new(HashMap::new()) })
    }

    /// The GPU (name, SM count, timing events).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn addr(&self, t: &Tensor, what: &str) -> Result<u64> {
        addr(t, what, self.name, self.device)
    }

    fn inv_freq_table(&self, freqs: &RopeFrequencies) -> Result<Arc<DeviceBuffer>> {
        let key: Vec<u64> = freqs.inv_freq.iter().map(|f| f.to_bits()).collect();
        let mut tables = self.tables.lock().map_err(|_| Error::Device { code: -1, message: "table cache lock poisoned".into() })?;
        if let Some(t) = tables.get(&key) {
            return Ok(t.clone());
        }
        let bytes: Vec<u8> = freqs.inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
        let t = Arc::new(self.gpu.upload(&bytes)?);
        tables.insert(key, t.clone());
        Ok(t)
    }

    /// Capability and dispatch in one place: the reasons `op` cannot run `problem`.
    fn plan(&self, op: Op, problem: &ProblemDesc) -> std::result::Result<Option<AttnKernel>, Vec<String>> {
        let attention = |p: &ProblemDesc| if self.variant == Variant::Separate { attn::plan_separate(p) } else { attn::plan(p) };
        match op {
            Op::Rope | Op::KvAppend | Op::Shift => {
                let r = rope::reasons(problem);
                if r.is_empty() { Ok(None) } else { Err(r) }
            }
            Op::Attention | Op::AttentionPlain => attention(problem).map(Some),
            Op::Step => {
                let mut r = rope::reasons(problem);
                if self.variant == Variant::Fused {
                    if let Some(c) = problem.rope.as_ref().filter(|c| c.is_length_dependent()) {
                        r.push(format!(
                            "hip-fused keeps keys unrotated and rotates them with one table per cache; {:?} changes the table with the context length (use hip-hybrid or hip-flash)",
                            c.scaling
                        ));
                    }
                }
                match attention(problem) {
                    Ok(k) if r.is_empty() => Ok(Some(k)),
                    Ok(_) => Err(r),
                    Err(a) => {
                        r.extend(a.into_iter().filter(|x| !x.contains("multiple of 16")));
                        Err(r)
                    }
                }
            }
        }
    }

    fn kernel(&self, op: Op, problem: &ProblemDesc) -> Result<AttnKernel> {
        match self.plan(op, problem) {
            Ok(Some(k)) => Ok(k),
            Ok(None) => Err(Error::Unsupported { backend: self.name.into(), op: op.name().into(), reasons: vec!["no attention kernel for this op".into()] }),
            Err(reasons) => Err(Error::Unsupported { backend: self.name.into(), op: op.name().into(), reasons }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cache_attention(&self, kernel: AttnKernel, q: u64, cache: &KvCache, batch: &Batch, kv_lens: &[usize], params: AttentionParams, out: u64, dtype: DType, heads: usize, rope: Option<&AttnRope>) -> Result<()> {
        let spec = cache.spec();
        let p = pools(cache, self.name, self.device)?;
        let base: Vec<i32>;
        let kv = match spec.layout {
            CacheLayout::Contiguous { capacity } => {
                base = batch.seq_ids().iter().map(|&s| (s * capacity) as i32).collect();
                KvSource::Rows(&base)
            }
            CacheLayout::Paged { page_size, .. } => KvSource::Pages { page_size, tables: batch.seq_ids().iter().map(|&s| cache.page_table(s)).collect() },
        };
        let shape = Shape { dtype, heads, kv_heads: spec.num_kv_heads, head_dim: spec.head_dim, q_lens: batch.q_lens(), kv_lens, causal: params.causal, scale: params.scale };
        let _scratch = attn::launch(&self.gpu, kernel, &shape, kv, q, p.k.addr(), p.v.addr(), out, rope)?;
        Ok(())
    }

    /// hip-fused: binds the cache to this step's RoPE table, or refuses another one.
    fn bind_rope(&self, cache: &mut KvCache, config: &RopeConfig, freqs: &RopeFrequencies) -> Result<BoundRope> {
        let key: Vec<u64> = freqs.inv_freq.iter().map(|f| f.to_bits()).collect();
        let table = self.inv_freq_table(freqs)?;
        let want = BoundRope { key, table, rotary_dim: config.rotary_dim, interleaved: config.style == RopeStyle::Interleaved, factor: freqs.attention_factor as f32 };
        let p = pools_mut(cache, self.name, self.device)?;
        match &p.rope {
            Some(b) if b.key != want.key || b.rotary_dim != want.rotary_dim || b.interleaved != want.interleaved || b.factor.to_bits() != want.factor.to_bits() => {
                Err(Error::InvalidArgument(format!(
                    "{}: this cache holds unrotated keys for another RoPE configuration (rotary_dim {}, {} pairs); one cache serves one configuration",
                    self.name,
                    b.rotary_dim,
                    if b.interleaved { "interleaved" } else { "half-split" }
                )))
            }
            Some(b) => Ok(b.clone()),
            None => {
                p.rope = Some(want.clone());
                Ok(want)
            }
        }
    }

    /// hip-fused: the in-attention RoPE for a cache's unrotated keys (none bound: keys as given).
    fn cache_key_rope(cache: &GpuCache) -> Option<AttnRope> {
        let (b, pos) = (cache.rope.as_ref()?, cache.pos.as_ref()?);
        Some(AttnRope { q_pos: 0, k_pos: pos.addr(), inv_freq: b.table.addr(), rotary_dim: b.rotary_dim as i32, interleaved: b.interleaved, factor: b.factor })
    }

    /// Positions as the kernels take them.
    fn positions_i32(positions: &[u32]) -> Vec<i32> {
        positions.iter().map(|&p| p as i32).collect()
    }
}

impl HipBackend {
    /// hip-fused step: K and V appended unrotated with their positions, then attention rotates
    /// Q and every cached key on the fly.
    fn step_fused(&self, kernel: AttnKernel, a: StepArgs<'_>) -> Result<()> {
        let StepArgs { q, k, v, positions, config, freqs, cache, batch, start, kv_lens, params, out, .. } = a;
        let bound = self.bind_rope(cache, config, &freqs)?;
        let dtype = q.dtype();
        let pos = Self::positions_i32(positions);
        let slots = kv_append::slot_mapping(cache, batch.seq_ids(), batch.q_lens(), &start);
        let mut meta = pos.clone();
        meta.extend_from_slice(&slots);
        let meta_buf = self.gpu.upload(&i32_bytes(&meta))?;
        let heads = q.shape()[1];
        let (qa, ka, va, oa) = (self.addr(q, "q")?, self.addr(k, "k")?, self.addr(v, "v")?, self.addr(out, "out")?);
        let (hk, d) = (cache.spec().num_kv_heads, cache.spec().head_dim);
        let p = pools(cache, self.name, self.device)?;
        let k_pos = p.pos.as_ref().map(|b| b.addr()).ok_or_else(|| Error::Device { code: -1, message: "hip-fused cache without positions".into() })?;
        let ap = AppendParams {
            k: ka,
            v: va,
            k_cache: p.k.addr(),
            v_cache: p.v.addr(),
            slots: meta_buf.addr() + 4 * pos.len() as u64,
            tokens: pos.len() as i32,
            k_heads: hk as i32,
            head_dim: d as i32,
            pad: 0,
            k_pos,
            positions: meta_buf.addr(),
        };
        kv_append::launch(&self.gpu, dtype, ap)?;
        let r = AttnRope { q_pos: meta_buf.addr(), k_pos, inv_freq: bound.table.addr(), rotary_dim: bound.rotary_dim as i32, interleaved: bound.interleaved, factor: bound.factor };
        self.cache_attention(kernel, qa, cache, batch, &kv_lens, params, oa, dtype, heads, Some(&r))
    }
}

impl AttentionBackend for HipBackend {
    fn name(&self) -> &str {
        self.name
    }

    fn device(&self) -> Device {
        self.device
    }

    fn supports(&self, op: Op, problem: &ProblemDesc) -> std::result::Result<(), Vec<String>> {
        self.plan(op, problem).map(|_| ())
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let buf = self.gpu.alloc(n * dtype.size())?;
        Tensor::from_storage(shape.to_vec(), dtype, self.device, Box::new(GpuTensor { buf }))
    }

    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        let dtype = dst.dtype();
        if src.len() != dst.numel() {
            return Err(Error::InvalidArgument(format!("write of {} values into {} elements", src.len(), dst.numel())));
        }
        let buf = buffer_mut(dst, "destination tensor", self.name, self.device)?;
        self.gpu.write(buf, 0, &encode(src, dtype))
    }

    fn read(&self, src: &Tensor) -> Result<Vec<f32>> {
        let buf = buffer(src, "tensor", self.name, self.device)?;
        Ok(decode(&self.gpu.read(buf, src.numel() * src.dtype().size())?, src.dtype()))
    }

    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()> {
        let (n, dtype) = (dst.numel(), dst.dtype());
        let a = self.addr(dst, "tensor")?;
        kv_append::fill(&self.gpu, dtype, a, n, value)
    }

    fn create_kv_cache(&self, spec: &KvCacheSpec) -> Result<KvCache> {
        let bytes = spec.pool_len() * spec.dtype.size();
        let pos = if self.variant == Variant::Fused {
            let slots = spec.pool_len() / (spec.num_kv_heads * spec.head_dim);
            Some(self.gpu.upload(&i32_bytes(&vec![i32::MIN; slots]))?)
        } else {
            None
        };
        let pools = GpuCache { k: self.gpu.alloc(bytes)?, v: self.gpu.alloc(bytes)?, pos, rope: None };
        KvCache::from_storage(spec.clone(), self.device, Box::new(pools))
    }

    fn read_kv_pool(&self, cache: &KvCache) -> Result<KvPool> {
        let (n, dtype) = (cache.spec().pool_len() * cache.spec().dtype.size(), cache.spec().dtype);
        let p = pools(cache, self.name, self.device)?;
        Ok(KvPool { k: decode(&self.gpu.read(&p.k, n)?, dtype), v: decode(&self.gpu.read(&p.v, n)?, dtype) })
    }

    fn write_kv_pool(&self, cache: &mut KvCache, pool: &KvPool) -> Result<()> {
        let dtype = cache.spec().dtype;
        let p = pools_mut(cache, self.name, self.device)?;
        self.gpu.write(&mut p.k, 0, &encode(&pool.k, dtype))?;
        self.gpu.write(&mut p.v, 0, &encode(&pool.v, dtype))
    }

    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        let RopeArgs { q, k, positions, config, freqs, .. } = a;
        let dtype = q.dtype();
        let table = self.inv_freq_table(&freqs)?;
        let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let pos_buf = self.gpu.upload(&i32_bytes(&pos))?;
        let p = RopeParams {
            q: self.addr(q, "q")?,
            k: self.addr(k, "k")?,
            positions: pos_buf.addr(),
            inv_freq: table.addr(),
            tokens: positions.len() as i32,
            q_heads: q.shape()[1] as i32,
            k_heads: k.shape()[1] as i32,
            head_dim: config.head_dim as i32,
            rotary_dim: config.rotary_dim as i32,
            vp: rope::pairs_per_thread(config.rotary_dim, dtype),
            attention_factor: freqs.attention_factor as f32,
            ..Default::default()
        };
        rope::launch(&self.gpu, dtype, p, config.style)
    }

    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        let AppendArgs { cache, k, v, batch, start, .. } = a;
        let slots = kv_append::slot_mapping(cache, batch.seq_ids(), batch.q_lens(), &start);
        let slot_buf = self.gpu.upload(&i32_bytes(&slots))?;
        let (hk, d, dtype) = (cache.spec().num_kv_heads, cache.spec().head_dim, cache.spec().dtype);
        let (ka, va) = (self.addr(k, "k")?, self.addr(v, "v")?);
        let p = pools(cache, self.name, self.device)?;
        let k_pos = p.pos.as_ref().map_or(0, |b| b.addr());
        let params = AppendParams { k: ka, v: va, k_cache: p.k.addr(), v_cache: p.v.addr(), slots: slot_buf.addr(), tokens: slots.len() as i32, k_heads: hk as i32, head_dim: d as i32, pad: 0, k_pos, positions: 0 };
        kv_append::launch(&self.gpu, dtype, params)
    }

    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        let kernel = self.kernel(Op::Attention, &a.desc)?;
        let (qa, oa) = (self.addr(a.q, "q")?, self.addr(a.out, "out")?);
        // A hip-fused cache's keys appended by the step are unrotated: rotate them here.
        let rope = Self::cache_key_rope(pools(a.cache, self.name, self.device)?);
        self.cache_attention(kernel, qa, a.cache, a.batch, &a.kv_lens, a.params, oa, a.q.dtype(), a.q.shape()[1], rope.as_ref())
    }

    fn attention_plain(&self, a: PlainAttentionArgs<'_>) -> Result<()> {
        let kernel = self.kernel(Op::AttentionPlain, &a.desc)?;
        let base: Vec<i32> = a.batch.kv_offsets()[..a.batch.len()].iter().map(|&o| o as i32).collect();
        let shape = Shape {
            dtype: a.q.dtype(),
            heads: a.q.shape()[1],
            kv_heads: a.k.shape()[1],
            head_dim: a.q.shape()[2],
            q_lens: a.batch.q_lens(),
            kv_lens: a.batch.kv_lens(),
            causal: a.params.causal,
            scale: a.params.scale,
        };
        let (q, k, v, out) = (self.addr(a.q, "q")?, self.addr(a.k, "k")?, self.addr(a.v, "v")?, self.addr(a.out, "out")?);
        let _scratch = attn::launch(&self.gpu, kernel, &shape, KvSource::Rows(&base), q, k, v, out, None)?;
        Ok(())
    }

    /// The composite step, per strategy (see the crate docs).
    fn rope_append_attend(&self, mut a: StepArgs<'_>) -> Result<()> {
        let kernel = self.kernel(Op::Step, &a.desc)?;
        match self.variant {
            Variant::Separate => {
                self.rope(a.rope_args())?;
                self.kv_append(a.append_args())?;
                return self.attention(a.attention_args());
            }
            Variant::Fused => return self.step_fused(kernel, a),
            Variant::Flash | Variant::Hybrid => {}
        }
        let StepArgs { q, k, v, positions, config, freqs, cache, batch, start, kv_lens, params, out, .. } = a;
        let dtype = q.dtype();
        let table = self.inv_freq_table(&freqs)?;
        let pos = Self::positions_i32(positions);
        let slots = kv_append::slot_mapping(cache, batch.seq_ids(), batch.q_lens(), &start);
        let mut meta = pos.clone();
        meta.extend_from_slice(&slots);
        let meta_buf = self.gpu.upload(&i32_bytes(&meta))?;
        let heads = q.shape()[1];
        let (qa, ka, va, oa) = (self.addr(q, "q")?, self.addr(k, "k")?, self.addr(v, "v")?, self.addr(out, "out")?);
        let p = pools(cache, self.name, self.device)?;
        let hybrid = self.variant == Variant::Hybrid;
        // One kernel: K rotated into the cache with V; flash also rotates Q in place, hybrid
        // leaves Q to the attention kernel.
        let rp = RopeParams {
            q: if hybrid { 0 } else { qa },
            k: ka,
            positions: meta_buf.addr(),
            inv_freq: table.addr(),
            k_cache: p.k.addr(),
            v_cache: p.v.addr(),
            v: va,
            slots: meta_buf.addr() + 4 * pos.len() as u64,
            tokens: pos.len() as i32,
            q_heads: heads as i32,
            k_heads: cache.spec().num_kv_heads as i32,
            head_dim: config.head_dim as i32,
            rotary_dim: config.rotary_dim as i32,
            vp: rope::pairs_per_thread(config.rotary_dim, dtype),
            attention_factor: freqs.attention_factor as f32,
            ..Default::default()
        };
        rope::launch(&self.gpu, dtype, rp, config.style)?;
        let q_rope = hybrid.then(|| AttnRope {
            q_pos: meta_buf.addr(),
            k_pos: 0,
            inv_freq: table.addr(),
            rotary_dim: config.rotary_dim as i32,
            interleaved: config.style == RopeStyle::Interleaved,
            factor: freqs.attention_factor as f32,
        });
        self.cache_attention(kernel, qa, cache, batch, &kv_lens, params, oa, dtype, heads, q_rope.as_ref())
    }

    /// Context shift: keys stored rotated are rotated by `delta` in place (the rope kernel over
    /// the tokens' cache slots); hip-fused slots that hold a position only move it.
    fn shift_positions(&self, a: ShiftArgs<'_>) -> Result<()> {
        let ShiftArgs { cache, seq, tokens, delta, config, freqs, .. } = a;
        let n = tokens.len();
        let row = cache.spec().num_kv_heads * cache.spec().head_dim;
        let mut meta: Vec<i32> = vec![delta as i32; n];
        meta.extend(tokens.map(|t| (cache.slot_offset(seq, t, 0) / row) as i32));
        let meta_buf = self.gpu.upload(&i32_bytes(&meta))?;
        let table = self.inv_freq_table(&freqs)?;
        let dtype = cache.spec().dtype;
        let p = pools(cache, self.name, self.device)?;
        let rp = RopeParams {
            q: 0,
            k: p.k.addr(),
            positions: meta_buf.addr(),
            inv_freq: table.addr(),
            slots: meta_buf.addr() + 4 * n as u64,
            tokens: n as i32,
            q_heads: 0,
            k_heads: cache.spec().num_kv_heads as i32,
            head_dim: config.head_dim as i32,
            rotary_dim: config.rotary_dim as i32,
            vp: rope::pairs_per_thread(config.rotary_dim, dtype),
            attention_factor: 1.0,
            k_pos: p.pos.as_ref().map_or(0, |b| b.addr()),
            gather: 1,
            ..Default::default()
        };
        rope::launch(&self.gpu, dtype, rp, config.style)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }
}

fn create(name: &'static str, variant: Variant) -> std::result::Result<Arc<dyn AttentionBackend>, String> {
    HipBackend::open(name, variant).map(|b| Arc::new(b) as Arc<dyn AttentionBackend>)
}

/// Registry priorities (higher wins automatic selection), from the benchmark in
/// BENCHMARKS.md: hip-flash and hip-hybrid tie at realistic shapes (within run-to-run spread)
/// and hip-flash is 10-25 % faster on small problems, so it stays the default; hip-fused pays
/// for rotating every cached key in every attention call; hip-separate exists to be measured
/// against.
pub mod priority {
    /// `hip-flash`.
    pub const FLASH: i32 = 100;
    /// `hip-hybrid`.
    pub const HYBRID: i32 = 90;
    /// `hip-fused`.
    pub const FUSED: i32 = 50;
    /// `hip-separate`.
    pub const SEPARATE: i32 = 10;
}

inventory::submit! {
    BackendEntry {
        name: "hip-flash",
        description: "GPU: fused RoPE+append, FlashAttention-2 tiled prefill, split-K decode; f32/f16/bf16 (f32 math)",
        priority: priority::FLASH,
        create: || create("hip-flash", Variant::Flash),
    }
}

inventory::submit! {
    BackendEntry {
        name: "hip-hybrid",
        description: "GPU: K rotated once by fused RoPE+append, Q rotated inside attention as it is loaded (no Q pass)",
        priority: priority::HYBRID,
        create: || create("hip-hybrid", Variant::Hybrid),
    }
}

inventory::submit! {
    BackendEntry {
        name: "hip-fused",
        description: "GPU: K cached unrotated with positions, RoPE on Q and every key inside attention; cheap context shift",
        priority: priority::FUSED,
        create: || create("hip-fused", Variant::Fused),
    }
}

inventory::submit! {
    BackendEntry {
        name: "hip-separate",
        description: "GPU baseline: RoPE, append, then scores / softmax / P.V kernels over a score buffer; head_dim up to 4096",
        priority: priority::SEPARATE,
        create: || create("hip-separate", Variant::Separate),
    }
}

/// Every name this crate registers.
pub const NAMES: &[&str] = &["hip-flash", "hip-hybrid", "hip-fused", "hip-separate"];

/// Referenced by the facade so the linker keeps this crate's registrations.
#[inline(never)]
pub fn link() {}
