//! Plain attention over given Q, K, V (variable length, no cache). In a cross-attention case
//! ([`Case::cross`]) each sequence's keys are its cached rows and first new row only, so a
//! sequence may have more queries than keys.

use attnforge_api::{AttentionExtras, Backend, Op, PlainBatch, Result, Tensor};
use attnforge_cpu::ops::attention::{attend_lse, SeqShape};

use super::{fail, seq_rows};
use crate::case::Case;
use crate::setup::{rounded, Data, Io, Path};
use crate::tolerance::{compare_cond, compare_lse, exact};

/// K/V rows of every sequence (prefix then new; in a cross case the first new row only),
/// concatenated by sequence.
fn kv(case: &Case, d: &Data) -> (Vec<f32>, Vec<f32>) {
    let row = case.kv_heads * case.head_dim();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let (mut p0, mut n0) = (0, 0);
    for sc in &case.seqs {
        let new = case.plain_kv_len(sc, Op::AttentionPlain) - sc.cached;
        k.extend_from_slice(&d.k_prefix[p0 * row..(p0 + sc.cached) * row]);
        k.extend_from_slice(&d.k[n0 * row..(n0 + new) * row]);
        v.extend_from_slice(&d.v_prefix[p0 * row..(p0 + sc.cached) * row]);
        v.extend_from_slice(&d.v[n0 * row..(n0 + new) * row]);
        p0 += sc.cached;
        n0 += sc.q_len;
    }
    (k, v)
}

fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Vec<f32>, Vec<f32>, Option<Vec<f32>>)> {
    let io = Io { be, case, path };
    let batch = PlainBatch::new(case.seqs.iter().map(|s| s.q_len).collect(), case.seqs.iter().map(|s| case.plain_kv_len(s, Op::AttentionPlain)).collect())?;
    let (kd, vd) = kv(case, d);
    let q = io.fused(&[(&d.q, case.heads)])?.remove(0);
    let mut kv = io.fused(&[(&kd, case.kv_heads), (&vd, case.kv_heads)])?.into_iter();
    let (k, v) = (kv.next().unwrap(), kv.next().unwrap());
    let mut out = io.out(d.q.len() / (case.heads * case.head_dim()), case.heads)?;
    let sinks = io.sinks()?;
    let mut lse = io.lse(batch.q_offsets()[batch.len()])?;
    let attend = |out: &mut Tensor, lse: Option<&mut Tensor>| match (&sinks, lse) {
        (Some(s), None) => be.attention_plain_with_sinks(&q, &k, &v, &batch, case.params(), s, out),
        (None, None) => be.attention_plain(&q, &k, &v, &batch, case.params(), out),
        (sinks, lse) => be.attention_plain_with(&q, &k, &v, &batch, case.params(), AttentionExtras { sinks: sinks.as_ref(), lse }, out),
    };
    attend(&mut out, lse.as_mut())?;
    let first = be.download(&out)?;
    let lse = lse.map(|l| be.download(&l)).transpose()?;
    be.fill(&mut out, f32::NAN)?;
    attend(&mut out, None)?;
    Ok((first, be.download(&out)?, lse))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let (out, again, lse) = run(be, case, &d, path).map_err(fail("attention_plain", be))?;
    let (reference, _, ref_lse) = run(rf, case, &d, path).map_err(fail("attention_plain", rf))?;
    // Golden: each sequence's queries over its keys (all of them: the case is not causal when
    // it is a cross case), in f64.
    let (row, krow) = (case.heads * case.head_dim(), case.kv_heads * case.head_dim());
    let q_new = rounded(&d.q, case.dtype);
    let (mut golden, mut golden_lse, mut cond, mut off) = (Vec::with_capacity(q_new.len()), Vec::new(), 0.0f64, 0);
    let sinks: Option<Vec<f64>> = case.sink_values().map(|s| s.iter().map(|&x| x as f64).collect());
    for (s, sc) in case.seqs.iter().enumerate() {
        let kv_len = case.plain_kv_len(sc, Op::AttentionPlain);
        let k = &seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s)[..kv_len * krow];
        let v = &seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s)[..kv_len * krow];
        let shape = SeqShape { q_len: sc.q_len, kv_len, heads: case.heads, kv_heads: case.kv_heads, head_dim: case.head_dim() };
        let q = &q_new[off..off + sc.q_len * row];
        let (o, l) = attend_lse(q, k, v, shape, case.params(), sinks.as_deref());
        golden.extend(o);
        golden_lse.extend(l);
        cond = cond.max(crate::tolerance::attention_condition(q, k, v, shape, case.params().scale));
        off += sc.q_len * row;
    }
    compare_cond("attention_plain output", &out, &reference, &golden, case.dtype, cond)?;
    if let (Some(l), Some(r)) = (&lse, &ref_lse) {
        compare_lse("attention_plain lse", l, r, &golden_lse, case.dtype, cond)?;
    }
    exact("attention_plain output, second run (determinism)", &again, &out)
}
