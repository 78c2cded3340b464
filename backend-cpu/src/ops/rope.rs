//! RoPE, the reference.

use attnforge_api::{Result, RopeArgs, RopeConfig, RopeFrequencies, RopeStyle, ShiftArgs};

use crate::storage::{read, read_at, write, write_at};

/// Rotates rows of `x` (`[tokens, heads, head_dim]`, f64) in place; token `t` at `positions[t]`
/// (M-RoPE: pair `i` of token `t` at `positions[c(i) * tokens + t]`, `c(i)` =
/// [`RopeConfig::pair_component`]).
///
/// For rotated pair `i` (`0 <= i < rotary_dim / 2`) made of dims `(a, b)`:
///
/// ```text
/// angle = position * inv_freq[i]
/// x_a' = (x_a * cos(angle) - x_b * sin(angle)) * attention_factor
/// x_b' = (x_b * cos(angle) + x_a * sin(angle)) * attention_factor
/// ```
///
/// with `(a, b) = (i, i + rotary_dim/2)` for [`RopeStyle::HalfSplit`] and `(2i, 2i + 1)` for
/// [`RopeStyle::Interleaved`] (RoFormer, arXiv:2104.09864, eq. 34). Dims at or past
/// `rotary_dim` are left as they are. `inv_freq` and `attention_factor` come from
/// [`RopeConfig::frequencies`], which cites each scaling method.
pub fn rope_rows(x: &mut [f64], heads: usize, positions: &[u32], config: &RopeConfig, freqs: &RopeFrequencies) {
    let d = config.head_dim;
    let tokens = positions.len() / config.position_components();
    for t in 0..tokens {
        let pos = |pair: usize| positions[config.pair_component(pair) * tokens + t] as f64;
        for h in 0..heads {
            rotate(&mut x[(t * heads + h) * d..(t * heads + h + 1) * d], &pos, freqs.attention_factor, config, freqs);
        }
    }
}

/// Rotates one row (`head_dim` values) by `delta` positions, cos/sin multiplier 1: the
/// composition `R(p + delta) = R(delta) R(p)` that a context shift applies to rotated keys.
/// With M-RoPE every component moves by `delta`.
pub fn rotate_row_by(row: &mut [f64], delta: f64, config: &RopeConfig, freqs: &RopeFrequencies) {
    rotate(row, &|_| delta, 1.0, config, freqs);
}

/// Rotates the first `rotary_dim` values of `row`, pair `i` for position `pos(i)`, cos and sin
/// scaled by `factor`, pairing dims by the config's style.
fn rotate(row: &mut [f64], pos: &dyn Fn(usize) -> f64, factor: f64, config: &RopeConfig, freqs: &RopeFrequencies) {
    let half = config.rotary_dim / 2;
    for (i, &f) in freqs.inv_freq.iter().enumerate().take(half) {
        let (sin, cos) = (pos(i) * f).sin_cos();
        let (sin, cos) = (sin * factor, cos * factor);
        let (a, b) = match config.style {
            RopeStyle::HalfSplit => (i, i + half),
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        };
        let (xa, xb) = (row[a], row[b]);
        row[a] = xa * cos - xb * sin;
        row[b] = xb * cos + xa * sin;
    }
}

/// Context shift: rotates the cached keys of the shifted tokens by `delta`, in place.
pub(crate) fn shift(a: ShiftArgs<'_>) -> Result<()> {
    let ShiftArgs { pools, meta, seq, tokens, delta, config, freqs, .. } = a;
    let (hk, d) = (pools.spec().num_kv_heads, pools.spec().head_dim);
    let (kp, _, _) = pools.parts_mut();
    for t in tokens {
        for h in 0..hk {
            let o = (meta.slot(seq, t) * hk + h) * d;
            let mut row = read_at(kp, "K pool", o, d)?;
            rotate_row_by(&mut row, delta as f64, config, &freqs);
            write_at(kp, "K pool", o, &row)?;
        }
    }
    Ok(())
}

pub(crate) fn run(a: RopeArgs<'_>) -> Result<()> {
    let RopeArgs { q, k, positions, config, freqs, .. } = a;
    for (t, what) in [(q, "q"), (k, "k")] {
        let heads = t.shape()[1];
        let mut x = read(t, what)?;
        rope_rows(&mut x, heads, positions, config, &freqs);
        write(t, what, &x)?;
    }
    Ok(())
}
