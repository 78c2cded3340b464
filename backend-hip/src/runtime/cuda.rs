//! NVIDIA: the CUDA driver API through cudarc's `result` layer (thin `Result` wrappers over
//! `cuda.h`), loaded dynamically: nothing CUDA is needed to build. The context is cudarc's
//! (primary context of the device, retained while the driver lives).

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use attnforge_api::{Error, Result};
use cudarc::driver::sys::{self, CUdevice_attribute as A, CUevent_flags, CUfunction_attribute as FA};
use cudarc::driver::{result, CudaContext, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;

use super::{DeviceProps, Driver};
use crate::contract::{TensorMap, Vendor};
use attnforge_api::DType;

fn dev(call: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Device { code: e.0 as i64, message: format!("{call}: {e}") }
}

fn alloc_err(call: &'static str, bytes: usize) -> impl Fn(DriverError) -> Error {
    move |e| {
        if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory { what: format!("device memory ({call})"), bytes }
        } else {
            Error::Device { code: e.0 as i64, message: format!("{call} of {bytes} bytes: {e}") }
        }
    }
}

pub(super) struct CudaDriver {
    ctx: Arc<CudaContext>,
    props: DeviceProps,
    async_alloc: bool,
    /// Loaded modules (kept loaded while the driver lives; functions point into them).
    modules: Mutex<Vec<Arc<CudaModule>>>,
}

/// Whether the CUDA driver library can be loaded: tried with `dlopen` when cudarc loads it at
/// run time (feature `cuda-dynamic-loading`, the default); linked at build time otherwise
/// (cudarc's `dynamic-linking`, as candle enables it), so present by construction.
fn culib_present() -> bool {
    #[cfg(feature = "cuda-dynamic-loading")]
    {
        // SAFETY: only tries to dlopen libcuda; no symbol is used.
        unsafe { sys::is_culib_present() }
    }
    #[cfg(not(feature = "cuda-dynamic-loading"))]
    {
        true
    }
}

impl CudaDriver {
    /// Opens NVIDIA GPU `ordinal`, or says why it cannot: no kernels built, no driver, no
    /// device, or a device older than the embedded code.
    /// NVIDIA GPUs visible (0 without kernels for them, a driver, or a device).
    pub fn device_count() -> usize {
        if crate::kernels::NVIDIA.is_none() || !culib_present() {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    pub fn open(ordinal: usize) -> std::result::Result<CudaDriver, String> {
        if crate::kernels::NVIDIA.is_none() {
            return Err(crate::kernels::NVIDIA_MISSING.to_string());
        }
        if !culib_present() {
            return Err("no NVIDIA driver on this machine (libcuda.so not found)".into());
        }
        let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e}"))?;
        if count <= ordinal as i32 {
            return Err(format!("no CUDA device {ordinal} ({count} found)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("creating a CUDA context: {e}"))?;
        // SAFETY: no CudaSlice exists; this driver uses raw allocations ordered on its streams.
        unsafe { ctx.disable_event_tracking() };
        let attr = |a: A| ctx.attribute(a).map(|v| v as usize).map_err(|e| format!("reading device attribute {a:?}: {e}"));
        let (major, minor) = ctx.compute_capability().map_err(|e| e.to_string())?;
        let oldest: i32 = crate::kernels::CUDA_ARCHS.split_whitespace().filter_map(|a| a.parse().ok()).min().unwrap_or(80);
        if major * 10 + minor < oldest {
            return Err(format!("sm_{major}{minor} is older than the oldest architecture built (sm_{oldest}; ATTNFORGE_CUDA_ARCHS)"));
        }
        let props = DeviceProps {
            vendor: Vendor::Nvidia,
            name: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            arch: format!("sm_{major}{minor}"),
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            warp_size: attr(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?,
            max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            smem_per_block_optin: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            smem_per_sm: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
            max_grid: [
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)? as u64,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)? as u64,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)? as u64,
            ],
            matrix_cores: major >= 8,
            wgmma: (major, minor) == (9, 0) && crate::kernels::CUDA_ARCHS.split_whitespace().any(|a| a == "90"),
        };
        let async_alloc = ctx.has_async_alloc();
        Ok(CudaDriver { ctx, props, async_alloc, modules: Mutex::new(Vec::new()) })
    }
}

fn stream(s: u64) -> sys::CUstream {
    s as usize as sys::CUstream
}
fn event(e: u64) -> sys::CUevent {
    e as usize as sys::CUevent
}

impl Driver for CudaDriver {
    fn props(&self) -> &DeviceProps {
        &self.props
    }

    fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(dev("cuCtxSetCurrent"))
    }

    fn stream_create(&self) -> Result<u64> {
        result::stream::create(result::stream::StreamKind::NonBlocking).map(|s| s as usize as u64).map_err(dev("cuStreamCreate"))
    }

    fn stream_destroy(&self, s: u64) {
        // SAFETY: a stream this driver created, destroyed once (errors cannot be reported here).
        let _ = unsafe { result::stream::destroy(stream(s)) };
    }

    fn stream_sync(&self, s: u64) -> Result<()> {
        // SAFETY: a live stream of this driver.
        unsafe { result::stream::synchronize(stream(s)) }.map_err(dev("cuStreamSynchronize"))
    }

    unsafe fn malloc(&self, bytes: usize, s: u64) -> Result<u64> {
        // SAFETY: the caller passes a live stream; the memory is handed out uninitialised.
        unsafe {
            if self.async_alloc {
                result::malloc_async(stream(s), bytes).map_err(alloc_err("cuMemAllocAsync", bytes))
            } else {
                result::malloc_sync(bytes).map_err(alloc_err("cuMemAlloc", bytes))
            }
        }
    }

    unsafe fn free(&self, ptr: u64, s: u64) {
        // SAFETY: the caller's contract (allocated here, freed once, users ordered before).
        unsafe {
            let _ = if self.async_alloc { result::free_async(ptr, stream(s)) } else { result::free_sync(ptr) };
        }
    }

    unsafe fn memset(&self, ptr: u64, byte: u8, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (the range is one live allocation).
        unsafe { result::memset_d8_async(ptr, byte, bytes, stream(s)) }.map_err(dev("cuMemsetD8Async"))
    }

    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (pinned source untouched until the copy completes).
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, stream(s)) }.result().map_err(dev("cuMemcpyHtoDAsync"))
    }

    unsafe fn dtoh(&self, dst: *mut u8, src: u64, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (pinned destination allocated until the copy completes).
        unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, stream(s)) }.result().map_err(dev("cuMemcpyDtoHAsync"))
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (both ranges live on this device).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, stream(s)) }.map_err(dev("cuMemcpyDtoDAsync"))
    }

    fn pinned_alloc(&self, bytes: usize) -> Result<*mut u8> {
        // SAFETY: plain allocation; the bytes are written before any copy reads them.
        unsafe { result::malloc_host(bytes, 0) }.map(|p| p as *mut u8).map_err(alloc_err("cuMemHostAlloc", bytes))
    }

    unsafe fn pinned_free(&self, p: *mut u8) {
        // SAFETY: the caller's contract (from pinned_alloc, freed once, no copy targets it).
        let _ = unsafe { result::free_host(p as *mut c_void) };
    }

    fn event_create(&self, timing: bool) -> Result<u64> {
        let flags = if timing { CUevent_flags::CU_EVENT_DEFAULT } else { CUevent_flags::CU_EVENT_DISABLE_TIMING };
        result::event::create(flags).map(|e| e as usize as u64).map_err(dev("cuEventCreate"))
    }

    fn event_destroy(&self, e: u64) {
        // SAFETY: an event this driver created, destroyed once.
        let _ = unsafe { result::event::destroy(event(e)) };
    }

    fn event_record(&self, e: u64, s: u64) -> Result<()> {
        // SAFETY: a live event and stream of this driver.
        unsafe { result::event::record(event(e), stream(s)) }.map_err(dev("cuEventRecord"))
    }

    fn event_sync(&self, e: u64) -> Result<()> {
        // SAFETY: a live event of this driver.
        unsafe { result::event::synchronize(event(e)) }.map_err(dev("cuEventSynchronize"))
    }

    fn pointer_ordinal(&self, ptr: u64) -> Result<Option<usize>> {
        let mut ordinal: i32 = -1;
        // SAFETY: a query with a valid out-pointer of the attribute's type (int).
        let r = unsafe { sys::cuPointerGetAttribute(&mut ordinal as *mut i32 as *mut c_void, sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr) };
        Ok((r == sys::CUresult::CUDA_SUCCESS && ordinal >= 0).then_some(ordinal as usize))
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        result::mem_get_info().map_err(dev("cuMemGetInfo"))
    }

    fn event_elapsed_ms(&self, start: u64, end: u64) -> Result<f32> {
        // SAFETY: live timing events of this driver, both recorded and complete.
        unsafe { result::event::elapsed(event(start), event(end)) }.map_err(dev("cuEventElapsedTime"))
    }

    fn capture_begin(&self, s: u64) -> Result<()> {
        // SAFETY: a live stream of this driver.
        unsafe { sys::cuStreamBeginCapture_v2(stream(s), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }.result().map_err(dev("cuStreamBeginCapture"))
    }

    fn capture_end(&self, s: u64) -> Result<u64> {
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: a stream this thread is capturing; the graph is destroyed below once
        // instantiated (the executable graph does not need it).
        unsafe {
            sys::cuStreamEndCapture(stream(s), &mut graph).result().map_err(dev("cuStreamEndCapture"))?;
            let mut exec: sys::CUgraphExec = std::ptr::null_mut();
            let r = sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0).result().map_err(dev("cuGraphInstantiateWithFlags"));
            let _ = sys::cuGraphDestroy(graph);
            r.map(|_| exec as usize as u64)
        }
    }

    fn graph_launch(&self, g: u64, s: u64) -> Result<()> {
        // SAFETY: a live executable graph and stream of this driver.
        unsafe { sys::cuGraphLaunch(g as usize as sys::CUgraphExec, stream(s)) }.result().map_err(dev("cuGraphLaunch"))
    }

    fn graph_destroy(&self, g: u64) {
        // SAFETY: an executable graph this driver made, destroyed once.
        let _ = unsafe { sys::cuGraphExecDestroy(g as usize as sys::CUgraphExec) };
    }

    fn module_load(&self, name: &str, image: &[u8]) -> Result<u64> {
        let m = self.ctx.load_module(Ptx::from_binary(image.to_vec())).map_err(|e| Error::Device {
            code: e.0 as i64,
            message: format!("loading kernel module {name} on {} ({}): {e} (built for {})", self.props.name, self.props.arch, crate::kernels::CUDA_ARCHS),
        })?;
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        mods.push(m);
        Ok((mods.len() - 1) as u64)
    }

    fn function(&self, module: u64, symbol: &str) -> Result<u64> {
        let mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let m = mods.get(module as usize).ok_or_else(|| Error::Device { code: -1, message: format!("no module {module}") })?;
        let f = m.load_function(symbol).map_err(dev("cuModuleGetFunction"))?;
        Ok(f.cu_function() as usize as u64)
    }

    fn allow_dynamic_shared(&self, f: u64, bytes: usize) -> Result<()> {
        let f = f as usize as sys::CUfunction;
        // SAFETY: a function of a module this driver keeps loaded.
        unsafe {
            let fixed = result::function::get_function_attribute(f, FA::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).map_err(dev("cuFuncGetAttribute"))?;
            let dynamic = bytes.saturating_sub(fixed.max(0) as usize) as i32;
            result::function::set_function_attribute(f, FA::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic).map_err(dev("cuFuncSetAttribute"))
        }
    }

    unsafe fn launch(&self, f: u64, grid: [u32; 3], block: u32, shared: u32, s: u64, params: *mut c_void, _size: usize) -> Result<()> {
        let mut args = [params];
        // SAFETY: the caller's contract: `f` takes exactly the one parameter at `params`.
        unsafe { result::launch_kernel(f as usize as sys::CUfunction, (grid[0], grid[1], grid[2]), (block, 1, 1), shared, stream(s), &mut args) }
            .map_err(dev("cuLaunchKernel"))
    }

    fn tensor_map(&self, addr: u64, dtype: DType, dims: [u64; 3], strides: [u64; 2], boxes: [u32; 3]) -> Result<TensorMap> {
        use sys::{CUtensorMapDataType as T, CUtensorMapFloatOOBfill as Oob, CUtensorMapInterleave as I, CUtensorMapL2promotion as L2, CUtensorMapSwizzle as Sw};
        let ty = match dtype {
            DType::F16 => T::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            DType::BF16 => T::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            other => return Err(Error::Device { code: -1, message: format!("cuTensorMapEncodeTiled: {other} tensor maps are not built") }),
        };
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let unit = [1u32; 3];
        // SAFETY: writes the 128 bytes of `map`; reads the three-element arrays above. The
        // global address is only recorded (encoding touches no device memory).
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                ty,
                3,
                addr as usize as *mut c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                unit.as_ptr(),
                I::CU_TENSOR_MAP_INTERLEAVE_NONE,
                Sw::CU_TENSOR_MAP_SWIZZLE_128B,
                L2::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                Oob::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(dev("cuTensorMapEncodeTiled"))?;
        Ok(TensorMap(map.opaque))
    }
}
