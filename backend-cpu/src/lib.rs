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

use backend_api::registry::BackendEntry;
use backend_api::*;

use storage::{host, host_mut, pools, pools_mut, CpuCache, CpuStorage};

/// The reference backend. Stateless; one instance serves every thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    /// Registry name.
    pub const NAME: &'static str = "cpu";

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
        Tensor::from_storage(shape.to_vec(), dtype, Device::CPU, Box::new(CpuStorage::zeros(n, dtype)?))
    }

    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        let s = host_mut(dst, "destination tensor")?;
        check_len("write", src.len(), s.len())?;
        for (i, &x) in src.iter().enumerate() {
            s.set(i, x as f64);
        }
        Ok(())
    }

    fn read(&self, src: &Tensor) -> Result<Vec<f32>> {
        let s = host(src, "tensor")?;
        Ok((0..s.len()).map(|i| s.get(i) as f32).collect())
    }

    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()> {
        let s = host_mut(dst, "tensor")?;
        for i in 0..s.len() {
            s.set(i, value as f64);
        }
        Ok(())
    }

    fn create_kv_cache(&self, spec: &KvCacheSpec) -> Result<KvCache> {
        let n = spec.pool_len();
        let pools = CpuCache { k: CpuStorage::zeros(n, spec.dtype)?, v: CpuStorage::zeros(n, spec.dtype)? };
        KvCache::from_storage(spec.clone(), Device::CPU, Box::new(pools))
    }

    fn read_kv_pool(&self, cache: &KvCache) -> Result<KvPool> {
        let p = pools(cache)?;
        let f = |s: &CpuStorage| (0..s.len()).map(|i| s.get(i) as f32).collect();
        Ok(KvPool { k: f(&p.k), v: f(&p.v) })
    }

    fn write_kv_pool(&self, cache: &mut KvCache, pool: &KvPool) -> Result<()> {
        let p = pools_mut(cache)?;
        check_len("write_kv_pool (k)", pool.k.len(), p.k.len())?;
        check_len("write_kv_pool (v)", pool.v.len(), p.v.len())?;
        for (i, (&k, &v)) in pool.k.iter().zip(&pool.v).enumerate() {
            p.k.set(i, k as f64);
            p.v.set(i, v as f64);
        }
        Ok(())
    }

    fn rope(&self, args: RopeArgs<'_>) -> Result<()> {
        ops::rope::run(args)
    }

    fn kv_append(&self, args: AppendArgs<'_>) -> Result<()> {
        ops::kv_append::run(args)
    }

    fn attention(&self, args: AttentionArgs<'_>) -> Result<()> {
        ops::attention::run_cache(args)
    }

    fn attention_plain(&self, args: PlainAttentionArgs<'_>) -> Result<()> {
        ops::attention::run_plain(args)
    }

    fn shift_positions(&self, args: ShiftArgs<'_>) -> Result<()> {
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
