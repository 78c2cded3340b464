//! # attnforge CPU reference backend (`cpu`)
//!
//! The definition of correct that every other backend is judged against. Plain loops, every op,
//! every RoPE style and scaling, both cache layouts, causal and not, MHA/GQA/MQA, and all three
//! dtypes: values are read from storage exactly, computed in f64, and rounded once when stored
//! in the tensor's dtype. Nothing here is tuned for speed.
//!
//! The f64 formulas are public ([`ops::rope::rope_rows`], [`ops::attention::attend`]) so the
//! conformance suite can compute golden results without any rounding.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod ops;
pub mod storage;

use std::sync::Arc;

use attnforge_api::registry::BackendEntry;
use attnforge_api::*;

use storage::{host, CpuTensor, HostBuffer};

/// The reference backend. Stateless; one instance serves every thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    /// Registry name.
    pub const NAME: &'static str = "cpu";

    /// A tensor over the caller's host memory (no copy): `shape` from element `offset` of
    /// `buf`, rows `row_stride` elements apart (the CPU side of an engine's borrowed views: q,
    /// k and v into one fused QKV buffer, pools as slices of one allocation). Refused when it
    /// runs past the buffer, the stride is shorter than a row, or `dtype` is not the buffer's.
    pub fn tensor_in(buf: &HostBuffer, offset: usize, shape: &[usize], row_stride: usize, dtype: DType) -> Result<Tensor> {
        if buf.dtype() != dtype {
            return Err(Error::DtypeMismatch { what: "host buffer".into(), expected: dtype, got: buf.dtype() });
        }
        if offset > buf.len() {
            return Err(Error::InvalidArgument(format!("offset {offset} past a host buffer of {} elements", buf.len())));
        }
        Tensor::from_storage_strided(shape.to_vec(), row_stride, dtype, Device::CPU, Box::new(CpuTensor { buf: buf.clone(), offset }))
    }

    /// A new instance (the registry keeps a shared one: `registry::get("cpu")`).
    pub fn new() -> Self {
        CpuBackend
    }

    /// A [`Backend`] handle to a fresh instance.
    pub fn handle() -> Backend {
        Backend::new(Arc::new(CpuBackend))
    }
}

impl AttentionBackend for CpuBackend {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn device(&self) -> Device {
        Device::CPU
    }

    /// The reference runs every valid problem: one implementation per op, no kernel choice.
    fn supports(&self, _op: Op, _problem: &ProblemDesc) -> Result<(), Vec<String>> {
        Ok(())
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::InvalidArgument(format!("shape {shape:?} overflows")))?;
        Tensor::from_storage(shape.to_vec(), dtype, Device::CPU, Box::new(CpuTensor { buf: HostBuffer::zeros(n, dtype)?, offset: 0 }))
    }

    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        check_len("write", src.len(), dst.numel())?;
        storage::write(dst, "destination tensor", &src.iter().map(|&x| x as f64).collect::<Vec<_>>())
    }

    fn read(&self, src: &Tensor) -> Result<Vec<f32>> {
        Ok(storage::read(src, "tensor")?.into_iter().map(|x| x as f32).collect())
    }

    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()> {
        let n = dst.numel();
        storage::write(dst, "tensor", &vec![value as f64; n])
    }

    fn view(&self, base: &Tensor, offset: usize, shape: &[usize], row_stride: usize) -> Result<Tensor> {
        let b = host(base, "view base")?;
        let storage = CpuTensor { buf: b.buf.clone(), offset: b.offset + offset };
        Tensor::from_storage_strided(shape.to_vec(), row_stride, base.dtype(), Device::CPU, Box::new(storage))
    }

    fn rope(&self, args: RopeArgs<'_>) -> Result<()> {
        tracing::trace!(tokens = args.positions.len(), rotary_dim = args.config.rotary_dim, "cpu rope: f64 loops per token and head");
        ops::rope::run(args)
    }

    fn kv_append(&self, args: AppendArgs<'_>) -> Result<()> {
        tracing::trace!(seqs = args.batch.seq_ids().len(), "cpu kv_append: row copies through the page tables");
        ops::kv_append::run(args)
    }

    fn attention(&self, args: AttentionArgs<'_>) -> Result<()> {
        tracing::trace!(seqs = args.batch.seq_ids().len(), keys = args.kv_lens.iter().sum::<usize>(), "cpu attention: f64 softmax per query row");
        ops::attention::run_cache(args)
    }

    fn attention_plain(&self, args: PlainAttentionArgs<'_>) -> Result<()> {
        tracing::trace!("cpu attention_plain: f64 softmax per query row");
        ops::attention::run_plain(args)
    }

    fn merge_states(&self, args: MergeArgs<'_>) -> Result<()> {
        tracing::trace!(states = args.states.len(), "cpu merge_states: f64 weights per row");
        ops::attention::run_merge(args)
    }

    fn shift_positions(&self, args: ShiftArgs<'_>) -> Result<()> {
        tracing::trace!(delta = args.delta, "cpu shift: keys rotated by the position delta");
        ops::rope::shift(args)
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::InvalidArgument(format!("{what}: {got} values for {want} elements")));
    }
    Ok(())
}

/// Every name this crate registers.
pub const NAMES: &[&str] = &[CpuBackend::NAME];

inventory::submit! {
    BackendEntry {
        name: CpuBackend::NAME,
        description: "reference: plain loops on the host, f64 accumulation, every op and dtype",
        priority: 0,
        create: || Ok(Arc::new(CpuBackend)),
    }
}

/// Referenced by the facade so the linker keeps this crate's registration.
#[inline(never)]
pub fn link() {}
