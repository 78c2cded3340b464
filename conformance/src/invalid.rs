//! Error conformance: invalid problems, one per error kind, must get the same error variant
//! from the backend as from the reference, and never a panic.

use attnforge_api::{AttentionParams, Backend, Batch, CacheLayout, Error, KvCacheSpec, KvPool, PlainBatch, Result, RopeConfig, RopeScaling, StepInputs, Tensor};

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
    /// A tensor re-assembled around another tensor's smaller storage.
    StorageTooSmall,
    /// A tensor re-assembled around storage of another dtype (same byte length).
    StorageDtype,
    /// A KV cache assembled around a tensor's storage, smaller than its pools.
    CacheStorage,
    /// A softmax scale that is not finite.
    NanScale,
    /// An output with one token too many.
    OutShape,
    /// An output of another dtype.
    OutDtype,
    /// V of another shape than K in an append.
    VShape,
    /// Plain attention with fewer K rows than the batch's key lengths add up to.
    PlainKvRows,
    /// RoPE max_position past the kernels' 32-bit positions.
    MaxPosition,
    /// YaRN with beta_fast < beta_slow.
    YarnBetas,
    /// LongRoPE with original_max_position 1.
    LongRopeOriginal,
    /// A scaling factor so small that the inverse frequencies overflow.
    TableOverflow,
    /// A non-finite RoPE theta.
    Theta,
    /// A context shift past the sequence's length.
    ShiftRange,
    /// A context shift with a RoPE head_dim other than the cache's.
    ShiftHeadDim,
    /// A context shift by max_position or more.
    ShiftDelta,
    /// A page table naming one page twice.
    DuplicatePage,
    /// A page table on a contiguous cache.
    PagesOnContiguous,
    /// The composite step with one position too few.
    StepPositions,
    /// Q with zero heads.
    ZeroHeads,
    /// A KV pool write of the wrong length.
    PoolLength,
    /// An upload of the wrong number of values.
    UploadCount,
    /// An allocation whose byte size overflows.
    HugeAlloc,
}

impl Corruption {
    /// Every corruption.
    pub const ALL: [Corruption; 35] = [
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
        Corruption::StorageTooSmall,
        Corruption::StorageDtype,
        Corruption::CacheStorage,
        Corruption::NanScale,
        Corruption::OutShape,
        Corruption::OutDtype,
        Corruption::VShape,
        Corruption::PlainKvRows,
        Corruption::MaxPosition,
        Corruption::YarnBetas,
        Corruption::LongRopeOriginal,
        Corruption::TableOverflow,
        Corruption::Theta,
        Corruption::ShiftRange,
        Corruption::ShiftHeadDim,
        Corruption::ShiftDelta,
        Corruption::DuplicatePage,
        Corruption::PagesOnContiguous,
        Corruption::StepPositions,
        Corruption::ZeroHeads,
        Corruption::PoolLength,
        Corruption::UploadCount,
        Corruption::HugeAlloc,
    ];
}

/// Runs the corrupted problem on `be` (with `other` as the source of foreign tensors); returns
/// the error or `Ok` if the backend accepted it.
fn run(be: &Backend, other: &Backend, case: &Case, d: &Data, c: Corruption) -> Result<()> {
    let (h, hk, hd) = (case.heads, case.kv_heads, case.head_dim());
    let rope = &case.rope;
    let t = d.q.len() / (h * hd);
    let mut q = upload(be, &d.q, h, case)?;
    let mut k = upload(be, &d.k, hk, case)?;
    let spec = KvCacheSpec { num_seqs: case.seqs.len(), num_kv_heads: hk, head_dim: hd, dtype: case.dtype, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 4 } };
    match c {
        Corruption::Dtype => {
            let other_dtype = if case.dtype == attnforge_api::DType::F32 { attnforge_api::DType::BF16 } else { attnforge_api::DType::F32 };
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
        Corruption::StorageTooSmall => {
            let small = be.alloc(&[t, h, hd / 2], case.dtype)?;
            Tensor::from_storage(vec![t, h, hd], case.dtype, be.device(), small.into_storage()).map(|_| ())
        }
        Corruption::StorageDtype => {
            // The same bytes under another dtype: f32 [hd] as f16 [2 hd], or 16-bit [2 hd] as f32 [hd].
            use attnforge_api::DType::{F16, F32};
            let (x, shape, as_dtype) = if case.dtype == F32 { (be.alloc(&[hd], F32)?, 2 * hd, F16) } else { (be.alloc(&[2 * hd], case.dtype)?, hd, F32) };
            Tensor::from_storage(vec![shape], as_dtype, be.device(), x.into_storage()).map(|_| ())
        }
        Corruption::CacheStorage => {
            let small = be.alloc(&[1, hk, hd], case.dtype)?;
            Tensor::from_storage(spec.pool_shape().to_vec(), case.dtype, be.device(), small.into_storage()).map(|_| ())
        }
        Corruption::NanScale | Corruption::OutShape | Corruption::OutDtype => {
            let mut cache = be.create_kv_cache(&spec)?;
            let kv = upload(be, &vec![0.5; hk * hd], hk, case)?;
            let batch = Batch::new(vec![0], vec![1])?;
            be.kv_append(&mut cache, &kv, &kv, &batch)?;
            let q1 = upload(be, &d.q[..h * hd], h, case)?;
            let mut params = case.params();
            let mut out = match c {
                Corruption::OutShape => poisoned(be, 2, h, case)?,
                Corruption::OutDtype => be.alloc(&[1, h, hd], if case.dtype == attnforge_api::DType::F32 { attnforge_api::DType::BF16 } else { attnforge_api::DType::F32 })?,
                _ => poisoned(be, 1, h, case)?,
            };
            if c == Corruption::NanScale {
                params.scale = f32::NAN;
            }
            be.attention(&q1, &cache, &batch, params, &mut out)
        }
        Corruption::VShape => {
            let mut cache = be.create_kv_cache(&spec)?;
            let k1 = upload(be, &vec![0.5; hk * hd], hk, case)?;
            let v2 = upload(be, &vec![0.5; 2 * hk * hd], hk, case)?;
            be.kv_append(&mut cache, &k1, &v2, &Batch::new(vec![0], vec![1])?)
        }
        Corruption::PlainKvRows => {
            let kv = upload(be, &vec![0.5; 2 * hk * hd], hk, case)?;
            let q1 = upload(be, &d.q[..h * hd], h, case)?;
            let mut out = poisoned(be, 1, h, case)?;
            be.attention_plain(&q1, &kv, &kv, &PlainBatch::new(vec![1], vec![3])?, case.params(), &mut out)
        }
        Corruption::MaxPosition => be.rope(&mut q, &mut k, &d.pos, &RopeConfig { max_position: RopeConfig::MAX_POSITION_LIMIT + 1, ..rope.clone() }),
        Corruption::YarnBetas => {
            let cfg =
                RopeConfig { scaling: RopeScaling::Yarn { factor: 4.0, original_max_position: 1024, beta_fast: 1.0, beta_slow: 32.0, attention_factor: None }, ..rope.clone() };
            be.rope(&mut q, &mut k, &d.pos, &cfg)
        }
        Corruption::LongRopeOriginal => {
            let pairs = rope.rotary_dim / 2;
            let cfg = RopeConfig {
                scaling: RopeScaling::LongRope { short_factors: vec![1.0; pairs], long_factors: vec![2.0; pairs], original_max_position: 1, attention_factor: None },
                ..rope.clone()
            };
            be.rope(&mut q, &mut k, &d.pos, &cfg)
        }
        Corruption::TableOverflow => be.rope(&mut q, &mut k, &d.pos, &RopeConfig { scaling: RopeScaling::Linear { factor: 1e-310 }, ..rope.clone() }),
        Corruption::Theta => be.rope(&mut q, &mut k, &d.pos, &RopeConfig { theta: f64::INFINITY, ..rope.clone() }),
        Corruption::ShiftRange | Corruption::ShiftHeadDim | Corruption::ShiftDelta => {
            let mut cache = be.create_kv_cache(&spec)?;
            let kv = upload(be, &vec![0.5; 2 * hk * hd], hk, case)?;
            be.kv_append(&mut cache, &kv, &kv, &Batch::new(vec![0], vec![2])?)?;
            let plain = RopeConfig::new(hd, 10000.0, 64);
            match c {
                Corruption::ShiftRange => be.shift_positions(&mut cache, 0, 1..3, 1, &plain),
                Corruption::ShiftHeadDim => be.shift_positions(&mut cache, 0, 0..1, 1, &RopeConfig::new(hd + 2, 10000.0, 64)),
                _ => be.shift_positions(&mut cache, 0, 0..1, -64, &plain),
            }
        }
        Corruption::DuplicatePage => {
            let mut cache = be.create_kv_cache(&KvCacheSpec { layout: CacheLayout::Paged { page_size: 4, num_pages: 3 }, ..spec })?;
            cache.set_page_table(0, &[1, 1])
        }
        Corruption::PagesOnContiguous => be.create_kv_cache(&spec)?.set_page_table(0, &[0]),
        Corruption::StepPositions => {
            let mut cache = be.create_kv_cache(&KvCacheSpec { layout: CacheLayout::Contiguous { capacity: t + 1 }, ..spec })?;
            let v = upload(be, &d.v, hk, case)?;
            let mut out = poisoned(be, t, h, case)?;
            let batch = Batch::new(vec![0], vec![t])?;
            be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &d.pos[1..], rope, cache: &mut cache, batch: &batch, params: case.params(), out: &mut out, sinks: None })
        }
        Corruption::ZeroHeads => {
            let mut q0 = be.alloc(&[1, 0, hd], case.dtype)?;
            let mut k1 = upload(be, &vec![0.5; hk * hd], hk, case)?;
            be.rope(&mut q0, &mut k1, &[0], rope)
        }
        Corruption::PoolLength => {
            let mut cache = be.create_kv_cache(&spec)?;
            let n = spec.pool_len();
            be.write_kv_pool(&mut cache, &KvPool { k: vec![0.0; n], v: vec![0.0; n - 1] })
        }
        Corruption::UploadCount => be.upload(&[1.0; 3], &[2, 2], case.dtype).map(|_| ()),
        Corruption::HugeAlloc => be.alloc(&[usize::MAX / 2, 4], case.dtype).map(|_| ()),
    }
}

/// Checks that `be` and the reference `rf` reject `case` corrupted by `c` with the same variant.
/// `Ok(None)` when the corruption does not apply (device corruption on one device).
pub fn check(be: &Backend, rf: &Backend, case: &Case, c: Corruption) -> std::result::Result<Option<&'static str>, String> {
    check_with(be, rf, case, &Data::new(case), c)
}

/// Every corruption of [`Corruption::ALL`] on one case (its data drawn once); the number
/// compared.
pub fn check_all(be: &Backend, rf: &Backend, case: &Case) -> std::result::Result<usize, String> {
    let d = Data::new(case);
    let mut n = 0;
    for &c in Corruption::ALL.iter() {
        n += check_with(be, rf, case, &d, c)?.is_some() as usize;
    }
    Ok(n)
}

fn check_with(be: &Backend, rf: &Backend, case: &Case, d: &Data, c: Corruption) -> std::result::Result<Option<&'static str>, String> {
    if c == Corruption::Device && be.device() == rf.device() {
        return Ok(None);
    }
    let catch = |b: &Backend, o: &Backend| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(b, o, case, d, c))).map_err(|_| format!("{c:?}: {} panicked", b.name()));
    let got = catch(be, rf)?;
    let want = catch(rf, be)?;
    let kind = |r: &Result<()>| r.as_ref().err().map(Error::kind);
    match (kind(&want), kind(&got)) {
        (Some(w), Some(g)) if w == g => Ok(Some(w)),
        // A backend that does not support the case's problem (a dtype it leaves out, say) may
        // refuse the corruption's setup before reaching the corruption: not comparable.
        (Some(_), Some("Unsupported")) if be.supports_problem(&case.desc(attnforge_api::Op::Step)).is_err() => Ok(None),
        (None, _) => Err(format!("{c:?}: the reference accepted a corrupted problem (bug in the generator)")),
        (Some(w), g) => Err(format!("{c:?}: reference says {w}, {} says {}", be.name(), g.unwrap_or("Ok (accepted invalid input)"))),
    }
}
