//! RoPE: Q and K rotated in place at arbitrary positions.

use attnforge_api::{Backend, Result};
use attnforge_cpu::ops::rope::rope_rows;

use super::fail;
use crate::case::Case;
use crate::setup::{rounded, Data, Io, Path};
use crate::tolerance::{compare, exact};

fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Vec<f32>, Vec<f32>)> {
    let io = Io { be, case, path };
    let mut t = io.fused(&[(&d.q, case.heads), (&d.k, case.kv_heads)])?.into_iter();
    let (mut q, mut k) = (t.next().unwrap(), t.next().unwrap());
    io.rope(&mut q, &mut k, &d.pos, &case.rope)?;
    Ok((be.download(&q)?, be.download(&k)?))
}

/// Checks one case.
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    assert!(super::nonzero(&d));
    let (bq, bk) = run(be, case, &d, path).map_err(fail("rope", be))?;
    let (rq, rk) = run(rf, case, &d, path).map_err(fail("rope", rf))?;
    let freqs = case.rope.frequencies(d.pos.iter().copied().max().unwrap_or(0) as usize).map_err(|e| e.to_string())?;
    let mut gq = rounded(&d.q, case.dtype);
    rope_rows(&mut gq, case.heads, &d.pos, &case.rope, &freqs);
    let mut gk = rounded(&d.k, case.dtype);
    rope_rows(&mut gk, case.kv_heads, &d.pos, &case.rope, &freqs);
    compare("rope q", &bq, &rq, &gq, case.dtype)?;
    compare("rope k", &bk, &rk, &gk, case.dtype)?;
    let (bq2, bk2) = run(be, case, &d, path).map_err(fail("rope (second run)", be))?;
    exact("rope q, second run (determinism)", &bq2, &bq)?;
    exact("rope k, second run (determinism)", &bk2, &bk)
}
