//! KV append: the cache holds exactly the appended bits at the slots the page table names, and
//! every other slot keeps its sentinel.

use backend_api::{Backend, KvCache, Result};

use super::fail;
use crate::case::Case;
use crate::setup::{append_case, cache, Data};
use crate::tolerance::exact;

fn run(be: &Backend, case: &Case, d: &Data) -> Result<(KvCache, backend_api::KvPool, backend_api::KvPool)> {
    let mut c = cache(be, case, d)?;
    let before = be.read_kv_pool(&c)?;
    append_case(be, case, d, &mut c)?;
    let after = be.read_kv_pool(&c)?;
    Ok((c, before, after))
}

/// Checks one case.
pub fn check(be: &Backend, _rf: &Backend, case: &Case) -> Result<(), String> {
    let d = Data::new(case);
    let (c, before, after) = run(be, case, &d).map_err(fail("kv_append", be))?;
    let (hk, hd) = (case.kv_heads, case.head_dim());
    let (mut want_k, mut want_v) = (before.k.clone(), before.v.clone());
    let round = |x: f32| case.dtype.round(x as f64) as f32;
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
