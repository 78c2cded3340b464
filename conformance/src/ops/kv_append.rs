//! KV append: the cache holds exactly the appended bits at the slots the page table names, and
//! every other slot keeps its sentinel.

use attnforge_api::{Backend, Result};

use super::fail;
use crate::case::Case;
use crate::setup::{append_case_io, Data, Io, Kv, Path};
use crate::tolerance::exact;

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
    let round = |x: f32| case.dtype.round(x as f64) as f32;
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
                pk[dst + j] = round(d.k_prefix[src + j]);
                pv[dst + j] = round(d.v_prefix[src + j]);
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
                    want_k[dst + j] = round(src_k[src + j]);
                    want_v[dst + j] = round(src_v[src + j]);
                }
            }
        }
        p0 += sc.cached;
        n0 += sc.q_len;
    }
    exact("K pool after append (appended slots hold the input, all others their sentinel)", &after.k, &want_k)?;
    exact("V pool after append", &after.v, &want_v)
}
