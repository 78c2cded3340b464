//! The composite step (RoPE, append, attention), run twice: once for the prefix tokens, then
//! for the new tokens, whose output is compared. How a backend stores K is its own business;
//! only the output counts.

use attnforge_api::{Backend, Result};
use attnforge_cpu::ops::rope::rope_rows;

use super::{fail, golden_attention, seq_rows};
use crate::case::Case;
use crate::setup::{batches, rounded, Data, Io, Kv, Path};
use crate::tolerance::compare_cond;

fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<Vec<f32>> {
    run_between(be, case, d, path, |_| Ok(()))
}

/// The prefix step, then `between` on the cache (the shift check re-positions tokens there),
/// then the new tokens' step; returns the new tokens' output.
/// (Engine path, paged: sequence 0 is forked after the prefix step, so the new tokens' step
/// reads pages two sequences share.)
pub(super) fn run_between(be: &Backend, case: &Case, d: &Data, path: Path, between: impl FnOnce(&mut Kv) -> Result<()>) -> Result<Vec<f32>> {
    let io = Io { be, case, path };
    let mut c = io.kv(d)?;
    let (prefix, new) = batches(case);
    let params = case.params();
    let sinks = io.sinks()?;
    if let Some(p) = prefix {
        let (mut q, mut k, v) = io.qkv(&d.q_prefix, &d.k_prefix, &d.v_prefix)?;
        let mut out = io.out(p.total_tokens(), case.heads)?;
        c.step(be, &mut q, &mut k, &v, &d.pos_prefix, &case.rope, &p, params, sinks.as_ref(), &mut out)?;
    }
    c.share_pages(be)?;
    between(&mut c)?;
    let (mut q, mut k, v) = io.qkv(&d.q, &d.k, &d.v)?;
    let mut out = io.out(new.total_tokens(), case.heads)?;
    c.step(be, &mut q, &mut k, &v, &d.pos, &case.rope, &new, params, sinks.as_ref(), &mut out)?;
    be.download(&out)
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let out = run(be, case, &d, path).map_err(fail("rope_append_attend", be))?;
    let reference = run(rf, case, &d, path).map_err(fail("rope_append_attend", rf))?;
    // Golden: rotate in f64 (each call's table from its own largest position, as the API
    // does), then attend.
    let fp = case.rope.frequencies(d.pos_prefix.iter().copied().max().unwrap_or(0) as usize).map_err(|e| e.to_string())?;
    let fnew = case.rope.frequencies(d.pos.iter().copied().max().unwrap_or(0) as usize).map_err(|e| e.to_string())?;
    let mut kp = rounded(&d.k_prefix, case.dtype);
    rope_rows(&mut kp, case.kv_heads, &d.pos_prefix, &case.rope, &fp);
    let mut kn = rounded(&d.k, case.dtype);
    rope_rows(&mut kn, case.kv_heads, &d.pos, &case.rope, &fnew);
    let mut q = rounded(&d.q, case.dtype);
    rope_rows(&mut q, case.heads, &d.pos, &case.rope, &fnew);
    let n = case.seqs.len();
    // FP8 caches: the rotated keys and the values as the cache holds them.
    let k: Vec<Vec<f64>> = (0..n).map(|s| case.as_cached(gather(case, &kp, &kn, s), true)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| case.as_cached(seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s), false)).collect();
    let (golden, cond) = golden_attention(case, &q, &k, &v);
    compare_cond("step output", &out, &reference, &golden, case.dtype, cond)
}

/// Rows of sequence `s` (prefix then new) of the f64 rotated K.
pub(crate) fn gather(case: &Case, prefix: &[f64], new: &[f64], s: usize) -> Vec<f64> {
    let row = case.kv_heads * case.head_dim();
    let p0: usize = case.seqs[..s].iter().map(|x| x.cached).sum();
    let n0: usize = case.seqs[..s].iter().map(|x| x.q_len).sum();
    prefix[p0 * row..(p0 + case.seqs[s].cached) * row].iter().chain(&new[n0 * row..(n0 + case.seqs[s].q_len) * row]).copied().collect()
}
