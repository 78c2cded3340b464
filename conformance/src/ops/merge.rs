//! `merge_states`: partial attention results over disjoint key sets, each with its log-sum-exp,
//! merged into the result of attention over their union. Each sequence's keys (its cached rows,
//! then its new rows) are split in two, each part attended with `attention_plain` and its lse,
//! and the parts merged; the merged output and lse must equal attention over all the keys.
//!
//! - Cascade (a causal case without a window whose every sequence has cached rows): the shared
//!   prefix, the cached rows, attended without a mask (every new query sees all of it), with the
//!   sinks; the new rows attended causally (queries and keys aligned). The union is the case's
//!   causal attention: what an engine does with a prefix shared by many requests.
//! - Otherwise a split of each sequence's keys at a point drawn from the seed, both parts
//!   attended without a mask (the union: the case's attention without the mask); a sequence of
//!   one key puts it in both parts (the union then holds it twice, and so does the golden).
//!
//! Half of the cases add a third state with no keys (`lse = -inf`, output finite garbage),
//! which must weigh nothing, and half write the merged lse.

use attnforge_api::{AttentionExtras, AttentionParams, Backend, DType, PlainBatch, Result, Tensor};
use attnforge_cpu::ops::attention::{attend_lse, SeqShape};

use super::{fail, seq_rows};
use crate::case::Case;
use crate::rng::Rng;
use crate::setup::{rounded, Data, Io, Path};
use crate::tolerance::{attention_condition, compare_cond, compare_lse};

/// How the case's keys are split: per sequence, the key ranges of part A and part B, and the
/// attention of each part and of the union.
struct Split {
    a: Vec<std::ops::Range<usize>>,
    b: Vec<std::ops::Range<usize>>,
    params_a: AttentionParams,
    params_b: AttentionParams,
    union: AttentionParams,
    empty_state: bool,
    merged_lse: bool,
}

fn split(case: &Case) -> Split {
    let p = case.params();
    let mut r = Rng::new(case.seed ^ 0x4d45_5247_455f_5354);
    let empty_state = r.uniform() < 0.5;
    let merged_lse = r.uniform() < 0.5;
    if p.causal && p.window.is_none() && case.seqs.iter().all(|s| s.cached > 0) {
        let a = case.seqs.iter().map(|s| 0..s.cached).collect();
        let b = case.seqs.iter().map(|s| s.cached..s.cached + s.q_len).collect();
        return Split { a, b, params_a: AttentionParams { causal: false, ..p }, params_b: p, union: p, empty_state, merged_lse };
    }
    let full = AttentionParams { causal: false, window: None, ..p };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for s in &case.seqs {
        let n = s.cached + s.q_len;
        if n == 1 {
            a.push(0..1);
            b.push(0..1);
        } else {
            let at = 1 + (r.uniform() * (n - 1) as f64) as usize;
            let at = at.min(n - 1);
            a.push(0..at);
            b.push(at..n);
        }
    }
    Split { a, b, params_a: full, params_b: full, union: full, empty_state, merged_lse }
}

/// The rows `ranges[s]` of every sequence's keys (or values), f32 as drawn, concatenated.
fn part(case: &Case, prefix: &[f32], new: &[f32], ranges: &[std::ops::Range<usize>]) -> Vec<f32> {
    let row = case.kv_heads * case.head_dim();
    let (mut out, mut p0, mut n0) = (Vec::new(), 0, 0);
    for (sc, r) in case.seqs.iter().zip(ranges) {
        for t in r.clone() {
            let src = if t < sc.cached { &prefix[(p0 + t) * row..][..row] } else { &new[(n0 + t - sc.cached) * row..][..row] };
            out.extend_from_slice(src);
        }
        p0 += sc.cached;
        n0 += sc.q_len;
    }
    out
}

/// Runs both partial attentions and the merge; returns the merged output and lse (if asked).
fn run(be: &Backend, case: &Case, d: &Data, sp: &Split, path: Path) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let io = Io { be, case, path };
    let tokens = d.q.len() / (case.heads * case.head_dim());
    let q_lens: Vec<usize> = case.seqs.iter().map(|s| s.q_len).collect();
    let q = io.fused(&[(&d.q, case.heads)])?.remove(0);
    let sinks = io.sinks()?;
    let lse_tensor = |be: &Backend| -> Result<Tensor> {
        let mut t = be.alloc(&[tokens, case.heads], DType::F32)?;
        be.fill(&mut t, f32::NAN)?;
        Ok(t)
    };
    let mut states = Vec::new();
    for (ranges, params, sinks) in [(&sp.a, sp.params_a, sinks.as_ref()), (&sp.b, sp.params_b, None)] {
        let batch = PlainBatch::new(q_lens.clone(), ranges.iter().map(|r| r.len()).collect())?;
        let (kd, vd) = (part(case, &d.k_prefix, &d.k, ranges), part(case, &d.v_prefix, &d.v, ranges));
        let mut kv = io.fused(&[(&kd, case.kv_heads), (&vd, case.kv_heads)])?.into_iter();
        let (k, v) = (kv.next().unwrap(), kv.next().unwrap());
        let mut out = io.out(tokens, case.heads)?;
        let mut lse = lse_tensor(be)?;
        be.attention_plain_with(&q, &k, &v, &batch, params, AttentionExtras { sinks, lse: Some(&mut lse) }, &mut out)?;
        states.push((out, lse));
    }
    if sp.empty_state {
        // A part without keys: lse -inf, an output that must weigh nothing.
        let mut out = io.out(tokens, case.heads)?;
        be.fill(&mut out, 7.0)?;
        let mut lse = lse_tensor(be)?;
        be.fill(&mut lse, f32::NEG_INFINITY)?;
        states.push((out, lse));
    }
    let refs: Vec<(&Tensor, &Tensor)> = states.iter().map(|(o, l)| (o, l)).collect();
    let mut merged = io.out(tokens, case.heads)?;
    let mut merged_lse = if sp.merged_lse { Some(lse_tensor(be)?) } else { None };
    be.merge_states(&refs, &mut merged, merged_lse.as_mut())?;
    Ok((be.download(&merged)?, merged_lse.map(|l| be.download(&l)).transpose()?))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let sp = split(case);
    let (out, lse) = run(be, case, &d, &sp, path).map_err(fail("attention_plain parts + merge_states", be))?;
    let (reference, ref_lse) = run(rf, case, &d, &sp, path).map_err(fail("attention_plain parts + merge_states", rf))?;
    // Golden: attention over the union (part A's keys, then part B's) in f64.
    let (row, krow) = (case.heads * case.head_dim(), case.kv_heads * case.head_dim());
    let q_new = rounded(&d.q, case.dtype);
    let sinks: Option<Vec<f64>> = case.sink_values().map(|s| s.iter().map(|&x| x as f64).collect());
    let (mut golden, mut golden_lse, mut cond, mut off) = (Vec::new(), Vec::new(), 0.0f64, 0);
    for (s, sc) in case.seqs.iter().enumerate() {
        let (ks, vs) = (seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s), seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s));
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for r in [sp.a[s].clone(), sp.b[s].clone()] {
            k.extend_from_slice(&ks[r.start * krow..r.end * krow]);
            v.extend_from_slice(&vs[r.start * krow..r.end * krow]);
        }
        let kv_len = sp.a[s].len() + sp.b[s].len();
        let shape = SeqShape { q_len: sc.q_len, kv_len, heads: case.heads, kv_heads: case.kv_heads, head_dim: case.head_dim() };
        let q = &q_new[off..off + sc.q_len * row];
        let (o, l) = attend_lse(q, &k, &v, shape, sp.union, sinks.as_deref());
        golden.extend(o);
        golden_lse.extend(l);
        cond = cond.max(attention_condition(q, &k, &v, shape, sp.union.scale));
        off += sc.q_len * row;
    }
    compare_cond("merge_states output (attention over the union)", &out, &reference, &golden, case.dtype, cond)?;
    if let (Some(l), Some(r)) = (&lse, &ref_lse) {
        compare_lse("merge_states lse", l, r, &golden_lse, case.dtype, cond)?;
    }
    Ok(())
}
