//! Host storage in the tensor's own dtype.

use std::any::Any;

use backend_api::{try_vec, DType, Device, Error, KvCache, Result, Storage, Tensor};
use half::{bf16, f16};

/// Host memory of one dtype. Values are stored rounded to the dtype, exactly as a GPU stores them.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

impl Storage for CpuStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.len() * self.dtype().size()
    }
    fn dtype(&self) -> Option<DType> {
        Some(CpuStorage::dtype(self))
    }
}

impl CpuStorage {
    /// `n` zeros of `dtype`, or [`Error::OutOfMemory`] when the host cannot hold them.
    pub fn zeros(n: usize, dtype: DType) -> Result<Self> {
        const WHAT: &str = "cpu backend storage";
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(try_vec(n, 0.0, WHAT)?),
            DType::F16 => CpuStorage::F16(try_vec(n, f16::ZERO, WHAT)?),
            DType::BF16 => CpuStorage::BF16(try_vec(n, bf16::ZERO, WHAT)?),
        })
    }

    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
        }
    }

    /// Element `i` as f64 (exact).
    pub fn get(&self, i: usize) -> f64 {
        match self {
            CpuStorage::F32(v) => v[i] as f64,
            CpuStorage::F16(v) => v[i].to_f64(),
            CpuStorage::BF16(v) => v[i].to_f64(),
        }
    }

    /// Stores `x` at `i`, rounded to nearest even in the dtype.
    pub fn set(&mut self, i: usize, x: f64) {
        match self {
            CpuStorage::F32(v) => v[i] = x as f32,
            CpuStorage::F16(v) => v[i] = backend_api::f16_from_f64(x),
            CpuStorage::BF16(v) => v[i] = backend_api::bf16_from_f64(x),
        }
    }

    /// Elements `off..off + n` as f64.
    pub fn range(&self, off: usize, n: usize) -> Vec<f64> {
        (off..off + n).map(|i| self.get(i)).collect()
    }

    /// Stores `xs` at `off..`, rounding each.
    pub fn set_range(&mut self, off: usize, xs: &[f64]) {
        for (j, &x) in xs.iter().enumerate() {
            self.set(off + j, x);
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
        }
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// K and V pools of a CPU KV cache.
#[derive(Debug)]
pub struct CpuCache {
    /// K pool (layout in `backend_api::cache`).
    pub k: CpuStorage,
    /// V pool.
    pub v: CpuStorage,
}

impl Storage for CpuCache {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.k.byte_len().min(self.v.byte_len())
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.k.dtype()).filter(|&d| d == self.v.dtype())
    }
}

fn foreign(what: &str, got: Device) -> Error {
    Error::WrongDevice { what: what.into(), backend: "cpu".into(), expected: Device::CPU, got }
}

/// The CPU storage of `t`, or `WrongDevice` if another backend made it.
pub fn host<'a>(t: &'a Tensor, what: &str) -> Result<&'a CpuStorage> {
    let dev = t.device();
    t.storage().as_any().downcast_ref::<CpuStorage>().ok_or_else(|| foreign(what, dev))
}

/// Mutable [`host`].
pub fn host_mut<'a>(t: &'a mut Tensor, what: &str) -> Result<&'a mut CpuStorage> {
    let dev = t.device();
    t.storage_mut().as_any_mut().downcast_mut::<CpuStorage>().ok_or_else(|| foreign(what, dev))
}

/// The CPU pools of `c`, or `WrongDevice`.
pub fn pools(c: &KvCache) -> Result<&CpuCache> {
    let dev = c.device();
    c.storage().as_any().downcast_ref::<CpuCache>().ok_or_else(|| foreign("KV cache", dev))
}

/// Mutable [`pools`].
pub fn pools_mut(c: &mut KvCache) -> Result<&mut CpuCache> {
    let dev = c.device();
    c.storage_mut().as_any_mut().downcast_mut::<CpuCache>().ok_or_else(|| foreign("KV cache", dev))
}
