//! NVIDIA: the CUDA driver API through `cudarc`, loaded dynamically (nothing CUDA is needed to
//! build). Every driver status becomes `Error::Device` naming the call that failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backend_api::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::KernelArgs;
use crate::kernels;

fn dev(call: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Device { code: e.0 as i64, message: format!("{call}: {e}") }
}

#[derive(Clone, Copy)]
#[repr(transparent)]
struct ByValue<P: KernelArgs>(P);
// SAFETY: KernelArgs guarantees a plain #[repr(C)] layout matching the kernel's parameter.
unsafe impl<P: KernelArgs> DeviceRepr for ByValue<P> {}

/// Bytes of one pinned staging slot, and how many slots rotate.
const STAGE_BYTES: usize = 1 << 20;
const STAGE_SLOTS: usize = 8;

/// Page-locked host memory for per-call metadata (positions, slot mappings, page tables):
/// copies from it are truly asynchronous, where a copy from ordinary host memory first waits
/// for the whole stream, serialising host and device. A slot is reused only after its last
/// copy's event completed.
struct StagingSlot {
    host: PinnedHostSlice<u8>,
    done: CudaEvent,
}

/// An opened GPU: context, one stream, the embedded kernel modules.
pub(super) struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    staging: Vec<Mutex<StagingSlot>>,
    next_slot: AtomicUsize,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    /// Loaded kernels, with the dynamic shared memory each is opted in to.
    functions: Mutex<HashMap<String, (CudaFunction, u32)>>,
    /// Device name as the driver reports it.
    pub name: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Compute capability.
    pub capability: (i32, i32),
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, {} SMs, sm_{}{})", self.name, self.sm_count, self.capability.0, self.capability.1)
    }
}

/// Device memory, freed when dropped.
#[derive(Debug)]
pub(super) struct DeviceBuffer {
    slice: CudaSlice<u8>,
    addr: u64,
}

impl DeviceBuffer {
    /// Device address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.slice.len()
    }
}

impl Gpu {
    /// Opens NVIDIA GPU `ordinal`, or says why it cannot: no kernels built, no driver, no device.
    pub fn open(ordinal: usize) -> std::result::Result<Gpu, String> {
        let Some(images) = kernels::NVIDIA else {
            return Err(kernels::NVIDIA_MISSING.to_string());
        };
        // SAFETY: only tries to dlopen libcuda; no symbol is used.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no NVIDIA driver on this machine (libcuda.so not found)".into());
        }
        let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e}"))?;
        if count <= ordinal as i32 {
            return Err(format!("no CUDA device {ordinal} ({count} found)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("creating a CUDA context: {e}"))?;
        // One stream, ordered: cudarc's cross-stream event tracking is not needed.
        // SAFETY: no CudaSlice exists yet, and this backend never uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let mut modules = Vec::new();
        for (name, bytes) in images {
            let m = ctx.load_module(Ptx::from_binary(bytes.to_vec())).map_err(|e| format!("loading kernel module {name}: {e}"))?;
            modules.push((*name, m));
        }
        use cudarc::driver::sys::CUdevice_attribute as A;
        let sm_count = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| e.to_string())? as u32;
        let capability = ctx.compute_capability().map_err(|e| e.to_string())?;
        let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let mut staging = Vec::with_capacity(STAGE_SLOTS);
        for _ in 0..STAGE_SLOTS {
            // SAFETY: the pinned memory is uninitialised; only bytes written by `upload` are copied.
            let host = unsafe { ctx.alloc_pinned::<u8>(STAGE_BYTES) }.map_err(|e| format!("allocating pinned staging memory: {e}"))?;
            let done = ctx.new_event(None).map_err(|e| format!("creating an event: {e}"))?;
            staging.push(Mutex::new(StagingSlot { host, done }));
        }
        Ok(Gpu { ctx, stream, staging, next_slot: AtomicUsize::new(0), modules, functions: Mutex::new(HashMap::new()), name, sm_count, capability })
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// `bytes` of uninitialised device memory (at least one byte is allocated).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        // SAFETY: the memory is uninitialised; every user writes before reading (uploads,
        // kernels that overwrite their output, or `fill`).
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(dev("cuMemAlloc"))?;
        let addr = {
            let (addr, _sync) = slice.device_ptr(&self.stream);
            addr
        };
        Ok(DeviceBuffer { slice, addr })
    }

    /// A new buffer holding `data`. Small uploads (metadata) go through pinned staging and do
    /// not wait for queued work; larger ones are ordinary copies.
    pub fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        let mut b = self.alloc(data.len())?;
        if data.is_empty() || data.len() > STAGE_BYTES {
            self.write(&mut b, 0, data)?;
            return Ok(b);
        }
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % STAGE_SLOTS;
        let mut slot = self.staging[i].lock().map_err(|_| Error::Device { code: -1, message: "staging lock poisoned".into() })?;
        slot.done.synchronize().map_err(dev("cuEventSynchronize (staging)"))?;
        let host = slot.host.as_mut_slice().map_err(dev("pinned staging"))?;
        host[..data.len()].copy_from_slice(data);
        // SAFETY: `b` holds at least data.len() bytes; the pinned bytes stay untouched until
        // `done` (recorded right after the copy on the same stream) completes.
        unsafe { cudarc::driver::result::memcpy_htod_async(b.addr, &host[..data.len()], self.stream.cu_stream()) }.map_err(dev("cuMemcpyHtoDAsync"))?;
        slot.done.record(&self.stream).map_err(dev("cuEventRecord"))?;
        Ok(b)
    }

    /// Copies `data` to `buf` at byte `offset`.
    pub fn write(&self, buf: &mut DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if offset + data.len() > buf.len() {
            return Err(Error::InvalidArgument(format!("device write of {} bytes at {offset} into {} bytes", data.len(), buf.len())));
        }
        let mut view = buf.slice.slice_mut(offset..offset + data.len());
        self.stream.memcpy_htod(data, &mut view).map_err(dev("cuMemcpyHtoD"))
    }

    /// The buffer's bytes on the host (waits for queued work).
    pub fn read(&self, buf: &DeviceBuffer, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        if len > 0 {
            let view = buf.slice.slice(0..len);
            self.stream.memcpy_dtoh(&view, &mut out).map_err(dev("cuMemcpyDtoH"))?;
        }
        self.synchronize()?;
        Ok(out)
    }

    /// Device-to-device copy of `bytes` (the bandwidth ceiling benchmarks compare against).
    pub fn copy(&self, dst: &mut DeviceBuffer, src: &DeviceBuffer, bytes: usize) -> Result<()> {
        let s = src.slice.slice(0..bytes);
        let mut d = dst.slice.slice_mut(0..bytes);
        self.stream.memcpy_dtod(&s, &mut d).map_err(dev("cuMemcpyDtoD"))
    }

    /// Waits for queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev("cuStreamSynchronize"))
    }

    /// Kernel `name`, opted in to `shared` bytes of dynamic shared memory when past the 48 KiB
    /// every kernel may use.
    fn function(&self, name: &str, shared: u32) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().map_err(|_| Error::Device { code: -1, message: "kernel cache lock poisoned".into() })?;
        if !cache.contains_key(name) {
            let f = self
                .modules
                .iter()
                .find_map(|(_, m)| m.load_function(name).ok())
                .ok_or_else(|| Error::Device { code: -1, message: format!("kernel {name} is missing from the embedded modules") })?;
            cache.insert(name.to_string(), (f, 48 << 10));
        }
        let entry = cache.get_mut(name).expect("inserted above");
        if shared > entry.1 {
            use cudarc::driver::sys::CUfunction_attribute as FA;
            entry.0.set_attribute(FA::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared as i32).map_err(dev("cuFuncSetAttribute"))?;
            entry.1 = shared;
        }
        Ok(entry.0.clone())
    }

    /// Launches kernel `name` with one by-value parameter struct and `shared` bytes of dynamic
    /// shared memory.
    pub fn launch<P: KernelArgs>(&self, name: &str, grid: (u32, u32, u32), block: u32, shared: u32, params: P) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self.function(name, shared)?;
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: shared };
        let arg = ByValue(params);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&arg);
        // SAFETY: the kernel takes exactly one parameter of P's layout (KernelArgs), and every
        // address in it points to live device memory sized by the op that built it.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Device { code: e.0 as i64, message: format!("launching {name}: {e}") })?;
        Ok(())
    }

    /// Runs `f` `reps` times between two device events; milliseconds per run.
    pub fn time(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        use cudarc::driver::sys::CUevent_flags;
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("cuEventCreate"))?;
        let end = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("cuEventCreate"))?;
        start.record(&self.stream).map_err(dev("cuEventRecord"))?;
        for _ in 0..reps {
            f()?;
        }
        end.record(&self.stream).map_err(dev("cuEventRecord"))?;
        end.synchronize().map_err(dev("cuEventSynchronize"))?;
        Ok(start.elapsed_ms(&end).map_err(dev("cuEventElapsedTime"))? as f64 / reps as f64)
    }
}
