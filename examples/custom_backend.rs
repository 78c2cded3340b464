//! A new backend against the trait, registered with `inventory`, proven by the conformance
//! suite in one call. `host-f32` keeps f32 tensors on the host and computes in f32 with a
//! single-pass online softmax (the FlashAttention recurrence), so it is a genuinely different
//! implementation from the f64 reference. It supports f32 only and says so for other dtypes.
//!
//!     cargo run --release --example custom_backend
use std::any::Any;
use std::sync::Arc;

use attnforge::registry::BackendEntry;
use attnforge::*;

/// Values of a tensor of any dtype, held as f32 (rounded to the tensor's dtype when written),
/// with that dtype: storage whose layout is not the dtype's own must say which dtype it holds
/// (`dtype()`), or a tensor re-assembled around it under another dtype (twice the elements at
/// half the size) would pass the API's byte-length check and be indexed past its end.
#[derive(Debug)]
struct F32s(Vec<f32>, DType);
impl Storage for F32s {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    // Elements held, in the dtype's layout (what the API checks shapes against).
    fn byte_len(&self) -> usize {
        self.0.len() * self.1.size()
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.1)
    }
}

fn foreign(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} was not made by host-f32"))
}
fn data(t: &Tensor) -> Result<&Vec<f32>> {
    t.storage().as_any().downcast_ref::<F32s>().map(|s| &s.0).ok_or_else(|| foreign("tensor"))
}
fn data_mut(t: &mut Tensor) -> Result<&mut Vec<f32>> {
    t.storage_mut().as_any_mut().downcast_mut::<F32s>().map(|s| &mut s.0).ok_or_else(|| foreign("tensor"))
}
/// Pool slot offset of token `t`, kv head `h` of sequence `s` (through the page table).
fn slot(p: &KvPools, m: &KvMetadata, s: usize, t: usize, h: usize) -> usize {
    (m.slot(s, t) * p.spec().num_kv_heads + h) * p.spec().head_dim
}

struct HostF32;

impl AttentionBackend for HostF32 {
    fn name(&self) -> &str {
        "host-f32"
    }
    fn device(&self) -> Device {
        Device::CPU
    }
    fn supports(&self, _op: Op, p: &ProblemDesc) -> std::result::Result<(), Vec<String>> {
        if p.dtype == DType::F32 {
            Ok(())
        } else {
            Err(vec![format!("dtype {} (host-f32 stores f32 only)", p.dtype)])
        }
    }
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::InvalidArgument(format!("shape {shape:?} overflows")))?;
        Tensor::from_storage(shape.to_vec(), dtype, Device::CPU, Box::new(F32s(try_vec(n, 0.0, "host-f32 tensor")?, dtype)))
    }
    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        let dt = dst.dtype();
        data_mut(dst)?.iter_mut().zip(src).for_each(|(d, &s)| *d = dt.round(s as f64) as f32);
        Ok(())
    }
    fn read(&self, src: &Tensor) -> Result<Vec<f32>> {
        data(src).cloned()
    }
    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()> {
        data_mut(dst)?.fill(value);
        Ok(())
    }
    // KV pools are two tensors it allocates (the API's default); it makes no views, so it runs
    // (and is checked on) the owned path only.
    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        let (d, half) = (a.config.head_dim, a.config.rotary_dim / 2);
        let af = a.freqs.attention_factor;
        for t in [a.q, a.k] {
            let (tokens, heads) = (t.shape()[0], t.shape()[1]);
            let x = data_mut(t)?;
            for tok in 0..tokens {
                for i in 0..half {
                    // M-RoPE (Qwen2-VL): pair i takes its section's component of [3, T] positions
                    let pos = a.positions[a.config.pair_component(i) * tokens + tok];
                    // angle reduced in f64 (positions reach 1e6), rotation in f32
                    let ang = (pos as f64 * a.freqs.inv_freq[i]).rem_euclid(std::f64::consts::TAU);
                    let (s, c) = ((ang.sin() * af) as f32, (ang.cos() * af) as f32);
                    let (ia, ib) = match a.config.style {
                        RopeStyle::HalfSplit => (i, i + half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    for h in 0..heads {
                        let r = (tok * heads + h) * d;
                        let (xa, xb) = (x[r + ia], x[r + ib]);
                        x[r + ia] = xa * c - xb * s;
                        x[r + ib] = xb * c + xa * s;
                    }
                }
            }
        }
        Ok(())
    }
    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        let (hk, d) = (a.pools.spec().num_kv_heads, a.pools.spec().head_dim);
        let (k, v) = (data(a.k)?, data(a.v)?);
        let mut moves = Vec::new();
        for (i, (&s, &n)) in a.batch.seq_ids().iter().zip(a.batch.q_lens()).enumerate() {
            for t in 0..n {
                for h in 0..hk {
                    moves.push((((a.batch.offsets()[i] + t) * hk + h) * d, slot(a.pools, a.meta, s, a.start[i] + t, h)));
                }
            }
        }
        let (pk, pv, _) = a.pools.parts_mut();
        let (pk, pv) = (data_mut(pk)?, data_mut(pv)?);
        for (src, dst) in moves {
            pk[dst..dst + d].copy_from_slice(&k[src..src + d]);
            pv[dst..dst + d].copy_from_slice(&v[src..src + d]);
        }
        Ok(())
    }
    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        let (h, d, hk) = (a.q.shape()[1], a.q.shape()[2], a.pools.spec().num_kv_heads);
        let (q, pk, pv) = (data(a.q)?, data(a.pools.k())?, data(a.pools.v())?);
        let sinks = a.sinks.map(data).transpose()?; // attention sinks (gpt-oss): a logit per head
        let mut lse = Vec::new(); // each row's log-sum-exp, when asked (cascade attention merges with it)
        let out = data_mut(a.out)?;
        for (i, (&s, &ql)) in a.batch.seq_ids().iter().zip(a.batch.q_lens()).enumerate() {
            let kvl = a.kv_lens[i];
            for t in 0..ql {
                // keys this query sees: causal mask and sliding window (Mistral, Gemma)
                let seen = a.params.visible_keys(t, ql, kvl);
                for hh in 0..h {
                    let r = ((a.batch.offsets()[i] + t) * h + hh) * d;
                    // online softmax: running max m, running sum l, unnormalised accumulator
                    let (mut m, mut l, mut acc) = (f32::NEG_INFINITY, 0f32, vec![0f32; d]);
                    for j in seen.clone() {
                        let o = slot(a.pools, a.meta, s, j, hh / (h / hk));
                        let mut sc = a.params.scale * q[r..r + d].iter().zip(&pk[o..o + d]).map(|(x, y)| x * y).sum::<f32>();
                        if let Some(cap) = a.params.softcap {
                            sc = cap * (sc / cap).tanh(); // logit soft-capping (Gemma 2)
                        }
                        let m2 = m.max(sc);
                        let (corr, w) = ((m - m2).exp(), (sc - m2).exp());
                        l = l * corr + w;
                        acc.iter_mut().zip(&pv[o..o + d]).for_each(|(a, v)| *a = *a * corr + w * v);
                        m = m2;
                    }
                    if let Some(sk) = sinks {
                        l += (sk[hh] - m).exp(); // the sink joins the denominator only
                    }
                    out[r..r + d].iter_mut().zip(&acc).for_each(|(o, a)| *o = a / l);
                    lse.push(m + l.ln());
                }
            }
        }
        if let Some(t) = a.lse {
            data_mut(t)?.copy_from_slice(&lse);
        }
        Ok(())
    }
    fn attention_plain(&self, _a: PlainAttentionArgs<'_>) -> Result<()> {
        // Not implemented by this small example; a real backend would also declare it in supports().
        Err(Error::Unsupported { backend: "host-f32".into(), op: "attention_plain".into(), reasons: vec!["not implemented".into()] })
    }
}

inventory::submit! {
    BackendEntry { name: "host-f32", description: "example: f32 host backend, online softmax", priority: -1, create: || Ok(Arc::new(HostF32)) }
}

fn main() {
    let be = registry::get("host-f32").expect("registered through inventory");
    let cfg = attnforge_conformance::Config { cases: 64, dtypes: DType::ALL.to_vec(), ops: vec![Op::Rope, Op::KvAppend, Op::Attention, Op::Step], ..Default::default() };
    let report = attnforge_conformance::check_backend(&be, &cfg);
    println!("{}", report.to_markdown());
    if !report.passed() {
        std::process::exit(1);
    }
}
