//! # attnforge backend API
//!
//! The contract between LLM inference engines and attention backends:
//!
//! - [`Tensor`]: a handle to device memory with shape, [`DType`] and [`Device`];
//! - [`RopeConfig`]: rotary embeddings with every common scaling ([`RopeScaling`]);
//! - [`KvPools`] (K/V pools, the backend's or the caller's memory), [`KvMetadata`] (lengths,
//!   page tables: the caller's, shared by all layers) and [`KvCache`] (both, owned);
//! - [`Batch`] / [`PlainBatch`]: which sequences a step touches and how many tokens each;
//! - [`AttentionBackend`]: what a backend implements (`rope`, `kv_append`, `attention`,
//!   `attention_plain`, and the composite `rope_append_attend`);
//! - [`Backend`]: the handle users call, which validates every input into a typed [`Error`];
//! - [`plan`]: plan a step once, run it per layer ([`Backend::plan`], [`Backend::run`]),
//!   capture the runs into a device graph ([`Backend::capture`]);
//! - [`registry`]: backends registered at link time, listed, picked by name or automatically.
//!
//! The facade crate `attnforge` re-exports all of this and links the backends; its crate docs
//! walk through a decode step.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod args;
mod backend;
pub mod cache;
mod dtype;
mod error;
pub mod plan;
mod problem;
pub mod registry;
mod rope;
mod tensor;

pub use args::{AppendArgs, AttentionArgs, MergeArgs, PlainAttentionArgs, RopeArgs, ShiftArgs, StepArgs};
pub use backend::{AttentionBackend, AttentionExtras, Backend, StepInputs, StepViews};
pub use cache::{CacheLayout, CachedSeq, KvCache, KvCacheSpec, KvMetadata, KvPool, KvPools};
pub use dtype::{bf16_from_f64, e4m3_from_f64, e4m3_quantise, f16_from_f64, DType, Device, DeviceKind};
pub use error::{Error, Result};
pub use plan::{Graph, GraphExec, GraphSupport, LayerViews, PlanArgs, PlanOp, PlanState, StepDesc, StepPlan};
pub use problem::{AttentionParams, Batch, Op, PlainBatch, ProblemDesc};
pub use rope::{RopeConfig, RopeFrequencies, RopeScaling, RopeStyle};
pub use tensor::{Region, Storage, Tensor};

/// `n` copies of `value` in a new `Vec`, or [`Error::OutOfMemory`] naming `what` when the host
/// cannot allocate it (never an abort: sizes come from callers' input).
pub fn try_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory { what: format!("{what} (host)"), bytes })?;
    v.resize(n, value);
    Ok(v)
}
