//! merge_states (kernels/attention/merge.h): partial attention states (output, log-sum-exp)
//! into one. Every state travels in the launch's parameters (at most [`MERGE_MAX_STATES`]): no
//! metadata upload, so the launch can be captured into a graph.

use attnforge_api::{DType, Error, Result};

use super::{i32_of, need_mut, need_ref, span_bytes, Strided};
use crate::contract::{Kernel, MergeStatesParams, MERGE_MAX_STATES, MERGE_STATES_THREADS};
use crate::runtime::{DevMut, DevRef, Gpu};

/// One merge: `states[i] = (output rows, lse)`, all `[tokens, heads, head_dim]` of `dtype`, lse
/// f32 `[tokens, heads]` dense.
#[derive(Debug)]
pub(crate) struct MergeCall<'a> {
    pub dtype: DType,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub states: Vec<(Strided<DevRef<'a>>, DevRef<'a>)>,
    pub out: Strided<DevMut<'a>>,
    pub lse: Option<DevMut<'a>>,
}

/// Checks every state, the output and the lse against the shape, then launches a thread per
/// 16-byte chunk of each (token, head) row (per column pair where a row is not 16-byte aligned).
pub(crate) fn merge_states(gpu: &Gpu, kernel: Kernel, c: MergeCall<'_>) -> Result<()> {
    let (t, h, d, es) = (c.tokens, c.heads, c.head_dim, c.dtype.size());
    if !matches!(kernel, Kernel::MergeStates { dtype } if dtype == c.dtype) {
        return Err(Error::Device { code: -1, message: format!("{} is not the merge_states kernel of {}", kernel.symbol(), c.dtype) });
    }
    let n = c.states.len();
    if n == 0 || n > MERGE_MAX_STATES || d == 0 || d % 2 != 0 {
        return Err(Error::InvalidArgument(format!("merge_states: {n} states (1..={MERGE_MAX_STATES}), head_dim {d} (even)")));
    }
    let rows = t.checked_mul(h).ok_or_else(|| Error::InvalidArgument("merge_states: rows overflow".into()))?;
    i32_of(rows, "merge_states rows")?;
    i32_of(h * d, "heads x head_dim")?;
    let lse_bytes = rows * 4;
    let mut p = MergeStatesParams { n: n as i32, heads: h as i32, head_dim: d as i32, ..Default::default() };
    for (i, (o, l)) in c.states.iter().enumerate() {
        need_ref(gpu, "merge_states state output", &o.mem, span_bytes("state output", t, h * d, o.stride, es)?)?;
        need_ref(gpu, "merge_states state lse", l, lse_bytes)?;
        let (oa, la, st) = (o.mem.addr, l.addr, o.stride as i32);
        match i {
            0 => (p.out0, p.lse0, p.stride0) = (oa, la, st),
            1 => (p.out1, p.lse1, p.stride1) = (oa, la, st),
            2 => (p.out2, p.lse2, p.stride2) = (oa, la, st),
            3 => (p.out3, p.lse3, p.stride3) = (oa, la, st),
            4 => (p.out4, p.lse4, p.stride4) = (oa, la, st),
            5 => (p.out5, p.lse5, p.stride5) = (oa, la, st),
            6 => (p.out6, p.lse6, p.stride6) = (oa, la, st),
            _ => (p.out7, p.lse7, p.stride7) = (oa, la, st),
        }
    }
    need_mut(gpu, "merge_states out", &c.out.mem, span_bytes("out", t, h * d, c.out.stride, es)?)?;
    (p.out, p.o_stride) = (c.out.mem.addr, c.out.stride as i32);
    if let Some(l) = &c.lse {
        need_mut(gpu, "merge_states lse", l, lse_bytes)?;
        p.lse = l.addr;
    }
    // 16-byte chunks when every row of every tensor starts 16-byte aligned, else column pairs.
    let align = |addr: u64, stride: usize| addr % 16 == 0 && (stride * es) % 16 == 0;
    let vec = (d * es) % 16 == 0 && align(c.out.mem.addr, c.out.stride) && c.states.iter().all(|(o, _)| align(o.mem.addr, o.stride));
    let chunk = if vec { 16 / es } else { 2 };
    (p.rows, p.vec) = (rows as i32, vec as i32);
    let threads = rows as u64 * (d / chunk) as u64;
    let grid = [threads.div_ceil(MERGE_STATES_THREADS as u64), 1, 1];
    if grid[0] > gpu.props().max_grid[0] {
        return Err(Error::InvalidArgument(format!("merge_states: {rows} rows exceed the device's grid")));
    }
    // SAFETY: each of the n states' outputs holds `t` rows of h x d elements `stride` apart and
    // its lse t x h floats, `out` likewise (checked above); the kernel reads states i < n only,
    // in 16-byte loads only where every row is 16-byte aligned (checked here), and writes out
    // (and lse) at rows < t x h.
    unsafe { gpu.launch(kernel, grid, MERGE_STATES_THREADS, 0, &p) }
}
