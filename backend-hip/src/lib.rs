//! # attnforge GPU backends (`hip-*`)
//!
//! Kernels are written once in HIP (`kernels/*.hip`, vendor differences in
//! `kernels/include/af_vendor.h`), compiled ahead of time by `build.rs` for NVIDIA (nvcc:
//! sm_80, sm_90, compute_90 PTX) and AMD (hipcc: gfx90a, gfx1030) and embedded in this crate.
//! NVIDIA GPUs run through the CUDA driver API (cudarc, loaded dynamically) and, with the `rocm`
//! feature, AMD GPUs through the HIP runtime (hip-sys, linking ROCm's libamdhip64). The AMD path
//! is built in CI but has not run on an AMD GPU yet (none is available to the project).
//!
//! Registered implementations (the same primitives; they differ in the composite step
//! [`AttentionBackend::rope_append_attend`] and in how attention runs), see [`Strategy`]:
//! - `hip-flash`: RoPE, KV append, fused RoPE + append, FlashAttention-2 tiled prefill and
//!   split-K flash-decoding (matrix cores for f16/bf16), all dtypes computing in f32. Its step
//!   rotates Q in place and writes rotated K and V into the cache in one kernel, then attends.
//! - `hip-hybrid`: K rotated once where it is written (fused RoPE + append, Q untouched), Q
//!   rotated inside attention as it is loaded: no separate Q pass.
//! - `hip-fused`: the cache keeps K unrotated with each slot's position; attention rotates Q and
//!   every cached key on the fly. A context shift ([`Backend::shift_positions`]) then only
//!   rewrites positions. Length-dependent RoPE scalings are unsupported for its step (a key's
//!   table would change with the context).
//! - `hip-separate`: the unfused baseline: RoPE kernel, append kernel, and attention as three
//!   kernels (scores, softmax, P.V) over a score buffer; any even head_dim up to 4096.
//!
//! Inside, one layer builds on the one below and never the other way round:
//! `contract` (the kernels' structs, limits and entry points, generated from
//! `kernels/include/af_contract.h`) -> `runtime` (the only `unsafe`: driver, device buffers,
//! views, typed launchers that check every byte a kernel touches) -> `plan` (capability and
//! dispatch: the exact launches from the device's properties, or typed reasons) -> `step` (each
//! op and each strategy's composite step) -> this file (the trait).
//!
//! Nothing here falls back to the host: a problem the kernels cannot run is `Unsupported` with
//! the reasons of the same `plan` that picks the kernels. No public function takes or returns
//! a device address: the runtime, its buffers and the launchers are private to the crate.
//!
//! ```compile_fail
//! // The runtime is not reachable from outside the crate.
//! use attnforge_hip::runtime::Gpu;
//! ```
//!
//! ```compile_fail
//! // Nor is device storage: a tensor cannot be assembled around a foreign buffer.
//! use attnforge_hip::storage::GpuTensor;
//! ```
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod contract;
mod plan;
mod runtime;
mod step;
mod storage;

#[doc(hidden)]
pub mod bench;

// Host buffers go to the device as they lie in memory (bytemuck casts): the devices are
// little-endian, so the host must be.
#[cfg(target_endian = "big")]
compile_error!("attnforge-hip: host buffers are copied to the device as they are; a big-endian host is not supported");

/// Code objects embedded by build.rs (module name, bytes), the architectures they were built
/// for and the entry points ptxas compiled.
#[allow(missing_docs)]
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use plan::Strategy;
/// The cudarc this crate is built with (use it for the memory and streams you hand in, so the
/// types match).
#[cfg(feature = "cudarc")]
pub use cudarc;
pub use runtime::foreign::{ForeignMemory, ForeignStream};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attnforge_api::registry::{BackendEntry, DeviceBackendEntry};
use attnforge_api::*;

use plan::{plan, OpPlan};
use runtime::Gpu;
use step::tables::RopeTables;
use step::Ctx;
use storage::{decode, encode, i32_bytes, pool_state_mut, tensor, writable, GpuPoolState, GpuTensor};

/// A GPU backend on one device.
pub struct HipBackend {
    name: &'static str,
    strategy: Strategy,
    gpu: Gpu,
    tables: RopeTables,
}

impl std::fmt::Debug for HipBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HipBackend({}, {:?})", self.name, self.gpu)
    }
}

/// The process's GPUs with their kernels loaded, once per ordinal, with the device's default
/// stream (or the reason it cannot be opened): every backend instance on a device shares its
/// modules; shared instances share the default stream, others open their own.
fn device(ordinal: usize) -> std::result::Result<Gpu, String> {
    static DEVICES: Mutex<Option<HashMap<usize, std::result::Result<Gpu, String>>>> = Mutex::new(None);
    let mut gpus = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    gpus.get_or_insert_with(HashMap::new).entry(ordinal).or_insert_with(|| Gpu::on(&Gpu::load(ordinal)?).map_err(|e| e.to_string())).clone()
}

/// GPUs the HIP backends can run on (0 without a driver, a GPU or kernels for it).
pub fn device_count() -> usize {
    runtime::device_count()
}

/// One GPU as the backends see it (`attnforge list`): what the plans are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    /// Ordinal.
    pub ordinal: usize,
    /// `NVIDIA` or `AMD`.
    pub vendor: &'static str,
    /// As the driver reports it.
    pub name: String,
    /// `sm_90`, `gfx90a`, ...
    pub arch: String,
    /// Streaming multiprocessors (NVIDIA) or compute units (AMD).
    pub sm_count: usize,
    /// Lanes of a warp or wavefront.
    pub warp_size: usize,
    /// Shared memory a block may use (with the opt-in).
    pub smem_per_block: usize,
    /// Whether the matrix-core kernels run on matrix instructions here.
    pub matrix_cores: bool,
    /// Whether the Hopper prefill (warpgroup MMA fed by TMA) runs here: an sm_90 GPU and a build
    /// with sm_90 in `ATTNFORGE_CUDA_ARCHS`.
    pub hopper_prefill: bool,
}

/// Every GPU the backends can open, with its properties, or per ordinal the reason it cannot
/// be opened (no kernels for its arch, a driver error).
pub fn devices() -> Vec<std::result::Result<DeviceSummary, String>> {
    (0..device_count().max(1))
        .map(|i| {
            device(i).map(|g| {
                let p = g.props();
                DeviceSummary {
                    ordinal: i,
                    vendor: match p.vendor {
                        crate::contract::Vendor::Nvidia => "NVIDIA",
                        crate::contract::Vendor::Amd => "AMD",
                    },
                    name: p.name.clone(),
                    arch: p.arch.clone(),
                    sm_count: p.sm_count,
                    warp_size: p.warp_size,
                    smem_per_block: p.smem_per_block_optin,
                    matrix_cores: p.matrix_cores,
                    hopper_prefill: p.wgmma,
                }
            })
        })
        .collect()
}

impl HipBackend {
    /// Opens backend `name` with `strategy` on GPU 0, or says why it is unavailable here.
    pub fn open(name: &'static str, strategy: Strategy) -> std::result::Result<Self, String> {
        Self::open_on(name, strategy, 0)
    }

    /// Opens backend `name` with `strategy` on GPU `ordinal`, on the device's default stream
    /// (a non-blocking stream shared by the instances opened this way; the device's kernels are
    /// loaded once per process), or says why it cannot.
    pub fn open_on(name: &'static str, strategy: Strategy, ordinal: usize) -> std::result::Result<Self, String> {
        Ok(HipBackend { name, strategy, gpu: device(ordinal)?, tables: RopeTables::default() })
    }

    /// [`HipBackend::open_on`] with a new non-blocking stream of its own: tensors and caches it
    /// makes stay with it (other instances refuse them).
    pub fn open_with_own_stream(name: &'static str, strategy: Strategy, ordinal: usize) -> std::result::Result<Self, String> {
        let gpu = Gpu::on(device(ordinal)?.loaded()).map_err(|e| e.to_string())?;
        Ok(HipBackend { name, strategy, gpu, tables: RopeTables::default() })
    }

    /// Opens backend `name` on GPU `ordinal` on the caller's stream: every op is queued on it,
    /// ordered with the caller's own work there, and nothing synchronises it behind the
    /// caller's back (reads to the host wait for it, as they must).
    pub fn open_on_stream(name: &'static str, strategy: Strategy, ordinal: usize, stream: ForeignStream) -> std::result::Result<Self, String> {
        let gpu = Gpu::on_foreign(device(ordinal)?.loaded(), stream).map_err(|e| e.to_string())?;
        Ok(HipBackend { name, strategy, gpu, tables: RopeTables::default() })
    }

    /// A dense tensor of `shape` and `dtype` over caller memory (an engine's buffer), without a
    /// copy: length, alignment and device are checked; attnforge never frees it. Take views of
    /// it ([`Backend::view`]) for q, k and v in one fused QKV buffer or one layer of a pool.
    pub fn borrow(&self, mem: ForeignMemory, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let row = shape.iter().skip(1).product();
        self.borrow_strided(mem, shape, row, dtype)
    }

    /// [`HipBackend::borrow`] with rows (the outermost dimension) `row_stride` elements apart:
    /// the stride must hold a row, and a strided one must keep every row 16-byte aligned (the
    /// kernels move 16 bytes at a time); the memory must hold `(rows - 1) * row_stride + row`
    /// elements.
    pub fn borrow_strided(&self, mem: ForeignMemory, shape: &[usize], row_stride: usize, dtype: DType) -> Result<Tensor> {
        check_stride_alignment(shape, row_stride, dtype)?;
        let buf = Arc::new(self.gpu.borrow(mem)?);
        Tensor::from_storage_strided(shape.to_vec(), row_stride, dtype, self.device(), Box::new(GpuTensor { buf, offset: 0, dtype }))
    }

    /// A tensor over a cudarc slice or view (`&CudaSlice<T>`, `&CudaView<T>`), without a copy,
    /// for as long as the borrow: `shape` from its first element, rows `row_stride` elements
    /// apart; read-only (an op that would write it is refused). The instance must run on the
    /// slice's stream ([`HipBackend::open_on_stream`] with [`ForeignStream::from_cudarc`]), so
    /// attnforge's work and cudarc's free of the memory stay ordered; `T`'s size must be the
    /// dtype's. When the [`Borrowed`] is dropped the tensor (and any view of it) is refused by
    /// every op.
    #[cfg(feature = "cudarc")]
    pub fn borrow_cudarc<'a, T, S>(&self, slice: &'a S, shape: &[usize], row_stride: usize, dtype: DType) -> Result<Borrowed<'a>>
    where
        S: cudarc::driver::DevicePtr<T>,
    {
        let stream = slice.stream().clone();
        let (ptr, guard) = slice.device_ptr(&stream);
        drop(guard);
        self.lease_cudarc::<T>(ptr, slice.num_bytes(), &stream, shape, row_stride, dtype, true)
    }

    /// [`HipBackend::borrow_cudarc`] through a mutable borrow (`&mut CudaSlice<T>`,
    /// `&mut CudaViewMut<T>`): ops may write it (outputs, KV pools).
    #[cfg(feature = "cudarc")]
    pub fn borrow_cudarc_mut<'a, T, S>(&self, slice: &'a mut S, shape: &[usize], row_stride: usize, dtype: DType) -> Result<Borrowed<'a>>
    where
        S: cudarc::driver::DevicePtrMut<T>,
    {
        let stream = slice.stream().clone();
        let bytes = slice.num_bytes();
        let (ptr, guard) = slice.device_ptr_mut(&stream);
        drop(guard);
        self.lease_cudarc::<T>(ptr, bytes, &stream, shape, row_stride, dtype, false)
    }

    #[cfg(feature = "cudarc")]
    #[allow(clippy::too_many_arguments)]
    fn lease_cudarc<'a, T>(&self, ptr: u64, bytes: usize, stream: &std::sync::Arc<cudarc::driver::CudaStream>, shape: &[usize], row_stride: usize, dtype: DType, read_only: bool) -> Result<Borrowed<'a>> {
        if std::mem::size_of::<T>() != dtype.size() {
            return Err(Error::InvalidArgument(format!("a cudarc slice of {} ({} bytes each) viewed as {dtype}", std::any::type_name::<T>(), std::mem::size_of::<T>())));
        }
        if stream.cu_stream() as usize as u64 != self.gpu.stream_raw() {
            return Err(Error::InvalidArgument(format!(
                "{}: this instance does not run on the slice's stream; open it there (HipBackend::open_on_stream with ForeignStream::from_cudarc) so attnforge's work and cudarc's free of the memory are ordered",
                self.name
            )));
        }
        check_stride_alignment(shape, row_stride, dtype)?;
        let lease = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let buf = Arc::new(self.gpu.borrow(ForeignMemory::leased(ptr, bytes, lease.clone(), read_only))?);
        let tensor = Tensor::from_storage_strided(shape.to_vec(), row_stride, dtype, self.device(), Box::new(GpuTensor { buf, offset: 0, dtype }))?;
        Ok(Borrowed { tensor, lease, _borrow: std::marker::PhantomData })
    }

    /// The fusion strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { gpu: &self.gpu, name: self.name, tables: &self.tables }
    }

    fn op_plan(&self, op: Op, problem: &ProblemDesc) -> Result<OpPlan> {
        let p = plan(self.gpu.props(), self.strategy, op, problem).map_err(|r| Error::Unsupported {
            backend: self.name.into(),
            op: op.name().into(),
            reasons: r.iter().map(ToString::to_string).collect(),
        })?;
        // The launches chosen (kernels, tiles, splits, pipeline depth), inside the op's span.
        tracing::debug!(backend = self.name, op = op.name(), plan = ?p, "plan");
        Ok(p)
    }

    /// Runs `f` (an op's launches). With the `device-time` feature, outside a graph capture,
    /// the launches are bracketed by device events and their time is a tracing event
    /// (`device_ms`); this waits for the device, so it is for profiling runs only.
    fn timed(&self, op: Op, f: impl FnOnce() -> Result<()>) -> Result<()> {
        #[cfg(feature = "device-time")]
        if !self.gpu.capturing() && tracing::enabled!(tracing::Level::DEBUG) {
            let mut f = Some(f);
            let mut result = Ok(());
            let ms = self.gpu.time(1, || {
                if let Some(f) = f.take() {
                    result = f();
                }
                Ok(())
            })?;
            tracing::debug!(backend = self.name, op = op.name(), device_ms = ms, "device time");
            return result;
        }
        let _ = op;
        f()
    }

    fn mismatch(&self, op: Op) -> Error {
        Error::Device { code: -1, message: format!("{}: the plan for {op} has no launch of that kind", self.name) }
    }
}

/// A tensor over memory borrowed for `'a` (a cudarc slice: [`HipBackend::borrow_cudarc`]). Use
/// it as a `Tensor` (it derefs to one). When it is dropped the borrow ends, and every op
/// refuses the tensor and any view taken of it (a tensor moved out of it with `mem::replace`
/// included), so attnforge never touches the memory after the borrow.
#[cfg(feature = "cudarc")]
#[derive(Debug)]
pub struct Borrowed<'a> {
    tensor: Tensor,
    lease: Arc<std::sync::atomic::AtomicBool>,
    _borrow: std::marker::PhantomData<&'a mut ()>,
}

#[cfg(feature = "cudarc")]
impl std::ops::Deref for Borrowed<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

#[cfg(feature = "cudarc")]
impl std::ops::DerefMut for Borrowed<'_> {
    fn deref_mut(&mut self) -> &mut Tensor {
        &mut self.tensor
    }
}

#[cfg(feature = "cudarc")]
impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.lease.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A strided view's rows must stay 16-byte aligned (the kernels load 16 bytes at a time).
fn check_stride_alignment(shape: &[usize], row_stride: usize, dtype: DType) -> Result<()> {
    let row: usize = shape.iter().skip(1).product();
    if shape.first().is_some_and(|&n| n > 1) && row_stride != row && !(row_stride * dtype.size()).is_multiple_of(16) {
        return Err(Error::InvalidArgument(format!("row stride of {row_stride} {dtype} elements is not a multiple of 16 bytes (the kernels load rows 16 bytes at a time)")));
    }
    Ok(())
}

impl AttentionBackend for HipBackend {
    fn name(&self) -> &str {
        self.name
    }

    fn device(&self) -> Device {
        self.gpu.device()
    }

    fn supports(&self, op: Op, problem: &ProblemDesc) -> std::result::Result<(), Vec<String>> {
        plan(self.gpu.props(), self.strategy, op, problem).map(|_| ()).map_err(|r| r.iter().map(ToString::to_string).collect())
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d)).ok_or_else(|| Error::InvalidArgument(format!("shape {shape:?} overflows")))?;
        let buf = Arc::new(self.gpu.alloc(bytes)?);
        Tensor::from_storage(shape.to_vec(), dtype, self.device(), Box::new(GpuTensor { buf, offset: 0, dtype }))
    }

    /// Dense: one copy. Strided: one copy per row (memory between rows is another view's).
    fn write(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        let (dtype, row, contiguous) = (dst.dtype(), dst.row_len(), dst.is_contiguous());
        let offsets: Vec<usize> = dst.row_offsets().collect();
        let t = writable(dst, "destination tensor", self.name, &self.gpu)?;
        let bytes = encode(src, dtype);
        if contiguous {
            return self.gpu.write(t.view_mut(), 0, &bytes);
        }
        let rb = row * dtype.size();
        for (i, o) in offsets.into_iter().enumerate() {
            self.gpu.write(t.view_mut(), o * dtype.size(), &bytes[i * rb..(i + 1) * rb])?;
        }
        Ok(())
    }

    /// The span from the first to the last row in one copy, rows picked on the host.
    fn read(&self, src: &Tensor) -> Result<Vec<f32>> {
        let t = tensor(src, "tensor", self.name, &self.gpu)?;
        let es = src.dtype().size();
        let all = self.gpu.read(t.view(), src.span() * es)?;
        if src.is_contiguous() {
            return Ok(decode(&all[..src.byte_len()], src.dtype()));
        }
        let rb = src.row_len() * es;
        let rows: Vec<u8> = src.row_offsets().flat_map(|o| all[o * es..o * es + rb].iter().copied()).collect();
        Ok(decode(&rows, src.dtype()))
    }

    fn fill(&self, dst: &mut Tensor, value: f32) -> Result<()> {
        let (rows, row, stride, dtype) = (dst.shape().first().copied().unwrap_or(1), dst.row_len(), dst.row_stride(), dst.dtype());
        let t = writable(dst, "tensor", self.name, &self.gpu)?;
        runtime::launch::kv_append::fill(&self.gpu, dtype, t.view_mut(), rows, row, stride, value)
    }

    /// A view shares the allocation (`Arc`): it keeps it alive, and borrowed memory stays the
    /// caller's. Strided rows must stay 16-byte aligned, and so must the offset.
    fn view(&self, base: &Tensor, offset: usize, shape: &[usize], row_stride: usize) -> Result<Tensor> {
        let b = tensor(base, "view base", self.name, &self.gpu)?;
        let dtype = base.dtype();
        check_stride_alignment(shape, row_stride, dtype)?;
        let at = b.offset + offset * dtype.size();
        if !at.is_multiple_of(16) {
            return Err(Error::InvalidArgument(format!(
                "a view at element {offset} starts {at} bytes into its allocation, not a multiple of 16 (the kernels load 16 bytes at a time)"
            )));
        }
        Tensor::from_storage_strided(shape.to_vec(), row_stride, dtype, self.device(), Box::new(GpuTensor { buf: b.buf.clone(), offset: at, dtype }))
    }

    /// hip-fused: every slot starts "stored rotated" (i32::MIN): never written, never rotated.
    fn kv_pool_state(&self, spec: &KvCacheSpec) -> Result<Option<Box<dyn Storage>>> {
        if self.strategy != Strategy::Fused {
            return Ok(None);
        }
        let pos = self.gpu.upload(&i32_bytes(&try_vec(spec.pool_slots(), i32::MIN, "hip-fused slot positions")?))?;
        Ok(Some(Box::new(GpuPoolState { pos: Arc::new(pos), rope: None })))
    }

    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        match self.op_plan(Op::Rope, &a.desc)? {
            OpPlan::Rope(l) => self.timed(Op::Rope, || step::rope(&self.ctx(), &l, a)),
            _ => Err(self.mismatch(Op::Rope)),
        }
    }

    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        match self.op_plan(Op::KvAppend, &a.desc)? {
            OpPlan::Append(k) => self.timed(Op::KvAppend, || step::kv_append(&self.ctx(), k, a)),
            _ => Err(self.mismatch(Op::KvAppend)),
        }
    }

    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        match self.op_plan(Op::Attention, &a.desc)? {
            OpPlan::Attention(l) => self.timed(Op::Attention, || step::attention(&self.ctx(), &l, a)),
            _ => Err(self.mismatch(Op::Attention)),
        }
    }

    fn attention_plain(&self, a: PlainAttentionArgs<'_>) -> Result<()> {
        match self.op_plan(Op::AttentionPlain, &a.desc)? {
            OpPlan::Attention(l) => self.timed(Op::AttentionPlain, || step::attention_plain(&self.ctx(), &l, a)),
            _ => Err(self.mismatch(Op::AttentionPlain)),
        }
    }

    /// The composite step, per strategy (see the crate docs).
    fn rope_append_attend(&self, a: StepArgs<'_>) -> Result<()> {
        let OpPlan::Step { rope, append, attention } = self.op_plan(Op::Step, &a.desc)? else {
            return Err(self.mismatch(Op::Step));
        };
        let ctx = self.ctx();
        self.timed(Op::Step, || match (self.strategy, rope, append) {
            (Strategy::Flash, Some(r), None) => step::flash::step(&ctx, &r, &attention, a),
            (Strategy::Hybrid, Some(r), None) => step::hybrid::step(&ctx, &r, &attention, a),
            // hip-flash and hip-hybrid over FP8 pools take the unfused composition (RoPE in
            // place, the quantising append, attention): their fused kernel writes 16-bit rows.
            (Strategy::Separate | Strategy::Flash | Strategy::Hybrid, Some(r), Some(k)) => step::separate::step(&ctx, &r, k, &attention, a),
            (Strategy::Fused, None, Some(k)) => step::fused::step(&ctx, k, &attention, a),
            _ => Err(self.mismatch(Op::Step)),
        })
    }

    /// Context shift: keys stored rotated are rotated by `delta` in place (the rope kernel over
    /// the tokens' cache slots); hip-fused slots that hold a position only move it.
    fn merge_states(&self, a: MergeArgs<'_>) -> Result<()> {
        match self.op_plan(Op::MergeStates, &a.desc)? {
            OpPlan::MergeStates(k) => self.timed(Op::MergeStates, || step::merge_states(&self.ctx(), k, a)),
            _ => Err(self.mismatch(Op::MergeStates)),
        }
    }

    fn shift_positions(&self, a: ShiftArgs<'_>) -> Result<()> {
        match self.op_plan(Op::Shift, &a.desc)? {
            OpPlan::Rope(l) => self.timed(Op::Shift, || step::shift(&self.ctx(), &l, a)),
            _ => Err(self.mismatch(Op::Shift)),
        }
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }

    /// Device copies of whole pages (K, V and, for hip-fused, the slots' positions).
    fn copy_kv_pages(&self, c: &mut KvPools, pages: &[(u32, u32)]) -> Result<()> {
        let spec = c.spec().clone();
        let CacheLayout::Paged { page_size, num_pages } = spec.layout else {
            return Err(Error::InvalidArgument("copy_kv_pages on a contiguous KV cache".into()));
        };
        if let Some(&(f, t)) = pages.iter().find(|&&(f, t)| f as usize >= num_pages || t as usize >= num_pages || f == t) {
            return Err(Error::InvalidArgument(format!("copy of page {f} to page {t} in a pool of {num_pages} pages")));
        }
        let row = page_size * spec.num_kv_heads * spec.head_dim * spec.storage_dtype().size();
        {
            let (k, v) = (writable(c.k(), "K pool", self.name, &self.gpu)?, writable(c.v(), "V pool", self.name, &self.gpu)?);
            for &(f, t) in pages {
                let (f, t) = (f as usize, t as usize);
                self.gpu.copy_within(k.view_mut(), f * row, t * row, row)?;
                self.gpu.copy_within(v.view_mut(), f * row, t * row, row)?;
            }
        }
        if let Some(state) = pool_state_mut(c) {
            for &(f, t) in pages {
                let (f, t) = (f as usize, t as usize);
                self.gpu.copy_within(state.pos.slice_mut(0), f * page_size * 4, t * page_size * 4, page_size * 4)?;
            }
        }
        Ok(())
    }

    fn plan(&self, a: PlanArgs<'_>) -> Result<Box<dyn PlanState>> {
        let op = plan_op(a.op);
        let launches = self.op_plan(op, &a.desc)?;
        Ok(Box::new(step::planned::plan(&self.ctx(), launches, a)?))
    }

    fn plan_workspace_bytes(&self, a: PlanArgs<'_>) -> Result<usize> {
        let launches = self.op_plan(plan_op(a.op), &a.desc)?;
        step::planned::workspace_bytes(&launches, &a)
    }

    fn plan_in(&self, a: PlanArgs<'_>, workspace: Tensor) -> Result<Box<dyn PlanState>> {
        let op = plan_op(a.op);
        let launches = self.op_plan(op, &a.desc)?;
        Ok(Box::new(step::planned::plan_in(&self.ctx(), launches, a, workspace)?))
    }

    fn update_plan(&self, plan: &mut dyn PlanState, a: PlanArgs<'_>) -> Result<()> {
        let p = plan.as_any_mut().downcast_mut::<step::planned::GpuPlan>().ok_or_else(|| Error::InvalidArgument(format!("{}: the plan was not made by this backend", self.name)))?;
        step::planned::update(&self.ctx(), p, a)
    }

    fn run(&self, plan: &dyn PlanState, views: LayerViews<'_>, _: attnforge_api::args::Validated) -> Result<()> {
        let p = plan.as_any().downcast_ref::<step::planned::GpuPlan>().ok_or_else(|| Error::InvalidArgument(format!("{}: the plan was not made by this backend", self.name)))?;
        step::planned::run(&self.ctx(), self.strategy, p, views)
    }

    fn graph_support(&self) -> GraphSupport {
        // Every run of a plan only launches kernels whose arguments and grids the plan fixed.
        GraphSupport::Always
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Box<dyn GraphExec>> {
        Ok(Box::new(step::planned::Graph(self.gpu.capture(f)?)))
    }

    fn memory_info(&self) -> Result<Option<(usize, usize)>> {
        self.gpu.memory_info().map(Some)
    }
}

/// The capability-query op of a plan's op.
fn plan_op(op: PlanOp) -> Op {
    match op {
        PlanOp::Rope => Op::Rope,
        PlanOp::Append => Op::KvAppend,
        PlanOp::Attention => Op::Attention,
        PlanOp::Step => Op::Step,
    }
}

fn create(name: &'static str, strategy: Strategy) -> std::result::Result<Arc<dyn AttentionBackend>, String> {
    create_on(name, strategy, 0, false)
}

fn create_on(name: &'static str, strategy: Strategy, ordinal: usize, own_stream: bool) -> std::result::Result<Arc<dyn AttentionBackend>, String> {
    let b = if own_stream { HipBackend::open_with_own_stream(name, strategy, ordinal) } else { HipBackend::open_on(name, strategy, ordinal) };
    b.map(|b| Arc::new(b) as Arc<dyn AttentionBackend>)
}

/// Registry priorities (higher wins automatic selection), from the benchmark in
/// BENCHMARKS.md: hip-flash and hip-hybrid tie at realistic shapes (within run-to-run spread)
/// and hip-flash is 10-25 % faster on small problems, so it stays the default; hip-fused pays
/// for rotating every cached key in every attention call; hip-separate exists to be measured
/// against.
pub mod priority {
    /// `hip-flash`.
    pub const FLASH: i32 = 100;
    /// `hip-hybrid`.
    pub const HYBRID: i32 = 90;
    /// `hip-fused`.
    pub const FUSED: i32 = 50;
    /// `hip-separate`.
    pub const SEPARATE: i32 = 10;
}

/// Every name this crate registers.
pub const NAMES: &[&str] = &[FLASH, HYBRID, FUSED, SEPARATE];
const FLASH: &str = "hip-flash";
const HYBRID: &str = "hip-hybrid";
const FUSED: &str = "hip-fused";
const SEPARATE: &str = "hip-separate";

/// Registers a strategy under its name twice: for the registry's default device and for
/// [`DeviceBackendEntry`] (an engine's device and stream).
macro_rules! register {
    ($name:expr, $strategy:expr, $priority:expr, $description:expr) => {
        inventory::submit! {
            BackendEntry { name: $name, description: $description, priority: $priority, create: || create($name, $strategy) }
        }
        inventory::submit! {
            DeviceBackendEntry { name: $name, device_count, create_on: |ordinal, own| create_on($name, $strategy, ordinal, own) }
        }
    };
}

register!(
    FLASH,
    Strategy::Flash,
    priority::FLASH,
    "GPU: fused RoPE+append, FlashAttention-2 tiled prefill, split-K decode (matrix cores for f16/bf16); f32/f16/bf16"
);
register!(HYBRID, Strategy::Hybrid, priority::HYBRID, "GPU: K rotated once by fused RoPE+append, Q rotated inside attention as it is loaded (no Q pass)");
register!(FUSED, Strategy::Fused, priority::FUSED, "GPU: K cached unrotated with positions, RoPE on Q and every key inside attention; cheap context shift");
register!(
    SEPARATE,
    Strategy::Separate,
    priority::SEPARATE,
    "GPU baseline: RoPE, append, then scores / softmax / P.V kernels over a score buffer; head_dim up to 4096"
);

/// Referenced by the facade so the linker keeps this crate's registrations.
#[inline(never)]
pub fn link() {}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::fake::{fake_images, h100_props, FakeDriver};

    /// Two instances on one (fake) device: modules loaded once, a stream each, and tensors that
    /// stay with the instance that made them.
    #[test]
    fn instances_on_one_device_keep_their_own_streams_and_tensors() {
        let fake = FakeDriver::new(0, h100_props());
        let first = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
        let second = Gpu::on(first.loaded()).unwrap();
        assert!(Arc::ptr_eq(first.loaded(), second.loaded()));
        let make = |gpu: Gpu| Backend::new(Arc::new(HipBackend { name: FLASH, strategy: Strategy::Flash, gpu, tables: RopeTables::default() }));
        let (a, b) = (make(first), make(second));
        let rope = RopeConfig::new(64, 10000.0, 64);
        let mut qa = a.upload(&[0.5; 2 * 4 * 64], &[2, 4, 64], DType::F16).unwrap();
        let mut ka = a.upload(&[0.5; 2 * 2 * 64], &[2, 2, 64], DType::F16).unwrap();
        let mut qb = b.upload(&[0.5; 2 * 4 * 64], &[2, 4, 64], DType::F16).unwrap();
        let mut kb = b.upload(&[0.5; 2 * 2 * 64], &[2, 2, 64], DType::F16).unwrap();
        let before = fake.launches().len();
        let e = b.rope(&mut qa, &mut kb, &[0, 1], &rope).unwrap_err();
        assert_eq!(e.kind(), "WrongInstance", "{e}");
        let e = b.rope(&mut qb, &mut ka, &[0, 1], &rope).unwrap_err();
        assert_eq!(e.kind(), "WrongInstance", "{e}");
        let mut cache = a.create_kv_cache(&KvCacheSpec { num_seqs: 1, num_kv_heads: 2, head_dim: 64, dtype: DType::F16, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 4 } }).unwrap();
        let e = b.kv_append(&mut cache, &kb, &kb, &Batch::uniform(1, 2).unwrap()).unwrap_err();
        assert_eq!(e.kind(), "WrongInstance", "{e}");
        assert_eq!(fake.launches().len(), before, "a refused op launched something");
        // Each instance runs on what it made.
        b.rope(&mut qb, &mut kb, &[0, 1], &rope).unwrap();
        a.rope(&mut qa, &mut ka, &[0, 1], &rope).unwrap();
        assert_eq!(fake.launches().len(), before + 2);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    /// Page copies (fork's copy-on-write) are device copies of K, V and hip-fused's positions.
    #[test]
    fn pages_are_copied_on_the_device() {
        let fake = FakeDriver::new(0, h100_props());
        let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
        for strategy in [Strategy::Flash, Strategy::Fused] {
            let be = Backend::new(Arc::new(HipBackend { name: FLASH, strategy, gpu: gpu.clone(), tables: RopeTables::default() }));
            let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: 2, head_dim: 16, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Paged { page_size: 4, num_pages: 4 } };
            let mut c = be.create_kv_cache(&spec).unwrap();
            let n = 4 * 4 * 2 * 16;
            let pool = KvPool { k: (0..n).map(|i| i as f32).collect(), v: (0..n).map(|i| -(i as f32)).collect() };
            be.write_kv_pool(&mut c, &pool).unwrap();
            be.inner().copy_kv_pages(c.parts_mut().0, &[(1, 3)]).unwrap();
            let got = be.read_kv_pool(&c).unwrap();
            let row = 4 * 2 * 16;
            assert_eq!(&got.k[3 * row..4 * row], &pool.k[row..2 * row]);
            assert_eq!(&got.v[3 * row..4 * row], &pool.v[row..2 * row]);
            assert_eq!(&got.k[..3 * row], &pool.k[..3 * row], "other pages untouched");
            assert_eq!(be.inner().copy_kv_pages(c.parts_mut().0, &[(2, 2)]).unwrap_err().kind(), "InvalidArgument");
            assert_eq!(be.inner().copy_kv_pages(c.parts_mut().0, &[(0, 4)]).unwrap_err().kind(), "InvalidArgument");
        }
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    /// A run of a plan only launches: its driver calls are exactly the launches of the eager
    /// step (same kernels and grids), for every strategy; a capture queues nothing else, a
    /// replay is one graph launch, `update_plan` copies metadata and allocates nothing, and a
    /// failure inside a capture ends it.
    #[test]
    fn a_planned_run_only_launches_and_replays_as_a_graph() {
        for strategy in [Strategy::Flash, Strategy::Hybrid, Strategy::Fused, Strategy::Separate] {
            let fake = FakeDriver::new(0, h100_props());
            let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
            let be = Backend::new(Arc::new(HipBackend { name: FLASH, strategy, gpu, tables: RopeTables::default() }));
            let (h, hk, d, b) = (8usize, 2usize, 64usize, 4usize);
            let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 16, num_pages: 4 * b } };
            let rope = RopeConfig::new(d, 10000.0, 4096);
            let batch = Batch::uniform(b, 1).unwrap();
            let params = AttentionParams::causal(d);
            let w = (h + 2 * hk) * d;
            let fused = be.alloc(&[b, w], DType::BF16).unwrap();
            let (mut q, mut k) = (be.view(&fused, 0, &[b, h, d], w).unwrap(), be.view(&fused, h * d, &[b, hk, d], w).unwrap());
            let v = be.view(&fused, (h + hk) * d, &[b, hk, d], w).unwrap();
            let mut out = be.alloc(&[b, h, d], DType::BF16).unwrap();
            let mut pools = be.kv_pools(&spec, be.alloc(&spec.pool_shape(), DType::BF16).unwrap(), be.alloc(&spec.pool_shape(), DType::BF16).unwrap()).unwrap();
            let mut meta = KvMetadata::new(&spec).unwrap();
            for s in 0..b {
                meta.set_page_table(s, &(4 * s as u32..4 * s as u32 + 4).collect::<Vec<_>>()).unwrap();
            }
            let delta = |f: &mut dyn FnMut()| {
                let before = fake.calls();
                f();
                let mut d: Vec<(&str, usize)> = fake.calls().iter().map(|(&c, &n)| (c, n - before.get(c).copied().unwrap_or(0))).filter(|&(_, n)| n > 0).collect();
                d.sort();
                d
            };
            let symbols = |from: usize| fake.launches()[from..].iter().map(|l| (l.symbol.clone(), l.grid)).collect::<Vec<_>>();
            // An eager step (uploads the RoPE table), then the same step planned.
            meta.extend(&batch).unwrap();
            let positions: Vec<u32> = (0..b).map(|s| meta.seq_len(s) as u32 - 1).collect();
            let n0 = fake.launches().len();
            be.step(StepViews { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, pools: &mut pools, meta: &meta, batch: &batch, params, out: &mut out, sinks: None }).unwrap();
            let eager = symbols(n0);
            let mut plan = be.plan(StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: Some(32) }).unwrap();
            assert!(plan.workspace_bytes() > 0);
            let n1 = fake.launches().len();
            let run = delta(&mut || be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools, out: &mut out, sinks: None }).unwrap());
            assert_eq!(run, vec![("launch", eager.len())], "{strategy:?}: a run only launches");
            assert_eq!(symbols(n1), eager, "{strategy:?}: a run launches what the eager step does");
            // Captured once, replayed: the captured launches, no copy or allocation inside.
            let graph = be.capture(|| be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools, out: &mut out, sinks: None })).unwrap();
            assert!(fake.violations().is_empty(), "{strategy:?}: {:?}", fake.violations());
            // The next step: the metadata rewritten in place (one staged copy, no allocation).
            meta.extend(&batch).unwrap();
            let positions: Vec<u32> = (0..b).map(|s| meta.seq_len(s) as u32 - 1).collect();
            let upd = delta(&mut || be.update_plan(&mut plan, StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: Some(32) }).unwrap());
            assert!(upd.iter().all(|&(c, _)| c != "malloc" && c != "launch"), "{strategy:?}: update {upd:?}");
            let n2 = fake.launches().len();
            let replay = delta(&mut || graph.replay().unwrap());
            assert_eq!(replay, vec![("graph_launch", 1)]);
            assert_eq!(symbols(n2), eager, "{strategy:?}: the replay launches the captured kernels");
            // A failure inside a capture ends it and is returned; no graph.
            let e = be.capture(|| be.run(&plan, LayerViews::Attention { q: &q, pools: &pools, out: &mut out, sinks: None, lse: None })).unwrap_err();
            assert_eq!(e.kind(), "InvalidArgument", "{e}");
            be.synchronize().unwrap();
            assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        }
    }

    /// A captured graph holds every buffer its launches use: the tensors, pools and plan of a
    /// capture, dropped after it, stay allocated until the graph goes, so a replay never
    /// touches freed memory (the fake driver flags a replayed launch whose arguments point
    /// into freed memory), for every strategy.
    #[test]
    fn a_graph_keeps_what_it_uses_alive() {
        for strategy in [Strategy::Flash, Strategy::Hybrid, Strategy::Fused, Strategy::Separate] {
            let fake = FakeDriver::new(0, h100_props());
            let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
            let be = Backend::new(Arc::new(HipBackend { name: FLASH, strategy, gpu, tables: RopeTables::default() }));
            let (h, hk, d, b) = (8usize, 2usize, 64usize, 4usize);
            let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 16, num_pages: 4 * b } };
            let rope = RopeConfig::new(d, 10000.0, 4096);
            let batch = Batch::uniform(b, 1).unwrap();
            let params = AttentionParams::causal(d);
            let (mut q, mut k, v) = (be.alloc(&[b, h, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap());
            let mut out = be.alloc(&[b, h, d], DType::BF16).unwrap();
            let mut pools = be.kv_pools(&spec, be.alloc(&spec.pool_shape(), DType::BF16).unwrap(), be.alloc(&spec.pool_shape(), DType::BF16).unwrap()).unwrap();
            let mut meta = KvMetadata::new(&spec).unwrap();
            for s in 0..b {
                meta.set_page_table(s, &(4 * s as u32..4 * s as u32 + 4).collect::<Vec<_>>()).unwrap();
            }
            meta.extend(&batch).unwrap();
            let positions: Vec<u32> = (0..b).map(|s| meta.seq_len(s) as u32 - 1).collect();
            let plan = be.plan(StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: Some(32) }).unwrap();
            let graph = be.capture(|| be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools, out: &mut out, sinks: None })).unwrap();
            drop((plan, q, k, v, out, pools));
            be.synchronize().unwrap();
            graph.replay().unwrap();
            graph.replay().unwrap();
            be.synchronize().unwrap();
            assert!(fake.violations().is_empty(), "{strategy:?}: {:?}", fake.violations());
            drop(graph);
            be.synchronize().unwrap();
        }
    }

    /// A plan in a caller's workspace (`plan_in`) allocates nothing on the device, runs the
    /// launches of an own plan, and is refused with `StorageTooSmall` (nothing allocated) when
    /// the workspace is smaller than `plan_workspace_bytes`, for every strategy.
    #[test]
    fn a_plan_in_a_callers_workspace_allocates_nothing() {
        for strategy in [Strategy::Flash, Strategy::Hybrid, Strategy::Fused, Strategy::Separate] {
            let fake = FakeDriver::new(0, h100_props());
            let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
            let be = Backend::new(Arc::new(HipBackend { name: FLASH, strategy, gpu, tables: RopeTables::default() }));
            let (h, hk, d, b) = (8usize, 2usize, 64usize, 4usize);
            let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 16, num_pages: 4 * b } };
            let rope = RopeConfig::new(d, 10000.0, 4096);
            let batch = Batch::uniform(b, 1).unwrap();
            let params = AttentionParams::causal(d);
            let (mut q, mut k, v) = (be.alloc(&[b, h, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap());
            let mut out = be.alloc(&[b, h, d], DType::BF16).unwrap();
            let mut pools = be.kv_pools(&spec, be.alloc(&spec.pool_shape(), DType::BF16).unwrap(), be.alloc(&spec.pool_shape(), DType::BF16).unwrap()).unwrap();
            let mut meta = KvMetadata::new(&spec).unwrap();
            for s in 0..b {
                meta.set_page_table(s, &(4 * s as u32..4 * s as u32 + 4).collect::<Vec<_>>()).unwrap();
            }
            meta.extend(&batch).unwrap();
            let positions: Vec<u32> = (0..b).map(|s| meta.seq_len(s) as u32 - 1).collect();
            let desc = || StepDesc { op: PlanOp::Step, spec: &spec, num_heads: h, meta: &meta, batch: &batch, positions: &positions, rope: Some(&rope), params, max_kv_len: Some(32) };
            // An own plan first (it also puts the RoPE table in the instance's cache).
            let own = be.plan(desc()).unwrap();
            let need = be.plan_workspace_bytes(desc()).unwrap();
            assert!(need >= own.workspace_bytes(), "{strategy:?}: {need} < {}", own.workspace_bytes());
            let small = be.alloc(&[need / 4], DType::BF16).unwrap();
            let ws = be.alloc(&[need.div_ceil(2)], DType::BF16).unwrap();
            let mallocs = || fake.calls().get("malloc").copied().unwrap_or(0);
            let m0 = mallocs();
            assert_eq!(be.plan_in(desc(), small).unwrap_err().kind(), "StorageTooSmall", "{strategy:?}");
            let plan = be.plan_in(desc(), ws).unwrap();
            assert_eq!(mallocs(), m0, "{strategy:?}: plan_in allocated");
            let launches = |p: &StepPlan, q: &mut Tensor, k: &mut Tensor, pools: &mut KvPools, out: &mut Tensor| {
                let n = fake.launches().len();
                be.run(p, LayerViews::Step { q, k, v: &v, pools, out, sinks: None }).unwrap();
                fake.launches()[n..].iter().map(|l| (l.symbol.clone(), l.grid)).collect::<Vec<_>>()
            };
            let a = launches(&own, &mut q, &mut k, &mut pools, &mut out);
            let w = launches(&plan, &mut q, &mut k, &mut pools, &mut out);
            assert_eq!(a, w, "{strategy:?}: a plan in a workspace launches what an own plan does");
            be.synchronize().unwrap();
            assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        }
    }

    /// The engine path adds nothing at the boundary: a decode step on views into one fused
    /// buffer, with pools viewed out of one allocation and caller-owned metadata, makes exactly
    /// the driver calls (launches, host-to-device metadata uploads, allocations, device copies)
    /// of the same step through the owned API, for every strategy.
    #[test]
    fn a_step_on_views_makes_the_driver_calls_of_the_owned_step() {
        for strategy in [Strategy::Flash, Strategy::Hybrid, Strategy::Fused, Strategy::Separate] {
            let fake = FakeDriver::new(0, h100_props());
            let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
            let be = Backend::new(Arc::new(HipBackend { name: FLASH, strategy, gpu, tables: RopeTables::default() }));
            let (h, hk, d, b) = (8usize, 2usize, 64usize, 4usize);
            let spec = KvCacheSpec { num_seqs: b, num_kv_heads: hk, head_dim: d, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 16, num_pages: 4 * b } };
            let rope = RopeConfig::new(d, 10000.0, 4096);
            let batch = Batch::uniform(b, 1).unwrap();
            let positions = vec![0u32; b];
            let params = AttentionParams::causal(d);
            // Owned.
            let mut cache = be.create_kv_cache(&spec).unwrap();
            let (mut q, mut k, v) = (be.alloc(&[b, h, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap(), be.alloc(&[b, hk, d], DType::BF16).unwrap());
            let mut out = be.alloc(&[b, h, d], DType::BF16).unwrap();
            // Engine.
            let w = (h + 2 * hk) * d;
            let fused = be.alloc(&[b, w], DType::BF16).unwrap();
            let (mut qv, mut kv) = (be.view(&fused, 0, &[b, h, d], w).unwrap(), be.view(&fused, h * d, &[b, hk, d], w).unwrap());
            let vv = be.view(&fused, (h + hk) * d, &[b, hk, d], w).unwrap();
            let n = spec.pool_len();
            let pool = be.alloc(&[4 * n], DType::BF16).unwrap();
            let row = 16 * hk * d;
            let mut pools = be.kv_pools(&spec, be.view(&pool, n, &spec.pool_shape(), row).unwrap(), be.view(&pool, 3 * n, &spec.pool_shape(), row).unwrap()).unwrap();
            let mut meta = KvMetadata::new(&spec).unwrap();
            let out_base = be.alloc(&[b, h * d + 64], DType::BF16).unwrap();
            let mut ov = be.view(&out_base, 32, &[b, h, d], h * d + 64).unwrap();
            for s in 0..b {
                let pages: Vec<u32> = (4 * s as u32..4 * s as u32 + 4).collect();
                cache.set_page_table(s, &pages).unwrap();
                meta.set_page_table(s, &pages).unwrap();
            }
            let delta = |f: &mut dyn FnMut()| {
                let before = fake.calls();
                f();
                let after = fake.calls();
                let mut d: Vec<(&str, usize)> = after.iter().map(|(&c, &n)| (c, n - before.get(c).copied().unwrap_or(0))).filter(|&(_, n)| n > 0).collect();
                d.sort();
                d
            };
            // The second step of each (the first uploads the RoPE table both share).
            let mut owned_step = || be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut cache, batch: &batch, params, out: &mut out, sinks: None }).unwrap();
            owned_step();
            let owned = delta(&mut owned_step);
            let mut views_step = || {
                meta.extend(&batch).unwrap();
                be.step(StepViews { q: &mut qv, k: &mut kv, v: &vv, positions: &positions, rope: &rope, pools: &mut pools, meta: &meta, batch: &batch, params, out: &mut ov, sinks: None }).unwrap()
            };
            views_step();
            let views = delta(&mut views_step);
            assert!(owned.iter().any(|&(c, _)| c == "launch"), "{strategy:?}: {owned:?}");
            assert_eq!(views, owned, "{strategy:?}: driver calls of one step, views against owned");
            assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        }
    }

    /// Caller memory: checked (null, alignment, device memory), never freed, usable by any
    /// instance on its device; too short for its shape is StorageTooSmall.
    #[test]
    #[allow(unsafe_code)] // test only: it plays the engine that promises its memory stays allocated
    fn borrowed_memory_is_checked_and_never_freed() {
        let fake = FakeDriver::new(0, h100_props());
        let gpu = Gpu::with_driver(Box::new(fake.clone()), &fake_images()).unwrap();
        let engine = gpu.alloc(4096).unwrap(); // stands for the engine's own allocation
        let base = engine.view().addr_for_tests();
        let hb = HipBackend { name: FLASH, strategy: Strategy::Flash, gpu: Gpu::on(gpu.loaded()).unwrap(), tables: RopeTables::default() };
        // SAFETY (test): the fake's memory stays allocated (`engine`) for the whole test.
        let mem = |ptr: u64, len: usize| unsafe { ForeignMemory::from_raw(ptr, len) };
        assert_eq!(hb.borrow(mem(0, 64), &[16], DType::F32).unwrap_err().kind(), "InvalidArgument");
        assert_eq!(hb.borrow(mem(base + 4, 64), &[16], DType::F32).unwrap_err().kind(), "InvalidArgument");
        assert_eq!(hb.borrow(mem(base + (1 << 40), 64), &[16], DType::F32).unwrap_err().kind(), "InvalidArgument");
        assert_eq!(hb.borrow(mem(base, 1 << 20), &[16], DType::F32).unwrap_err().kind(), "InvalidArgument", "runs past the allocation");
        assert_eq!(hb.borrow(mem(base, 32), &[16], DType::F32).unwrap_err().kind(), "StorageTooSmall");
        let t = hb.borrow(mem(base + 1024, 64), &[16], DType::F32).unwrap();
        let be = Backend::new(Arc::new(hb));
        be.download(&t).unwrap();
        drop(t);
        drop(be);
        // Still allocated (the view freed nothing): the engine's buffer can be read back.
        assert_eq!(gpu.read(engine.view(), 4096).unwrap().len(), 4096);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}
