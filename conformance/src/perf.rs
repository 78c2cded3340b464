//! Perf mode: the same generated problems, timed per backend and op (host clock around
//! `synchronize`, median of repeats). The GPU benchmark binary uses device events; this is the
//! quick look that comes with the correctness run, as ggml's `test-backend-ops perf` does.

use std::time::Instant;

use attnforge_api::{Backend, DType, KvCacheSpec, Op, PlainBatch, Result, StepInputs};
use proptest::strategy::{Strategy, ValueTree};

use crate::case::{cases, Case, GenConfig};
use crate::setup::{batches, cache, poisoned, upload, Data};

/// One timed op.
#[derive(Debug, Clone)]
pub struct PerfRow {
    /// Backend.
    pub backend: String,
    /// Op.
    pub op: Op,
    /// Dtype.
    pub dtype: DType,
    /// Problem summary.
    pub problem: String,
    /// Median microseconds per call.
    pub micros: f64,
    /// Bytes moved per call (each input read once, each output written once).
    pub bytes: f64,
    /// Floating-point operations per call.
    pub flops: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(be: &Backend, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    be.synchronize()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        be.synchronize()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(v))
}

fn measure(be: &Backend, op: Op, case: &Case, reps: usize) -> Result<PerfRow> {
    let d = Data::new(case);
    let (h, hk, hd, es) = (case.heads as f64, case.kv_heads as f64, case.head_dim() as f64, case.dtype.size() as f64);
    let tn: usize = case.seqs.iter().map(|s| s.q_len).sum();
    let pairs: f64 = case.seqs.iter().map(|s| {
        let (q, kv) = (s.q_len as f64, (s.cached + s.q_len) as f64);
        if case.causal { q * kv - q * (q - 1.0) / 2.0 } else { q * kv }
    }).sum();
    let kv_tokens: f64 = case.seqs.iter().map(|s| (s.cached + s.q_len) as f64).sum();
    let (prefix, new) = batches(case);
    let mut q = upload(be, &d.q, case.heads, case)?;
    let mut k = upload(be, &d.k, case.kv_heads, case)?;
    let v = upload(be, &d.v, case.kv_heads, case)?;
    let mut out = poisoned(be, tn, case.heads, case)?;
    let attn_flops = 4.0 * pairs * h * hd;
    let attn_bytes = (2.0 * tn as f64 * h * hd + 2.0 * kv_tokens * hk * hd) * es;
    let (micros, bytes, flops) = match op {
        Op::Rope => {
            let t = time(be, reps, || be.rope(&mut q, &mut k, &d.pos, &case.rope))?;
            (t, 2.0 * tn as f64 * (h + hk) * hd * es, tn as f64 * (h + hk) * case.rope.rotary_dim as f64 * 3.0)
        }
        Op::KvAppend => {
            let spec = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: case.kv_heads, head_dim: case.head_dim(), dtype: case.dtype, kv_dtype: None, layout: case.layout() };
            let mut c = cache(be, case, &d)?;
            let t = time(be, reps, || {
                for s in 0..spec.num_seqs {
                    c.reset(s)?;
                }
                be.kv_append(&mut c, &k, &v, &new)
            })?;
            (t, 4.0 * tn as f64 * hk * hd * es, 0.0)
        }
        Op::Attention | Op::Step => {
            let mut c = cache(be, case, &d)?;
            if let Some(p) = &prefix {
                let (kp, vp) = (upload(be, &d.k_prefix, case.kv_heads, case)?, upload(be, &d.v_prefix, case.kv_heads, case)?);
                be.kv_append(&mut c, &kp, &vp, p)?;
            }
            let t = if op == Op::Attention {
                be.kv_append(&mut c, &k, &v, &new)?;
                time(be, reps, || be.attention(&q, &c, &new, case.params(), &mut out))?
            } else {
                // The step appends, so each rep starts from the prefix: sequences without one are
                // emptied; those with one are emptied too and the step then attends over its own
                // tokens only (the problem line says kv=q for the step).
                time(be, reps, || {
                    for s in 0..case.seqs.len() {
                        c.reset(s)?;
                    }
                    be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &d.pos, rope: &case.rope, cache: &mut c, batch: &new, params: case.params(), out: &mut out, sinks: None })
                })?
            };
            if op == Op::Attention {
                (t, attn_bytes, attn_flops)
            } else {
                let pairs: f64 = case.seqs.iter().map(|s| { let q = s.q_len as f64; if case.causal { q * (q + 1.0) / 2.0 } else { q * q } }).sum();
                (t, (2.0 * tn as f64 * h * hd + 4.0 * tn as f64 * hk * hd) * es, 4.0 * pairs * h * hd)
            }
        }
        Op::Shift => {
            // Every cached token of every sequence moves by one position (a static table).
            let case = &crate::ops::shift::static_rope(case);
            let mut c = cache(be, case, &d)?;
            crate::setup::append_case(be, case, &d, &mut c)?;
            let t = time(be, reps, || {
                for (s, sc) in case.seqs.iter().enumerate() {
                    be.shift_positions(&mut c, s, 0..sc.cached + sc.q_len, 1, &case.rope)?;
                }
                Ok(())
            })?;
            (t, 2.0 * kv_tokens * hk * hd * es, kv_tokens * hk * case.rope.rotary_dim as f64 * 3.0)
        }
        Op::AttentionPlain => {
            let batch = PlainBatch::new(case.seqs.iter().map(|s| s.q_len).collect(), case.seqs.iter().map(|s| s.q_len).collect())?;
            let t = time(be, reps, || be.attention_plain(&q, &k, &v, &batch, case.params(), &mut out))?;
            let pairs: f64 = case.seqs.iter().map(|s| { let q = s.q_len as f64; if case.causal { q * (q + 1.0) / 2.0 } else { q * q } }).sum();
            (t, (2.0 * tn as f64 * h * hd + 2.0 * tn as f64 * hk * hd) * es, 4.0 * pairs * h * hd)
        }
        Op::MergeStates => {
            // Two states of the new tokens' rows (the output as a state and Q as another, lse 0
            // and -1) into `out`, with the merged lse: reads 2 rows and 2 lse, writes 1 and 1.
            let mut lse = [be.alloc(&[tn, case.heads], DType::F32)?, be.alloc(&[tn, case.heads], DType::F32)?];
            be.fill(&mut lse[1], -1.0)?;
            let mut merged = poisoned(be, tn, case.heads, case)?;
            let mut merged_lse = be.alloc(&[tn, case.heads], DType::F32)?;
            let t = time(be, reps, || be.merge_states(&[(&q, &lse[0]), (&out, &lse[1])], &mut merged, Some(&mut merged_lse)))?;
            (t, (3.0 * tn as f64 * h * hd * es + 3.0 * tn as f64 * h * 4.0), 0.0)
        }
    };
    let problem = format!(
        "B={} H={}/{} D={} q={} kv<={} {}{}",
        case.seqs.len(), case.heads, case.kv_heads, case.head_dim(), tn,
        if op == Op::Step { case.seqs.iter().map(|s| s.q_len).max().unwrap_or(0) } else { case.seqs.iter().map(|s| s.cached + s.q_len).max().unwrap_or(0) },
        case.layout().name(), if case.causal { " causal" } else { "" }
    );
    Ok(PerfRow { backend: be.name().into(), op, dtype: case.dtype, problem, micros, bytes, flops })
}

/// Times every op of `ops` for `n` generated problems per dtype on `be`.
pub fn run(be: &Backend, ops: &[Op], dtypes: &[DType], n: usize, seed: u64, reps: usize) -> Vec<PerfRow> {
    let mut rows = Vec::new();
    for &dtype in dtypes {
        let gen = GenConfig { head_dims: vec![64, 128], max_q_len: 256, max_cached: 1024, ..GenConfig::new(dtype) };
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            proptest::test_runner::Config::default(),
            proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[(seed & 0xff) as u8; 32]),
        );
        for _ in 0..n {
            let Ok(tree) = cases(gen.clone()).new_tree(&mut runner) else { continue };
            let case = tree.current();
            for &op in ops {
                if be.supports(op, &case.desc(op)).is_err() {
                    continue;
                }
                if let Ok(r) = measure(be, op, &case, reps) {
                    rows.push(r);
                }
            }
        }
    }
    rows
}

/// The perf rows as a table.
pub fn table(rows: &[PerfRow]) -> String {
    let mut s = format!("{:<12} {:<16} {:<5} {:>10} {:>9} {:>9}  problem\n", "backend", "op", "dtype", "us", "GB/s", "TFLOP/s");
    for r in rows {
        s += &format!(
            "{:<12} {:<16} {:<5} {:>10.1} {:>9.2} {:>9.4}  {}\n",
            r.backend, r.op.name(), r.dtype.name(), r.micros, r.bytes / r.micros / 1e3, r.flops / r.micros / 1e6, r.problem
        );
    }
    s
}

