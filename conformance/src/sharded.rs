//! Tensor parallelism: a problem's heads split over N backend instances (one per device, each
//! with its own stream, tensors and KV cache), every instance driven from its own thread at the
//! same time, the outputs gathered by head and compared with the unsharded reference.
//!
//! This is how an engine shards attention: GPU `i` of `N` owns query heads `i·H/N..(i+1)·H/N`
//! and KV heads `i·Hkv/N..(i+1)·Hkv/N` (a GQA group never straddles two GPUs when `N` divides
//! `Hkv`); attention needs no communication, and the engine's all-reduce after the output
//! projection joins the shards. Each step here is one engine step for every sequence at once:
//! prefill in chunks (the later chunks attend to the cached earlier ones: chunked prefill), then
//! single-token decode steps.

use attnforge_api::{AttentionParams, Backend, Batch, CacheLayout, DType, KvCacheSpec, RopeConfig, StepInputs};

use crate::rng::Rng;
use crate::tolerance::compare;

/// The sharded problem.
#[derive(Debug, Clone)]
pub struct ShardProblem {
    /// Element type.
    pub dtype: DType,
    /// Query heads of the whole model (split over the shards).
    pub heads: usize,
    /// KV heads of the whole model (split over the shards).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Sequences in the batch.
    pub seqs: usize,
    /// Prompt tokens per sequence, prefilled in `chunks` steps.
    pub prefill: usize,
    /// Prefill chunks (2 or more: chunked prefill).
    pub chunks: usize,
    /// Single-token decode steps after the prefill.
    pub decode_steps: usize,
    /// Seed of the inputs.
    pub seed: u64,
}

impl Default for ShardProblem {
    /// Llama-style GQA 32/8, head_dim 128, two sequences of 48 prompt tokens in two chunks,
    /// then 6 decode steps.
    fn default() -> Self {
        ShardProblem { dtype: DType::F32, heads: 32, kv_heads: 8, head_dim: 128, seqs: 2, prefill: 48, chunks: 2, decode_steps: 6, seed: 1701 }
    }
}

impl ShardProblem {
    /// Tokens per sequence of each step.
    fn steps(&self) -> Vec<usize> {
        let c = self.chunks.max(1);
        let mut v: Vec<usize> = (0..c).map(|i| self.prefill / c + usize::from(i < self.prefill % c)).filter(|&n| n > 0).collect();
        v.extend(std::iter::repeat_n(1, self.decode_steps));
        v
    }

    fn capacity(&self) -> usize {
        self.prefill + self.decode_steps
    }
}

/// What [`check_sharded`] measured.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// Shards (devices or instances).
    pub shards: usize,
    /// Steps run per shard.
    pub steps: usize,
    /// Largest |sharded - reference| over every step's output.
    pub max_abs_err: f64,
}

/// Host inputs of one step for all heads: q [T, H, D], k and v [T, Hkv, D], and the positions.
struct StepData {
    q_len: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    positions: Vec<u32>,
}

fn inputs(p: &ShardProblem) -> Vec<StepData> {
    let mut rng = Rng::new(p.seed);
    let mut start = 0;
    p.steps()
        .into_iter()
        .map(|q_len| {
            let t = p.seqs * q_len;
            let d = StepData {
                q_len,
                q: rng.normals(t * p.heads * p.head_dim, 1.0),
                k: rng.normals(t * p.kv_heads * p.head_dim, 1.0),
                v: rng.normals(t * p.kv_heads * p.head_dim, 1.0),
                positions: (0..p.seqs).flat_map(|_| (start..start + q_len).map(|x| x as u32)).collect(),
            };
            start += q_len;
            d
        })
        .collect()
}

/// Heads `h0..h0 + n` of every row of `x` (rows of `heads` heads of `d` elements).
fn slice_heads(x: &[f32], heads: usize, d: usize, h0: usize, n: usize) -> Vec<f32> {
    x.chunks_exact(heads * d).flat_map(|row| row[h0 * d..(h0 + n) * d].iter().copied()).collect()
}

/// Runs every step of `p` on `be` for query heads `h0..h0 + h` and KV heads `k0..k0 + hk`;
/// returns each step's output `[T, h, D]`.
fn run(be: &Backend, p: &ShardProblem, data: &[StepData], (h0, h): (usize, usize), (k0, hk): (usize, usize)) -> Result<Vec<Vec<f32>>, String> {
    let e = |what: &'static str| move |err: attnforge_api::Error| format!("{} on {}: {what}: {err}", be.name(), be.device());
    let d = p.head_dim;
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, p.capacity().max(1)) };
    let spec = KvCacheSpec { num_seqs: p.seqs, num_kv_heads: hk, head_dim: d, dtype: p.dtype, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: p.capacity() } };
    let mut cache = be.create_kv_cache(&spec).map_err(e("KV cache"))?;
    let mut outs = Vec::with_capacity(data.len());
    for s in data {
        let t = p.seqs * s.q_len;
        let mut q = be.upload(&slice_heads(&s.q, p.heads, d, h0, h), &[t, h, d], p.dtype).map_err(e("q"))?;
        let mut k = be.upload(&slice_heads(&s.k, p.kv_heads, d, k0, hk), &[t, hk, d], p.dtype).map_err(e("k"))?;
        let v = be.upload(&slice_heads(&s.v, p.kv_heads, d, k0, hk), &[t, hk, d], p.dtype).map_err(e("v"))?;
        let mut out = be.alloc(&[t, h, d], p.dtype).map_err(e("out"))?;
        be.fill(&mut out, f32::NAN).map_err(e("poisoning out"))?;
        let batch = Batch::uniform(p.seqs, s.q_len).map_err(e("batch"))?;
        be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &s.positions, rope: &rope, cache: &mut cache, batch: &batch, params: AttentionParams::causal(d), out: &mut out, sinks: None })
            .map_err(e("step"))?;
        outs.push(be.download(&out).map_err(e("reading out"))?);
    }
    Ok(outs)
}

/// Every step of `p` on `be` with all heads (no sharding): each step's output `[T, H, D]`.
/// Two instances given the same problem must return the same bits.
pub fn run_all_heads(be: &Backend, p: &ShardProblem) -> Result<Vec<Vec<f32>>, String> {
    run(be, p, &inputs(p), (0, p.heads), (0, p.kv_heads))
}

/// Splits `p`'s heads over `shards` (one backend instance each, e.g.
/// `registry::get_on(name, i)` for every GPU), runs them from one thread each at the same
/// time, gathers the outputs by head and compares every step with `reference` run unsharded
/// (the tolerance model of [`crate::tolerance`], with the reference's output as the golden
/// result). `Err` says which step, shard and element.
pub fn check_sharded(shards: &[Backend], reference: &Backend, p: &ShardProblem) -> Result<ShardReport, String> {
    let n = shards.len();
    if n == 0 || !p.kv_heads.is_multiple_of(n) || !p.heads.is_multiple_of(p.kv_heads) {
        return Err(format!("{} shards cannot split {} query / {} KV heads (the shard count must divide the KV heads)", n, p.heads, p.kv_heads));
    }
    let data = inputs(p);
    let want = run(reference, p, &data, (0, p.heads), (0, p.kv_heads))?;
    let (h, hk) = (p.heads / n, p.kv_heads / n);
    let got: Vec<Result<Vec<Vec<f32>>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards.iter().enumerate().map(|(i, be)| {
            let data = &data;
            scope.spawn(move || run(be, p, data, (i * h, h), (i * hk, hk)))
        }).collect();
        handles.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("a shard's thread panicked".into()))).collect()
    });
    let got = got.into_iter().collect::<Result<Vec<_>, String>>()?;
    let d = p.head_dim;
    let mut max_abs_err = 0f64;
    for (step, w) in want.iter().enumerate() {
        // Gather: row t of shard i holds query heads i*h..(i+1)*h of token t.
        let rows = w.len() / (p.heads * d);
        let mut full = vec![f32::NAN; w.len()];
        for (i, g) in got.iter().enumerate() {
            for t in 0..rows {
                full[(t * p.heads + i * h) * d..(t * p.heads + (i + 1) * h) * d].copy_from_slice(&g[step][t * h * d..(t + 1) * h * d]);
            }
        }
        let golden: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        compare(&format!("sharded step {step} ({} tokens per sequence) over {n} shards", data[step].q_len), &full, w, &golden, p.dtype)?;
        max_abs_err = full.iter().zip(w).fold(max_abs_err, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    }
    Ok(ShardReport { shards: n, steps: want.len(), max_abs_err })
}

/// Device memory of one shard around a soak run.
#[derive(Debug, Clone)]
pub struct SoakShard {
    /// The shard's device.
    pub device: String,
    /// Bytes in use on it after the warm-up.
    pub before: usize,
    /// Bytes in use after `steps` more steps (synchronized).
    pub after: usize,
}

/// Runs `steps` decode steps of `p` (one token per sequence, the cache emptied whenever it is
/// full) on every shard at once, one thread each, and reads each device's memory in use after
/// a warm-up and at the end: an instance that leaks per step shows as growth. Host backends
/// report no memory (`Err`).
pub fn soak(shards: &[Backend], p: &ShardProblem, steps: usize) -> Result<Vec<SoakShard>, String> {
    let n = shards.len();
    if n == 0 || !p.kv_heads.is_multiple_of(n) {
        return Err(format!("{n} shards cannot split {} KV heads", p.kv_heads));
    }
    let (h, hk, d) = (p.heads / n, p.kv_heads / n, p.head_dim);
    let one = |be: &Backend| -> Result<SoakShard, String> {
        let e = |what: &'static str| move |err: attnforge_api::Error| format!("{} on {}: {what}: {err}", be.name(), be.device());
        let cap = 64usize;
        let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, cap) };
        let spec = KvCacheSpec { num_seqs: p.seqs, num_kv_heads: hk, head_dim: d, dtype: p.dtype, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: cap } };
        let mut cache = be.create_kv_cache(&spec).map_err(e("KV cache"))?;
        let mut rng = Rng::new(p.seed);
        let mut q = be.upload(&rng.normals(p.seqs * h * d, 1.0), &[p.seqs, h, d], p.dtype).map_err(e("q"))?;
        let mut k = be.upload(&rng.normals(p.seqs * hk * d, 1.0), &[p.seqs, hk, d], p.dtype).map_err(e("k"))?;
        let v = be.upload(&rng.normals(p.seqs * hk * d, 1.0), &[p.seqs, hk, d], p.dtype).map_err(e("v"))?;
        let mut out = be.alloc(&[p.seqs, h, d], p.dtype).map_err(e("out"))?;
        let batch = Batch::uniform(p.seqs, 1).map_err(e("batch"))?;
        let mut step = |i: usize| -> Result<(), String> {
            let len = i % cap;
            if len == 0 {
                for s in 0..p.seqs {
                    cache.reset(s).map_err(e("reset"))?;
                }
            }
            let positions = vec![len as u32; p.seqs];
            be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut cache, batch: &batch, params: AttentionParams::causal(d), out: &mut out, sinks: None })
                .map_err(e("step"))
        };
        let used = |be: &Backend| -> Result<usize, String> {
            be.synchronize().map_err(e("synchronize"))?;
            match be.memory_info().map_err(e("memory"))? {
                Some((used, _)) => Ok(used),
                None => Err(format!("{} reports no device memory (a host backend)", be.name())),
            }
        };
        for i in 0..2 * cap {
            step(i)?;
        }
        let before = used(be)?;
        for i in 0..steps {
            step(i)?;
            if i % 1000 == 999 {
                be.synchronize().map_err(e("synchronize"))?;
            }
        }
        let after = used(be)?;
        Ok(SoakShard { device: be.device().to_string(), before, after })
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = shards.iter().map(|be| scope.spawn(move || one(be))).collect();
        handles.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("a shard's thread panicked".into()))).collect()
    })
}
