//! When is a backend's output right?
//!
//! For each output we compute a golden result in f64 from the same (dtype-rounded) inputs, and
//! the reference's own result in the test dtype. A backend passes when
//!
//! ```text
//! max|out - golden| <= K * max|ref - golden| + FLOOR(dtype) * max(1, max|golden|)
//! nmse(out, golden) = sum (out - golden)^2 / sum golden^2 <= max(NMSE(dtype), K^2 * nmse(ref, golden))
//! ```
//!
//! and no element is NaN or infinite (outputs are poisoned with NaN before each run, so an
//! element the backend forgot to write fails here too). This is how PyTorch's `assert_close`
//! (tolerance tied to the dtype) and ggml's `test-backend-ops` (NMSE ceiling) judge backends,
//! tied to the reference's own rounding error so the bound adapts to each problem.
//!
//! - `K = 4`: a GPU kernel rounds a few times more than the reference (which rounds once, at
//!   the store): f32 accumulation in a different order, f16/bf16 probabilities fed to the
//!   matrix units, the online softmax's rescaling.
//! - `FLOOR`, scaled by the output's magnitude. It matters where the reference is nearly exact,
//!   which in f32 is always (it computes in f64 and rounds once): f16 9.8e-4 ulp -> 2e-3, bf16
//!   7.8e-3 -> 1.6e-2, about two units in the last place at 1.0. f32 gets 1e-5, not 2 ulps:
//!   an f32 kernel's softmax error is the absolute error of its scores, about
//!   `eps * scale * sum |q_i k_i|`, which for amplitude-4 inputs and head_dim 128 is ~1e-5
//!   (measured: an f32 online-softmax backend, `examples/custom_backend.rs`, reached 4.3e-5 at
//!   outputs of magnitude 13). The planted bugs produce errors near 1.
//! - For attention outputs, plus the forward error bound of an f32 dot product, `eps_f32 *
//!   cond`, with `cond = max over visible (query, key) of scale * sum_i |q_i k_i|`, times
//!   `max |v|` ([`attention_condition`]): large head dims and large inputs make f32 scores lose
//!   absolute precision, whatever the kernel, and the bound follows them.
//! - NMSE ceilings (f32 1e-9, f16 1e-5, bf16 2e-4) back the max-error test with an average one:
//!   a wrong algorithm fails it even when each element stays small. Like the max error, the
//!   ceiling rises with the reference's own error (`K^2 * nmse(ref)`, the square of the same
//!   factor): in bf16 with YaRN's attention factor (Q and K each scaled by ~1.8) and
//!   amplitude-4 inputs, the scores reach the hundreds, the softmax is nearly one-hot, and
//!   rounding the rotated Q and K to bf16 alone moves the output by ~1e-4 NMSE; the reference
//!   does the same rounding (measured on the H100: hip-flash 4.1e-4 on such a case).
//! - Copies (KV append) are exact: the cache must hold the bits it was given. An FP8 cache must
//!   hold exactly `e4m3(fl32(x / scale))` (the GPU's `cvt.rn.satfinite` and the reference's
//!   conversion agree bit for bit), and that value is checked against e4m3's rounding bound
//!   ([`e4m3_error_bound`]): half a unit of a 3-bit mantissa, `2^-4 |x|`, in the normal range,
//!   `2^-10 scale` among the subnormals, the excess over `448 scale` where it saturates.
//! - Attention over an FP8 cache is compared with the golden attention over what the cache
//!   holds (`e4m3 * scale`, exact in f64), so e4m3's rounding (up to 6 % of each key and value)
//!   enters the golden result and the reference's alike, and the bound stays the dtype's: a
//!   kernel that dequantises wrong, drops a scale or reads the wrong head's fails it by far.

use attnforge_api::DType;

/// Tolerance constants of one dtype.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Multiple of the reference's own max error allowed.
    pub k: f64,
    /// Absolute floor, relative to `max(1, max|golden|)`.
    pub floor: f64,
    /// Ceiling on the normalized mean squared error.
    pub nmse: f64,
}

/// The tolerance of `dtype` (see the module docs for why these numbers).
pub fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::F32 => Tolerance { k: 4.0, floor: 1e-5, nmse: 1e-9 },
        DType::F16 => Tolerance { k: 4.0, floor: 2e-3, nmse: 1e-5 },
        DType::BF16 | DType::F8E4M3 => Tolerance { k: 4.0, floor: 1.6e-2, nmse: 2e-4 },
    }
}

/// The largest error of storing `x` in an FP8 cache with scale `s` (`|e4m3(x / s) s - x|`,
/// with the quotient in f32): half an e4m3 unit of `x / s` (3 mantissa bits: `2^-4 |x / s|`
/// from 2^-6, the least normal, up; `2^-10` among the subnormals, whose unit is 2^-9), plus
/// what saturation at 448 cuts, all times `s`; plus the f32 quotient's own rounding.
pub fn e4m3_error_bound(x: f64, s: f32) -> f64 {
    let (a, s) = ((x / s as f64).abs(), s as f64);
    let unit_half = if a >= 0.015625 { a / 16.0 } else { 1.0 / 1024.0 };
    (unit_half + (a - 448.0).max(0.0) + a * f32::EPSILON as f64) * s
}

/// Compares a backend's output with the reference's and the golden result; `Err` explains.
pub fn compare(what: &str, out: &[f32], reference: &[f32], golden: &[f64], dtype: DType) -> Result<(), String> {
    compare_cond(what, out, reference, golden, dtype, 0.0)
}

/// [`compare`] with the f32 forward-error term `eps_f32 * cond` added to the bound.
pub fn compare_cond(what: &str, out: &[f32], reference: &[f32], golden: &[f64], dtype: DType, cond: f64) -> Result<(), String> {
    if out.len() != golden.len() || reference.len() != golden.len() {
        return Err(format!("{what}: {} values, expected {}", out.len(), golden.len()));
    }
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        return Err(format!("{what}: element {i} is {} (unwritten, overflowed or NaN), golden {:.6e}", out[i], golden[i]));
    }
    let tol = tolerance(dtype);
    let max_err = |v: &[f32]| {
        v.iter().zip(golden).enumerate().map(|(i, (&a, &g))| ((a as f64 - g).abs(), i)).fold((0.0f64, 0usize), |m, x| if x.0 > m.0 { x } else { m })
    };
    let (err, at) = max_err(out);
    let (ref_err, _) = max_err(reference);
    let scale = golden.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    let bound = tol.k * ref_err + tol.floor * scale + f32::EPSILON as f64 * cond;
    if err > bound {
        return Err(format!(
            "{what}: max error {err:.3e} at element {at} (got {:.6e}, golden {:.6e}) exceeds {bound:.3e} \
             = {} x reference error {ref_err:.3e} + floor {:.1e} x {scale:.3} + eps x cond {cond:.3e}",
            out[at], golden[at], tol.k, tol.floor
        ));
    }
    let den: f64 = golden.iter().map(|g| g * g).sum();
    let nmse_of = |v: &[f32]| {
        let num: f64 = v.iter().zip(golden).map(|(&a, &g)| (a as f64 - g).powi(2)).sum();
        if den > 0.0 { num / den } else { num }
    };
    let (nmse, ref_nmse) = (nmse_of(out), nmse_of(reference));
    let ceiling = tol.nmse.max(tol.k * tol.k * ref_nmse);
    if nmse > ceiling {
        return Err(format!(
            "{what}: normalized MSE {nmse:.3e} exceeds {ceiling:.1e} = max({:.1e}, {}^2 x reference's {ref_nmse:.3e})",
            tol.nmse, tol.k
        ));
    }
    Ok(())
}

/// A log-sum-exp output (f32, natural log) against the golden one: the bound of
/// [`compare_cond`] for the op's dtype. An lse is as exact as the scores and row sums it comes
/// from (f32 in every kernel, from the same dtype-rounded inputs as the golden), so the output's
/// bound is loose for it; it still fails the planted bug (base-2 logarithms: every value off by
/// 44 %) and any row sum that misses or double-counts a key's share by more than the dtype's
/// floor. No element may be NaN or infinite (every valid row sees a key).
pub fn compare_lse(what: &str, out: &[f32], reference: &[f32], golden: &[f64], dtype: DType, cond: f64) -> Result<(), String> {
    compare_cond(what, out, reference, golden, dtype, cond)
}

/// Bitwise equality (copies, determinism).
pub fn exact(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    match got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: element {i} is {} but must be exactly {}", got[i], want[i])),
    }
}

/// `max over visible (query, key) pairs of scale * sum_i |q_i k_i|`, times `max |v|`: the
/// condition of attention's f32 dot products (see the module docs). Inputs as for
/// `attnforge_cpu::ops::attention::attend`.
pub fn attention_condition(q: &[f64], k: &[f64], v: &[f64], s: attnforge_cpu::ops::attention::SeqShape, scale: f32) -> f64 {
    let d = s.head_dim;
    let group = s.heads / s.kv_heads;
    let mut m = 0.0f64;
    for i in 0..s.q_len {
        for h in 0..s.heads {
            let qi = &q[(i * s.heads + h) * d..][..d];
            for j in 0..s.kv_len {
                let kj = &k[(j * s.kv_heads + h / group) * d..][..d];
                m = m.max(scale as f64 * qi.iter().zip(kj).map(|(a, b)| (a * b).abs()).sum::<f64>());
            }
        }
    }
    m * v.iter().fold(0.0f64, |a, x| a.max(x.abs()))
}
