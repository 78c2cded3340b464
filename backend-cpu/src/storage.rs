//! Host storage in the tensor's own dtype.

use std::any::Any;

use std::sync::{Arc, RwLock};

use attnforge_api::{try_vec, DType, Device, Error, Region, Result, Storage, Tensor};
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
    /// e4m3 elements (FP8 KV pools).
    F8E4M3(Vec<float8::F8E4M3>),
}

impl CpuStorage {
    /// `n` zeros of `dtype`, or [`Error::OutOfMemory`] when the host cannot hold them.
    pub fn zeros(n: usize, dtype: DType) -> Result<Self> {
        const WHAT: &str = "cpu backend storage";
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(try_vec(n, 0.0, WHAT)?),
            DType::F16 => CpuStorage::F16(try_vec(n, f16::ZERO, WHAT)?),
            DType::BF16 => CpuStorage::BF16(try_vec(n, bf16::ZERO, WHAT)?),
            DType::F8E4M3 => CpuStorage::F8E4M3(try_vec(n, float8::F8E4M3::ZERO, WHAT)?),
        })
    }

    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F8E4M3(_) => DType::F8E4M3,
        }
    }

    /// Element `i` as f64 (exact).
    pub fn get(&self, i: usize) -> f64 {
        match self {
            CpuStorage::F32(v) => v[i] as f64,
            CpuStorage::F16(v) => v[i].to_f64(),
            CpuStorage::BF16(v) => v[i].to_f64(),
            CpuStorage::F8E4M3(v) => v[i].to_f64(),
        }
    }

    /// Stores `x` at `i`, rounded to nearest even in the dtype.
    pub fn set(&mut self, i: usize, x: f64) {
        match self {
            CpuStorage::F32(v) => v[i] = x as f32,
            CpuStorage::F16(v) => v[i] = attnforge_api::f16_from_f64(x),
            CpuStorage::BF16(v) => v[i] = attnforge_api::bf16_from_f64(x),
            CpuStorage::F8E4M3(v) => v[i] = attnforge_api::e4m3_from_f64(x),
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
            CpuStorage::F8E4M3(v) => v.len(),
        }
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Host memory that tensors share: the caller's (an engine's host buffers, see
/// [`crate::CpuBackend::tensor_in`]) or the backend's own. Cloning the handle shares the
/// memory; it lives as long as the last handle or tensor over it. Reads and writes take a lock,
/// so views of one buffer written from several threads stay sound.
#[derive(Debug, Clone)]
pub struct HostBuffer(Arc<RwLock<CpuStorage>>);

impl HostBuffer {
    /// `n` zeros of `dtype`, or [`Error::OutOfMemory`].
    pub fn zeros(n: usize, dtype: DType) -> Result<Self> {
        Ok(HostBuffer(Arc::new(RwLock::new(CpuStorage::zeros(n, dtype)?))))
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.lock().dtype()
    }

    /// Elements `range` as f32 (exact for f16/bf16).
    pub fn read_f32(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let g = self.lock();
        check_range(range.start, range.len(), g.len())?;
        Ok(range.map(|i| g.get(i) as f32).collect())
    }

    /// Stores `values` at `offset..`, rounded to the dtype.
    pub fn write_f32(&self, offset: usize, values: &[f32]) -> Result<()> {
        let mut g = self.lock_mut();
        check_range(offset, values.len(), g.len())?;
        for (i, &x) in values.iter().enumerate() {
            g.set(offset + i, x as f64);
        }
        Ok(())
    }

    pub(crate) fn lock(&self) -> std::sync::RwLockReadGuard<'_, CpuStorage> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_mut(&self) -> std::sync::RwLockWriteGuard<'_, CpuStorage> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as *const () as usize
    }
}

fn check_range(offset: usize, n: usize, len: usize) -> Result<()> {
    if offset.checked_add(n).is_none_or(|end| end > len) {
        return Err(Error::InvalidArgument(format!("elements {offset}..{} of a host buffer of {len}", offset.saturating_add(n))));
    }
    Ok(())
}

/// A CPU tensor's storage: a [`HostBuffer`] and the element where the tensor starts in it.
#[derive(Debug, Clone)]
pub struct CpuTensor {
    /// The memory (shared by views).
    pub buf: HostBuffer,
    /// First element of the tensor in `buf`.
    pub offset: usize,
}

impl Storage for CpuTensor {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        let g = self.buf.lock();
        g.len().saturating_sub(self.offset) * g.dtype().size()
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.buf.dtype())
    }
    fn region(&self) -> Option<Region> {
        Some(Region { alloc: self.buf.id(), offset: self.offset * self.buf.dtype().size() })
    }
}

fn foreign(what: &str, got: Device) -> Error {
    Error::WrongDevice { what: what.into(), backend: "cpu".into(), expected: Device::CPU, got }
}

/// The CPU storage of `t`, or `WrongDevice` if another backend made it.
pub fn host<'a>(t: &'a Tensor, what: &str) -> Result<&'a CpuTensor> {
    let dev = t.device();
    t.storage().as_any().downcast_ref::<CpuTensor>().ok_or_else(|| foreign(what, dev))
}

/// `t`'s elements as dense f64 (row by row, skipping memory between strided rows).
pub fn read(t: &Tensor, what: &str) -> Result<Vec<f64>> {
    let s = host(t, what)?;
    let (row, g) = (t.row_len(), s.buf.lock());
    let mut out = Vec::with_capacity(t.numel());
    for r in t.row_offsets() {
        out.extend((0..row).map(|j| g.get(s.offset + r + j)));
    }
    Ok(out)
}

/// Stores dense `values` (`t.numel()` of them) into `t`'s rows, each rounded to the dtype.
pub fn write(t: &mut Tensor, what: &str, values: &[f64]) -> Result<()> {
    let row = t.row_len();
    let offsets: Vec<usize> = t.row_offsets().collect();
    let s = host(t, what)?;
    let mut g = s.buf.lock_mut();
    for (i, r) in offsets.into_iter().enumerate() {
        for j in 0..row {
            g.set(s.offset + r + j, values[i * row + j]);
        }
    }
    Ok(())
}

/// `n` elements of the dense tensor `t` from element `off`, as f64.
pub fn read_at(t: &Tensor, what: &str, off: usize, n: usize) -> Result<Vec<f64>> {
    let s = host(t, what)?;
    Ok(s.buf.lock().range(s.offset + off, n))
}

/// Stores `values` into the dense tensor `t` from element `off`.
pub fn write_at(t: &mut Tensor, what: &str, off: usize, values: &[f64]) -> Result<()> {
    let s = host(t, what)?;
    s.buf.lock_mut().set_range(s.offset + off, values);
    Ok(())
}
