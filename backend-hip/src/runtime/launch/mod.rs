//! Typed launchers, one file per op: safe functions taking views ([`DevRef`], [`DevMut`]),
//! checked metadata ([`MetaRef`]) and the launch a plan chose, that check every byte the kernel
//! can touch (lengths against shapes, slots against pools, pages against the pool, 32-bit
//! ranges) and then make the one raw launch. A failed check is an error before anything is
//! queued: nothing is written.
//!
//! The launch descriptions (`RopeLaunch`, `AttnLaunch`, ...) are defined here and filled in by
//! `plan`, so a launcher executes a plan and decides nothing.

pub(crate) mod attention;
pub(crate) mod kv_append;
pub(crate) mod merge;
pub(crate) mod rope;

use attnforge_api::{DType, Error, Result};

use super::{DevMut, DevRef, Gpu, MetaRef};

/// `x` as the kernels' 32-bit integer.
fn i32_of(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::InvalidArgument(format!("{what} = {x} does not fit the kernels' 32-bit integers")))
}

/// Rows of a `[tokens, heads, head_dim]` tensor, `stride` elements apart (a view into a fused
/// buffer is strided; a dense tensor has `stride == heads * head_dim`).
#[derive(Debug)]
pub(crate) struct Strided<V> {
    pub mem: V,
    /// Elements between the starts of consecutive tokens.
    pub stride: usize,
}

/// Bytes from the first to one past the last element of `tokens` rows of `row` elements,
/// `stride` apart; the stride must hold a row and fit the kernels' 32-bit integers.
fn span_bytes(what: &str, tokens: usize, row: usize, stride: usize, dtype_size: usize) -> Result<usize> {
    if stride < row {
        return Err(Error::InvalidArgument(format!("{what}: row stride {stride} is shorter than a row of {row} elements")));
    }
    i32_of(stride, &format!("{what} row stride"))?;
    if tokens == 0 {
        return Ok(0);
    }
    (tokens - 1)
        .checked_mul(stride)
        .and_then(|x| x.checked_add(row))
        .and_then(|x| x.checked_mul(dtype_size))
        .ok_or_else(|| Error::InvalidArgument(format!("{what}: size overflows")))
}

/// `a * b * ...` bytes, or an error naming `what` on overflow.
fn bytes_of(what: &str, dims: &[usize], dtype_size: usize) -> Result<usize> {
    dims.iter().try_fold(dtype_size, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::InvalidArgument(format!("{what}: size overflows")))
}

fn need(what: &str, have: usize, needed: usize) -> Result<()> {
    if have < needed {
        return Err(Error::StorageTooSmall { what: what.to_string(), needed, got: have });
    }
    Ok(())
}

/// `v` is memory of `gpu` holding at least `needed` bytes.
fn need_ref(gpu: &Gpu, what: &str, v: &DevRef<'_>, needed: usize) -> Result<()> {
    gpu.check_view(what, v.device)?;
    need(what, v.bytes(), needed)
}

/// As [`need_ref`], writable.
fn need_mut(gpu: &Gpu, what: &str, v: &DevMut<'_>, needed: usize) -> Result<()> {
    gpu.check_view(what, v.device)?;
    need(what, v.bytes(), needed)
}

/// M-RoPE's kernel fields for `half` rotary pairs: the position components per token (3 with
/// sections, else 1) and `[mrope, mrope1, mrope2]` (the flag and the two section ends).
fn mrope_fields(sections: Option<[usize; 3]>, half: usize) -> Result<(usize, [i32; 3])> {
    match sections {
        Some([a, b, c]) if a + b + c == half => Ok((3, [1, a as i32, (a + b) as i32])),
        Some(sec) => Err(Error::InvalidArgument(format!("M-RoPE sections {sec:?} for {half} rotary pairs"))),
        None => Ok((1, [0, 0, 0])),
    }
}

/// `m` is metadata on `gpu` with `len` entries, each in `lo..hi`.
fn need_meta(gpu: &Gpu, what: &str, m: &MetaRef<'_>, len: usize, lo: i64, hi: i64) -> Result<()> {
    gpu.check_view(what, m.device)?;
    if m.len() != len {
        return Err(Error::InvalidArgument(format!("{what}: {} entries for {len} rows", m.len())));
    }
    if !m.within(lo, hi) {
        return Err(Error::InvalidArgument(format!("{what}: values outside {lo}..{hi}")));
    }
    Ok(())
}

/// A KV pool pair (with hip-fused's per-slot positions), writable.
#[derive(Debug)]
pub(crate) struct PoolMut<'a> {
    /// K pool `[slots, Hk, D]`.
    pub k: DevMut<'a>,
    /// V pool.
    pub v: DevMut<'a>,
    /// int32 per slot (hip-fused caches).
    pub pos: Option<DevMut<'a>>,
    /// Token slots of each pool.
    pub slots: usize,
    /// FP8 pools: the K and V scales, f32 `[Hk]` each (the pools hold e4m3).
    pub scales: Option<(DevRef<'a>, DevRef<'a>)>,
}

impl PoolMut<'_> {
    /// Checks the pools' extent for rows of `dtype` (e4m3 when the pools have scales), the
    /// scales' and the positions'.
    fn check(&self, gpu: &Gpu, k_heads: usize, head_dim: usize, dtype: DType) -> Result<()> {
        let es = if self.scales.is_some() { DType::F8E4M3.size() } else { dtype.size() };
        let b = bytes_of("KV pool", &[self.slots, k_heads, head_dim], es)?;
        need_mut(gpu, "K pool", &self.k, b)?;
        need_mut(gpu, "V pool", &self.v, b)?;
        if let Some((ks, vs)) = &self.scales {
            need_ref(gpu, "K scales", ks, 4 * k_heads)?;
            need_ref(gpu, "V scales", vs, 4 * k_heads)?;
        }
        if let Some(p) = &self.pos {
            need_mut(gpu, "slot positions", p, 4 * self.slots)?;
        }
        i32_of(self.slots, "pool slots").map(|_| ())
    }
}
