//! Rotary position embedding (RoPE) configuration and its frequency tables.
//!
//! RoPE (Su et al., "RoFormer", arXiv:2104.09864) rotates pairs of dimensions of Q and K by an
//! angle `position * inv_freq[i]`, with `inv_freq[i] = theta^(-2i / rotary_dim)` for pair `i`.
//! Scaling methods change `inv_freq` (and sometimes multiply cos/sin by an attention factor)
//! so a model reaches past the context it was trained on. [`RopeConfig::frequencies`] is the
//! single definition of those formulas; every backend builds its tables from it.

use crate::{Error, Result};

/// Which dimensions form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pair `i` is `(x[i], x[i + rotary_dim/2])`: GPT-NeoX, Hugging Face LLaMA/Qwen (`rotate_half`).
    HalfSplit,
    /// Pair `i` is `(x[2i], x[2i+1])`: GPT-J, Meta's original LLaMA, GLM.
    Interleaved,
}

/// How `inv_freq` is changed to stretch the context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation (Chen et al., arXiv:2306.15595): positions divided by `factor`.
    Linear {
        /// Context stretch factor (> 0).
        factor: f64,
    },
    /// NTK-aware scaling (bloc97, 2023): `theta' = theta * factor^(d / (d - 2))`, d = rotary_dim.
    NtkAware {
        /// Context stretch factor (> 0).
        factor: f64,
    },
    /// Dynamic NTK (Hugging Face `dynamic`): NTK-aware with a factor from the current length
    /// `L = max position in the call + 1`: when `L > original_max_position`,
    /// `theta' = theta * (factor * L / original_max_position - (factor - 1))^(d / (d - 2))`.
    DynamicNtk {
        /// Context stretch factor (> 0).
        factor: f64,
        /// Context length the model was trained on.
        original_max_position: usize,
    },
    /// YaRN (Peng et al., arXiv:2309.00071), as Hugging Face implements it.
    Yarn {
        /// Context stretch factor (> 1 for an effect).
        factor: f64,
        /// Context length the model was trained on.
        original_max_position: usize,
        /// Rotations above which dims are extrapolated (paper's beta, default 32).
        beta_fast: f64,
        /// Rotations below which dims are interpolated (paper's alpha, default 1).
        beta_slow: f64,
        /// cos/sin multiplier; `None` means Hugging Face's `get_mscale(factor)`: `0.1 * ln(factor)
        /// + 1` for `factor > 1`, else 1.
        attention_factor: Option<f64>,
    },
    /// Llama 3.1's piecewise scaling (Meta, `apply_scaling` in llama-models).
    Llama3 {
        /// Divisor for low frequencies (8 in Llama 3.1).
        factor: f64,
        /// Wavelength threshold factor for low frequencies (1).
        low_freq_factor: f64,
        /// Wavelength threshold factor for high frequencies (4).
        high_freq_factor: f64,
        /// Context length the model was trained on (8192).
        original_max_position: usize,
    },
    /// LongRoPE (Ding et al., arXiv:2402.13753; Phi-3): per-dimension divisors, `long_factors`
    /// when `L = max position in the call + 1` exceeds `original_max_position`, else `short_factors`.
    LongRope {
        /// One divisor per rotated pair, for short contexts.
        short_factors: Vec<f64>,
        /// One divisor per rotated pair, for long contexts.
        long_factors: Vec<f64>,
        /// Context length the model was trained on.
        original_max_position: usize,
        /// cos/sin multiplier; `None` means `sqrt(1 + ln(s) / ln(original_max_position))`,
        /// `s = max_position / original_max_position` (1 when s <= 1).
        attention_factor: Option<f64>,
    },
    /// Multimodal RoPE (M-RoPE: Qwen2-VL, Qwen2.5-VL; Hugging Face's `rope_scaling = {"type":
    /// "mrope", "mrope_section": [t, h, w]}`): the plain frequencies, and three position ids
    /// per token (temporal, height, width). Rotary pair `i` takes its angle from component
    /// `c(i)`: 0 for `i < section[0]`, 1 for `i < section[0] + section[1]`, else 2 (the sections
    /// sum to `rotary_dim / 2`; Qwen2-VL: `[16, 24, 24]` at head_dim 128). Positions are passed
    /// component-major, `[3, T]`: `positions[c * T + t]` (Hugging Face's `position_ids[c, :, t]`
    /// for one sequence's tokens); a text token has three equal ids, which is plain RoPE.
    MRope {
        /// Rotary pairs per component (temporal, height, width).
        section: [usize; 3],
    },
    /// A caller-supplied table: `inv_freq` (one per rotated pair) and a cos/sin multiplier.
    Custom {
        /// One inverse frequency per rotated pair.
        inv_freq: Vec<f64>,
        /// cos/sin multiplier (1.0 for none).
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The method's short name (`"linear"`, `"yarn"`, `"longrope"`, ...), as Hugging Face's
    /// `rope_type` spells it: what errors and unsupported reasons print instead of the whole
    /// configuration (a LongRoPE one carries two factor lists).
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::NtkAware { .. } => "ntk",
            RopeScaling::DynamicNtk { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::LongRope { .. } => "longrope",
            RopeScaling::MRope { .. } => "mrope",
            RopeScaling::Custom { .. } => "custom",
        }
    }
}

/// A complete RoPE configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Size of one head.
    pub head_dim: usize,
    /// Leading dims that rotate (partial rotary); the rest pass through unchanged.
    pub rotary_dim: usize,
    /// Base `theta` (10000 for LLaMA 2, 500000 for Llama 3, 1000000 for Qwen2).
    pub theta: f64,
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// Context-extension method.
    pub scaling: RopeScaling,
    /// Positions must be `< max_position`.
    pub max_position: usize,
}

/// The frequency table one call uses: `inv_freq[i]` for each rotated pair and the cos/sin
/// multiplier.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFrequencies {
    /// One inverse frequency per rotated pair (`rotary_dim / 2` entries).
    pub inv_freq: Vec<f64>,
    /// Factor applied to cos and sin (YaRN, LongRoPE); 1.0 otherwise.
    pub attention_factor: f64,
}

impl RopeFrequencies {
    /// Whether `other` is bit for bit the same table (a plan's table is uploaded once: a step
    /// whose table differs, dynamic NTK past its original length, needs a new plan).
    pub fn same_bits(&self, other: &RopeFrequencies) -> bool {
        self.attention_factor.to_bits() == other.attention_factor.to_bits()
            && self.inv_freq.len() == other.inv_freq.len()
            && self.inv_freq.iter().zip(&other.inv_freq).all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl RopeConfig {
    /// Largest `max_position`: 2^30, so that positions (`< max_position`) and positions moved
    /// by a context shift (`|delta| < max_position`) fit the kernels' signed 32-bit integers.
    pub const MAX_POSITION_LIMIT: usize = 1 << 30;

    /// Plain RoPE over the whole head, half-split pairs, no scaling.
    pub fn new(head_dim: usize, theta: f64, max_position: usize) -> Self {
        RopeConfig {
            head_dim,
            rotary_dim: head_dim,
            theta,
            style: RopeStyle::HalfSplit,
            scaling: RopeScaling::None,
            max_position,
        }
    }

    /// Position ids per token: 3 for M-RoPE ([`RopeScaling::MRope`], component-major `[3, T]`),
    /// else 1.
    pub fn position_components(&self) -> usize {
        if matches!(self.scaling, RopeScaling::MRope { .. }) {
            3
        } else {
            1
        }
    }

    /// The position component of rotary pair `pair`: 0 without M-RoPE.
    pub fn pair_component(&self, pair: usize) -> usize {
        match self.scaling {
            RopeScaling::MRope { section } => {
                if pair < section[0] {
                    0
                } else if pair < section[0] + section[1] {
                    1
                } else {
                    2
                }
            }
            _ => 0,
        }
    }

    /// True when the frequency table depends on the call's largest position (dynamic NTK,
    /// LongRoPE): then keys rotated in different calls may use different tables, and an op
    /// that re-rotates cached keys (context shift) cannot know which table each key used.
    pub fn is_length_dependent(&self) -> bool {
        matches!(self.scaling, RopeScaling::DynamicNtk { .. } | RopeScaling::LongRope { .. })
    }

    /// Checks the configuration: parameters, then the frequency tables (at position 0, and at
    /// `max_position - 1` for length-dependent scalings). `select` and `supports` run all of it;
    /// the ops check the parameters and the one table each call computes.
    pub fn validate(&self) -> Result<()> {
        self.validate_params()?;
        // The tables at both ends of the position range (length-dependent scalings change
        // monotonically in between; the others have one table): finite and positive, or the
        // error says which entry.
        self.frequencies(0)?;
        if self.is_length_dependent() {
            self.frequencies(self.max_position - 1)?;
        }
        Ok(())
    }

    /// [`RopeConfig::validate`] without the tables: the ops run this, then compute and check
    /// the one table the call uses ([`RopeConfig::frequencies`]), so a call builds one table,
    /// not three.
    pub(crate) fn validate_params(&self) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::OddHeadDim { head_dim: self.head_dim });
        }
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > self.head_dim {
            return Err(Error::InvalidRotaryDim { rotary_dim: self.rotary_dim, head_dim: self.head_dim });
        }
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(Error::InvalidArgument(format!("RoPE theta must be finite and > 1, got {}", self.theta)));
        }
        if self.max_position == 0 || self.max_position > Self::MAX_POSITION_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "RoPE max_position must be in 1..={} (positions, and positions moved by a context shift, must fit the kernels' signed 32-bit integers), got {}",
                Self::MAX_POSITION_LIMIT,
                self.max_position
            )));
        }
        let pairs = self.rotary_dim / 2;
        let positive = |what: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!("RoPE scaling {what} must be finite and > 0, got {x}")))
            }
        };
        let table = |what: &str, t: &[f64]| {
            if t.len() != pairs {
                return Err(Error::InvalidArgument(format!(
                    "RoPE scaling {what} has {} entries, rotary_dim/2 = {pairs} needed",
                    t.len()
                )));
            }
            t.iter().try_for_each(|&x| positive(what, x))
        };
        let orig = |o: usize| {
            if o == 0 {
                Err(Error::InvalidArgument("RoPE original_max_position must be > 0".into()))
            } else {
                Ok(())
            }
        };
        let params = match &self.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } | RopeScaling::NtkAware { factor } => positive("factor", *factor),
            RopeScaling::DynamicNtk { factor, original_max_position } => {
                positive("factor", *factor)?;
                orig(*original_max_position)
            }
            RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor } => {
                positive("factor", *factor)?;
                positive("beta_fast", *beta_fast)?;
                positive("beta_slow", *beta_slow)?;
                if beta_fast < beta_slow {
                    return Err(Error::InvalidArgument(format!(
                        "YaRN needs beta_fast >= beta_slow (extrapolated dims rotate more often than interpolated ones), got {beta_fast} < {beta_slow}"
                    )));
                }
                if let Some(a) = attention_factor {
                    positive("attention_factor", *a)?;
                }
                orig(*original_max_position)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(Error::InvalidArgument("Llama3 scaling needs high_freq_factor > low_freq_factor".into()));
                }
                orig(*original_max_position)
            }
            RopeScaling::LongRope { short_factors, long_factors, original_max_position, attention_factor } => {
                table("short_factors", short_factors)?;
                table("long_factors", long_factors)?;
                if let Some(a) = attention_factor {
                    positive("attention_factor", *a)?;
                }
                if *original_max_position <= 1 {
                    return Err(Error::InvalidArgument(format!(
                        "LongRoPE needs original_max_position > 1 (its default multiplier divides by ln(original_max_position)), got {original_max_position}"
                    )));
                }
                Ok(())
            }
            RopeScaling::MRope { section } => {
                if section.iter().sum::<usize>() != pairs {
                    return Err(Error::InvalidArgument(format!(
                        "M-RoPE sections {section:?} must sum to rotary_dim/2 = {pairs} (one component per rotary pair)"
                    )));
                }
                Ok(())
            }
            RopeScaling::Custom { inv_freq, attention_factor } => {
                table("inv_freq", inv_freq)?;
                positive("attention_factor", *attention_factor)
            }
        };
        params
    }

    /// The frequency table for a call whose largest position id is `max_pos_in_call`. Only
    /// dynamic NTK and LongRoPE look at it (through `L = max_pos_in_call + 1`, as Hugging Face's
    /// `_dynamic_frequency_update` does). Errors ([`Error::InvalidArgument`]) when a scaling
    /// makes an inverse frequency or the cos/sin multiplier non-finite or not positive (factors
    /// so small that `inv_freq / factor` overflows, say). [`RopeConfig::validate`] checks the
    /// tables at both ends of the position range, so a validated configuration gets a table for
    /// every position.
    pub fn frequencies(&self, max_pos_in_call: usize) -> Result<RopeFrequencies> {
        let f = self.raw_frequencies(max_pos_in_call);
        let bad = |x: f64| !(x.is_finite() && x > 0.0);
        if let Some((i, x)) = f.inv_freq.iter().enumerate().find(|(_, &x)| bad(x)) {
            return Err(Error::InvalidArgument(format!(
                "RoPE scaling {:?} gives inverse frequency {x} for pair {i} (at max position {max_pos_in_call}); every one must be finite and > 0",
                self.scaling_name()
            )));
        }
        if bad(f.attention_factor) {
            return Err(Error::InvalidArgument(format!("RoPE scaling {} gives cos/sin multiplier {}; it must be finite and > 0", self.scaling_name(), f.attention_factor)));
        }
        Ok(f)
    }

    /// Short name of the scaling method, for messages (the LongRoPE tables are long).
    pub fn scaling_name(&self) -> &'static str {
        match self.scaling {
            RopeScaling::None => "none",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::NtkAware { .. } => "ntk-aware",
            RopeScaling::DynamicNtk { .. } => "dynamic-ntk",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::LongRope { .. } => "longrope",
            RopeScaling::MRope { .. } => "mrope",
            RopeScaling::Custom { .. } => "custom",
        }
    }

    fn raw_frequencies(&self, max_pos_in_call: usize) -> RopeFrequencies {
        let d = self.rotary_dim as f64;
        let pairs = self.rotary_dim / 2;
        // RoFormer eq. 15: theta_i = base^(-2i/d).
        let plain = |base: f64| -> Vec<f64> { (0..pairs).map(|i| base.powf(-(2.0 * i as f64) / d)).collect() };
        let seq_len = (max_pos_in_call + 1) as f64;
        let (inv_freq, attention_factor) = match &self.scaling {
            RopeScaling::None | RopeScaling::MRope { .. } => (plain(self.theta), 1.0),
            // Position interpolation: m -> m / s, i.e. theta_i -> theta_i / s.
            RopeScaling::Linear { factor } => (plain(self.theta).iter().map(|f| f / factor).collect(), 1.0),
            // NTK-aware: base -> base * s^(d / (d - 2)). For d = 2 the exponent is undefined;
            // the single pair has frequency 1 whatever the base, so the base is left alone.
            RopeScaling::NtkAware { factor } => (plain(ntk_base(self.theta, *factor, d)), 1.0),
            RopeScaling::DynamicNtk { factor, original_max_position } => {
                let orig = *original_max_position as f64;
                if seq_len > orig {
                    let s = factor * seq_len / orig - (factor - 1.0);
                    (plain(ntk_base(self.theta, s, d)), 1.0)
                } else {
                    (plain(self.theta), 1.0)
                }
            }
            RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor } => {
                // Hugging Face `get_mscale`: 0.1 ln(s) + 1 for s > 1, else 1.
                let mscale = if *factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
                (yarn_inv_freq(self.theta, d, *factor, *original_max_position as f64, *beta_fast, *beta_slow), attention_factor.unwrap_or(mscale))
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                // llama-models `apply_scaling`: long wavelengths divided by `factor`, short ones
                // kept, a linear blend in `smooth` between the two thresholds.
                let old = *original_max_position as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let f = plain(self.theta)
                    .into_iter()
                    .map(|freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect();
                (f, 1.0)
            }
            RopeScaling::LongRope { short_factors, long_factors, original_max_position, attention_factor } => {
                // Phi-3 `Phi3LongRoPEScaledRotaryEmbedding`: inv_freq_i = 1 / (ext_i * base^(2i/d)).
                let orig = *original_max_position as f64;
                let ext = if seq_len > orig { long_factors } else { short_factors };
                let f = plain(self.theta).iter().zip(ext).map(|(f, e)| f / e).collect();
                let s = self.max_position as f64 / orig;
                let default = if s <= 1.0 { 1.0 } else { (1.0 + s.ln() / orig.ln()).sqrt() };
                (f, attention_factor.unwrap_or(default))
            }
            RopeScaling::Custom { inv_freq, attention_factor } => (inv_freq.clone(), *attention_factor),
        };
        RopeFrequencies { inv_freq, attention_factor }
    }
}

fn ntk_base(theta: f64, factor: f64, d: f64) -> f64 {
    if d <= 2.0 {
        theta
    } else {
        theta * factor.powf(d / (d - 2.0))
    }
}

/// YaRN "NTK-by-parts" (arXiv:2309.00071 §3.2, Hugging Face `_compute_yarn_parameters`): dims
/// that rotate more than `beta_fast` times over the original context keep their frequency
/// (extrapolate), dims that rotate fewer than `beta_slow` times are divided by `factor`
/// (interpolate), with a linear ramp between.
fn yarn_inv_freq(base: f64, d: f64, factor: f64, orig: f64, beta_fast: f64, beta_slow: f64) -> Vec<f64> {
    use std::f64::consts::PI;
    let pairs = (d as usize) / 2;
    // The dimension at which a frequency completes `rot` rotations over `orig` positions.
    let correction_dim = |rot: f64| (d * (orig / (rot * 2.0 * PI)).ln()) / (2.0 * base.ln());
    let low = correction_dim(beta_fast).floor().max(0.0);
    let high = correction_dim(beta_slow).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    (0..pairs)
        .map(|i| {
            let pos_freq = base.powf(2.0 * i as f64 / d);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_weight = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight
        })
        .collect()
}
