//! Device storage of tensors and caches (crate-private: nothing outside the crate can build one
//! or reach its buffer), and host-side dtype conversion.

use std::any::Any;
use std::sync::Arc;

use backend_api::{DType, Device, Error, KvCache, Result, Storage, Tensor};

use crate::runtime::{DeviceBuffer, Gpu};

/// A tensor's device memory and the dtype it was allocated for.
#[derive(Debug)]
pub(crate) struct GpuTensor {
    pub buf: DeviceBuffer,
    pub dtype: DType,
}

impl Storage for GpuTensor {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.buf.len()
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.dtype)
    }
}

/// A cache's K and V pools.
#[derive(Debug)]
pub(crate) struct GpuCache {
    /// K pool `[slots, Hk, D]`.
    pub k: DeviceBuffer,
    /// V pool.
    pub v: DeviceBuffer,
    pub dtype: DType,
    /// hip-fused only: int32 per slot, the position of an unrotated key, or `i32::MIN` for a
    /// key stored rotated (appended by `kv_append`, or never written).
    pub pos: Option<DeviceBuffer>,
    /// hip-fused only: the RoPE table its unrotated keys are rotated with, bound by the first
    /// composite step.
    pub rope: Option<BoundRope>,
}

/// The RoPE configuration a hip-fused cache's unrotated keys belong to.
#[derive(Debug, Clone)]
pub(crate) struct BoundRope {
    /// Bits of the inverse frequencies (identity of the table).
    pub key: Vec<u64>,
    /// The table on the device.
    pub table: Arc<DeviceBuffer>,
    pub rotary_dim: usize,
    pub interleaved: bool,
    /// cos/sin multiplier.
    pub factor: f32,
}

impl Storage for GpuCache {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn byte_len(&self) -> usize {
        self.k.len().min(self.v.len())
    }
    fn dtype(&self) -> Option<DType> {
        Some(self.dtype)
    }
}

fn foreign(what: &str, backend: &str, expected: Device, got: Device) -> Error {
    Error::WrongDevice { what: what.into(), backend: backend.into(), expected, got }
}

/// Storage of `what` made by `gpu`'s stream: another device is `WrongDevice`, another instance
/// on this device (another stream) `WrongInstance`.
fn owned<'a, S>(what: &str, backend: &str, gpu: &Gpu, got: Device, s: Option<&'a S>, buf: impl Fn(&S) -> &DeviceBuffer) -> Result<&'a S> {
    let dev = gpu.device();
    match s {
        Some(s) if got == dev && buf(s).device() == dev => {
            if gpu.owns(buf(s)) {
                Ok(s)
            } else {
                Err(Error::WrongInstance { what: what.into(), backend: backend.into() })
            }
        }
        _ => Err(foreign(what, backend, dev, got)),
    }
}

pub(crate) fn tensor<'a>(t: &'a Tensor, what: &str, backend: &str, gpu: &Gpu) -> Result<&'a GpuTensor> {
    let got = t.device();
    owned(what, backend, gpu, got, t.storage().as_any().downcast_ref::<GpuTensor>(), |g| &g.buf)
}

pub(crate) fn tensor_mut<'a>(t: &'a mut Tensor, what: &str, backend: &str, gpu: &Gpu) -> Result<&'a mut GpuTensor> {
    let got = t.device();
    owned(what, backend, gpu, got, t.storage().as_any().downcast_ref::<GpuTensor>(), |g| &g.buf)?;
    Ok(t.storage_mut().as_any_mut().downcast_mut::<GpuTensor>().expect("checked above"))
}

pub(crate) fn cache<'a>(c: &'a KvCache, backend: &str, gpu: &Gpu) -> Result<&'a GpuCache> {
    let got = c.device();
    owned("KV cache", backend, gpu, got, c.storage().as_any().downcast_ref::<GpuCache>(), |g| &g.k)
}

pub(crate) fn cache_mut<'a>(c: &'a mut KvCache, backend: &str, gpu: &Gpu) -> Result<&'a mut GpuCache> {
    let got = c.device();
    owned("KV cache", backend, gpu, got, c.storage().as_any().downcast_ref::<GpuCache>(), |g| &g.k)?;
    Ok(c.storage_mut().as_any_mut().downcast_mut::<GpuCache>().expect("checked above"))
}

pub(crate) fn encode(src: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() * dtype.size());
    match dtype {
        DType::F32 => src.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::F16 => src.iter().for_each(|&x| out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes())),
        DType::BF16 => src.iter().for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes())),
    }
    out
}

/// The dtype's bytes to f32 (exact).
pub(crate) fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
    }
}

/// i32 values as little-endian bytes.
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
