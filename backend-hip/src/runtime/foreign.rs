//! Engine-owned resources handed to attnforge: a stream and device memory the caller allocated.
//! Their `unsafe` constructors carry the safety contract once; the backend's safe methods that
//! take them (`HipBackend::open_on_stream`, `HipBackend::borrow`) then check what can be checked
//! (device, length, alignment) and never free them.

use std::any::Any;
use std::ffi::c_void;

/// A caller's GPU stream (`CUstream` on NVIDIA, `hipStream_t` on AMD) for a backend instance to
/// queue its work on, ordered with the caller's own work on that stream.
pub struct ForeignStream {
    pub(crate) raw: u64,
    pub(crate) keep: Option<Box<dyn Any + Send + Sync>>,
    /// The device it belongs to, where known (cudarc streams): another device's is refused.
    pub(crate) ordinal: Option<usize>,
}

impl std::fmt::Debug for ForeignStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForeignStream({:#x})", self.raw)
    }
}

impl ForeignStream {
    /// A raw stream handle.
    ///
    /// # Safety
    /// `stream` is a live, non-NULL stream of the device the backend will be opened on (for
    /// NVIDIA, in that device's primary context: the one the runtime API and cudarc use), and it
    /// stays alive as long as the backend instance opened on it and every tensor that instance
    /// allocates. attnforge never destroys it.
    pub unsafe fn from_raw(stream: *mut c_void) -> ForeignStream {
        ForeignStream { raw: stream as usize as u64, keep: None, ordinal: None }
    }

    /// A cudarc stream (the backend keeps a clone of the `Arc`, so the stream lives as long
    /// as the instance). Safe: cudarc's streams live in their device's primary context.
    #[cfg(feature = "cudarc")]
    pub fn from_cudarc(stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> ForeignStream {
        ForeignStream { raw: stream.cu_stream() as usize as u64, keep: Some(Box::new(stream.clone())), ordinal: Some(stream.context().ordinal()) }
    }

    /// The device ordinal a cudarc stream belongs to.
    #[cfg(feature = "cudarc")]
    pub fn cudarc_ordinal(stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> usize {
        stream.context().ordinal()
    }
}

/// Device memory the caller allocated: `len` bytes at device address `ptr`, to view as a tensor
/// ([`crate::HipBackend::borrow`]). attnforge never frees it.
#[derive(Debug, Clone)]
pub struct ForeignMemory {
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    /// Set for memory borrowed for a Rust lifetime ([`crate::Borrowed`]).
    pub(crate) lease: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    pub(crate) read_only: bool,
}

impl ForeignMemory {
    /// # Safety
    /// `ptr..ptr + len` is device memory that stays allocated as long as the tensor made from
    /// it and every op queued on it; nothing else writes it while such an op may run unless
    /// ordered with the backend's stream (the engine's own stream, with
    /// [`ForeignStream`], orders it). The view may alias other views: ops refuse an output that
    /// overlaps an input only where they can see both.
    pub unsafe fn from_raw(ptr: u64, len: usize) -> ForeignMemory {
        ForeignMemory { ptr, len, lease: None, read_only: false }
    }

    /// Memory of a cudarc slice or view for as long as `lease` holds (the caller's
    /// [`crate::Borrowed`] ends it when the borrow ends). Its address comes from cudarc's own
    /// accessor on the slice's stream, which orders it after the slice's earlier writes (and,
    /// writable, reads).
    #[cfg(feature = "cudarc")]
    pub(crate) fn leased(ptr: u64, len: usize, lease: std::sync::Arc<std::sync::atomic::AtomicBool>, read_only: bool) -> ForeignMemory {
        ForeignMemory { ptr, len, lease: Some(lease), read_only }
    }
}
