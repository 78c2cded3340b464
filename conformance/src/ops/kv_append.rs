//! KV append: the cache holds exactly the appended bits at the slots the page table names (FP8
//! caches: exactly `e4m3(fl32(x / scale))`, itself within e4m3's rounding of `x`), and every
//! other slot keeps its sentinel.

use attnforge_api::{Backend, Result};

use super::fail;
use crate::case::Case;
use crate::setup::{append_case_io, Data, Io, Kv, Path};
use crate::tolerance::{e4m3_error_bound, exact};

fn run(be: &Backend, case: &Case, d: &Data, path: Path) -> Result<(Kv, attnforge_api::KvPool, attnforge_api::KvPool)> {
    let io = Io { be, case, path };
    let mut c = io.kv(d)?;
    let before = c.read_pool(be)?;
    append_case_io(&io, d, &mut c)?;
    let after = c.read_pool(be)?;
    Ok((c, before, after))
}

/// Checks one case.
pub fn check(be: &Backend, _rf: &Backend, case: &Case, path: Path) -> Result<(), String> {
    let d = Data::new(case);
    let (c, before, after) = run(be, case, &d, path).map_err(fail("kv_append", be))?;
    let (hk, hd) = (case.kv_heads, case.head_dim());
    let (mut want_k, mut want_v) = (before.k.clone(), before.v.clone());
    // What a slot of kv head `h` holds of `x`: `x` in the dtype, or in FP8 caches the e4m3 of
    // `x / scale_h` (the raw value, unscaled), whose dequantised value must be within e4m3's
    // rounding of `x` ([`e4m3_error_bound`]).
    let scales = case.kv_scales();
    let store = |x: f32, h: usize, key: bool| -> Result<f32, String> {
        let x = case.dtype.round(x as f64);
        let Some((ks, vs)) = &scales else { return Ok(x as f32) };
        let s = if key { ks[h] } else { vs[h] };
        let q = attnforge_api::e4m3_quantise(x, s).to_f64();
        let err = (q * s as f64 - x).abs();
        if err > e4m3_error_bound(x, s) {
            return Err(format!("e4m3 of {x} / {s} is {q}: {err:.3e} from the input, past e4m3's rounding bound {:.3e}", e4m3_error_bound(x, s)));
        }
        Ok(q as f32)
    };
    // The engine path's fork copied sequence 0's partial page (its prefix rows, sentinels after
    // them) into the spare page before the new tokens went in.
    if let Some((from, to)) = c.fork_copy() {
        let n = c.page_len();
        let (f, t) = (from as usize * n, to as usize * n);
        let (mut pk, mut pv) = (before.k[f..f + n].to_vec(), before.v[f..f + n].to_vec());
        let row = hk * hd;
        let ps = n / row;
        for tok in (case.seqs[0].cached / ps) * ps..case.seqs[0].cached {
            let (dst, src) = ((tok % ps) * row, tok * row);
            for j in 0..row {
                pk[dst + j] = store(d.k_prefix[src + j], j / hd, true)?;
                pv[dst + j] = store(d.v_prefix[src + j], j / hd, false)?;
            }
        }
        want_k[t..t + n].copy_from_slice(&pk);
        want_v[t..t + n].copy_from_slice(&pv);
    }
    let (mut p0, mut n0) = (0, 0);
    for (s, sc) in case.seqs.iter().enumerate() {
        if c.seq_len(s) != sc.cached + sc.q_len {
            return Err(format!("sequence {s}: length {} after the appends, expected {}", c.seq_len(s), sc.cached + sc.q_len));
        }
        for t in 0..sc.cached + sc.q_len {
            let (src_k, src_v, row) = if t < sc.cached { (&d.k_prefix, &d.v_prefix, p0 + t) } else { (&d.k, &d.v, n0 + t - sc.cached) };
            for h in 0..hk {
                let dst = c.slot_offset(s, t, h);
                let src = (row * hk + h) * hd;
                for j in 0..hd {
                    want_k[dst + j] = store(src_k[src + j], h, true)?;
                    want_v[dst + j] = store(src_v[src + j], h, false)?;
                }
            }
        }
        p0 += sc.cached;
        n0 += sc.q_len;
    }
    exact("K pool after append (appended slots hold the input, all others their sentinel)", &after.k, &want_k)?;
    exact("V pool after append", &after.v, &want_v)
}
