//! AMD: the HIP runtime through `hip-sys` (feature `rocm`; links `libamdhip64`). The logic above
//! the calls (staging, binding the device on every call, the kernel table) is `Gpu`'s, shared
//! with NVIDIA and tested against the fake driver; this file maps each call and its status.
//! Code objects are loaded with `hipModuleLoadData` (one offload bundle per kernel file holding
//! every `ATTNFORGE_AMD_ARCHS` target); launches pass the one parameter struct as HIP's `extra`
//! argument buffer.
//!
//! Built in CI against ROCm 5.2's `libamdhip64-dev`; no AMD GPU has run it yet (see README).

use std::ffi::{c_void, CStr, CString};
use std::sync::Mutex;

use attnforge_api::{Error, Result};
use hip_sys::hiprt as sys;

use super::{DeviceProps, Driver};
use crate::contract::Vendor;

fn message(status: sys::hipError_t) -> String {
    // SAFETY: hipGetErrorString returns a static NUL-terminated string for every status.
    unsafe { CStr::from_ptr(sys::hipGetErrorString(status)) }.to_string_lossy().into_owned()
}

fn check(call: &str, status: sys::hipError_t) -> Result<()> {
    if status == sys::hipError_t::hipSuccess {
        return Ok(());
    }
    Err(Error::Device { code: status as i64, message: format!("{call}: {}", message(status)) })
}

fn check_alloc(call: &str, status: sys::hipError_t, bytes: usize) -> Result<()> {
    if status == sys::hipError_t::hipErrorOutOfMemory {
        return Err(Error::OutOfMemory { what: format!("device memory ({call})"), bytes });
    }
    check(call, status)
}

pub(super) struct HipDriver {
    ordinal: usize,
    props: DeviceProps,
    pools: bool,
    modules: Mutex<Vec<usize>>,
}

// SAFETY: HIP handles may be used from any host thread once the device is current there
// (`bind`, called by Gpu before every call); the module list is behind a mutex.
unsafe impl Send for HipDriver {}
unsafe impl Sync for HipDriver {}

fn stream(s: u64) -> sys::hipStream_t {
    s as usize as sys::hipStream_t
}
fn event(e: u64) -> sys::hipEvent_t {
    e as usize as sys::hipEvent_t
}

impl HipDriver {
    /// AMD GPUs visible (0 without kernels for them, a driver, or a device).
    pub fn device_count() -> usize {
        if crate::kernels::AMD.is_none() {
            return 0;
        }
        let mut count = 0;
        // SAFETY: plain FFI calls with a valid out-pointer; statuses checked.
        unsafe {
            if sys::hipInit(0) != sys::hipError_t::hipSuccess || sys::hipGetDeviceCount(&mut count) != sys::hipError_t::hipSuccess {
                return 0;
            }
        }
        count.max(0) as usize
    }

    pub fn open(ordinal: usize) -> std::result::Result<HipDriver, String> {
        if crate::kernels::AMD.is_none() {
            return Err(crate::kernels::AMD_MISSING.to_string());
        }
        let e = |r: Result<()>| r.map_err(|e| e.to_string());
        // SAFETY: plain FFI calls with valid out-pointers; every status is checked.
        unsafe {
            let s = sys::hipInit(0);
            if s != sys::hipError_t::hipSuccess {
                return Err(format!("no usable ROCm driver (hipInit: {})", message(s)));
            }
            let mut count = 0;
            e(check("hipGetDeviceCount", sys::hipGetDeviceCount(&mut count)))?;
            if count <= ordinal as i32 {
                return Err(format!("no ROCm device {ordinal} ({count} found)"));
            }
            let dev = ordinal as i32;
            e(check("hipSetDevice", sys::hipSetDevice(dev)))?;
            let mut prop: sys::hipDeviceProp_t = std::mem::zeroed();
            e(check("hipGetDeviceProperties", sys::hipGetDeviceProperties(&mut prop, dev)))?;
            let name = CStr::from_ptr(prop.name.as_ptr()).to_string_lossy().into_owned();
            let arch_full = CStr::from_ptr(prop.gcnArchName.as_ptr()).to_string_lossy().into_owned();
            let arch = arch_full.split(':').next().unwrap_or("").to_string();
            if !crate::kernels::AMD_ARCHS.split_whitespace().any(|a| a == arch) {
                return Err(format!("{name} is {arch}; this build has code for {} only (set ATTNFORGE_AMD_ARCHS and rebuild)", crate::kernels::AMD_ARCHS));
            }
            let attr = |a: sys::hipDeviceAttribute_t| -> std::result::Result<usize, String> {
                let mut v = 0;
                check(&format!("hipDeviceGetAttribute({a:?})"), sys::hipDeviceGetAttribute(&mut v, a, dev)).map_err(|e| e.to_string())?;
                Ok(v.max(0) as usize)
            };
            use sys::hipDeviceAttribute_t as A;
            let warp_size = attr(A::hipDeviceAttributeWarpSize)?;
            let mut pools = 0;
            let pools = sys::hipDeviceGetAttribute(&mut pools, A::hipDeviceAttributeMemoryPoolsSupported, dev) == sys::hipError_t::hipSuccess && pools != 0;
            let optin = attr(A::hipDeviceAttributeSharedMemPerBlockOptin).unwrap_or(0).max(attr(A::hipDeviceAttributeMaxSharedMemoryPerBlock)?);
            let per_sm = attr(A::hipDeviceAttributeMaxSharedMemoryPerMultiprocessor).unwrap_or(0).max(optin);
            let props = DeviceProps {
                vendor: Vendor::Amd,
                name,
                arch,
                sm_count: attr(A::hipDeviceAttributeMultiprocessorCount)?,
                warp_size,
                max_threads_per_block: attr(A::hipDeviceAttributeMaxThreadsPerBlock)?,
                smem_per_block_optin: optin,
                smem_per_sm: per_sm,
                max_grid: [
                    attr(A::hipDeviceAttributeMaxGridDimX)? as u64,
                    attr(A::hipDeviceAttributeMaxGridDimY)? as u64,
                    attr(A::hipDeviceAttributeMaxGridDimZ)? as u64,
                ],
                matrix_cores: warp_size == 64,
                wgmma: false,
            };
            Ok(HipDriver { ordinal, props, pools, modules: Mutex::new(Vec::new()) })
        }
    }
}

impl Driver for HipDriver {
    fn props(&self) -> &DeviceProps {
        &self.props
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: plain FFI call; HIP's current device is per host thread.
        check("hipSetDevice", unsafe { sys::hipSetDevice(self.ordinal as i32) })
    }

    fn stream_create(&self) -> Result<u64> {
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("hipStreamCreateWithFlags", unsafe { sys::hipStreamCreateWithFlags(&mut s, sys::hipStreamNonBlocking) })?;
        Ok(s as usize as u64)
    }

    fn stream_destroy(&self, s: u64) {
        // SAFETY: a stream this driver created, destroyed once.
        unsafe { sys::hipStreamDestroy(stream(s)) };
    }

    fn stream_sync(&self, s: u64) -> Result<()> {
        // SAFETY: a live stream of this driver.
        check("hipStreamSynchronize", unsafe { sys::hipStreamSynchronize(stream(s)) })
    }

    unsafe fn malloc(&self, bytes: usize, s: u64) -> Result<u64> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer and a live stream (caller's contract).
        unsafe {
            if self.pools {
                check_alloc("hipMallocAsync", sys::hipMallocAsync(&mut p, bytes, stream(s)), bytes)?;
            } else {
                check_alloc("hipMalloc", sys::hipMalloc(&mut p, bytes), bytes)?;
            }
        }
        Ok(p as usize as u64)
    }

    unsafe fn free(&self, ptr: u64, s: u64) {
        let p = ptr as usize as *mut c_void;
        // SAFETY: the caller's contract (allocated here, freed once, users ordered before).
        unsafe {
            if self.pools {
                sys::hipFreeAsync(p, stream(s));
            } else {
                // hipFree synchronises the device first: queued users complete before it frees.
                sys::hipFree(p);
            }
        }
    }

    unsafe fn memset(&self, ptr: u64, byte: u8, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (one live allocation).
        check("hipMemsetD8Async", unsafe { sys::hipMemsetD8Async(ptr as usize as sys::hipDeviceptr_t, byte, bytes, stream(s)) })
    }

    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (pinned source untouched until the copy completes).
        check("hipMemcpyHtoDAsync", unsafe { sys::hipMemcpyHtoDAsync(dst as usize as sys::hipDeviceptr_t, src as *mut c_void, bytes, stream(s)) })
    }

    unsafe fn dtoh(&self, dst: *mut u8, src: u64, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (pinned destination allocated until the copy completes).
        check("hipMemcpyDtoHAsync", unsafe { sys::hipMemcpyDtoHAsync(dst as *mut c_void, src as usize as sys::hipDeviceptr_t, bytes, stream(s)) })
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize, s: u64) -> Result<()> {
        // SAFETY: the caller's contract (both ranges live on this device).
        check("hipMemcpyDtoDAsync", unsafe {
            sys::hipMemcpyDtoDAsync(dst as usize as sys::hipDeviceptr_t, src as usize as sys::hipDeviceptr_t, bytes, stream(s))
        })
    }

    fn pinned_alloc(&self, bytes: usize) -> Result<*mut u8> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check_alloc("hipHostMalloc", unsafe { sys::hipHostMalloc(&mut p, bytes, 0) }, bytes)?;
        Ok(p as *mut u8)
    }

    unsafe fn pinned_free(&self, p: *mut u8) {
        // SAFETY: the caller's contract (from pinned_alloc, freed once, no copy targets it).
        unsafe { sys::hipHostFree(p as *mut c_void) };
    }

    fn event_create(&self, timing: bool) -> Result<u64> {
        let mut e = std::ptr::null_mut();
        let flags = if timing { sys::hipEventDefault } else { sys::hipEventDisableTiming };
        // SAFETY: valid out-pointer.
        check("hipEventCreateWithFlags", unsafe { sys::hipEventCreateWithFlags(&mut e, flags) })?;
        Ok(e as usize as u64)
    }

    fn event_destroy(&self, e: u64) {
        // SAFETY: an event this driver created, destroyed once.
        unsafe { sys::hipEventDestroy(event(e)) };
    }

    fn event_record(&self, e: u64, s: u64) -> Result<()> {
        // SAFETY: a live event and stream.
        check("hipEventRecord", unsafe { sys::hipEventRecord(event(e), stream(s)) })
    }

    fn event_sync(&self, e: u64) -> Result<()> {
        // SAFETY: a live event.
        check("hipEventSynchronize", unsafe { sys::hipEventSynchronize(event(e)) })
    }

    fn pointer_ordinal(&self, ptr: u64) -> Result<Option<usize>> {
        // SAFETY: a query with a valid out-pointer.
        unsafe {
            let mut attr: sys::hipPointerAttribute_t = std::mem::zeroed();
            if sys::hipPointerGetAttributes(&mut attr, ptr as usize as *const c_void) != sys::hipError_t::hipSuccess {
                return Ok(None);
            }
            Ok((attr.device >= 0).then_some(attr.device as usize))
        }
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        check("hipMemGetInfo", unsafe { sys::hipMemGetInfo(&mut free, &mut total) })?;
        Ok((free, total))
    }

    fn event_elapsed_ms(&self, start: u64, end: u64) -> Result<f32> {
        let mut ms = 0f32;
        // SAFETY: live events, valid out-pointer.
        check("hipEventElapsedTime", unsafe { sys::hipEventElapsedTime(&mut ms, event(start), event(end)) })?;
        Ok(ms)
    }

    fn capture_begin(&self, s: u64) -> Result<()> {
        // SAFETY: a live stream of this driver.
        check("hipStreamBeginCapture", unsafe { sys::hipStreamBeginCapture(stream(s), sys::hipStreamCaptureMode::hipStreamCaptureModeThreadLocal) })
    }

    fn capture_end(&self, s: u64) -> Result<u64> {
        let mut graph: sys::hipGraph_t = std::ptr::null_mut();
        // SAFETY: a stream this thread is capturing; the graph is destroyed once instantiated.
        unsafe {
            check("hipStreamEndCapture", sys::hipStreamEndCapture(stream(s), &mut graph))?;
            let mut exec: sys::hipGraphExec_t = std::ptr::null_mut();
            let r = check("hipGraphInstantiate", sys::hipGraphInstantiate(&mut exec, graph, std::ptr::null_mut(), std::ptr::null_mut(), 0));
            sys::hipGraphDestroy(graph);
            r.map(|_| exec as usize as u64)
        }
    }

    fn graph_launch(&self, g: u64, s: u64) -> Result<()> {
        // SAFETY: a live executable graph and stream of this driver.
        check("hipGraphLaunch", unsafe { sys::hipGraphLaunch(g as usize as sys::hipGraphExec_t, stream(s)) })
    }

    fn graph_destroy(&self, g: u64) {
        // SAFETY: an executable graph this driver made, destroyed once.
        unsafe { sys::hipGraphExecDestroy(g as usize as sys::hipGraphExec_t) };
    }

    fn module_load(&self, name: &str, image: &[u8]) -> Result<u64> {
        let mut m = std::ptr::null_mut();
        // SAFETY: `image` is a complete offload bundle embedded in this binary (static).
        let s = unsafe { sys::hipModuleLoadData(&mut m, image.as_ptr() as *const c_void) };
        if s == sys::hipError_t::hipErrorNoBinaryForGpu {
            return Err(Error::Device {
                code: s as i64,
                message: format!("{} ({}) has no code object in {name} (built for {}; set ATTNFORGE_AMD_ARCHS and rebuild)", self.props.name, self.props.arch, crate::kernels::AMD_ARCHS),
            });
        }
        check(&format!("hipModuleLoadData({name})"), s)?;
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        mods.push(m as usize);
        Ok((mods.len() - 1) as u64)
    }

    fn function(&self, module: u64, symbol: &str) -> Result<u64> {
        let m = *self.modules.lock().unwrap_or_else(|e| e.into_inner()).get(module as usize).ok_or_else(|| Error::Device { code: -1, message: format!("no module {module}") })?;
        let name = CString::new(symbol).map_err(|_| Error::InvalidArgument(format!("kernel name {symbol:?}")))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: a loaded module and a NUL-terminated name.
        check("hipModuleGetFunction", unsafe { sys::hipModuleGetFunction(&mut f, m as sys::hipModule_t, name.as_ptr()) })?;
        Ok(f as usize as u64)
    }

    fn allow_dynamic_shared(&self, _f: u64, _bytes: usize) -> Result<()> {
        // AMD launches may use up to the device's LDS per block without an opt-in.
        Ok(())
    }

    unsafe fn launch(&self, f: u64, grid: [u32; 3], block: u32, shared: u32, s: u64, params: *mut c_void, size: usize) -> Result<()> {
        let mut size = size;
        // HIP's `extra` launch form: the argument buffer is the one parameter struct.
        let mut extra = [
            1usize as *mut c_void, // HIP_LAUNCH_PARAM_BUFFER_POINTER
            params,
            2usize as *mut c_void, // HIP_LAUNCH_PARAM_BUFFER_SIZE
            &mut size as *mut usize as *mut c_void,
            3usize as *mut c_void, // HIP_LAUNCH_PARAM_END
        ];
        // SAFETY: the caller's contract (`f` takes exactly the struct at `params`); HIP copies
        // the argument buffer at launch, so `size` and `extra` may go afterwards.
        check("hipModuleLaunchKernel", unsafe {
            sys::hipModuleLaunchKernel(f as usize as sys::hipFunction_t, grid[0], grid[1], grid[2], block, 1, 1, shared, stream(s), std::ptr::null_mut(), extra.as_mut_ptr())
        })
    }
}
