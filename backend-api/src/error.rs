//! The one error type of attnforge. Every variant says what was wrong and what to do about it.

use crate::{DType, Device};

/// Shorthand for `Result<T, attnforge::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong across the public API. Invalid input is reported here, never by
/// a panic; the conformance suite checks that every backend reports the same variant as the
/// reference for the same invalid input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor's shape does not match what the op needs.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which argument.
        what: String,
        /// The shape the op needs.
        expected: Vec<usize>,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// A tensor's dtype differs from the problem's dtype (all of Q, K, V, output and cache share one).
    #[error("dtype mismatch for {what}: expected {expected}, got {got}")]
    DtypeMismatch {
        /// Which argument.
        what: String,
        /// The dtype the op needs.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// A tensor or cache lives on another device than the backend it was passed to.
    #[error("{what} lives on {got}, but backend `{backend}` runs on {expected}: upload it through this backend")]
    WrongDevice {
        /// Which argument.
        what: String,
        /// The backend's name.
        backend: String,
        /// The backend's device.
        expected: Device,
        /// The argument's device.
        got: Device,
    },
    /// head_dim must be even (RoPE rotates pairs) and non-zero.
    #[error("head_dim {head_dim} is odd or zero: RoPE and the kernels need an even head_dim")]
    OddHeadDim {
        /// The offending head_dim.
        head_dim: usize,
    },
    /// rotary_dim must be even, non-zero and at most head_dim.
    #[error("rotary_dim {rotary_dim} is invalid for head_dim {head_dim}: it must be even, > 0 and <= head_dim")]
    InvalidRotaryDim {
        /// The offending rotary_dim.
        rotary_dim: usize,
        /// The head_dim it was checked against.
        head_dim: usize,
    },
    /// A position id is at or past the RoPE configuration's max_position.
    #[error("position {position} of token {token} is >= max_position {max_position}: raise RopeConfig::max_position")]
    PositionOutOfRange {
        /// Token index (row of Q/K).
        token: usize,
        /// The position id.
        position: usize,
        /// The configured limit.
        max_position: usize,
    },
    /// An append would write past a sequence's capacity (contiguous) or past its pages (paged).
    #[error("KV cache overflow for sequence {seq}: {needed} tokens needed, room for {capacity}")]
    KvCacheOverflow {
        /// Sequence index in the cache.
        seq: usize,
        /// Tokens the sequence would hold after the append.
        needed: usize,
        /// Tokens its capacity or page table has room for.
        capacity: usize,
    },
    /// A page table names a page outside the pool or one page twice, or a fork names a spare
    /// page that is in use.
    #[error("page table of sequence {seq}: page {page} is out of range, repeated, or (as a fork's spare page) in use (pool of {num_pages} pages)")]
    PageTableOutOfRange {
        /// Sequence index in the cache.
        seq: usize,
        /// The offending page id.
        page: usize,
        /// Number of pages in the pool.
        num_pages: usize,
    },
    /// num_heads must be a positive multiple of num_kv_heads (MHA, GQA, MQA).
    #[error("num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")]
    HeadsNotDivisible {
        /// Query heads.
        num_heads: usize,
        /// Key/value heads.
        num_kv_heads: usize,
    },
    /// A batch with no sequences, or a sequence with no new tokens.
    #[error("empty batch: {detail}")]
    EmptyBatch {
        /// What was empty.
        detail: String,
    },
    /// A sequence has more new query tokens than keys after the append.
    #[error("sequence {seq}: q_len {q_len} > kv_len {kv_len} (kv_len counts the new tokens too)")]
    QLenExceedsKvLen {
        /// Batch entry.
        seq: usize,
        /// New tokens.
        q_len: usize,
        /// Keys visible after the append.
        kv_len: usize,
    },
    /// An argument that is malformed in some other way (a sequence id outside the cache, a
    /// non-finite RoPE theta, a zero-sized dimension, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot run this problem. Each reason names one unmet requirement.
    #[error("backend `{backend}` does not support {op}: {}", reasons.join("; "))]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// The op asked for.
        op: String,
        /// One human-readable reason per unmet requirement.
        reasons: Vec<String>,
    },
    /// The backend is registered but cannot be created here (no GPU, no driver, built without a
    /// kernel compiler).
    #[error("backend `{backend}` is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: String,
        /// Why it cannot be created.
        reason: String,
    },
    /// No backend of that name is registered.
    #[error("no backend named `{name}`; known backends: {}", known.join(", "))]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// Every registered name.
        known: Vec<String>,
    },
    /// A device ordinal past the devices a backend sees ([`crate::registry::get_on`],
    /// [`crate::registry::create_on`]).
    #[error("backend `{backend}` has no device {ordinal}: it sees {count}")]
    NoSuchDevice {
        /// The backend asked for.
        backend: String,
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices it sees.
        count: usize,
    },
    /// A GPU tensor or cache made by another instance of a backend on the same device, which
    /// runs on another stream: work on it would not be ordered ([`crate::registry::create_on`]).
    #[error("{what} was made by another instance of a GPU backend on this device (another stream); backend `{backend}` orders its work on its own stream: make it with this instance")]
    WrongInstance {
        /// Which argument.
        what: String,
        /// The backend asked to use it.
        backend: String,
    },
    /// A tensor's or cache's storage holds fewer bytes than its shape and dtype need (a tensor
    /// assembled from another tensor's storage, say). Nothing was read or written.
    #[error("storage of {what} holds {got} bytes, its shape and dtype need {needed}")]
    StorageTooSmall {
        /// Which argument.
        what: String,
        /// Bytes the shape and dtype need.
        needed: usize,
        /// Bytes the storage holds.
        got: usize,
    },
    /// An allocation failed: device memory, or host memory for metadata.
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated, and where.
        what: String,
        /// Bytes asked for.
        bytes: usize,
    },
    /// The device or its driver reported an error.
    #[error("device error {code}: {message}")]
    Device {
        /// The driver's status code.
        code: i64,
        /// The driver's message, with the call that failed.
        message: String,
    },
}

impl Error {
    /// A short stable name of the variant (`"ShapeMismatch"`, ...), for reports and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ShapeMismatch { .. } => "ShapeMismatch",
            Error::DtypeMismatch { .. } => "DtypeMismatch",
            Error::WrongDevice { .. } => "WrongDevice",
            Error::OddHeadDim { .. } => "OddHeadDim",
            Error::InvalidRotaryDim { .. } => "InvalidRotaryDim",
            Error::PositionOutOfRange { .. } => "PositionOutOfRange",
            Error::KvCacheOverflow { .. } => "KvCacheOverflow",
            Error::PageTableOutOfRange { .. } => "PageTableOutOfRange",
            Error::HeadsNotDivisible { .. } => "HeadsNotDivisible",
            Error::EmptyBatch { .. } => "EmptyBatch",
            Error::QLenExceedsKvLen { .. } => "QLenExceedsKvLen",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::Unsupported { .. } => "Unsupported",
            Error::BackendUnavailable { .. } => "BackendUnavailable",
            Error::UnknownBackend { .. } => "UnknownBackend",
            Error::NoSuchDevice { .. } => "NoSuchDevice",
            Error::WrongInstance { .. } => "WrongInstance",
            Error::StorageTooSmall { .. } => "StorageTooSmall",
            Error::OutOfMemory { .. } => "OutOfMemory",
            Error::Device { .. } => "Device",
        }
    }

    pub(crate) fn shape(what: &str, expected: &[usize], got: &[usize]) -> Self {
        Error::ShapeMismatch { what: what.into(), expected: expected.to_vec(), got: got.to_vec() }
    }
}
