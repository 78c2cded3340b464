//! Attention of new queries over a cache filled by two appends (prefix, then the new tokens).

use attnforge_api::{Backend, Result};

use super::{fail, golden_attention, seq_rows};
use crate::case::Case;
use crate::setup::{batches, rounded, Data, Io, Path};
use crate::tolerance::{compare_cond, exact};

/// The prefix appended, (engine path, paged) sequence 0 forked so its full pages are shared,
/// the new tokens' Q/K/V (one fused buffer on the engine path) appended and attended.
fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Vec<f32>, Vec<f32>)> {
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
    c.attend(be, &q, &new, case.params(), sinks.as_ref(), &mut out)?;
    let first = be.download(&out)?;
    be.fill(&mut out, f32::NAN)?;
    c.attend(be, &q, &new, case.params(), sinks.as_ref(), &mut out)?;
    Ok((first, be.download(&out)?))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let (out, again) = run(be, case, &d, path).map_err(fail("attention", be))?;
    let (reference, _) = run(rf, case, &d, path).map_err(fail("attention", rf))?;
    let n = case.seqs.len();
    let k: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s)).collect();
    let (golden, cond) = golden_attention(case, &rounded(&d.q, case.dtype), &k, &v);
    compare_cond("attention output", &out, &reference, &golden, case.dtype, cond)?;
    exact("attention output, second run (determinism)", &again, &out)
}
