//! An in-memory [`Driver`] for tests of the vendor-neutral runtime (staging, device binding,
//! the kernel table, launch validation) on machines without a GPU, AMD's paths included.
//!
//! It behaves like a device where it matters: device memory is host memory at fake addresses
//! (out-of-range accesses panic), copies and launches are queued per stream and run only when a
//! stream or a recorded event is waited for, the current device is per host thread and every
//! device call checks it, and any call can be made to fail. It records what a real device
//! would punish: pinned memory freed while a queued copy targets it, calls made while another
//! device is current, launches (kernel and parameter bytes).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use attnforge_api::{DType, Error, Result};

use super::{DeviceProps, Driver};
use crate::contract::{TensorMap, Vendor};

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

#[derive(Debug, Clone)]
enum Op {
    Htod { dst: u64, src: usize, n: usize },
    Dtoh { dst: usize, src: u64, n: usize },
    Dtod { dst: u64, src: u64, n: usize },
    Memset { dst: u64, byte: u8, n: usize },
    Record { event: u64 },
    Launch,
    Free { ptr: u64 },
}

/// A launch as the fake saw it.
#[derive(Debug, Clone)]
pub(crate) struct Launched {
    pub symbol: String,
    pub grid: [u32; 3],
    pub block: u32,
    pub shared: u32,
    pub params: Vec<u8>,
}

#[derive(Default)]
struct State {
    next: u64,
    memory: BTreeMap<u64, Vec<u8>>,
    /// Ranges freed (addresses are never reused), for replays that point into them.
    freed: Vec<(u64, u64)>,
    pinned: HashMap<usize, usize>,
    streams: HashMap<u64, VecDeque<Op>>,
    /// Events recorded and not yet reached: (stream).
    events: HashMap<u64, Option<u64>>,
    functions: HashMap<u64, String>,
    modules: HashMap<u64, String>,
    /// call -> (calls to let through first, calls to fail then)
    fail: HashMap<&'static str, (usize, usize)>,
    violations: Vec<String>,
    launches: Vec<Launched>,
    lookups_failed: usize,
    missing: Vec<String>,
    /// Driver calls made, by name.
    calls: HashMap<&'static str, usize>,
    /// Streams being captured: the ops queued on them since (not run).
    capturing: HashMap<u64, Vec<Op>>,
    /// Executable graphs: their ops and the launches they replay.
    graphs: HashMap<u64, (Vec<Op>, Vec<Launched>)>,
    /// Launches captured so far, per capturing stream.
    captured_launches: HashMap<u64, Vec<Launched>>,
}

/// Clones share one device: a test keeps a clone to look inside after handing one to a `Gpu`.
#[derive(Clone)]
pub(crate) struct FakeDriver {
    ordinal: usize,
    props: DeviceProps,
    state: Arc<Mutex<State>>,
}

/// An H100's limits (132 SMs, 227 KiB of opt-in shared memory per block).
pub(crate) fn h100_props() -> DeviceProps {
    DeviceProps {
        vendor: Vendor::Nvidia,
        name: "fake H100".into(),
        arch: "sm_90".into(),
        sm_count: 132,
        warp_size: 32,
        max_threads_per_block: 1024,
        smem_per_block_optin: 232_448,
        smem_per_sm: 233_472,
        max_grid: [i32::MAX as u64, 65_535, 65_535],
        matrix_cores: true,
        wgmma: true,
    }
}

/// One dummy code object per kernel module (the fake resolves any symbol of a loaded module).
pub(crate) fn fake_images() -> Vec<(&'static str, &'static [u8])> {
    ["attention", "attention_mma", "attention_rope", "attention_wgmma", "kv_append", "rope", "separate"].iter().map(|&m| (m, &b"fake"[..])).collect()
}

impl FakeDriver {
    pub fn new(ordinal: usize, props: DeviceProps) -> FakeDriver {
        FakeDriver { ordinal, props, state: Arc::new(Mutex::new(State { next: 0x1000_0000, ..State::default() })) }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` calls of `call` fail.
    pub fn fail(&self, call: &'static str, n: usize) {
        self.fail_after(call, 0, n);
    }

    /// After `skip` more successful calls of `call`, the next `n` fail.
    pub fn fail_after(&self, call: &'static str, skip: usize, n: usize) {
        self.st().fail.insert(call, (skip, n));
    }

    /// `symbol` is absent from every module.
    pub fn remove_symbol(&self, symbol: &str) {
        self.st().missing.push(symbol.to_string());
    }

    /// What a device would have punished.
    pub fn violations(&self) -> Vec<String> {
        self.st().violations.clone()
    }

    /// Every launch queued so far.
    /// How many times each driver call was made (`htod`, `dtod`, `alloc`, `launch`, ...).
    pub fn calls(&self) -> HashMap<&'static str, usize> {
        self.st().calls.clone()
    }

    pub fn launches(&self) -> Vec<Launched> {
        self.st().launches.clone()
    }

    /// Function lookups that failed.
    pub fn lookups_failed(&self) -> usize {
        self.st().lookups_failed
    }

    fn handle(st: &mut State) -> u64 {
        st.next += 0x1_0000;
        st.next
    }

    /// Fails the call if the test asked for it, and checks the current device.
    fn enter(&self, call: &'static str) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut st = self.st();
        if let Some((skip, n)) = st.fail.get_mut(call) {
            if *skip > 0 {
                *skip -= 1;
            } else if *n > 0 {
                *n -= 1;
                return Err(Error::Device { code: 999, message: format!("{call}: injected failure") });
            }
        }
        *st.calls.entry(call).or_default() += 1;
        let cur = CURRENT.with(|c| c.get());
        if cur != Some(self.ordinal) {
            st.violations.push(format!("{call} with device {cur:?} current, not {}", self.ordinal));
            return Err(Error::Device { code: 101, message: format!("{call}: invalid device (device {cur:?} is current on this thread)") });
        }
        Ok(st)
    }

    fn slice(st: &mut State, addr: u64, n: usize) -> &mut [u8] {
        let (base, mem) = st.memory.range_mut(..=addr).next_back().expect("fake device: address outside every allocation");
        let o = (addr - *base) as usize;
        assert!(o + n <= mem.len(), "fake device: access of {n} bytes at offset {o} of a {}-byte allocation", mem.len());
        &mut mem[o..o + n]
    }

    fn run(st: &mut State, op: Op) {
        match op {
            Op::Htod { dst, src, n } => {
                // SAFETY: the staging contract keeps `src` (pinned, fake) alive until this runs;
                // a violation of it is what the tests look for.
                let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, n) }.to_vec();
                Self::slice(st, dst, n).copy_from_slice(&bytes);
            }
            Op::Dtoh { dst, src, n } => {
                let bytes = Self::slice(st, src, n).to_vec();
                // SAFETY: as above, for the destination.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, n) };
            }
            Op::Dtod { dst, src, n } => {
                let bytes = Self::slice(st, src, n).to_vec();
                Self::slice(st, dst, n).copy_from_slice(&bytes);
            }
            Op::Memset { dst, byte, n } => Self::slice(st, dst, n).fill(byte),
            Op::Record { event } => {
                st.events.insert(event, None);
            }
            Op::Launch => {}
            Op::Free { ptr } => {
                if let Some(m) = st.memory.remove(&ptr) {
                    st.freed.push((ptr, ptr + m.len() as u64));
                }
            }
        }
    }

    /// Runs stream `s` up to and including the first op matching `until` (all of it for None).
    fn drain(st: &mut State, s: u64, until: Option<u64>) {
        while let Some(op) = st.streams.get_mut(&s).and_then(|q| q.pop_front()) {
            let stop = matches!((&op, until), (Op::Record { event }, Some(e)) if *event == e);
            Self::run(st, op);
            if stop {
                break;
            }
        }
    }

    fn queue(st: &mut State, s: u64, op: Op) {
        if let Some(c) = st.capturing.get_mut(&s) {
            // A capture records; copies from pinned staging into a graph would replay stale
            // host memory, allocations and frees would be graph nodes: the tests look for them.
            if !matches!(op, Op::Launch) {
                st.violations.push(format!("{op:?} queued while the stream is captured"));
            }
            c.push(op);
            return;
        }
        st.streams.get_mut(&s).expect("a live stream").push_back(op);
    }
}

impl Driver for FakeDriver {
    fn props(&self) -> &DeviceProps {
        &self.props
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn bind(&self) -> Result<()> {
        CURRENT.with(|c| c.set(Some(self.ordinal)));
        Ok(())
    }

    fn stream_create(&self) -> Result<u64> {
        let mut st = self.enter("stream_create")?;
        let s = Self::handle(&mut st);
        st.streams.insert(s, VecDeque::new());
        Ok(s)
    }

    fn stream_destroy(&self, s: u64) {
        self.st().streams.remove(&s);
    }

    fn stream_sync(&self, s: u64) -> Result<()> {
        let mut st = self.enter("stream_sync")?;
        Self::drain(&mut st, s, None);
        Ok(())
    }

    unsafe fn malloc(&self, bytes: usize, _s: u64) -> Result<u64> {
        let mut st = self.enter("malloc")?;
        if bytes > 1 << 34 {
            return Err(Error::OutOfMemory { what: "device memory (fake)".into(), bytes });
        }
        let a = Self::handle(&mut st);
        st.next += bytes as u64;
        st.memory.insert(a, vec![0xEE; bytes]);
        Ok(a)
    }

    unsafe fn free(&self, ptr: u64, s: u64) {
        // Stream-ordered: what is queued before the free still sees the memory.
        Self::queue(&mut self.st(), s, Op::Free { ptr });
    }

    unsafe fn memset(&self, ptr: u64, byte: u8, bytes: usize, s: u64) -> Result<()> {
        let mut st = self.enter("memset")?;
        Self::queue(&mut st, s, Op::Memset { dst: ptr, byte, n: bytes });
        Ok(())
    }

    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, s: u64) -> Result<()> {
        let mut st = self.enter("htod")?;
        Self::queue(&mut st, s, Op::Htod { dst, src: src as usize, n: bytes });
        Ok(())
    }

    unsafe fn dtoh(&self, dst: *mut u8, src: u64, bytes: usize, s: u64) -> Result<()> {
        let mut st = self.enter("dtoh")?;
        Self::queue(&mut st, s, Op::Dtoh { dst: dst as usize, src, n: bytes });
        Ok(())
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize, s: u64) -> Result<()> {
        let mut st = self.enter("dtod")?;
        Self::queue(&mut st, s, Op::Dtod { dst, src, n: bytes });
        Ok(())
    }

    fn pinned_alloc(&self, bytes: usize) -> Result<*mut u8> {
        let mut st = self.enter("pinned_alloc")?;
        let p = Box::into_raw(vec![0u8; bytes].into_boxed_slice()) as *mut u8;
        st.pinned.insert(p as usize, bytes);
        Ok(p)
    }

    unsafe fn pinned_free(&self, p: *mut u8) {
        let mut st = self.st();
        let len = st.pinned.remove(&(p as usize)).expect("pinned memory of this driver");
        let (lo, hi) = (p as usize, p as usize + len);
        let targeted = st.streams.values().flatten().any(|op| match *op {
            Op::Htod { src, .. } => (lo..hi).contains(&src),
            Op::Dtoh { dst, .. } => (lo..hi).contains(&dst),
            _ => false,
        });
        if targeted {
            // Leak it instead of freeing: the violation is recorded, the test stays sound.
            st.violations.push("pinned memory freed while a queued copy targets it".into());
            return;
        }
        // SAFETY: allocated by pinned_alloc as a boxed slice of `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) });
    }

    fn event_create(&self, _timing: bool) -> Result<u64> {
        let mut st = self.enter("event_create")?;
        Ok(Self::handle(&mut st))
    }

    fn event_destroy(&self, e: u64) {
        self.st().events.remove(&e);
    }

    fn event_record(&self, e: u64, s: u64) -> Result<()> {
        let mut st = self.enter("event_record")?;
        st.events.insert(e, Some(s));
        Self::queue(&mut st, s, Op::Record { event: e });
        Ok(())
    }

    fn event_sync(&self, e: u64) -> Result<()> {
        let mut st = self.enter("event_sync")?;
        if let Some(Some(s)) = st.events.get(&e).copied() {
            Self::drain(&mut st, s, Some(e));
        }
        Ok(())
    }

    fn pointer_ordinal(&self, ptr: u64) -> Result<Option<usize>> {
        let st = self.enter("pointer_ordinal")?;
        let inside = st.memory.range(..=ptr).next_back().is_some_and(|(&base, m)| ptr < base + m.len() as u64);
        Ok(inside.then_some(self.ordinal))
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        let st = self.enter("mem_info")?;
        let used: usize = st.memory.values().map(|m| m.len()).sum();
        let total = 80usize << 30;
        Ok((total - used.min(total), total))
    }

    fn event_elapsed_ms(&self, _start: u64, _end: u64) -> Result<f32> {
        drop(self.enter("event_elapsed")?);
        Ok(1.0)
    }

    fn capture_begin(&self, s: u64) -> Result<()> {
        let mut st = self.enter("capture_begin")?;
        st.capturing.insert(s, Vec::new());
        st.captured_launches.insert(s, Vec::new());
        Ok(())
    }

    fn capture_end(&self, s: u64) -> Result<u64> {
        let mut st = self.enter("capture_end")?;
        let ops = st.capturing.remove(&s).ok_or_else(|| Error::Device { code: 900, message: "capture_end: the stream is not capturing".into() })?;
        let launches = st.captured_launches.remove(&s).unwrap_or_default();
        let g = Self::handle(&mut st);
        st.graphs.insert(g, (ops, launches));
        Ok(g)
    }

    fn graph_launch(&self, g: u64, s: u64) -> Result<()> {
        let mut st = self.enter("graph_launch")?;
        let (ops, launches) = st.graphs.get(&g).cloned().ok_or_else(|| Error::Device { code: 400, message: "graph_launch: no such graph".into() })?;
        // A replayed launch whose arguments (their 8-byte words: the pointer fields) point into
        // freed memory would read or write it on a real device.
        for l in &launches {
            for w in l.params.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))) {
                if st.freed.iter().any(|&(a, b)| (a..b).contains(&w)) {
                    let msg = format!("graph replay of {} uses freed device memory at {w:#x}", l.symbol);
                    st.violations.push(msg);
                }
            }
        }
        st.launches.extend(launches);
        for op in ops {
            Self::queue(&mut st, s, op);
        }
        Ok(())
    }

    fn graph_destroy(&self, g: u64) {
        self.st().graphs.remove(&g);
    }

    fn module_load(&self, name: &str, _image: &[u8]) -> Result<u64> {
        let mut st = self.enter("module_load")?;
        let m = Self::handle(&mut st);
        st.modules.insert(m, name.to_string());
        Ok(m)
    }

    fn function(&self, module: u64, symbol: &str) -> Result<u64> {
        let mut st = self.enter("function")?;
        if !st.modules.contains_key(&module) || st.missing.iter().any(|m| m == symbol) {
            st.lookups_failed += 1;
            return Err(Error::Device { code: 500, message: format!("{symbol}: not found") });
        }
        let f = Self::handle(&mut st);
        st.functions.insert(f, symbol.to_string());
        Ok(f)
    }

    fn allow_dynamic_shared(&self, _f: u64, _bytes: usize) -> Result<()> {
        self.enter("allow_dynamic_shared").map(|_| ())
    }

    unsafe fn launch(&self, f: u64, grid: [u32; 3], block: u32, shared: u32, s: u64, params: *mut c_void, size: usize) -> Result<()> {
        let mut st = self.enter("launch")?;
        let symbol = st.functions.get(&f).cloned().expect("a loaded function");
        // SAFETY: the caller passes `size` readable bytes.
        let params = unsafe { std::slice::from_raw_parts(params as *const u8, size) }.to_vec();
        let l = Launched { symbol, grid, block, shared, params };
        if let Some(c) = st.captured_launches.get_mut(&s) {
            c.push(l);
        } else {
            st.launches.push(l);
        }
        Self::queue(&mut st, s, Op::Launch);
        Ok(())
    }

    /// The map's first word is the address (so launch logs and the freed-memory check see it).
    fn tensor_map(&self, addr: u64, _dtype: DType, _dims: [u64; 3], _strides: [u64; 2], _boxes: [u32; 3]) -> Result<TensorMap> {
        let mut m = TensorMap::default();
        m.0[0] = addr;
        Ok(m)
    }
}
