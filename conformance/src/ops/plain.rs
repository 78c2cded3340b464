//! Plain attention over given Q, K, V (variable length, no cache).

use attnforge_api::{Backend, PlainBatch, Result};

use super::{fail, golden_attention, seq_rows};
use crate::case::Case;
use crate::setup::{rounded, Data, Io, Path};
use crate::tolerance::{compare_cond, exact};

/// K/V rows of every sequence (prefix then new), concatenated by sequence.
fn kv(case: &Case, d: &Data) -> (Vec<f32>, Vec<f32>) {
    let row = case.kv_heads * case.head_dim();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let (mut p0, mut n0) = (0, 0);
    for sc in &case.seqs {
        k.extend_from_slice(&d.k_prefix[p0 * row..(p0 + sc.cached) * row]);
        k.extend_from_slice(&d.k[n0 * row..(n0 + sc.q_len) * row]);
        v.extend_from_slice(&d.v_prefix[p0 * row..(p0 + sc.cached) * row]);
        v.extend_from_slice(&d.v[n0 * row..(n0 + sc.q_len) * row]);
        p0 += sc.cached;
        n0 += sc.q_len;
    }
    (k, v)
}

fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Vec<f32>, Vec<f32>)> {
    let io = Io { be, case, path };
    let batch = PlainBatch::new(case.seqs.iter().map(|s| s.q_len).collect(), case.seqs.iter().map(|s| s.cached + s.q_len).collect())?;
    let (kd, vd) = kv(case, d);
    let q = io.fused(&[(&d.q, case.heads)])?.remove(0);
    let mut kv = io.fused(&[(&kd, case.kv_heads), (&vd, case.kv_heads)])?.into_iter();
    let (k, v) = (kv.next().unwrap(), kv.next().unwrap());
    let mut out = io.out(d.q.len() / (case.heads * case.head_dim()), case.heads)?;
    be.attention_plain(&q, &k, &v, &batch, case.params(), &mut out)?;
    let first = be.download(&out)?;
    be.fill(&mut out, f32::NAN)?;
    be.attention_plain(&q, &k, &v, &batch, case.params(), &mut out)?;
    Ok((first, be.download(&out)?))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let (out, again) = run(be, case, &d, path).map_err(fail("attention_plain", be))?;
    let (reference, _) = run(rf, case, &d, path).map_err(fail("attention_plain", rf))?;
    let n = case.seqs.len();
    let k: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s)).collect();
    let (golden, cond) = golden_attention(case, &rounded(&d.q, case.dtype), &k, &v);
    compare_cond("attention_plain output", &out, &reference, &golden, case.dtype, cond)?;
    exact("attention_plain output, second run (determinism)", &again, &out)
}
