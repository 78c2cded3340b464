//! # attnforge
//!
//! Pluggable attention backends for LLM inference engines: one API ([`AttentionBackend`],
//! through the [`Backend`] handle), a CPU reference, and GPU backends for AMD and NVIDIA.
//! This facade re-exports the API and links every backend crate enabled by features, so the
//! [`registry`] sees them all.
//!
//! A decode step through the backend the registry picks for the problem:
//!
//! ```
//! use attnforge::*;
//! # fn main() -> Result<()> {
//! let (h, hk, d) = (4, 2, 8);
//! let rope = RopeConfig::new(d, 10000.0, 4096);
//! let layout = CacheLayout::Contiguous { capacity: 16 };
//! let problem = ProblemDesc::step(DType::F32, h, hk, rope.clone(), layout);
//! let chosen = registry::select_with(&problem, Some("cpu"))?;
//! let backend = chosen.backend;
//!
//! let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: DType::F32, kv_dtype: None, layout };
//! let mut cache = backend.create_kv_cache(&spec)?;
//! let batch = Batch::uniform(1, 1)?;               // one sequence, one new token
//! let mut q = backend.upload(&[0.5; 4 * 8], &[1, h, d], DType::F32)?;
//! let mut k = backend.upload(&[0.25; 2 * 8], &[1, hk, d], DType::F32)?;
//! let v = backend.upload(&[1.0; 2 * 8], &[1, hk, d], DType::F32)?;
//! let mut out = backend.alloc(&[1, h, d], DType::F32)?;
//! backend.rope_append_attend(StepInputs {
//!     q: &mut q, k: &mut k, v: &v, positions: &[0], rope: &rope, cache: &mut cache,
//!     batch: &batch, params: AttentionParams::causal(d), sinks: None, out: &mut out,
//! })?;
//! assert_eq!(cache.seq_len(0), 1);
//! assert_eq!(backend.download(&out)?, vec![1.0; 4 * 8]); // one key: all weight on its value
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub use attnforge_api::*;

#[cfg(feature = "cpu")]
pub use attnforge_cpu;
#[cfg(feature = "hip-core")]
pub use attnforge_hip;

/// The backend registry, with every backend crate of this build linked in. See
/// [`attnforge_api::registry`] for the semantics.
pub mod registry {
    pub use attnforge_api::registry::{BackendEntry, BackendInfo, Constructor, DeviceBackendEntry, DeviceConstructor, Selection, BACKEND_ENV};
    use attnforge_api::{Backend, ProblemDesc, Result};

    /// Names of the backends this build links (every name each linked crate registers),
    /// whether available here or not.
    pub fn linked() -> &'static [&'static str] {
        crate::link_backends();
        static LINKED: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
            let mut names: Vec<&'static str> = Vec::new();
            #[cfg(feature = "cpu")]
            names.extend_from_slice(attnforge_cpu::NAMES);
            #[cfg(feature = "hip-core")]
            names.extend_from_slice(attnforge_hip::NAMES);
            names
        });
        &LINKED
    }

    /// Every registered name, sorted.
    pub fn names() -> Vec<String> {
        crate::link_backends();
        attnforge_api::registry::names()
    }

    /// Every registered backend with its availability, highest priority first.
    pub fn list() -> Vec<BackendInfo> {
        crate::link_backends();
        attnforge_api::registry::list()
    }

    /// The shared instance of backend `name`.
    pub fn get(name: &str) -> Result<Backend> {
        crate::link_backends();
        attnforge_api::registry::get(name)
    }

    /// Devices backend `name` can run on (1 for host backends, 0 for a GPU backend without a
    /// GPU).
    pub fn device_count(name: &str) -> Result<usize> {
        crate::link_backends();
        attnforge_api::registry::device_count(name)
    }

    /// The shared instance of backend `name` on device `ordinal` (see
    /// [`attnforge_api::registry::get_on`]).
    pub fn get_on(name: &str, ordinal: usize) -> Result<Backend> {
        crate::link_backends();
        attnforge_api::registry::get_on(name, ordinal)
    }

    /// A new instance of backend `name` on device `ordinal`, with its own stream (see
    /// [`attnforge_api::registry::create_on`]).
    pub fn create_on(name: &str, ordinal: usize) -> Result<Backend> {
        crate::link_backends();
        attnforge_api::registry::create_on(name, ordinal)
    }

    /// Picks a backend for `problem` (`ATTNFORGE_BACKEND` overrides).
    pub fn select(problem: &ProblemDesc) -> Result<Selection> {
        crate::link_backends();
        attnforge_api::registry::select(problem)
    }

    /// [`select_with`] on device `ordinal` (see [`attnforge_api::registry::select_on`]).
    pub fn select_on(problem: &ProblemDesc, forced: Option<&str>, ordinal: usize) -> Result<Selection> {
        crate::link_backends();
        attnforge_api::registry::select_on(problem, forced, ordinal)
    }

    /// [`select`] with an explicit override instead of the environment.
    pub fn select_with(problem: &ProblemDesc, forced: Option<&str>) -> Result<Selection> {
        crate::link_backends();
        attnforge_api::registry::select_with(problem, forced)
    }
}

/// References each enabled backend crate so the linker keeps its `inventory` registration
/// (an unreferenced crate's submissions can be dropped: inventory#7).
fn link_backends() {
    #[cfg(feature = "cpu")]
    attnforge_cpu::link();
    #[cfg(feature = "hip-core")]
    attnforge_hip::link();
}
