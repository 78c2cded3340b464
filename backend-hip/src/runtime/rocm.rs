//! AMD: the HIP runtime through `hip-sys` (feature `rocm`; links `libamdhip64`). Mirrors
//! [`super::cuda`]: one non-blocking stream, stream-ordered allocation where the device has
//! memory pools (plain `hipMalloc`/`hipFree` otherwise), pinned staging for per-call metadata,
//! code objects loaded with `hipModuleLoadData` (one bundle per kernel file holding every
//! `ATTNFORGE_AMD_ARCHS` target), kernels launched with their one by-value parameter struct.
//!
//! Built in CI against ROCm 5.2's `libamdhip64-dev`; no AMD GPU has run it yet (see README).

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use backend_api::{Error, Result};
use hip_sys::hiprt as sys;

use super::KernelArgs;
use crate::kernels;

fn check(call: &str, status: sys::hipError_t) -> Result<()> {
    if status == sys::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static NUL-terminated string for every status.
    let text = unsafe { CStr::from_ptr(sys::hipGetErrorString(status)) }.to_string_lossy().into_owned();
    Err(Error::Device { code: status as i64, message: format!("{call}: {text}") })
}

fn open_err(call: &str, status: sys::hipError_t) -> String {
    match check(call, status) {
        Err(Error::Device { message, .. }) => message,
        _ => String::new(),
    }
}

const STAGE_BYTES: usize = 1 << 20;
const STAGE_SLOTS: usize = 8;

struct StagingSlot {
    host: *mut u8,
    done: sys::hipEvent_t,
}

struct Function(sys::hipFunction_t);

/// An opened AMD GPU.
pub(super) struct Gpu {
    ordinal: usize,
    stream: sys::hipStream_t,
    pools: bool,
    staging: Vec<Mutex<StagingSlot>>,
    next_slot: AtomicUsize,
    modules: Vec<(&'static str, sys::hipModule_t)>,
    functions: Mutex<HashMap<String, Function>>,
    pub name: String,
    pub sm_count: u32,
    pub warp_size: u32,
}

// SAFETY: HIP handles (stream, modules, functions, events, pinned memory) may be used from any
// host thread; the staging slots and the function cache are behind mutexes.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// Device memory, freed when dropped (stream-ordered where the device has memory pools).
#[derive(Debug)]
pub(super) struct DeviceBuffer {
    ptr: *mut c_void,
    len: usize,
    stream: sys::hipStream_t,
    pools: bool,
}

// SAFETY: a device address is plain data; freeing it is allowed from any thread.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from hipMalloc(Async) and is freed once. Errors cannot be reported
        // from drop; a failed free leaks.
        unsafe {
            let _ = if self.pools { sys::hipFreeAsync(self.ptr, self.stream) } else { sys::hipFree(self.ptr) };
        }
    }
}

impl DeviceBuffer {
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Gpu {
    pub fn open(ordinal: usize) -> std::result::Result<Gpu, String> {
        let Some(images) = kernels::AMD else {
            return Err(kernels::AMD_MISSING.to_string());
        };
        // SAFETY: plain FFI calls with valid out-pointers; every status is checked.
        unsafe {
            let s = sys::hipInit(0);
            if s != sys::hipError_t::hipSuccess {
                return Err(format!("no usable ROCm driver ({})", open_err("hipInit", s)));
            }
            let mut count = 0;
            check("hipGetDeviceCount", sys::hipGetDeviceCount(&mut count)).map_err(|e| e.to_string())?;
            if count <= ordinal as i32 {
                return Err(format!("no ROCm device {ordinal} ({count} found)"));
            }
            check("hipSetDevice", sys::hipSetDevice(ordinal as i32)).map_err(|e| e.to_string())?;
            let mut name = [0 as std::ffi::c_char; 256];
            check("hipDeviceGetName", sys::hipDeviceGetName(name.as_mut_ptr(), 255, ordinal as i32)).map_err(|e| e.to_string())?;
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let mut cus = 0;
            check(
                "hipDeviceGetAttribute(MultiprocessorCount)",
                sys::hipDeviceGetAttribute(&mut cus, sys::hipDeviceAttribute_t::hipDeviceAttributeMultiprocessorCount, ordinal as i32),
            )
            .map_err(|e| e.to_string())?;
            let mut warp_size = 0;
            check(
                "hipDeviceGetAttribute(WarpSize)",
                sys::hipDeviceGetAttribute(&mut warp_size, sys::hipDeviceAttribute_t::hipDeviceAttributeWarpSize, ordinal as i32),
            )
            .map_err(|e| e.to_string())?;
            let mut pools = 0;
            let pools = sys::hipDeviceGetAttribute(&mut pools, sys::hipDeviceAttribute_t::hipDeviceAttributeMemoryPoolsSupported, ordinal as i32)
                == sys::hipError_t::hipSuccess
                && pools != 0;
            let mut stream = std::ptr::null_mut();
            check("hipStreamCreateWithFlags", sys::hipStreamCreateWithFlags(&mut stream, sys::hipStreamNonBlocking)).map_err(|e| e.to_string())?;
            let mut modules = Vec::new();
            for (file, bytes) in images {
                let mut m = std::ptr::null_mut();
                let s = sys::hipModuleLoadData(&mut m, bytes.as_ptr() as *const c_void);
                if s == sys::hipError_t::hipErrorNoBinaryForGpu {
                    return Err(format!(
                        "{name} has no code object in this build (built for {}; set ATTNFORGE_AMD_ARCHS and rebuild)",
                        kernels::AMD_ARCHS
                    ));
                }
                check(&format!("hipModuleLoadData({file})"), s).map_err(|e| e.to_string())?;
                modules.push((*file, m));
            }
            let mut staging = Vec::with_capacity(STAGE_SLOTS);
            for _ in 0..STAGE_SLOTS {
                let mut host = std::ptr::null_mut();
                check("hipHostMalloc", sys::hipHostMalloc(&mut host, STAGE_BYTES, 0)).map_err(|e| e.to_string())?;
                let mut done = std::ptr::null_mut();
                check("hipEventCreateWithFlags", sys::hipEventCreateWithFlags(&mut done, sys::hipEventDisableTiming)).map_err(|e| e.to_string())?;
                staging.push(Mutex::new(StagingSlot { host: host as *mut u8, done }));
            }
            Ok(Gpu {
                ordinal,
                stream,
                pools,
                staging,
                next_slot: AtomicUsize::new(0),
                modules,
                functions: Mutex::new(HashMap::new()),
                name,
                sm_count: cus as u32,
                warp_size: warp_size as u32,
            })
        }
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let mut ptr = std::ptr::null_mut();
        let bytes = bytes.max(1);
        // SAFETY: valid out-pointer; the memory is uninitialised and every user writes first.
        unsafe {
            if self.pools {
                check("hipMallocAsync", sys::hipMallocAsync(&mut ptr, bytes, self.stream))?;
            } else {
                check("hipMalloc", sys::hipMalloc(&mut ptr, bytes))?;
            }
        }
        Ok(DeviceBuffer { ptr, len: bytes, stream: self.stream, pools: self.pools })
    }

    pub fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        let mut b = self.alloc(data.len())?;
        if data.is_empty() || data.len() > STAGE_BYTES {
            self.write(&mut b, 0, data)?;
            return Ok(b);
        }
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % STAGE_SLOTS;
        let slot = self.staging[i].lock().map_err(|_| Error::Device { code: -1, message: "staging lock poisoned".into() })?;
        // SAFETY: the slot's pinned bytes are rewritten only after its last copy completed
        // (`done`, recorded right after that copy on the same stream); `b` holds data.len() bytes.
        unsafe {
            check("hipEventSynchronize (staging)", sys::hipEventSynchronize(slot.done))?;
            std::ptr::copy_nonoverlapping(data.as_ptr(), slot.host, data.len());
            check("hipMemcpyHtoDAsync", sys::hipMemcpyHtoDAsync(b.ptr, slot.host as *mut c_void, data.len(), self.stream))?;
            check("hipEventRecord", sys::hipEventRecord(slot.done, self.stream))?;
        }
        Ok(b)
    }

    pub fn write(&self, buf: &mut DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if offset + data.len() > buf.len {
            return Err(Error::InvalidArgument(format!("device write of {} bytes at {offset} into {} bytes", data.len(), buf.len)));
        }
        // SAFETY: the range lies inside `buf`; the host copy is complete when the stream
        // synchronises, before `data` can go away.
        unsafe {
            let dst = (buf.ptr as *mut u8).add(offset) as *mut c_void;
            check("hipMemcpyHtoDAsync", sys::hipMemcpyHtoDAsync(dst, data.as_ptr() as *mut c_void, data.len(), self.stream))?;
        }
        self.synchronize()
    }

    pub fn read(&self, buf: &DeviceBuffer, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        if len > buf.len {
            return Err(Error::InvalidArgument(format!("device read of {len} bytes from {} bytes", buf.len)));
        }
        if len > 0 {
            // SAFETY: `out` holds len bytes and outlives the copy (synchronised below).
            unsafe { check("hipMemcpyDtoHAsync", sys::hipMemcpyDtoHAsync(out.as_mut_ptr() as *mut c_void, buf.ptr, len, self.stream))? };
        }
        self.synchronize()?;
        Ok(out)
    }

    pub fn copy(&self, dst: &mut DeviceBuffer, src: &DeviceBuffer, bytes: usize) -> Result<()> {
        // SAFETY: the caller checked both lengths.
        unsafe { check("hipMemcpyDtoDAsync", sys::hipMemcpyDtoDAsync(dst.ptr, src.ptr, bytes, self.stream)) }
    }

    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream lives as long as self.
        unsafe { check("hipStreamSynchronize", sys::hipStreamSynchronize(self.stream)) }
    }

    fn function(&self, name: &str) -> Result<sys::hipFunction_t> {
        let mut cache = self.functions.lock().map_err(|_| Error::Device { code: -1, message: "kernel cache lock poisoned".into() })?;
        if let Some(f) = cache.get(name) {
            return Ok(f.0);
        }
        let cname = CString::new(name).map_err(|_| Error::InvalidArgument(format!("kernel name {name:?}")))?;
        for (_, m) in &self.modules {
            let mut f = std::ptr::null_mut();
            // SAFETY: valid module and NUL-terminated name.
            if unsafe { sys::hipModuleGetFunction(&mut f, *m, cname.as_ptr()) } == sys::hipError_t::hipSuccess {
                cache.insert(name.to_string(), Function(f));
                return Ok(f);
            }
        }
        Err(Error::Device { code: -1, message: format!("kernel {name} is missing from the embedded modules") })
    }

    pub fn launch<P: KernelArgs>(&self, name: &str, grid: (u32, u32, u32), block: u32, shared: u32, params: P) -> Result<()> {
        let f = self.function(name)?;
        let mut arg = params;
        let mut size = std::mem::size_of::<P>();
        // HIP's `extra` launch form: the argument buffer is the one parameter struct.
        let mut extra = [
            1usize as *mut c_void, // HIP_LAUNCH_PARAM_BUFFER_POINTER
            &mut arg as *mut P as *mut c_void,
            2usize as *mut c_void, // HIP_LAUNCH_PARAM_BUFFER_SIZE
            &mut size as *mut usize as *mut c_void,
            3usize as *mut c_void, // HIP_LAUNCH_PARAM_END
        ];
        // SAFETY: the kernel takes exactly one parameter of P's layout (KernelArgs), every
        // address in it points to live device memory, and `arg`/`size` outlive the call (HIP
        // copies the argument buffer at launch).
        unsafe {
            check(
                &format!("launching {name}"),
                sys::hipModuleLaunchKernel(f, grid.0, grid.1, grid.2, block, 1, 1, shared, self.stream, std::ptr::null_mut(), extra.as_mut_ptr()),
            )
        }
    }

    pub fn time(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let (mut start, mut end) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: events created here, destroyed below; out-pointers valid.
        unsafe {
            check("hipEventCreate", sys::hipEventCreate(&mut start))?;
            check("hipEventCreate", sys::hipEventCreate(&mut end))?;
            let r = (|| {
                check("hipEventRecord", sys::hipEventRecord(start, self.stream))?;
                for _ in 0..reps {
                    f()?;
                }
                check("hipEventRecord", sys::hipEventRecord(end, self.stream))?;
                check("hipEventSynchronize", sys::hipEventSynchronize(end))?;
                let mut ms = 0f32;
                check("hipEventElapsedTime", sys::hipEventElapsedTime(&mut ms, start, end))?;
                Ok(ms as f64 / reps.max(1) as f64)
            })();
            sys::hipEventDestroy(start);
            sys::hipEventDestroy(end);
            r
        }
    }
}
