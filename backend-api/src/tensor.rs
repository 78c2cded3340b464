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
    /// (optional) Where the bytes sit in memory that other storage may share: views into one
    /// buffer ([`crate::Backend::view`], an engine's fused QKV projection) report the same
    /// allocation. The API uses it to refuse an output that overlaps an input it is computed
    /// from. Default: `None` (memory of its own, shared with nothing).
    fn region(&self) -> Option<Region> {
        None
    }
}

/// Where a storage's first byte lies in memory other storage may share (see
/// [`Storage::region`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Identity of the underlying allocation (e.g. its base address): storage of the same
    /// allocation reports the same value.
    pub alloc: usize,
    /// Byte offset of the storage's first byte in that allocation.
    pub offset: usize,
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

/// A row-major tensor on one device whose outermost (token) dimension may be strided: row `i`
/// starts `i * row_stride()` elements after row 0 and holds the inner dimensions densely, so q,
/// k and v can be views into one fused QKV projection buffer `[tokens, (H + 2 Hkv) D]`.
/// Created by a backend ([`crate::Backend::upload`], [`crate::Backend::alloc`],
/// [`crate::Backend::view`], or a backend's own constructor over caller memory); owns its
/// storage handle and releases it when dropped. Not `Clone`: ops that write a tensor take
/// `&mut`.
#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    row_stride: usize,
    dtype: DType,
    device: Device,
    storage: Box<dyn Storage>,
}

impl Tensor {
    /// Wraps backend storage as a dense tensor (for backend implementors). Errors when the
    /// shape's byte size overflows ([`Error::InvalidArgument`]), when the storage holds fewer
    /// bytes than the shape needs ([`Error::StorageTooSmall`]) or another dtype
    /// ([`Error::DtypeMismatch`]).
    pub fn from_storage(shape: Vec<usize>, dtype: DType, device: Device, storage: Box<dyn Storage>) -> Result<Self> {
        let row = shape.iter().skip(1).product();
        Self::from_storage_strided(shape, row, dtype, device, storage)
    }

    /// [`Tensor::from_storage`] with rows `row_stride` elements apart (`>=` the product of the
    /// inner dimensions, else [`Error::InvalidArgument`]); the storage must hold
    /// `(rows - 1) * row_stride + row` elements.
    pub fn from_storage_strided(shape: Vec<usize>, row_stride: usize, dtype: DType, device: Device, storage: Box<dyn Storage>) -> Result<Self> {
        checked_bytes(&shape, dtype)?;
        let row: usize = shape.iter().skip(1).product();
        if shape.is_empty() && row_stride != 1 || !shape.is_empty() && row_stride < row {
            return Err(Error::InvalidArgument(format!("row stride {row_stride} is smaller than a row of shape {shape:?} ({row} elements)")));
        }
        let bytes = span(&shape, row_stride)
            .checked_mul(dtype.size())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor shape {shape:?} with row stride {row_stride} is too large to address")))?;
        check_storage("tensor", storage.as_ref(), bytes, dtype)?;
        Ok(Tensor { shape, row_stride, dtype, device, storage })
    }

    /// Elements between the starts of consecutive rows (outermost dimension).
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Elements of one row: the product of the inner dimensions.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Whether rows are packed (`row_stride() == row_len()`, or at most one row).
    pub fn is_contiguous(&self) -> bool {
        self.row_stride == self.row_len() || self.shape.first().is_some_and(|&n| n <= 1)
    }

    /// Elements from the first to one past the last element: `(rows - 1) * row_stride + row`.
    pub fn span(&self) -> usize {
        span(&self.shape, self.row_stride)
    }

    /// Element offsets (from the tensor's first element) of the start of every row.
    pub fn row_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.shape.first().copied().unwrap_or(1)).map(move |i| i * self.row_stride)
    }

    /// Whether `self` and `other` may share an element: both in one allocation (see
    /// [`Storage::region`]) with intersecting elements. Exact for views of one row stride
    /// (the fused QKV case); conservative (byte ranges) otherwise.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        let (Some(a), Some(b)) = (self.storage.region(), other.storage.region()) else {
            return false;
        };
        if a.alloc != b.alloc || self.numel() == 0 || other.numel() == 0 {
            return false;
        }
        let (sa, sb) = (self.dtype.size(), other.dtype.size());
        let (a0, a1) = (a.offset, a.offset + self.span() * sa);
        let (b0, b1) = (b.offset, b.offset + other.span() * sb);
        if a1 <= b0 || b1 <= a0 {
            return false;
        }
        // Same row stride in bytes: columns are arcs on a circle of one stride.
        let (ra, rb) = (self.row_stride * sa, other.row_stride * sb);
        if ra == rb && ra > 0 && self.shape.len() > 1 && other.shape.len() > 1 {
            let (ca, wa) = (a.offset % ra, self.row_len() * sa);
            let (cb, wb) = (b.offset % rb, other.row_len() * sb);
            let inside = |c: usize, start: usize, w: usize| (c + ra - start) % ra < w;
            return inside(ca, cb, wb) || inside(cb, ca, wa);
        }
        true
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

    /// Checks the storage against the shape, row stride and dtype again (ops call this before
    /// every use: a storage replaced through [`Tensor::storage_mut`] may have shrunk).
    pub fn check_storage(&self, what: &str) -> Result<()> {
        check_storage(what, self.storage.as_ref(), self.span() * self.dtype.size(), self.dtype)
    }
}

/// Elements from the first to one past the last of `shape` with rows `row_stride` apart
/// (saturating: the caller checks the byte size).
fn span(shape: &[usize], row_stride: usize) -> usize {
    let row: usize = shape.iter().skip(1).product();
    match shape.first() {
        None => 1,
        Some(0) => 0,
        Some(&n) => (n - 1).saturating_mul(row_stride).saturating_add(row),
    }
}
