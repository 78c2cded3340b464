//! The one module of attnforge with `unsafe` and FFI. Three layers, as cudarc's
//! `sys` / `result` / `safe` split:
//!
//! 1. [`Driver`]: a thin, dyn-safe mapping of the vendor API with `Result`s and opaque handles:
//!    `cuda.rs` (the CUDA driver API through cudarc, loaded dynamically: nothing CUDA is needed to
//!    build), `rocm.rs` (the HIP runtime through hip-sys, feature `rocm`), and `fake.rs` (tests:
//!    an in-memory device with deferred copies, per-thread current device and injectable faults,
//!    so the logic below is tested on every CI run, AMD's included).
//! 2. [`Gpu`]: the vendor-neutral logic, written once: one non-blocking stream, zero-filled
//!    allocations, pinned staging for every host copy (staging.rs), the kernel table resolved once
//!    at load, per-device limits ([`DeviceProps`]), timing events. Every call makes the device
//!    current on the calling thread first.
//! 3. Safe, typed views ([`DevRef`], [`DevMut`], [`MetaRef`]) that only this module can turn into
//!    addresses, and typed launchers (`launch/`) that check every byte a kernel can touch against
//!    the views before the one `unsafe` raw launch ([`Gpu::launch`]).
//!
//! Nothing outside this module sees a device address, so safe code cannot make a kernel read or
//! write outside an allocation.
#![allow(unsafe_code)]

mod cuda;
#[cfg(test)]
pub(crate) mod fake;
pub mod foreign;
pub(crate) mod launch;
#[cfg(feature = "rocm")]
mod rocm;
mod staging;

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

use attnforge_api::{try_vec, DType, Device, Error, Result};

use crate::contract::{Kernel, TensorMap, Vendor};
use staging::Staging;

/// What a device can do, read from its driver when it is opened. Plans are made from these (and
/// unit-tested against the values of common parts: see `plan`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceProps {
    pub vendor: Vendor,
    /// As the driver reports it.
    pub name: String,
    /// `sm_90`, `gfx90a`, ...
    pub arch: String,
    /// Streaming multiprocessors (NVIDIA) or compute units (AMD).
    pub sm_count: usize,
    /// Lanes of a warp or wavefront.
    pub warp_size: usize,
    pub max_threads_per_block: usize,
    /// Shared memory a block may use with an opt-in (the kernel's maximum dynamic size is
    /// raised to this when the kernel is loaded).
    pub smem_per_block_optin: usize,
    /// Shared memory of one SM / CU (all resident blocks together).
    pub smem_per_sm: usize,
    /// Largest grid in x, y, z.
    pub max_grid: [u64; 3],
    /// Whether the matrix-core kernels run on matrix instructions here: NVIDIA sm_80+ and AMD
    /// CDNA (wave64). RDNA (wave32) has none; its f16/bf16 attention takes the vector kernels.
    pub matrix_cores: bool,
    /// Whether the sm_90a prefill runs here (`attention_wgmma`'s warpgroup MMA and TMA): an
    /// sm_90 device (H100, H200, GH200) and a build that compiled sm_90a code for it.
    pub wgmma: bool,
}

/// The vendor API, thinly: each call makes one driver call (or a few) and maps its status to
/// `Error::Device` naming the call (`Error::OutOfMemory` for allocations). Handles are opaque
/// integers owned by the driver. Calls that need the device current assume [`Driver::bind`] was
/// called on this thread; [`Gpu`] does that at the top of every method.
pub(crate) trait Driver: Send + Sync {
    fn props(&self) -> &DeviceProps;
    fn ordinal(&self) -> usize;
    /// Makes this device current on the calling thread (CUDA: its context; HIP: hipSetDevice).
    fn bind(&self) -> Result<()>;
    fn stream_create(&self) -> Result<u64>;
    fn stream_destroy(&self, s: u64);
    fn stream_sync(&self, s: u64) -> Result<()>;
    /// # Safety
    /// `s` is a live stream of this driver. The memory is uninitialised.
    unsafe fn malloc(&self, bytes: usize, s: u64) -> Result<u64>;
    /// # Safety
    /// `ptr` came from [`Driver::malloc`] on this driver and is freed once; work that uses it
    /// was queued on `s` (the free is stream-ordered) or has completed.
    unsafe fn free(&self, ptr: u64, s: u64);
    /// # Safety
    /// `ptr..ptr + bytes` lies in one live allocation of this device.
    unsafe fn memset(&self, ptr: u64, byte: u8, bytes: usize, s: u64) -> Result<()>;
    /// # Safety
    /// `dst..dst + bytes` lies in a live allocation; `src` points to `bytes` readable pinned bytes
    /// that stay untouched until the copy completes (an event recorded after it on `s`).
    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, s: u64) -> Result<()>;
    /// # Safety
    /// As [`Driver::htod`], with `dst` writable pinned memory that stays allocated until the
    /// copy completes.
    unsafe fn dtoh(&self, dst: *mut u8, src: u64, bytes: usize, s: u64) -> Result<()>;
    /// # Safety
    /// Both ranges lie in live allocations of this device.
    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize, s: u64) -> Result<()>;
    /// Page-locked host memory (asynchronous copies from or into it do not stage).
    fn pinned_alloc(&self, bytes: usize) -> Result<*mut u8>;
    /// # Safety
    /// `p` came from [`Driver::pinned_alloc`], is freed once, and no copy can still target it.
    unsafe fn pinned_free(&self, p: *mut u8);
    /// Free and total bytes of the device.
    fn mem_info(&self) -> Result<(usize, usize)>;
    /// The device ordinal that device address `ptr` belongs to, if the driver knows it as
    /// device memory (an engine's allocation handed in as a borrowed view).
    fn pointer_ordinal(&self, ptr: u64) -> Result<Option<usize>>;
    fn event_create(&self, timing: bool) -> Result<u64>;
    fn event_destroy(&self, e: u64);
    fn event_record(&self, e: u64, s: u64) -> Result<()>;
    /// Waits for the work before the event's last record (at once if it was never recorded).
    fn event_sync(&self, e: u64) -> Result<()>;
    fn event_elapsed_ms(&self, start: u64, end: u64) -> Result<f32>;
    /// Loads a code object; it stays loaded as long as the driver.
    /// Starts capturing the work this host thread queues on stream `s` into a graph (thread-
    /// local mode: other threads' calls are not affected).
    fn capture_begin(&self, s: u64) -> Result<()>;
    /// Ends the capture of `s` and instantiates it: an executable graph, or the error that
    /// broke the capture.
    fn capture_end(&self, s: u64) -> Result<u64>;
    /// Queues a replay of executable graph `g` on `s`.
    fn graph_launch(&self, g: u64, s: u64) -> Result<()>;
    /// Destroys an executable graph (after its replays were queued: the driver keeps it alive
    /// until they complete).
    fn graph_destroy(&self, g: u64);
    fn module_load(&self, name: &str, image: &[u8]) -> Result<u64>;
    fn function(&self, module: u64, symbol: &str) -> Result<u64>;
    /// Allows launches with up to `bytes` of dynamic shared memory.
    fn allow_dynamic_shared(&self, f: u64, bytes: usize) -> Result<()>;
    /// # Safety
    /// `f` is a function of this driver whose only parameter has the layout of the `size` bytes
    /// at `params`, and every device address in them satisfies the kernel's contract (see
    /// [`Gpu::launch`]).
    #[allow(clippy::too_many_arguments)] // the driver call's own arguments
    unsafe fn launch(&self, f: u64, grid: [u32; 3], block: u32, shared: u32, s: u64, params: *mut c_void, size: usize) -> Result<()>;
    /// Encodes a tiled tensor map (TMA) over the 16-bit `dtype` array at `addr`: three
    /// dimensions `dims` (innermost first), the byte strides of dimensions 1 and 2, boxes of
    /// `boxes` elements, 128-byte swizzle, elements outside `dims` read as zeros. Encoding reads
    /// no memory; loads through the map touch only elements inside `dims`. NVIDIA only.
    fn tensor_map(&self, addr: u64, dtype: DType, dims: [u64; 3], strides: [u64; 2], boxes: [u32; 3]) -> Result<TensorMap> {
        let _ = (addr, dtype, dims, strides, boxes);
        Err(Error::Device { code: -1, message: format!("{}: tensor maps (TMA) are NVIDIA sm_90+ only", self.props().name) })
    }
}

/// Marks a `#[repr(C)]` parameter struct of the contract as passable by value to a kernel.
///
/// # Safety
/// The type must be `#[repr(C)]`, `Copy`, contain only integers, floats, device addresses and
/// tensor maps ([`Gpu::tensor_map`]) and no padding, and match the layout of the kernel
/// parameter struct named [`KernelArgs::NAME`] (the contract's generated structs do: their
/// layout is asserted on both sides).
pub(crate) unsafe trait KernelArgs: Copy {
    /// The struct's name in af_contract.h.
    const NAME: &'static str;
}

macro_rules! kernel_args {
    ($($t:ident),*) => {$(
        // SAFETY: generated from af_contract.h with its layout asserted against the kernels'
        // (size, alignment and every offset, no implicit padding).
        unsafe impl KernelArgs for crate::contract::$t {
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
crate::contract::with_param_structs!(kernel_args);

/// A device with its kernels loaded: the driver and the kernel table, shared by every stream
/// ([`Gpu`]) opened on it, so modules are loaded once per device.
pub(crate) struct Loaded {
    drv: Box<dyn Driver>,
    kernels: HashMap<Kernel, u64>,
    device: Device,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loaded({})", self.device)
    }
}

/// One stream on a loaded device, with its pinned staging. Dropped when the last [`Gpu`] or
/// [`DeviceBuffer`] that uses it goes.
struct Inner {
    dev: Arc<Loaded>,
    stream: u64,
    /// Created here (destroyed on drop), or the caller's.
    own_stream: bool,
    /// What keeps a caller's stream alive (e.g. its cudarc `Arc<CudaStream>`).
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
    staging: Staging,
    /// While a capture runs on this stream: the buffers its launches use ([`Gpu::keep`]), for
    /// the graph to hold.
    captured: std::sync::Mutex<Option<Vec<Arc<DeviceBuffer>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let drv = self.dev.drv.as_ref();
        let drained = drv.bind().and_then(|_| drv.stream_sync(self.stream)).is_ok();
        self.staging.release(drv, drained);
        if drained && self.own_stream {
            drv.stream_destroy(self.stream);
        }
    }
}

/// A GPU as one backend instance uses it: a loaded device and a non-blocking stream of its own
/// (never the legacy NULL stream), with pinned staging. Clones share the stream.
#[derive(Clone)]
pub(crate) struct Gpu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.props();
        write!(f, "Gpu({}, {}, {} SMs/CUs)", p.name, p.arch, p.sm_count)
    }
}

/// GPUs visible to the runtimes this build has (NVIDIA, and AMD with the `rocm` feature) and
/// that have kernels embedded; 0 without a driver.
pub(crate) fn device_count() -> usize {
    let n = cuda::CudaDriver::device_count();
    #[cfg(feature = "rocm")]
    if n == 0 {
        return rocm::HipDriver::device_count();
    }
    n
}

impl Gpu {
    /// Loads GPU `ordinal` with the first runtime that finds one (NVIDIA, then AMD when built
    /// with the `rocm` feature), or says why none could: no kernels built, no driver, no device.
    pub fn load(ordinal: usize) -> std::result::Result<Arc<Loaded>, String> {
        let mut why = Vec::new();
        match cuda::CudaDriver::open(ordinal) {
            Ok(d) => return Gpu::load_driver(Box::new(d), crate::kernels::NVIDIA.unwrap_or(&[])),
            Err(e) => why.push(format!("NVIDIA: {e}")),
        }
        #[cfg(feature = "rocm")]
        match rocm::HipDriver::open(ordinal) {
            Ok(d) => return Gpu::load_driver(Box::new(d), crate::kernels::AMD.unwrap_or(&[])),
            Err(e) => why.push(format!("AMD: {e}")),
        }
        #[cfg(not(feature = "rocm"))]
        why.push("AMD: built without the `rocm` feature (cargo build --features rocm, needs ROCm's libamdhip64)".into());
        Err(why.join("; "))
    }

    /// Every kernel of [`Kernel::all`] resolved once from `images` (module name, code object)
    /// into the kernel table. A missing kernel is an error naming it (a build that does not
    /// match this crate), never a lookup at launch time.
    pub(crate) fn load_driver(drv: Box<dyn Driver>, images: &[(&str, &[u8])]) -> std::result::Result<Arc<Loaded>, String> {
        let s = |e: Error| e.to_string();
        drv.bind().map_err(s)?;
        let mut modules = HashMap::new();
        for (name, image) in images {
            modules.insert(*name, drv.module_load(name, image).map_err(s)?);
        }
        let mut kernels = HashMap::new();
        for k in Kernel::all() {
            let sym = k.symbol();
            let m = modules.get(k.module()).ok_or_else(|| format!("kernel module {} is not embedded in this build", k.module()))?;
            let f = drv.function(*m, &sym).map_err(|e| format!("kernel {sym} is missing from module {} ({e}): the embedded kernels do not match this build", k.module()))?;
            if k.dynamic_shared() {
                drv.allow_dynamic_shared(f, drv.props().smem_per_block_optin).map_err(s)?;
            }
            kernels.insert(k, f);
        }
        let device = match drv.props().vendor {
            Vendor::Nvidia => Device::cuda(drv.ordinal()),
            Vendor::Amd => Device::rocm(drv.ordinal()),
        };
        Ok(Arc::new(Loaded { drv, kernels, device }))
    }

    /// A new non-blocking stream (with its staging) on a loaded device.
    pub fn on(dev: &Arc<Loaded>) -> Result<Gpu> {
        let drv = dev.drv.as_ref();
        drv.bind()?;
        let stream = drv.stream_create()?;
        let staging = match Staging::new(drv) {
            Ok(st) => st,
            Err(e) => {
                drv.stream_destroy(stream);
                return Err(e);
            }
        };
        Ok(Gpu { inner: Arc::new(Inner { dev: dev.clone(), stream, own_stream: true, _keep: None, staging, captured: Default::default() }) })
    }

    /// A `Gpu` on the caller's stream (an engine's stream: every op is queued on it, ordered
    /// with the engine's own work; dropping the `Gpu` waits for the stream, then leaves it to
    /// the caller, who also keeps it alive: [`foreign::ForeignStream`]'s contract).
    pub fn on_foreign(dev: &Arc<Loaded>, stream: foreign::ForeignStream) -> Result<Gpu> {
        if stream.raw == 0 {
            return Err(Error::InvalidArgument("the legacy NULL stream is not accepted: pass a stream of your own".into()));
        }
        if let Some(o) = stream.ordinal.filter(|&o| o != dev.device.ordinal) {
            return Err(Error::WrongDevice { what: "stream".into(), backend: "this GPU".into(), expected: dev.device, got: Device { ordinal: o, ..dev.device } });
        }
        let drv = dev.drv.as_ref();
        drv.bind()?;
        let staging = Staging::new(drv)?;
        Ok(Gpu { inner: Arc::new(Inner { dev: dev.clone(), stream: stream.raw, own_stream: false, _keep: stream.keep, staging, captured: Default::default() }) })
    }

    /// A view of caller memory (never freed here). Checked: not null, 16-byte aligned (the
    /// kernels' vector accesses), and device memory of this GPU as far as the driver can tell;
    /// the rest is [`foreign::ForeignMemory`]'s contract.
    pub fn borrow(&self, m: foreign::ForeignMemory) -> Result<DeviceBuffer> {
        let (ptr, len) = (m.ptr, m.len);
        if ptr == 0 || ptr % 16 != 0 {
            return Err(Error::InvalidArgument(format!("device pointer {ptr:#x} must be non-null and 16-byte aligned (the kernels load 16 bytes at a time)")));
        }
        if ptr.checked_add(len as u64).is_none() {
            return Err(Error::InvalidArgument(format!("{len} bytes at {ptr:#x} overflow the address space")));
        }
        let drv = self.drv()?;
        let dev = self.inner.dev.device;
        for at in [ptr, ptr + len.max(1) as u64 - 1] {
            match drv.pointer_ordinal(at)? {
                Some(o) if o == dev.ordinal => {}
                Some(o) => {
                    return Err(Error::WrongDevice { what: format!("borrowed memory at {ptr:#x}"), backend: "this GPU".into(), expected: dev, got: Device { ordinal: o, ..dev } })
                }
                None => return Err(Error::InvalidArgument(format!("{at:#x} is not device memory the driver knows ({len} bytes at {ptr:#x})"))),
            }
        }
        Ok(DeviceBuffer { ptr, len, owner: self.inner.clone(), borrowed: true, lease: m.lease, read_only: m.read_only })
    }

    /// The raw stream this instance queues on (to compare with a caller's).
    #[cfg_attr(not(feature = "cudarc"), allow(dead_code))]
    pub fn stream_raw(&self) -> u64 {
        self.inner.stream
    }

    /// The loaded device (to open more streams on it).
    pub fn loaded(&self) -> &Arc<Loaded> {
        &self.inner.dev
    }

    /// Whether `b` was allocated on this stream (its free, and the work on it, are ordered
    /// here).
    pub fn owns(&self, b: &DeviceBuffer) -> bool {
        // Borrowed memory is the caller's to order; any instance on its device may use it.
        Arc::ptr_eq(&self.inner, &b.owner) || (b.borrowed && Arc::ptr_eq(&self.inner.dev, &b.owner.dev))
    }

    /// Loads `drv` with `images` and opens a stream on it (tests).
    #[cfg(test)]
    pub(crate) fn with_driver(drv: Box<dyn Driver>, images: &[(&str, &[u8])]) -> std::result::Result<Gpu, String> {
        Gpu::on(&Gpu::load_driver(drv, images)?).map_err(|e| e.to_string())
    }

    /// The API's device id.
    pub fn device(&self) -> Device {
        self.inner.dev.device
    }

    /// What the device can do.
    pub fn props(&self) -> &DeviceProps {
        self.inner.dev.drv.props()
    }

    fn drv(&self) -> Result<&dyn Driver> {
        self.inner.dev.drv.bind()?;
        Ok(self.inner.dev.drv.as_ref())
    }

    /// `bytes` of device memory, zero-filled (in stream order: before any later work).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let b = self.alloc_uninit(bytes)?;
        // SAFETY: the range is the allocation just made.
        unsafe { self.inner.dev.drv.memset(b.ptr, 0, b.len, self.inner.stream) }?;
        Ok(b)
    }

    /// `bytes` of uninitialised device memory, for scratch every kernel writes before reading
    /// (crate-internal: the API's allocations are zero-filled).
    pub(crate) fn alloc_uninit(&self, bytes: usize) -> Result<DeviceBuffer> {
        let drv = self.drv()?;
        let len = bytes.max(1);
        // SAFETY: the stream is live as long as `inner`, which the buffer keeps.
        let ptr = unsafe { drv.malloc(len, self.inner.stream) }?;
        Ok(DeviceBuffer { ptr, len, owner: self.inner.clone(), borrowed: false, lease: None, read_only: false })
    }

    /// A new zero-padded buffer holding `data` (through pinned staging: returns once the bytes
    /// are staged; the copy is ordered before any later work).
    pub fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        let b = self.alloc_uninit(data.len())?;
        let n = data.len();
        self.inner.staging.upload(self.drv()?, self.inner.stream, b.ptr, data)?;
        if n < b.len {
            // SAFETY: the tail of the allocation just made.
            unsafe { self.inner.dev.drv.memset(b.ptr + n as u64, 0, b.len - n, self.inner.stream) }?;
        }
        Ok(b)
    }

    /// Int32 metadata in one upload, each part summarised (length, smallest and largest value)
    /// so launchers can check what a kernel will index with it.
    pub fn upload_meta(&self, parts: &[&[i32]]) -> Result<Meta> {
        let (bytes, summary) = meta_bytes(parts)?;
        Ok(Meta { buf: Arc::new(self.upload(&bytes)?), parts: summary })
    }

    /// [`Gpu::upload_meta`] into `buf` (a piece of a caller's workspace, [`Gpu::carve`]): the
    /// same bytes, no allocation.
    pub fn upload_meta_into(&self, parts: &[&[i32]], buf: DeviceBuffer) -> Result<Meta> {
        let (bytes, summary) = meta_bytes(parts)?;
        if bytes.len() > buf.len {
            return Err(Error::InvalidArgument(format!("{} bytes of metadata into a workspace piece of {}", bytes.len(), buf.len)));
        }
        if !bytes.is_empty() {
            self.write(buf.slice_mut(0), 0, &bytes)?;
        }
        Ok(Meta { buf: Arc::new(buf), parts: summary })
    }

    /// Bytes [`Gpu::carve`] needs for pieces of `sizes` bytes wherever the workspace starts:
    /// each piece rounded up to [`CARVE_ALIGN`], plus one alignment of slack.
    pub fn carve_bytes(sizes: &[usize]) -> usize {
        sizes.iter().map(|&n| n.max(1).next_multiple_of(CARVE_ALIGN)).sum::<usize>() + CARVE_ALIGN
    }

    /// Cuts pieces of `sizes` bytes out of `avail` bytes of `ws` from byte `start` on (a
    /// caller's workspace tensor), each at a device address that is a multiple of
    /// [`CARVE_ALIGN`]. The pieces are buffers of this stream that are never freed and share
    /// `ws`'s lease (whoever holds them keeps the workspace tensor alive). `ws` must be
    /// writable memory of this device; `StorageTooSmall` when the pieces do not fit (nothing
    /// is cut).
    pub fn carve(&self, ws: &DeviceBuffer, start: usize, avail: usize, sizes: &[usize]) -> Result<Vec<DeviceBuffer>> {
        self.check_view("workspace", ws.device())?;
        if ws.read_only || !ws.live() || start.checked_add(avail).is_none_or(|e| e > ws.len) {
            return Err(Error::InvalidArgument(format!("workspace of {avail} bytes at byte {start} of {} is not writable live memory", ws.len)));
        }
        let base = ws.ptr + start as u64;
        let mut at = (base.next_multiple_of(CARVE_ALIGN as u64) - base) as usize;
        let mut out = Vec::with_capacity(sizes.len());
        for &n in sizes {
            let len = n.max(1);
            if at + len > avail {
                return Err(Error::StorageTooSmall { what: "workspace".into(), needed: Gpu::carve_bytes(sizes), got: avail });
            }
            out.push(DeviceBuffer { ptr: base + at as u64, len, owner: self.inner.clone(), borrowed: true, lease: ws.lease.clone(), read_only: false });
            at += len.next_multiple_of(CARVE_ALIGN);
        }
        Ok(out)
    }

    /// Zero-fills `b` (stream-ordered).
    pub fn zero(&self, b: &DeviceBuffer) -> Result<()> {
        self.check_view("buffer", b.device())?;
        // SAFETY: `b` describes `b.len` bytes of this device's memory (checked above).
        unsafe { self.drv()?.memset(b.ptr, 0, b.len, self.inner.stream) }
    }

    /// Rewrites `meta` in place with `parts` of the same lengths (stream-ordered, through
    /// pinned staging: ordered after the work queued before, before the work queued after),
    /// and its summaries with them. Nothing is written when a length differs.
    pub fn rewrite_meta(&self, meta: &mut Meta, parts: &[&[i32]]) -> Result<()> {
        if parts.len() != meta.parts.len() || parts.iter().zip(&meta.parts).any(|(p, m)| p.len() != m.len) {
            return Err(Error::Device { code: -1, message: "metadata rewritten with other lengths than it was made with".into() });
        }
        if meta.buf.owner.stream != self.inner.stream || meta.buf.device() != self.device() {
            return Err(Error::Device { code: -1, message: "metadata of another stream".into() });
        }
        let mut bytes = Vec::with_capacity(meta.buf.len);
        let mut summary = Vec::with_capacity(parts.len());
        for p in parts {
            summary.push(MetaPart { offset: bytes.len(), len: p.len(), min: p.iter().copied().min().unwrap_or(0), max: p.iter().copied().max().unwrap_or(-1) });
            bytes.extend_from_slice(bytemuck::cast_slice(p));
        }
        if !bytes.is_empty() {
            self.inner.staging.upload(self.drv()?, self.inner.stream, meta.buf.ptr, &bytes)?;
        }
        meta.parts = summary;
        Ok(())
    }

    /// Captures the launches `f` queues on this GPU's stream (from this thread) into a graph.
    /// Whatever `f` returns, the capture is ended; an error of `f` or of the capture is
    /// returned and no graph is made.
    pub fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<GpuGraph> {
        let drv = self.drv()?;
        {
            let mut c = self.inner.captured.lock().unwrap_or_else(|p| p.into_inner());
            if c.is_some() {
                return Err(Error::InvalidArgument("a capture is already running on this stream".into()));
            }
            *c = Some(Vec::new());
        }
        let taken = || self.inner.captured.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        if let Err(e) = drv.capture_begin(self.inner.stream) {
            taken();
            return Err(e);
        }
        let r = f();
        let end = self.drv().and_then(|d| d.capture_end(self.inner.stream));
        let mut keep = taken();
        keep.sort_by_key(|b| Arc::as_ptr(b) as usize);
        keep.dedup_by(|a, b| Arc::ptr_eq(a, b));
        match (r, end) {
            (Ok(()), Ok(g)) => Ok(GpuGraph { exec: g, owner: self.inner.clone(), keep }),
            (Err(e), end) => {
                if let Ok(g) = end {
                    drv.graph_destroy(g);
                }
                Err(e)
            }
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Whether a graph capture is running on this stream (nothing may synchronise it then).
    #[cfg_attr(not(feature = "device-time"), allow(dead_code))]
    pub fn capturing(&self) -> bool {
        self.inner.captured.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Records `b` as used by the capture running on this stream, if any: the graph holds it
    /// until it is dropped, so a replay never touches freed memory. Every buffer a run's
    /// launches read or write passes here (tensors and pools through `storage`, a plan's
    /// buffers and RoPE table in `run`).
    pub fn keep(&self, b: &Arc<DeviceBuffer>) {
        if let Some(v) = self.inner.captured.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            v.push(b.clone());
        }
    }

    /// Copies `data` into `dst` at byte `offset` (stream-ordered, through pinned staging).
    pub fn write(&self, dst: DevMut<'_>, offset: usize, data: &[u8]) -> Result<()> {
        self.check_view("destination", dst.device)?;
        if offset.checked_add(data.len()).is_none_or(|end| end > dst.bytes) {
            return Err(Error::InvalidArgument(format!("device write of {} bytes at {offset} into {} bytes", data.len(), dst.bytes)));
        }
        self.inner.staging.upload(self.drv()?, self.inner.stream, dst.addr + offset as u64, data)
    }

    /// The first `len` bytes of `src` on the host. Waits for the work queued before it (reading
    /// is the one operation that synchronises: its result must be on the host).
    pub fn read(&self, src: DevRef<'_>, len: usize) -> Result<Vec<u8>> {
        self.check_view("source", src.device)?;
        if len > src.bytes {
            return Err(Error::InvalidArgument(format!("device read of {len} bytes from {} bytes", src.bytes)));
        }
        let mut out = try_vec(len, 0u8, "device read")?;
        self.inner.staging.download(self.drv()?, self.inner.stream, src.addr, &mut out)?;
        Ok(out)
    }

    /// Device memory `(in use, total)` bytes, every process included.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        let (free, total) = self.drv()?.mem_info()?;
        Ok((total.saturating_sub(free), total))
    }

    /// Device-to-device copy of `bytes` (the bandwidth ceiling benchmarks compare against).
    pub fn copy(&self, dst: DevMut<'_>, src: DevRef<'_>, bytes: usize) -> Result<()> {
        self.check_view("destination", dst.device)?;
        self.check_view("source", src.device)?;
        if bytes > dst.bytes || bytes > src.bytes {
            return Err(Error::InvalidArgument(format!("device copy of {bytes} bytes between buffers of {} and {}", src.bytes, dst.bytes)));
        }
        let drv = self.drv()?;
        // SAFETY: both ranges were checked against live views of this device.
        unsafe { drv.dtod(dst.addr, src.addr, bytes, self.inner.stream) }
    }

    /// Copies `bytes` inside one buffer, from byte `from` to byte `to` (non-overlapping ranges,
    /// stream-ordered): pages of a KV pool.
    pub fn copy_within(&self, buf: DevMut<'_>, from: usize, to: usize, bytes: usize) -> Result<()> {
        self.check_view("buffer", buf.device)?;
        let fits = |o: usize| o.checked_add(bytes).is_some_and(|e| e <= buf.bytes);
        if !fits(from) || !fits(to) || (from < to + bytes && to < from + bytes) {
            return Err(Error::InvalidArgument(format!("copy of {bytes} bytes from {from} to {to} inside a buffer of {}: out of range or overlapping", buf.bytes)));
        }
        let drv = self.drv()?;
        // SAFETY: both ranges lie inside the live view and do not overlap (checked above).
        unsafe { drv.dtod(buf.addr + to as u64, buf.addr + from as u64, bytes, self.inner.stream) }
    }

    /// Waits for queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.drv()?.stream_sync(self.inner.stream)
    }

    /// Runs `f` `reps` times between two device events on this stream; milliseconds per run.
    pub fn time(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let drv = self.drv()?;
        let (start, end) = (drv.event_create(true)?, drv.event_create(true)?);
        let r = (|| {
            drv.event_record(start, self.inner.stream)?;
            for _ in 0..reps {
                f()?;
            }
            self.drv()?.event_record(end, self.inner.stream)?;
            drv.event_sync(end)?;
            Ok(drv.event_elapsed_ms(start, end)? as f64 / reps.max(1) as f64)
        })();
        drv.event_destroy(start);
        drv.event_destroy(end);
        r
    }

    pub(crate) fn check_view(&self, what: &str, device: Device) -> Result<()> {
        if device != self.inner.dev.device {
            return Err(Error::Device { code: -1, message: format!("{what} memory lives on {device}, this GPU is {}", self.inner.dev.device) });
        }
        Ok(())
    }

    /// A tensor map (TMA) over `rows` rows of `mem`, `stride` elements apart, each row `heads`
    /// runs of `cols` 16-bit `dtype` elements, in boxes of 64 columns x 1 head x `box_rows`
    /// rows (128-byte swizzle; rows past `rows` read as zeros). Checked: `mem` holds every element
    /// the map covers, its address and the strides are 16-byte multiples, the box fits.
    #[allow(clippy::too_many_arguments)] // the map's own shape
    pub(crate) fn tensor_map(&self, what: &str, mem: &DevRef<'_>, dtype: DType, cols: usize, heads: usize, rows: usize, stride: usize, box_rows: usize) -> Result<TensorMap> {
        self.check_view(what, mem.device)?;
        let es = dtype.size();
        let bad = |why: String| Error::InvalidArgument(format!("{what}: tensor map {why}"));
        if es != 2 || cols == 0 || !cols.is_multiple_of(64) || heads == 0 || rows == 0 || !(1..=256).contains(&box_rows) {
            return Err(bad(format!("of {rows} rows x {heads} x {cols} {dtype} elements in boxes of {box_rows} rows")));
        }
        let span = (rows - 1).checked_mul(stride).and_then(|x| x.checked_add(heads * cols)).and_then(|x| x.checked_mul(es));
        if stride < heads * cols || span.is_none_or(|s| s > mem.bytes) {
            return Err(bad(format!("over {rows} rows {stride} elements apart needs more than the view's {} bytes", mem.bytes)));
        }
        if mem.addr % 16 != 0 || (stride * es) % 16 != 0 || (cols * es) % 16 != 0 {
            return Err(bad("needs 16-byte aligned rows".into()));
        }
        let drv = self.drv()?;
        drv.tensor_map(mem.addr, dtype, [cols as u64, heads as u64, rows as u64], [(cols * es) as u64, (stride * es) as u64], [64, 1, box_rows as u32])
    }

    /// Launches `kernel` with `params` on this GPU's stream. Checks the launch shape against the
    /// device (grid, block, shared memory) and that `P` is the kernel's parameter struct;
    /// anything the shape leaves empty launches nothing.
    ///
    /// # Safety
    /// Every device address in `params` must point into memory that stays allocated until the
    /// kernel completes in stream order, and hold every byte the kernel can touch given the
    /// other fields and the contents of the metadata it reads (the typed launchers in `launch/`
    /// establish this from views and checked metadata).
    pub(crate) unsafe fn launch<P: KernelArgs>(&self, kernel: Kernel, grid: [u64; 3], block: usize, shared: usize, params: &P) -> Result<()> {
        if P::NAME != kernel.params() {
            return Err(Error::Device { code: -1, message: format!("{} takes {}, not {}", kernel.symbol(), kernel.params(), P::NAME) });
        }
        if grid.contains(&0) {
            return Ok(());
        }
        let p = self.props();
        if grid.iter().zip(p.max_grid).any(|(&g, m)| g > m) || block > p.max_threads_per_block || shared > p.smem_per_block_optin {
            return Err(Error::Device {
                code: -1,
                message: format!(
                    "launch of {} with grid {grid:?}, block {block}, {shared} B shared exceeds {} (grid {:?}, {} threads, {} B): the plan should have refused it",
                    kernel.symbol(),
                    p.name,
                    p.max_grid,
                    p.max_threads_per_block,
                    p.smem_per_block_optin
                ),
            });
        }
        let f = *self.inner.dev.kernels.get(&kernel).ok_or_else(|| Error::Device { code: -1, message: format!("kernel {} is not loaded", kernel.symbol()) })?;
        let drv = self.drv()?;
        let mut arg = *params;
        let grid = [grid[0] as u32, grid[1] as u32, grid[2] as u32];
        // SAFETY: `f` takes one parameter of P's layout (KernelArgs, and its name checked
        // above); the caller guarantees the addresses in it.
        unsafe { drv.launch(f, grid, block as u32, shared as u32, self.inner.stream, &mut arg as *mut P as *mut c_void, std::mem::size_of::<P>()) }
    }
}

/// An executable device graph captured on a GPU's stream, replayed there.
pub(crate) struct GpuGraph {
    exec: u64,
    owner: Arc<Inner>,
    /// Every buffer the captured launches use, held until the graph is dropped.
    keep: Vec<Arc<DeviceBuffer>>,
}

impl std::fmt::Debug for GpuGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuGraph(on {})", self.owner.dev.device)
    }
}

impl GpuGraph {
    /// Queues one replay on the stream it was captured on.
    pub fn replay(&self) -> Result<()> {
        if !self.keep.iter().all(|b| b.live()) {
            return Err(Error::InvalidArgument("the graph uses memory borrowed for a lifetime that has ended: capture a new graph".into()));
        }
        let drv = self.owner.dev.drv.as_ref();
        drv.bind()?;
        drv.graph_launch(self.exec, self.owner.stream)
    }
}

impl Drop for GpuGraph {
    fn drop(&mut self) {
        if self.owner.dev.drv.bind().is_ok() {
            self.owner.dev.drv.graph_destroy(self.exec);
        }
    }
}

/// Device memory, freed (stream-ordered) when dropped.
pub(crate) struct DeviceBuffer {
    ptr: u64,
    len: usize,
    owner: Arc<Inner>,
    /// Caller memory (never freed here).
    borrowed: bool,
    /// Memory borrowed for a Rust lifetime (cudarc slices): false once the borrow has ended,
    /// and then no op touches it.
    lease: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Borrowed through a shared reference: ops may read it, never write it.
    read_only: bool,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes on {})", self.len, self.owner.dev.device)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // A failed bind leaks the memory rather than free it on another device's context.
        if !self.borrowed && self.owner.dev.drv.bind().is_ok() {
            // SAFETY: allocated by this driver on this stream, freed once; queued users are
            // ordered before the free.
            unsafe { self.owner.dev.drv.free(self.ptr, self.owner.stream) };
        }
    }
}

impl DeviceBuffer {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// The device it lives on.
    pub fn device(&self) -> Device {
        self.owner.dev.device
    }
    /// A read-only view of all of it.
    pub fn view(&self) -> DevRef<'_> {
        DevRef { addr: self.ptr, bytes: self.len, device: self.owner.dev.device, _l: PhantomData }
    }
    /// A writable view of all of it.
    pub fn view_mut(&mut self) -> DevMut<'_> {
        DevMut { addr: self.ptr, bytes: self.len, device: self.owner.dev.device, _l: PhantomData }
    }
    /// A read-only view from byte `offset` to the end (empty past it).
    pub fn slice(&self, offset: usize) -> DevRef<'_> {
        let offset = offset.min(self.len);
        DevRef { addr: self.ptr + offset as u64, bytes: self.len - offset, device: self.owner.dev.device, _l: PhantomData }
    }
    /// A writable view from byte `offset` to the end, through a shared handle: tensors that
    /// are views of one allocation (q, k and v of a fused QKV buffer) each write their own rows
    /// of it. Device memory is not memory the host program reads, so this is a question of
    /// device-side ordering, not of Rust aliasing: every op's writes are stream-ordered after
    /// earlier ops, and the API refuses an op whose output overlaps its inputs.
    pub fn slice_mut(&self, offset: usize) -> DevMut<'_> {
        let offset = offset.min(self.len);
        DevMut { addr: self.ptr + offset as u64, bytes: self.len - offset, device: self.owner.dev.device, _l: PhantomData }
    }
    /// Identity of the allocation (its address), for overlap checks.
    pub fn id(&self) -> usize {
        self.ptr as usize
    }
    /// Whether the memory may still be used: always for attnforge's own and raw borrowed
    /// memory; for memory borrowed for a lifetime, until that borrow ends.
    pub fn live(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire))
    }
    /// Borrowed through a shared reference (read-only).
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Read-only device memory borrowed for `'a`: an address only this module can read, its length
/// and its device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevRef<'a> {
    addr: u64,
    bytes: usize,
    device: Device,
    _l: PhantomData<&'a ()>,
}

/// Writable device memory borrowed exclusively for `'a`.
#[derive(Debug)]
pub(crate) struct DevMut<'a> {
    addr: u64,
    bytes: usize,
    device: Device,
    _l: PhantomData<&'a mut ()>,
}

impl DevRef<'_> {
    /// The address (tests that stand in for an engine handing its memory back in).
    #[cfg(test)]
    pub fn addr_for_tests(&self) -> u64 {
        self.addr
    }

    /// Bytes viewed.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl DevMut<'_> {
    /// Bytes viewed.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[derive(Debug, Clone, Copy)]
struct MetaPart {
    offset: usize,
    len: usize,
    min: i32,
    max: i32,
}

/// Int32 metadata on the device ([`Gpu::upload_meta`]) with what each part holds.
#[derive(Debug)]
pub(crate) struct Meta {
    buf: Arc<DeviceBuffer>,
    parts: Vec<MetaPart>,
}

impl Meta {
    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.len
    }
    /// Whether its memory may still be used (a caller's workspace borrowed for a lifetime:
    /// until that borrow ends).
    pub fn live(&self) -> bool {
        self.buf.live()
    }
    /// Its buffer (for a capture to hold).
    pub fn buffer(&self) -> &Arc<DeviceBuffer> {
        &self.buf
    }
    /// Part `i`.
    pub fn part(&self, i: usize) -> MetaRef<'_> {
        let p = self.parts[i];
        MetaRef { addr: self.buf.ptr + p.offset as u64, len: p.len, min: p.min, max: p.max, device: self.buf.device(), _l: PhantomData }
    }
}

/// One int32 array of a [`Meta`]: its length and the range of its values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaRef<'a> {
    addr: u64,
    len: usize,
    min: i32,
    max: i32,
    device: Device,
    _l: PhantomData<&'a ()>,
}

impl MetaRef<'_> {
    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether every value lies in `lo..hi`.
    pub fn within(&self, lo: i64, hi: i64) -> bool {
        self.len == 0 || (self.min as i64 >= lo && (self.max as i64) < hi)
    }
}

#[cfg(test)]
mod tests;

/// Alignment of the pieces of a caller's workspace ([`Gpu::carve`]): what the allocators give.
pub(crate) const CARVE_ALIGN: usize = 256;

/// Metadata parts as little-endian bytes, each summarised.
fn meta_bytes(parts: &[&[i32]]) -> Result<(Vec<u8>, Vec<MetaPart>)> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut bytes = try_vec(0, 0u8, "kernel metadata")?;
    bytes.try_reserve_exact(4 * total).map_err(|_| Error::OutOfMemory { what: "kernel metadata (host)".into(), bytes: 4 * total })?;
    let mut summary = Vec::with_capacity(parts.len());
    for p in parts {
        summary.push(MetaPart { offset: bytes.len(), len: p.len(), min: p.iter().copied().min().unwrap_or(0), max: p.iter().copied().max().unwrap_or(-1) });
        bytes.extend_from_slice(bytemuck::cast_slice(p));
    }
    Ok((bytes, summary))
}
