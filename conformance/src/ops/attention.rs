//! Attention of new queries over a cache filled by two appends (prefix, then the new tokens).

use backend_api::{Backend, Result};

use super::{fail, golden_attention, seq_rows};
use crate::case::Case;
use crate::setup::{append_case, cache, poisoned, rounded, upload, Data};
use crate::tolerance::{compare_cond, exact};

fn run(be: &Backend, case: &Case, d: &Data) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut c = cache(be, case, d)?;
    let new = append_case(be, case, d, &mut c)?;
    let q = upload(be, &d.q, case.heads, case)?;
    let mut out = poisoned(be, new.total_tokens(), case.heads, case)?;
    be.attention(&q, &c, &new, case.params(), &mut out)?;
    let first = be.download(&out)?;
    be.fill(&mut out, f32::NAN)?;
    be.attention(&q, &c, &new, case.params(), &mut out)?;
    Ok((first, be.download(&out)?))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case) -> Result<(), String> {
    let d = Data::new(case);
    let (out, again) = run(be, case, &d).map_err(fail("attention", be))?;
    let (reference, _) = run(rf, case, &d).map_err(fail("attention", rf))?;
    let n = case.seqs.len();
    let k: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.k_prefix, &d.k, case.kv_heads, s)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s)).collect();
    let (golden, cond) = golden_attention(case, &rounded(&d.q, case.dtype), &k, &v);
    compare_cond("attention output", &out, &reference, &golden, case.dtype, cond)?;
    exact("attention output, second run (determinism)", &again, &out)
}
