//! Attention of new queries over a cache filled by two appends (prefix, then the new tokens).

use attnforge_api::{Backend, Result};

use super::{fail, golden_attention_lse, seq_rows};
use crate::case::Case;
use crate::setup::{batches, rounded, Data, Io, Path};
use crate::tolerance::{compare_cond, compare_lse, exact};

/// The prefix appended, (engine path, paged) sequence 0 forked so its full pages are shared,
/// the new tokens' Q/K/V (one fused buffer on the engine path) appended and attended.
/// Returns the output, the output of a second run, and (when the case draws it) the lse.
fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Vec<f32>, Vec<f32>, Option<Vec<f32>>)> {
    let io = Io { be, case, path };
    let mut c = io.kv(d)?;
    let (prefix, new) = batches(case);
    if let Some(p) = prefix {
        let kv = io.fused(&[(&d.k_prefix, case.kv_heads), (&d.v_prefix, case.kv_heads)])?;
        c.append(be, &kv[0], &kv[1], &p)?;
    }
    c.share_pages(be)?;
    let (q, k, v) = io.qkv(&d.q, &d.k, &d.v)?;
    c.append(be, &k, &v, &new)?;
    let mut out = io.out(new.total_tokens(), case.heads)?;
    let sinks = io.sinks()?;
    let mut lse = io.lse(new.total_tokens())?;
    c.attend(be, &q, &new, case.params(), sinks.as_ref(), lse.as_mut(), &mut out)?;
    let first = be.download(&out)?;
    let lse = lse.map(|l| be.download(&l)).transpose()?;
    be.fill(&mut out, f32::NAN)?;
    c.attend(be, &q, &new, case.params(), sinks.as_ref(), None, &mut out)?;
    Ok((first, be.download(&out)?, lse))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let (out, again, lse) = run(be, case, &d, path).map_err(fail("attention", be))?;
    let (reference, _, ref_lse) = run(rf, case, &d, path).map_err(fail("attention", rf))?;
    let n = case.seqs.len();
    // FP8 caches: the keys and values the cache holds (e4m3 times the scale).
    let k: Vec<Vec<f64>> = (0..n).map(|s| case.as_cached(seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s), true)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| case.as_cached(seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s), false)).collect();
    let (golden, golden_lse, cond) = golden_attention_lse(case, &rounded(&d.q, case.dtype), &k, &v);
    compare_cond("attention output", &out, &reference, &golden, case.dtype, cond)?;
    if let (Some(l), Some(r)) = (&lse, &ref_lse) {
        compare_lse("attention lse", l, r, &golden_lse, case.dtype, cond)?;
    }
    exact("attention output, second run without lse (determinism)", &again, &out)
}
