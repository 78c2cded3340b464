//! Element types and devices.

use std::fmt;

/// Element type of a tensor or KV cache. Kernels compute in f32 (the reference in f64) and store
/// in the dtype. [`DType::F8E4M3`] is a storage type only: the pools of an FP8 KV cache
/// ([`crate::KvCacheSpec::kv_dtype`]); queries, outputs and the K/V rows appended are f16 or bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// OCP FP8 E4M3 ("e4m3fn": 4-bit exponent, 3-bit mantissa, no infinities, largest finite
    /// 448, one NaN encoding). Storage of FP8 KV caches only; values are rounded to nearest even
    /// and saturate at +-448 (NVIDIA's `cvt.rn.satfinite`, the `float8` crate's `from_f64`).
    F8E4M3,
}

impl DType {
    /// Every compute dtype (of queries, outputs, K/V rows and plain tensors), in a fixed order.
    /// [`DType::F8E4M3`] is not among them: it only stores KV caches.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Whether this is an 8-bit storage type ([`DType::F8E4M3`]).
    pub fn is_float8(self) -> bool {
        self == DType::F8E4M3
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 => 1,
        }
    }

    /// Lower-case name as used in kernel symbols and reports: `f32`, `f16`, `bf16`, `e4m3`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "e4m3",
        }
    }

    /// Machine epsilon of the dtype (distance from 1.0 to the next value).
    pub fn epsilon(self) -> f64 {
        match self {
            DType::F32 => f32::EPSILON as f64,
            DType::F16 => half::f16::EPSILON.to_f64(),
            DType::BF16 => half::bf16::EPSILON.to_f64(),
            DType::F8E4M3 => 0.125,
        }
    }

    /// Rounds `x` to the nearest value representable in this dtype (round to nearest even), as a
    /// store to a tensor of this dtype does (e4m3 saturates at +-448; NaN stays NaN).
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => f16_from_f64(x).to_f64(),
            DType::BF16 => bf16_from_f64(x).to_f64(),
            DType::F8E4M3 => e4m3_from_f64(x).to_f64(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` rounded to f32 with round-to-odd: truncate, then set the last bit if anything was lost.
/// Rounding that to a format with at least two fewer significand bits (f16, bf16) with
/// round-to-nearest-even gives the correctly rounded result, with no double-rounding error.
fn f32_round_to_odd(x: f64) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    let mut r = x as f32; // nearest even, may round away from zero
    if r.is_infinite() || (r as f64).abs() > x.abs() {
        r = f32::from_bits(r.to_bits() - 1); // one step toward zero (keeps the sign)
    }
    if r as f64 != x {
        r = f32::from_bits(r.to_bits() | 1);
    }
    r
}

/// f64 to bf16, correctly rounded (nearest, ties to even). `half::bf16::from_f64` is not:
/// 113 of 2 million random f32 values in [0.125, 0.25) came out one unit low.
pub fn bf16_from_f64(x: f64) -> half::bf16 {
    half::bf16::from_f32(f32_round_to_odd(x))
}

/// f64 to f16, correctly rounded (nearest, ties to even).
pub fn f16_from_f64(x: f64) -> half::f16 {
    half::f16::from_f32(f32_round_to_odd(x))
}

/// f64 to e4m3, rounded to nearest even, saturating at +-448 (infinities too), NaN to NaN: the
/// conversion of NVIDIA's `cuda_fp8.hpp` with `__NV_SATFINITE`, which the `float8` crate ports.
pub fn e4m3_from_f64(x: f64) -> float8::F8E4M3 {
    float8::F8E4M3::from_f64(x)
}

/// What an FP8 KV cache stores for the value `x` of head `h` whose scale is `scale`:
/// `e4m3(fl32(x / scale))`, the quotient taken in f32 as the GPU's append does, then rounded to
/// e4m3 (nearest even, saturating). Attention reads it back as `e4m3 * scale`.
pub fn e4m3_quantise(x: f64, scale: f32) -> float8::F8E4M3 {
    e4m3_from_f64((x as f32 / scale) as f64)
}

/// The kind of device a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// Host memory and the CPU.
    Cpu,
    /// An NVIDIA GPU (HIP's NVIDIA path, through the CUDA driver).
    Cuda,
    /// An AMD GPU (ROCm).
    Rocm,
}

/// A device: its kind and ordinal. Tensors remember theirs; a backend refuses tensors of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    /// CPU, CUDA or ROCm.
    pub kind: DeviceKind,
    /// Index among devices of that kind (0 for the CPU).
    pub ordinal: usize,
}

impl Device {
    /// The host CPU.
    pub const CPU: Device = Device { kind: DeviceKind::Cpu, ordinal: 0 };

    /// NVIDIA GPU number `ordinal`.
    pub fn cuda(ordinal: usize) -> Self {
        Device { kind: DeviceKind::Cuda, ordinal }
    }

    /// AMD GPU number `ordinal`.
    pub fn rocm(ordinal: usize) -> Self {
        Device { kind: DeviceKind::Rocm, ordinal }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda => write!(f, "cuda:{}", self.ordinal),
            DeviceKind::Rocm => write!(f, "rocm:{}", self.ordinal),
        }
    }
}
