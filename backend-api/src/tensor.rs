//! Tensor handles over backend-owned storage.

use std::any::Any;
use std::fmt;

use crate::{DType, Device};

/// Backend-owned memory behind a [`Tensor`] or a KV cache. A backend downcasts it to its own
/// type through [`Storage::as_any`]; storage of another backend does not downcast, and the
/// backend answers with [`crate::Error::WrongDevice`].
pub trait Storage: Any + Send + Sync + fmt::Debug {
    /// For downcasting to the backend's concrete type.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the backend's concrete type, mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
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
    /// Wraps backend storage. For backend implementors: the storage must hold at least
    /// `shape.iter().product()` elements of `dtype`.
    pub fn from_storage(shape: Vec<usize>, dtype: DType, device: Device, storage: Box<dyn Storage>) -> Self {
        Tensor { shape, dtype, device, storage }
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
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
}
