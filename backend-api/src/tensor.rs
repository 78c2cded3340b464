//! Tensor handles over backend-owned storage.

use std::any::Any;
use std::fmt;

use crate::{DType, Device, Error, Result};

/// Backend-owned memory behind a [`Tensor`] or a KV cache. A backend downcasts it to its own
/// type through [`Storage::as_any`]; storage of another backend does not downcast, and the
/// backend answers with [`crate::Error::WrongDevice`].
///
/// Every op checks [`Storage::byte_len`] (and [`Storage::dtype`], where the storage knows it)
/// against the shape and dtype it is used with before touching the memory, so a tensor or
/// cache assembled from storage that is too small or holds another dtype gets a typed error on
/// every backend, never an out-of-bounds access.
pub trait Storage: Any + Send + Sync + fmt::Debug {
    /// For downcasting to the backend's concrete type.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the backend's concrete type, mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Bytes the storage holds, counted in its dtype's layout: elements held x the dtype's size
    /// (a storage that keeps f16 values widened to f32 still reports 2 bytes per element). A KV
    /// cache's storage holds two pools (K and V): the bytes of the smaller one.
    fn byte_len(&self) -> usize;
    /// (optional) The element type the bytes hold, when the storage knows it. Default: `None`
    /// (untyped bytes; only the length is checked). A storage whose physical layout is not the
    /// dtype's own must report it, or a tensor re-assembled around it under another dtype
    /// could pass the length check.
    fn dtype(&self) -> Option<DType> {
        None
    }
}

/// Bytes of `shape` elements of `dtype`, or an error if that does not fit an allocation
/// (`isize::MAX` bytes).
pub(crate) fn checked_bytes(shape: &[usize], dtype: DType) -> Result<usize> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Error::InvalidArgument(format!("tensor shape {shape:?} of {dtype} is too large to address")))
}

/// Checks that `storage` can back `bytes` bytes of `dtype` for `what`.
pub(crate) fn check_storage(what: &str, storage: &dyn Storage, bytes: usize, dtype: DType) -> Result<()> {
    if let Some(have) = storage.dtype().filter(|&d| d != dtype) {
        return Err(Error::DtypeMismatch { what: format!("{what} (its storage)"), expected: dtype, got: have });
    }
    if storage.byte_len() < bytes {
        return Err(Error::StorageTooSmall { what: what.to_string(), needed: bytes, got: storage.byte_len() });
    }
    Ok(())
}

/// A dense, row-major tensor on one device. Created by a backend ([`crate::Backend::upload`],
/// [`crate::Backend::alloc`]); owns its storage and frees it when dropped. Not `Clone`: each
/// tensor has one owner, so ops that write a tensor take `&mut`.
#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    storage: Box<dyn Storage>,
}

impl Tensor {
    /// Wraps backend storage (for backend implementors). Errors when the shape's byte size
    /// overflows ([`Error::InvalidArgument`]), when the storage holds fewer bytes than the shape
    /// needs ([`Error::StorageTooSmall`]) or another dtype ([`Error::DtypeMismatch`]).
    pub fn from_storage(shape: Vec<usize>, dtype: DType, device: Device, storage: Box<dyn Storage>) -> Result<Self> {
        let bytes = checked_bytes(&shape, dtype)?;
        check_storage("tensor", storage.as_ref(), bytes, dtype)?;
        Ok(Tensor { shape, dtype, device, storage })
    }

    /// Gives the storage back (for backend implementors: e.g. to view it with another shape
    /// through [`Tensor::from_storage`], which checks it again).
    pub fn into_storage(self) -> Box<dyn Storage> {
        self.storage
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements. Cannot overflow: [`Tensor::from_storage`] refused shapes whose byte
    /// size does not fit `isize`.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// `numel() * dtype().size()`.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The backend's storage, for downcasting by the backend that made it.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The backend's storage, mutably.
    pub fn storage_mut(&mut self) -> &mut dyn Storage {
        self.storage.as_mut()
    }

    /// Checks the storage against the shape and dtype again (ops call this before every use:
    /// a storage replaced through [`Tensor::storage_mut`] may have shrunk).
    pub fn check_storage(&self, what: &str) -> Result<()> {
        check_storage(what, self.storage.as_ref(), self.byte_len(), self.dtype)
    }
}
