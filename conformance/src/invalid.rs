//! Error conformance: invalid problems, one per error kind, must get the same error variant
//! from the backend as from the reference, and never a panic.

use backend_api::{AttentionParams, Backend, Batch, CacheLayout, Error, KvCacheSpec, PlainBatch, Result, RopeConfig};
use proptest::prelude::*;

use crate::case::Case;
use crate::setup::{poisoned, upload, Data};

/// One way to make a valid case invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// K of another dtype than Q.
    Dtype,
    /// One position id too few.
    Shape,
    /// An odd head_dim.
    OddHeadDim,
    /// rotary_dim > head_dim.
    RotaryDim,
    /// A position at max_position.
    Position,
    /// An append past the capacity.
    Overflow,
    /// A page id outside the pool.
    PageTable,
    /// num_heads not a multiple of num_kv_heads.
    Heads,
    /// A batch without tokens.
    EmptyBatch,
    /// Attention with more queries than cached keys.
    QLen,
    /// A sequence id outside the cache.
    SeqId,
    /// A tensor of the other backend's device (only when the devices differ).
    Device,
}

impl Corruption {
    /// Every corruption.
    pub const ALL: [Corruption; 12] = [
        Corruption::Dtype,
        Corruption::Shape,
        Corruption::OddHeadDim,
        Corruption::RotaryDim,
        Corruption::Position,
        Corruption::Overflow,
        Corruption::PageTable,
        Corruption::Heads,
        Corruption::EmptyBatch,
        Corruption::QLen,
        Corruption::SeqId,
        Corruption::Device,
    ];
}

/// Strategy: a corruption.
pub fn corruptions() -> impl Strategy<Value = Corruption> {
    prop::sample::select(Corruption::ALL.to_vec())
}

/// Runs the corrupted problem on `be` (with `other` as the source of foreign tensors); returns
/// the error or `Ok` if the backend accepted it.
fn run(be: &Backend, other: &Backend, case: &Case, c: Corruption) -> Result<()> {
    let d = Data::new(case);
    let (h, hk, hd) = (case.heads, case.kv_heads, case.head_dim());
    let rope = &case.rope;
    let t = d.q.len() / (h * hd);
    let mut q = upload(be, &d.q, h, case)?;
    let mut k = upload(be, &d.k, hk, case)?;
    let spec = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: hk, head_dim: hd, dtype: case.dtype, layout: CacheLayout::Contiguous { capacity: 4 } };
    match c {
        Corruption::Dtype => {
            let other_dtype = if case.dtype == backend_api::DType::F32 { backend_api::DType::BF16 } else { backend_api::DType::F32 };
            let mut k2 = be.upload(&d.k, &[t, hk, hd], other_dtype)?;
            be.rope(&mut q, &mut k2, &d.pos, rope)
        }
        Corruption::Shape => be.rope(&mut q, &mut k, &d.pos[1..], rope),
        Corruption::OddHeadDim => {
            let cfg = RopeConfig { head_dim: hd + 1, rotary_dim: 2, ..rope.clone() };
            let mut q = be.upload(&vec![0.5; h * (hd + 1)], &[1, h, hd + 1], case.dtype)?;
            let mut k = be.upload(&vec![0.5; hk * (hd + 1)], &[1, hk, hd + 1], case.dtype)?;
            be.rope(&mut q, &mut k, &[0], &cfg)
        }
        Corruption::RotaryDim => be.rope(&mut q, &mut k, &d.pos, &RopeConfig { rotary_dim: hd + 2, ..rope.clone() }),
        Corruption::Position => {
            let mut pos = d.pos.clone();
            let last = pos.len() - 1;
            pos[last] = rope.max_position as u32;
            be.rope(&mut q, &mut k, &pos, rope)
        }
        Corruption::Overflow => {
            let mut cache = be.create_kv_cache(&spec)?;
            let v = upload(be, &vec![0.5; 5 * hk * hd], hk, case)?;
            be.kv_append(&mut cache, &v, &v, &Batch::new(vec![0], vec![5])?)
        }
        Corruption::PageTable => {
            let mut cache = be.create_kv_cache(&KvCacheSpec { layout: CacheLayout::Paged { page_size: 4, num_pages: 3 }, ..spec })?;
            cache.set_page_table(0, &[0, 3])
        }
        Corruption::Heads => {
            let kv = upload(be, &vec![0.5; 2 * 2 * hd], 2, case)?;
            let q = upload(be, &vec![0.5; 3 * hd], 3, case)?;
            let mut out = poisoned(be, 1, 3, case)?;
            be.attention_plain(&q, &kv, &kv, &PlainBatch::new(vec![1], vec![2])?, AttentionParams::full(hd), &mut out)
        }
        Corruption::EmptyBatch => {
            let mut q0 = be.upload(&[], &[0, h, hd], case.dtype)?;
            let mut k0 = be.upload(&[], &[0, hk, hd], case.dtype)?;
            be.rope(&mut q0, &mut k0, &[], rope)
        }
        Corruption::QLen => {
            let cache = be.create_kv_cache(&spec)?;
            let q1 = upload(be, &d.q[..h * hd], h, case)?;
            let mut out = poisoned(be, 1, h, case)?;
            be.attention(&q1, &cache, &Batch::new(vec![0], vec![1])?, case.params(), &mut out)
        }
        Corruption::SeqId => {
            let mut cache = be.create_kv_cache(&spec)?;
            let v = upload(be, &vec![0.5; hk * hd], hk, case)?;
            be.kv_append(&mut cache, &v, &v, &Batch::new(vec![case.seqs.len()], vec![1])?)
        }
        Corruption::Device => {
            let mut foreign = upload(other, &d.q, h, case)?;
            be.rope(&mut foreign, &mut k, &d.pos, rope)
        }
    }
}

/// Checks that `be` and the reference `rf` reject `case` corrupted by `c` with the same variant.
/// `Ok(None)` when the corruption does not apply (device corruption on one device).
pub fn check(be: &Backend, rf: &Backend, case: &Case, c: Corruption) -> std::result::Result<Option<&'static str>, String> {
    if c == Corruption::Device && be.device() == rf.device() {
        return Ok(None);
    }
    let catch = |b: &Backend, o: &Backend| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(b, o, case, c))).map_err(|_| format!("{c:?}: {} panicked", b.name()))
    };
    let got = catch(be, rf)?;
    let want = catch(rf, be)?;
    let kind = |r: &Result<()>| r.as_ref().err().map(Error::kind);
    match (kind(&want), kind(&got)) {
        (Some(w), Some(g)) if w == g => Ok(Some(w)),
        (None, _) => Err(format!("{c:?}: the reference accepted a corrupted problem (bug in the generator)")),
        (Some(w), g) => Err(format!("{c:?}: reference says {w}, {} says {}", be.name(), g.unwrap_or("Ok (accepted invalid input)"))),
    }
}
