//! The one module of attnforge with `unsafe` and FFI: device context, stream, buffers, module
//! loading, typed kernel launches and timing events, for both vendors:
//! - NVIDIA (`cuda.rs`): the CUDA driver API through `cudarc`, loaded dynamically, so nothing
//!   CUDA is needed to build;
//! - AMD (`rocm.rs`, feature `rocm`): the HIP runtime through `hip-sys`, which links
//!   `libamdhip64` (ROCm must be installed to build with the feature).
//!
//! Everything above this module is safe Rust and vendor-neutral: it sees one [`Gpu`] and
//! [`DeviceBuffer`]s with device addresses as integers. Every driver status becomes
//! `Error::Device` naming the call that failed.
#![allow(unsafe_code)]

mod cuda;
#[cfg(feature = "rocm")]
mod rocm;

use backend_api::{Device, Error, Result};

/// Marks a `#[repr(C)]` parameter struct as passable by value to a kernel.
///
/// # Safety
/// The type must be `#[repr(C)]`, `Copy`, contain only integers, floats and device addresses,
/// and match the layout of the kernel's parameter struct field for field.
pub unsafe trait KernelArgs: Copy {}

/// Which vendor's runtime drives the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// CUDA driver API (kernels from nvcc).
    Nvidia,
    /// HIP runtime (kernels from hipcc).
    Amd,
}

enum Imp {
    Cuda(cuda::Gpu),
    #[cfg(feature = "rocm")]
    Rocm(rocm::Gpu),
}

/// An opened GPU: one stream, the embedded kernel modules, timing events.
pub struct Gpu {
    imp: Imp,
    /// Device name as the driver reports it.
    pub name: String,
    /// Streaming multiprocessors (NVIDIA) or compute units (AMD).
    pub sm_count: u32,
    /// Which runtime drives it.
    pub vendor: Vendor,
    /// Lanes of a warp (NVIDIA: 32) or wavefront (AMD: 64 on CDNA, 32 on RDNA).
    pub warp_size: u32,
    /// Whether the matrix-core kernels run on matrix instructions here: NVIDIA (every embedded
    /// architecture is sm_80+) and AMD CDNA (wave64: gfx90a is the CDNA target built). RDNA
    /// (gfx1030, wave32) has no matrix cores; its f16/bf16 attention takes the vector kernels.
    pub matrix_cores: bool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, {:?}, {} SMs/CUs)", self.name, self.vendor, self.sm_count)
    }
}

#[derive(Debug)]
enum BufImp {
    Cuda(cuda::DeviceBuffer),
    #[cfg(feature = "rocm")]
    Rocm(rocm::DeviceBuffer),
}

/// Device memory, freed (stream-ordered) when dropped.
#[derive(Debug)]
pub struct DeviceBuffer(BufImp);

impl DeviceBuffer {
    /// Device address of the first byte.
    pub fn addr(&self) -> u64 {
        match &self.0 {
            BufImp::Cuda(b) => b.addr(),
            #[cfg(feature = "rocm")]
            BufImp::Rocm(b) => b.addr(),
        }
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            BufImp::Cuda(b) => b.len(),
            #[cfg(feature = "rocm")]
            BufImp::Rocm(b) => b.len(),
        }
    }
    /// True for a zero-byte buffer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn foreign_buffer() -> Error {
    Error::Device { code: -1, message: "a device buffer of another runtime was passed to this GPU".into() }
}

/// Dispatches to the vendor runtime, mapping buffers in and out.
macro_rules! with_imp {
    ($self:ident, $g:ident => $body:expr) => {
        match &$self.imp {
            Imp::Cuda($g) => $body,
            #[cfg(feature = "rocm")]
            Imp::Rocm($g) => $body,
        }
    };
}

impl Gpu {
    /// Opens GPU `ordinal` with the first runtime that finds one (NVIDIA, then AMD when built
    /// with the `rocm` feature), or says why none could: no kernels built, no driver, no device.
    pub fn open(ordinal: usize) -> std::result::Result<Gpu, String> {
        let mut why = Vec::new();
        match cuda::Gpu::open(ordinal) {
            Ok(g) => {
                let (name, sm_count) = (g.name.clone(), g.sm_count);
                return Ok(Gpu { imp: Imp::Cuda(g), name, sm_count, vendor: Vendor::Nvidia, warp_size: 32, matrix_cores: true });
            }
            Err(e) => why.push(format!("NVIDIA: {e}")),
        }
        #[cfg(feature = "rocm")]
        match rocm::Gpu::open(ordinal) {
            Ok(g) => {
                let (name, sm_count, warp_size) = (g.name.clone(), g.sm_count, g.warp_size);
                return Ok(Gpu { imp: Imp::Rocm(g), name, sm_count, vendor: Vendor::Amd, warp_size, matrix_cores: warp_size == 64 });
            }
            Err(e) => why.push(format!("AMD: {e}")),
        }
        #[cfg(not(feature = "rocm"))]
        why.push("AMD: built without the `rocm` feature (cargo build --features rocm, needs ROCm's libamdhip64)".into());
        Err(why.join("; "))
    }

    /// The API's device id for this GPU.
    pub fn device(&self) -> Device {
        match &self.imp {
            Imp::Cuda(g) => Device::cuda(g.ordinal()),
            #[cfg(feature = "rocm")]
            Imp::Rocm(g) => Device::rocm(g.ordinal()),
        }
    }

    /// `bytes` of uninitialised device memory (at least one byte is allocated).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        match &self.imp {
            Imp::Cuda(g) => g.alloc(bytes).map(|b| DeviceBuffer(BufImp::Cuda(b))),
            #[cfg(feature = "rocm")]
            Imp::Rocm(g) => g.alloc(bytes).map(|b| DeviceBuffer(BufImp::Rocm(b))),
        }
    }

    /// A new buffer holding `data`. Small uploads (per-call metadata) go through pinned staging
    /// and do not wait for queued work.
    pub fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        match &self.imp {
            Imp::Cuda(g) => g.upload(data).map(|b| DeviceBuffer(BufImp::Cuda(b))),
            #[cfg(feature = "rocm")]
            Imp::Rocm(g) => g.upload(data).map(|b| DeviceBuffer(BufImp::Rocm(b))),
        }
    }

    /// Copies `data` to `buf` at byte `offset`.
    pub fn write(&self, buf: &mut DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        match (&self.imp, &mut buf.0) {
            (Imp::Cuda(g), BufImp::Cuda(b)) => g.write(b, offset, data),
            #[cfg(feature = "rocm")]
            (Imp::Rocm(g), BufImp::Rocm(b)) => g.write(b, offset, data),
            #[allow(unreachable_patterns)]
            _ => Err(foreign_buffer()),
        }
    }

    /// The first `len` bytes of the buffer on the host (waits for queued work).
    pub fn read(&self, buf: &DeviceBuffer, len: usize) -> Result<Vec<u8>> {
        match (&self.imp, &buf.0) {
            (Imp::Cuda(g), BufImp::Cuda(b)) => g.read(b, len),
            #[cfg(feature = "rocm")]
            (Imp::Rocm(g), BufImp::Rocm(b)) => g.read(b, len),
            #[allow(unreachable_patterns)]
            _ => Err(foreign_buffer()),
        }
    }

    /// Device-to-device copy of `bytes` (the bandwidth ceiling benchmarks compare against).
    pub fn copy(&self, dst: &mut DeviceBuffer, src: &DeviceBuffer, bytes: usize) -> Result<()> {
        if bytes > dst.len() || bytes > src.len() {
            return Err(Error::InvalidArgument(format!("device copy of {bytes} bytes between buffers of {} and {}", src.len(), dst.len())));
        }
        match (&self.imp, &mut dst.0, &src.0) {
            (Imp::Cuda(g), BufImp::Cuda(d), BufImp::Cuda(s)) => g.copy(d, s, bytes),
            #[cfg(feature = "rocm")]
            (Imp::Rocm(g), BufImp::Rocm(d), BufImp::Rocm(s)) => g.copy(d, s, bytes),
            #[allow(unreachable_patterns)]
            _ => Err(foreign_buffer()),
        }
    }

    /// Waits for queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        with_imp!(self, g => g.synchronize())
    }

    /// Launches kernel `name` with one by-value parameter struct.
    pub fn launch<P: KernelArgs>(&self, name: &str, grid: (u32, u32, u32), block: u32, params: P) -> Result<()> {
        self.launch_shared(name, grid, block, 0, params)
    }

    /// [`Gpu::launch`] with `shared` bytes of dynamic shared memory (past 48 KiB the kernel is
    /// opted in on NVIDIA; AMD allows 64 KiB per block).
    pub fn launch_shared<P: KernelArgs>(&self, name: &str, grid: (u32, u32, u32), block: u32, shared: u32, params: P) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        with_imp!(self, g => g.launch(name, grid, block, shared, params))
    }

    /// Runs `f` `reps` times between two device events; milliseconds per run.
    pub fn time(&self, reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
        with_imp!(self, g => g.time(reps, f))
    }
}

/// Declares parameter structs as kernel arguments (see [`KernelArgs`] for the contract).
macro_rules! kernel_args {
    ($($t:ty),*) => {$(
        // SAFETY: #[repr(C)] plain data mirroring the kernel's parameter struct (see its file).
        unsafe impl KernelArgs for $t {}
    )*};
}
kernel_args!(
    crate::ops::rope::RopeParams,
    crate::ops::kv_append::AppendParams,
    crate::ops::kv_append::FillParams,
    crate::ops::attention::AttnParams,
    crate::ops::attention::MergeParams,
    crate::ops::attention::SepParams
);
