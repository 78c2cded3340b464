//! Context shift: the prefix goes in through the composite step, then a random range of each
//! sequence's cached tokens is shifted by a random `delta`, then the new tokens' step runs; its
//! output must equal attention over keys rotated at the shifted positions. This checks the
//! op's meaning (later attention sees the keys at `p + delta`) whatever a backend stores: keys
//! rotated in place (re-rotated by `delta`) or unrotated keys with positions (`hip-fused`).

use attnforge_api::{Backend, Result, RopeScaling};
use attnforge_cpu::ops::rope::rope_rows;

use super::step::gather;
use super::{fail, golden_attention, seq_rows};
use crate::case::Case;
use crate::rng::Rng;
use crate::setup::{rounded, Data, Path};
use crate::tolerance::compare_cond;

/// `case` with a length-dependent scaling (dynamic NTK, LongRoPE) replaced by none: a shift
/// refuses those (the table each key used is not recorded). M-RoPE is replaced too: a shift
/// moves each of its components by `delta`, which is the rotation by `delta` of every pair that
/// plain RoPE checks here (this check draws one position per token).
pub fn static_rope(case: &Case) -> Case {
    let mut c = case.clone();
    // A context shift refuses FP8 caches (it would round the shifted keys to e4m3 again).
    c.fp8 = false;
    if c.rope.is_length_dependent() || c.rope.position_components() > 1 {
        c.rope.scaling = RopeScaling::None;
    }
    c
}

/// One shift per sequence: (first token, end token, delta), drawn so every shifted position
/// stays in `[0, max_position)`; sequences without cached tokens get an empty range.
pub fn shifts(case: &Case, d: &Data) -> Vec<(usize, usize, i64)> {
    let mut rng = Rng::new(case.seed ^ 0x5817_F7ED);
    let mut off = 0;
    let maxp = case.rope.max_position as i64;
    case.seqs
        .iter()
        .map(|s| {
            let n = s.cached;
            let pos = &d.pos_prefix[off..off + n];
            off += n;
            if n == 0 {
                return (0, 0, 0);
            }
            let a = (rng.next_u64() % n as u64) as usize;
            let b = a + 1 + (rng.next_u64() % (n - a) as u64) as usize;
            let lo = -(pos[a..b].iter().copied().min().unwrap_or(0) as i64);
            let hi = maxp - 1 - pos[a..b].iter().copied().max().unwrap_or(0) as i64;
            let span = (hi - lo + 1) as u64;
            let mut delta = lo + (rng.next_u64() % span) as i64;
            if delta == 0 && span > 1 {
                delta = if hi > 0 { hi } else { lo };
            }
            (a, b, delta)
        })
        .collect()
}

fn run(be: &Backend, case: &Case, d: &Data, sh: &[(usize, usize, i64)], path: Path) -> Result<Vec<f32>> {
    super::step::run_between(be, case, d, path, |c| {
        for (s, &(a, b, delta)) in sh.iter().enumerate() {
            c.shift(be, s, a..b, delta, &case.rope)?;
        }
        Ok(())
    })
}

/// Checks one case (with a static RoPE table: see [`static_rope`]).
pub fn check(be: &Backend, rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let case = &static_rope(case);
    let d = Data::new(case);
    let sh = shifts(case, &d);
    let out = run(be, case, &d, &sh, path).map_err(fail("shift", be))?;
    let reference = run(rf, case, &d, &sh, path).map_err(fail("shift", rf))?;
    // Golden: prefix keys rotated at their shifted positions, in f64.
    let mut shifted = d.pos_prefix.clone();
    let mut off = 0;
    for (s, &(a, b, delta)) in case.seqs.iter().zip(&sh) {
        for p in &mut shifted[off + a..off + b] {
            *p = (*p as i64 + delta) as u32;
        }
        off += s.cached;
    }
    let f = case.rope.frequencies(0).map_err(|e| e.to_string())?;
    let mut kp = rounded(&d.k_prefix, case.dtype);
    rope_rows(&mut kp, case.kv_heads, &shifted, &case.rope, &f);
    let mut kn = rounded(&d.k, case.dtype);
    rope_rows(&mut kn, case.kv_heads, &d.pos, &case.rope, &f);
    let mut q = rounded(&d.q, case.dtype);
    rope_rows(&mut q, case.heads, &d.pos, &case.rope, &f);
    let n = case.seqs.len();
    let k: Vec<Vec<f64>> = (0..n).map(|s| gather(case, &kp, &kn, s)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|s| seq_rows(case, &d.v_prefix, &d.v, case.kv_heads, s)).collect();
    let (golden, cond) = golden_attention(case, &q, &k, &v);
    compare_cond("output after shift", &out, &reference, &golden, case.dtype, cond)
}
