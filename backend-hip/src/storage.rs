//! Device storage of tensors and caches (crate-private: nothing outside the crate can build one
//! or reach its buffer), and host-side dtype conversion.

use std::any::Any;
use std::sync::Arc;

use attnforge_api::{DType, Device, Error, KvPools, Region, Result, Storage, Tensor};

use crate::runtime::{DevMut, DevRef, DeviceBuffer, Gpu};

/// A tensor's device memory: an allocation (shared by views of it) and the byte where the
/// tensor starts in it.
#[derive(Debug)]
pub(crate) struct GpuTensor {
    pub buf: Arc<DeviceBuffer>,
    /// Byte offset of the tensor's first element in `buf`.
    pub offset: usize,
    pub dtype: DType,
}

impl GpuTensor {
    /// The tensor's memory from its first element to the end of the allocation.
    pub fn view(&self) -> DevRef<'_> {
        self.buf.slice(self.offset)
    }
    /// The same, writable.
    pub fn view_mut(&self) -> DevMut<'_> {
        self.buf.slice_mut(self.offset)
    }
}

impl Storage for GpuTensor {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.buf.len().saturating_sub(self.offset)
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.dtype)
    }
    fn region(&self) -> Option<Region> {
        Some(Region { alloc: self.buf.id(), offset: self.offset })
    }
}

/// What hip-fused keeps beside a pair of KV pools.
#[derive(Debug)]
pub(crate) struct GpuPoolState {
    /// int32 per slot, the position of an unrotated key, or `i32::MIN` for a key stored rotated
    /// (appended by `kv_append`, or never written). Shared, so a captured graph can hold it.
    pub pos: Arc<DeviceBuffer>,
    /// The RoPE table its unrotated keys are rotated with, bound by the first composite step.
    pub rope: Option<BoundRope>,
}

/// The RoPE configuration a hip-fused cache's unrotated keys belong to.
#[derive(Debug, Clone)]
pub(crate) struct BoundRope {
    /// Bits of the inverse frequencies (identity of the table), shared: a plan's run binds the
    /// pools per layer, and a clone must not allocate.
    pub key: Arc<[u64]>,
    /// The table on the device.
    pub table: Arc<DeviceBuffer>,
    pub rotary_dim: usize,
    pub interleaved: bool,
    /// cos/sin multiplier.
    pub factor: f32,
    /// M-RoPE's sections (positions `[3, T]`), if any.
    pub mrope: Option<[usize; 3]>,
}

impl Storage for GpuPoolState {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.pos.len()
    }
}

fn foreign(what: &str, backend: &str, expected: Device, got: Device) -> Error {
    Error::WrongDevice { what: what.into(), backend: backend.into(), expected, got }
}

/// The GPU storage of `t`, made on `gpu`'s stream (or borrowed on its device): another device
/// is `WrongDevice`, another instance on this device (another stream) `WrongInstance`.
pub(crate) fn tensor<'a>(t: &'a Tensor, what: &str, backend: &str, gpu: &Gpu) -> Result<&'a GpuTensor> {
    let (dev, got) = (gpu.device(), t.device());
    match t.storage().as_any().downcast_ref::<GpuTensor>() {
        Some(s) if got == dev && s.buf.device() == dev => {
            if !s.buf.live() {
                Err(Error::InvalidArgument(format!("{what} is borrowed memory whose borrow has ended")))
            } else if gpu.owns(&s.buf) {
                gpu.keep(&s.buf);
                Ok(s)
            } else {
                Err(Error::WrongInstance { what: what.into(), backend: backend.into() })
            }
        }
        _ => Err(foreign(what, backend, dev, got)),
    }
}

/// [`tensor`] for an op that writes it: memory borrowed through a shared reference is refused.
pub(crate) fn writable<'a>(t: &'a Tensor, what: &str, backend: &str, gpu: &Gpu) -> Result<&'a GpuTensor> {
    let s = tensor(t, what, backend, gpu)?;
    if s.buf.read_only() {
        return Err(Error::InvalidArgument(format!("{what} is written by this op but was borrowed read-only (borrow it mutably)")));
    }
    Ok(s)
}

/// The pools' tensors and hip-fused's state (when the pools carry it).
pub(crate) fn pools<'a>(c: &'a KvPools, backend: &str, gpu: &Gpu) -> Result<(&'a GpuTensor, &'a GpuTensor, Option<&'a GpuPoolState>)> {
    let k = tensor(c.k(), "K pool", backend, gpu)?;
    let v = tensor(c.v(), "V pool", backend, gpu)?;
    let state = c.state().and_then(|s| s.as_any().downcast_ref::<GpuPoolState>());
    if let Some(st) = state {
        gpu.keep(&st.pos);
    }
    Ok((k, v, state))
}

/// hip-fused's state of `c`, writable.
pub(crate) fn pool_state_mut(c: &mut KvPools) -> Option<&mut GpuPoolState> {
    c.parts_mut().2.and_then(|s| s.as_any_mut().downcast_mut::<GpuPoolState>())
}

/// f32 values as the dtype's bytes (`half`'s slice conversions: round to nearest even, the
/// hardware's conversion; device memory is little-endian like the host, see the crate root).
pub(crate) fn encode(src: &[f32], dtype: DType) -> Vec<u8> {
    use half::slice::HalfFloatSliceExt;
    match dtype {
        DType::F32 => bytemuck::cast_slice(src).to_vec(),
        DType::F16 => {
            let mut h = vec![half::f16::ZERO; src.len()];
            h.convert_from_f32_slice(src);
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::BF16 => {
            let mut h = vec![half::bf16::ZERO; src.len()];
            h.convert_from_f32_slice(src);
            bytemuck::cast_slice(&h).to_vec()
        }
        // Nearest even, saturating at +-448 (the kernels' `cvt.rn.satfinite`).
        DType::F8E4M3 => src.iter().map(|&x| float8::F8E4M3::from_f32(x).to_bits()).collect(),
    }
}

/// The dtype's bytes to f32 (exact). `bytes` may be unaligned (a byte buffer from the device).
pub(crate) fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).to_f32_vec(),
        DType::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes).to_f32_vec(),
        DType::F8E4M3 => bytes.iter().map(|&b| float8::F8E4M3::from_bits(b).to_f32()).collect(),
    }
}

/// i32 values as bytes.
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}
