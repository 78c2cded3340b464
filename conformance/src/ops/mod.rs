//! One file per op: build the case on the backend and on the reference, compute the golden
//! result in f64, compare. Each check returns `Err(explanation)` on the first mismatch.

pub mod attention;
pub mod kv_append;
pub mod merge;
pub mod plain;
pub mod rope;
pub mod shift;
pub mod step;

use attnforge_api::{Backend, Error, Op};
use attnforge_cpu::ops::attention::{attend_lse, SeqShape};

use crate::case::Case;
use crate::setup::{rounded, views_supported, Data, Path};

/// What one case did on one backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Matched the reference.
    Pass,
    /// The backend's capability query declined the problem, with its reasons.
    Unsupported(Vec<String>),
    /// Mismatch, error or panic, explained.
    Fail(String),
}

/// Runs `op`'s check of `case` on `be` against the reference `rf`, through `path` (a backend
/// that makes no views counts every views case as unsupported, with its reason).
pub fn check(op: Op, path: Path, be: &Backend, rf: &Backend, case: &Case) -> Outcome {
    if path != Path::Owned {
        if let Err(reasons) = views_supported(be) {
            return Outcome::Unsupported(reasons);
        }
    }
    // The shift check runs the composite step around the shift, with a position-independent
    // RoPE table (a shift refuses length-dependent scalings).
    let shifted;
    let case = if op == Op::Shift {
        shifted = shift::static_rope(case);
        &shifted
    } else {
        case
    };
    let needs: &[Op] = match op {
        Op::Shift => &[Op::Shift, Op::Step],
        // The parts are attended with attention_plain.
        Op::MergeStates => &[Op::MergeStates, Op::AttentionPlain],
        _ => std::slice::from_ref(&op),
    };
    for &o in needs {
        if let Err(Error::Unsupported { reasons, .. }) = be.supports(o, &case.desc(o)) {
            return Outcome::Unsupported(reasons);
        }
    }
    let run = || match op {
        Op::Rope => rope::check(be, rf, case, path),
        Op::KvAppend => kv_append::check(be, rf, case, path),
        Op::Attention => attention::check(be, rf, case, path),
        Op::AttentionPlain => plain::check(be, rf, case, path),
        Op::Step => step::check(be, rf, case, path),
        Op::Shift => shift::check(be, rf, case, path),
        Op::MergeStates => merge::check(be, rf, case, path),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(msg)) => Outcome::Fail(msg),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Outcome::Fail(format!("panicked: {msg}"))
        }
    }
}

/// Turns a backend error into a failure message that says which backend and step.
pub(crate) fn fail<'a>(step: &str, be: &'a Backend) -> impl Fn(Error) -> String + 'a {
    let step = step.to_string();
    move |e| {
        if let Error::Unsupported { .. } = e {
            format!("{step} on {}: capability query accepted the problem but the op refused it: {e}", be.name())
        } else {
            format!("{step} on {}: {e}", be.name())
        }
    }
}

/// Rows `[tokens, heads, D]` of sequence `s`, prefix rows then new rows, rounded to the dtype.
pub(crate) fn seq_rows(case: &Case, prefix: &[f32], new: &[f32], heads: usize, s: usize) -> Vec<f64> {
    let row = heads * case.head_dim();
    let p0: usize = case.seqs[..s].iter().map(|x| x.cached).sum();
    let n0: usize = case.seqs[..s].iter().map(|x| x.q_len).sum();
    let mut v = rounded(&prefix[p0 * row..(p0 + case.seqs[s].cached) * row], case.dtype);
    v.extend(rounded(&new[n0 * row..(n0 + case.seqs[s].q_len) * row], case.dtype));
    v
}

/// Golden attention of every sequence's new queries (`q_new`, f64, `[sum q_len, H, D]`) over
/// `k`/`v` (f64 per sequence, `[cached + q_len, Hkv, D]`), in new-token order.
/// Also returns the largest [`crate::tolerance::attention_condition`] over the sequences.
pub(crate) fn golden_attention(case: &Case, q_new: &[f64], k: &[Vec<f64>], v: &[Vec<f64>]) -> (Vec<f64>, f64) {
    let (out, _, cond) = golden_attention_lse(case, q_new, k, v);
    (out, cond)
}

/// [`golden_attention`] with each row's log-sum-exp (`[sum q_len, H]`).
pub(crate) fn golden_attention_lse(case: &Case, q_new: &[f64], k: &[Vec<f64>], v: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>, f64) {
    let row = case.heads * case.head_dim();
    let mut out = Vec::with_capacity(q_new.len());
    let mut lse = Vec::with_capacity(q_new.len() / case.head_dim());
    let (mut off, mut cond) = (0, 0.0f64);
    let sinks: Option<Vec<f64>> = case.sink_values().map(|s| s.iter().map(|&x| x as f64).collect());
    for (s, sc) in case.seqs.iter().enumerate() {
        let shape = SeqShape { q_len: sc.q_len, kv_len: sc.cached + sc.q_len, heads: case.heads, kv_heads: case.kv_heads, head_dim: case.head_dim() };
        let q = &q_new[off..off + sc.q_len * row];
        let (o, l) = attend_lse(q, &k[s], &v[s], shape, case.params(), sinks.as_deref());
        out.extend(o);
        lse.extend(l);
        cond = cond.max(crate::tolerance::attention_condition(q, &k[s], &v[s], shape, case.params().scale));
        off += sc.q_len * row;
    }
    (out, lse, cond)
}

/// Sanity: data a case draws is never all zeros.
pub(crate) fn nonzero(d: &Data) -> bool {
    d.q.iter().any(|&x| x != 0.0) && d.k.iter().any(|&x| x != 0.0)
}
