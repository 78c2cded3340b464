//! Mutation backends: the reference with one realistic bug planted each. The suite must fail
//! every one of them (asserted in `tests/mutants.rs`); with the `mutants` feature they are also
//! registered, so the CLI can be shown to exit non-zero.

use std::sync::Arc;

use attnforge_api::*;
use attnforge_cpu::storage::{read, read_at, write, write_at};
use attnforge_cpu::ops::attention::gather_kv;
use attnforge_cpu::CpuBackend;

/// The planted bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// RoPE pairs interleaved where half-split was asked (and vice versa).
    RopeStyleSwapped,
    /// Causal mask lets each query see one key too many.
    CausalOffByOne,
    /// GQA maps query head h to kv head h % kv instead of h / group.
    GqaModulo,
    /// The last output element of attention is never written.
    UnwrittenElement,
    /// Softmax without max-subtraction, exponentials stored in the dtype (overflows in f16).
    SoftmaxNoMax,
    /// Append writes token t of a sequence to page (seq * pages_per_seq + t / page_size),
    /// ignoring the page table.
    AppendIgnoresPageTable,
    /// Context shift rotates the keys by `-delta` (the sign of the composed rotation flipped).
    ShiftWrongSign,
    /// RoPE reads and writes Q and K as if dense, ignoring the row stride of views into a fused
    /// buffer (right on owned tensors; only the engine path's cells can catch it).
    RopeIgnoresRowStride,
    /// `update_plan` keeps the plan it was given (right for a plan run once; only the plan
    /// path's cells, which plan a decoy step first, can catch it).
    StalePlanUpdate,
    /// Attention multiplies by `1/sqrt(head_dim)` whatever scale it was given (right for the
    /// default scale; only the cases that draw another can catch it).
    ScaleIgnored,
    /// The composite step rotates K twice (a fused RoPE + append kernel handed keys the RoPE
    /// pass already rotated): the standalone ops are right, only the step cells can catch it.
    StepRotatesKTwice,
    /// The composite step leaves Q unrotated (hip-hybrid rotates Q inside the attention kernel;
    /// a plan that picks the plain kernel for that path forgets it).
    HybridQUnrotated,
    /// Split-K decode merges its partial results but drops the last split (a merge loop bound
    /// off by one): right while a decode's keys fit one split of [`SPLIT_KEYS`], so only the
    /// long decodes the suite draws (more keys than the GPU backends' split sizes) catch it.
    SplitMergeDropsSplit,
    /// A scaled RoPE table shifted by one pair (`inv_freq[i + 1]` used for pair `i`, a per-pair
    /// factor table read off by one): right for plain RoPE, caught by the scaled cases.
    ScalingTableShifted,
    /// Plain attention leaves unwritten the query rows past a sequence's key count (a grid sized
    /// by the keys): right while queries never outnumber keys, caught by the cross-attention
    /// cases (non-causal, more queries than keys).
    CrossRowsUnwritten,
    /// Attention without the logit soft-cap it was given (right for the uncapped cases; the
    /// quarter of the cases that draw a cap catch it).
    SoftcapIgnored,
    /// The sliding window lets each query see one key more, the one just before its window (a
    /// `>` for a `>=` in the lower bound): right without a window, or where the window holds
    /// every key; caught by the windowed cases whose window cuts.
    WindowOffByOne,
    /// Attention without the sinks it was given (gpt-oss: right for the cases without sinks;
    /// the quarter of the cases that draw them catch it).
    SinksIgnored,
    /// Attention writes the log-sum-exp in base 2 (the kernels' running maximum and sums are
    /// base 2; a store without the `ln 2` factor): the outputs are right, the lse cases catch it.
    LseBase2,
    /// merge_states averages the partial outputs with equal weights, ignoring their lse: right
    /// when every part holds the same softmax mass, caught by the merge cells.
    MergeIgnoresLse,
    /// M-RoPE reads the positions token-major (`positions[3 t + c]`) instead of
    /// component-major (`positions[c T + t]`): right without M-RoPE, caught by the M-RoPE cases.
    MropeTokenMajor,
    /// Attention over an FP8 cache dequantises every kv head with head 0's scales (a kernel
    /// written for per-tensor scales handed per-head ones): right for f16/bf16 caches and for
    /// per-tensor scales, caught by the FP8 cases with a scale per kv head.
    Fp8HeadZeroScale,
}

/// Keys per split of [`Bug::SplitMergeDropsSplit`]: the vector decode's least split size (128
/// keys; the matrix-core decode's is 256), so any decode the GPU backends split is split here.
pub const SPLIT_KEYS: usize = 128;

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 22] = [
        Bug::RopeStyleSwapped,
        Bug::CausalOffByOne,
        Bug::GqaModulo,
        Bug::UnwrittenElement,
        Bug::SoftmaxNoMax,
        Bug::AppendIgnoresPageTable,
        Bug::ShiftWrongSign,
        Bug::RopeIgnoresRowStride,
        Bug::StalePlanUpdate,
        Bug::ScaleIgnored,
        Bug::StepRotatesKTwice,
        Bug::HybridQUnrotated,
        Bug::SplitMergeDropsSplit,
        Bug::ScalingTableShifted,
        Bug::CrossRowsUnwritten,
        Bug::SoftcapIgnored,
        Bug::WindowOffByOne,
        Bug::SinksIgnored,
        Bug::LseBase2,
        Bug::MergeIgnoresLse,
        Bug::MropeTokenMajor,
        Bug::Fp8HeadZeroScale,
    ];

    /// Registry name: `mutant-...`.
    pub const fn name(self) -> &'static str {
        match self {
            Bug::RopeStyleSwapped => "mutant-rope-style",
            Bug::CausalOffByOne => "mutant-causal-off-by-one",
            Bug::GqaModulo => "mutant-gqa-modulo",
            Bug::UnwrittenElement => "mutant-unwritten",
            Bug::SoftmaxNoMax => "mutant-softmax-no-max",
            Bug::AppendIgnoresPageTable => "mutant-append-ignores-pages",
            Bug::ShiftWrongSign => "mutant-shift-wrong-sign",
            Bug::RopeIgnoresRowStride => "mutant-rope-ignores-row-stride",
            Bug::StalePlanUpdate => "mutant-stale-plan-update",
            Bug::ScaleIgnored => "mutant-scale-ignored",
            Bug::StepRotatesKTwice => "mutant-step-rotates-k-twice",
            Bug::HybridQUnrotated => "mutant-hybrid-q-unrotated",
            Bug::SplitMergeDropsSplit => "mutant-split-merge-drops-split",
            Bug::ScalingTableShifted => "mutant-scaling-table-shifted",
            Bug::CrossRowsUnwritten => "mutant-cross-rows-unwritten",
            Bug::SoftcapIgnored => "mutant-softcap-ignored",
            Bug::WindowOffByOne => "mutant-window-off-by-one",
            Bug::SinksIgnored => "mutant-sinks-ignored",
            Bug::LseBase2 => "mutant-lse-base-2",
            Bug::MergeIgnoresLse => "mutant-merge-ignores-lse",
            Bug::MropeTokenMajor => "mutant-mrope-token-major",
            Bug::Fp8HeadZeroScale => "mutant-fp8-head-zero-scale",
        }
    }

    /// The op whose check must catch it.
    pub fn op(self) -> Op {
        match self {
            Bug::RopeStyleSwapped | Bug::RopeIgnoresRowStride | Bug::ScalingTableShifted | Bug::MropeTokenMajor => Op::Rope,
            Bug::StepRotatesKTwice | Bug::HybridQUnrotated => Op::Step,
            Bug::CrossRowsUnwritten => Op::AttentionPlain,
            Bug::AppendIgnoresPageTable => Op::KvAppend,
            Bug::ShiftWrongSign => Op::Shift,
            Bug::MergeIgnoresLse => Op::MergeStates,
            _ => Op::Attention,
        }
    }
}

/// The reference with `bug` planted.
#[derive(Debug, Clone, Copy)]
pub struct Mutant(pub Bug);

impl Mutant {
    /// A handle to the mutant.
    pub fn handle(bug: Bug) -> Backend {
        Backend::new(Arc::new(Mutant(bug)))
    }
}

/// Attention of one sequence with the planted bug (the reference's loop otherwise).
#[allow(clippy::too_many_arguments)]
fn buggy_attend(bug: Bug, q: &[f64], k: &[f64], v: &[f64], q_len: usize, kv_len: usize, heads: usize, kv_heads: usize, d: usize, p: AttentionParams, sinks: Option<&[f64]>, dtype: DType) -> Vec<f64> {
    let sinks = if bug == Bug::SinksIgnored { None } else { sinks };
    let group = heads / kv_heads;
    let mut out = vec![0.0; q_len * heads * d];
    for i in 0..q_len {
        let keys = p.visible_keys(i, q_len, kv_len);
        let (mut first, mut visible) = (keys.start, keys.end);
        if bug == Bug::CausalOffByOne && p.causal {
            visible = (visible + 1).min(kv_len);
        }
        if bug == Bug::WindowOffByOne {
            first = first.saturating_sub(1);
        }
        if bug == Bug::SplitMergeDropsSplit && q_len == 1 && visible > SPLIT_KEYS {
            // The splits are [0, 128), [128, 256), ...; the merge forgets the last one.
            visible = (visible - 1) / SPLIT_KEYS * SPLIT_KEYS;
        }
        for h in 0..heads {
            let kh = if bug == Bug::GqaModulo { h % kv_heads } else { h / group };
            let qi = &q[(i * heads + h) * d..][..d];
            let scale = if bug == Bug::ScaleIgnored { 1.0 / (d as f64).sqrt() } else { p.scale as f64 };
            let cap = if bug == Bug::SoftcapIgnored { None } else { p.softcap.map(f64::from) };
            let s: Vec<f64> = (first..visible)
                .map(|j| scale * qi.iter().zip(&k[(j * kv_heads + kh) * d..][..d]).map(|(a, b)| a * b).sum::<f64>())
                .map(|s| cap.map_or(s, |c| c * (s / c).tanh()))
                .collect();
            let sink = sinks.map(|s| s[h]);
            let (w, sink_w): (Vec<f64>, f64) = if bug == Bug::SoftmaxNoMax {
                (s.iter().map(|x| dtype.round(x.exp())).collect(), sink.map_or(0.0, f64::exp))
            } else {
                let m = s.iter().copied().chain(sink).fold(f64::NEG_INFINITY, f64::max);
                (s.iter().map(|x| (x - m).exp()).collect(), sink.map_or(0.0, |x| (x - m).exp()))
            };
            let total: f64 = w.iter().sum::<f64>() + sink_w;
            for (j, wj) in (first..visible).zip(&w) {
                for e in 0..d {
                    out[(i * heads + h) * d + e] += wj / total * v[(j * kv_heads + kh) * d + e];
                }
            }
        }
    }
    out
}

impl AttentionBackend for Mutant {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn device(&self) -> Device {
        Device::CPU
    }
    fn supports(&self, op: Op, p: &ProblemDesc) -> Result<(), Vec<String>> {
        CpuBackend.supports(op, p)
    }
    fn alloc(&self, s: &[usize], d: DType) -> Result<Tensor> {
        CpuBackend.alloc(s, d)
    }
    fn write(&self, t: &mut Tensor, s: &[f32]) -> Result<()> {
        CpuBackend.write(t, s)
    }
    fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        CpuBackend.read(t)
    }
    fn fill(&self, t: &mut Tensor, v: f32) -> Result<()> {
        CpuBackend.fill(t, v)
    }
    fn view(&self, base: &Tensor, offset: usize, shape: &[usize], row_stride: usize) -> Result<Tensor> {
        CpuBackend.view(base, offset, shape, row_stride)
    }

    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        if self.0 == Bug::RopeIgnoresRowStride {
            let RopeArgs { q, k, positions, config, freqs, .. } = a;
            for (t, what) in [(q, "q"), (k, "k")] {
                let (heads, n) = (t.shape()[1], t.numel());
                let mut x = read_at(t, what, 0, n)?;
                attnforge_cpu::ops::rope::rope_rows(&mut x, heads, positions, config, &freqs);
                write_at(t, what, 0, &x)?;
            }
            return Ok(());
        }
        if self.0 == Bug::MropeTokenMajor && a.config.position_components() == 3 {
            let t = a.positions.len() / 3;
            let read_as: Vec<u32> = (0..3 * t).map(|i| a.positions[3 * (i % t) + i / t]).collect();
            return CpuBackend.rope(RopeArgs { positions: &read_as, ..a });
        }
        if self.0 == Bug::ScalingTableShifted && a.config.scaling != RopeScaling::None {
            let mut freqs = a.freqs.clone();
            let n = freqs.inv_freq.len();
            for i in 0..n.saturating_sub(1) {
                freqs.inv_freq[i] = a.freqs.inv_freq[i + 1];
            }
            return CpuBackend.rope(RopeArgs { freqs, ..a });
        }
        if self.0 != Bug::RopeStyleSwapped {
            return CpuBackend.rope(a);
        }
        let style = match a.config.style {
            RopeStyle::HalfSplit => RopeStyle::Interleaved,
            RopeStyle::Interleaved => RopeStyle::HalfSplit,
        };
        let cfg = RopeConfig { style, ..a.config.clone() };
        CpuBackend.rope(RopeArgs { config: &cfg, ..a })
    }

    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        let CacheLayout::Paged { page_size, num_pages } = a.pools.spec().layout else {
            return CpuBackend.kv_append(a);
        };
        if self.0 != Bug::AppendIgnoresPageTable {
            return CpuBackend.kv_append(a);
        }
        let AppendArgs { pools, meta, k, v, batch, start, .. } = a;
        let (hk, d) = (pools.spec().num_kv_heads, pools.spec().head_dim);
        let pages_per_seq = (num_pages / meta.num_seqs()).max(1);
        let (ks, vs) = (read(k, "k")?, read(v, "v")?);
        let (kp, vp, _) = pools.parts_mut();
        for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
            for t in 0..q_len {
                let tok = start[i] + t;
                let page = (seq * pages_per_seq + tok / page_size) % num_pages;
                for h in 0..hk {
                    let dst = ((page * page_size + tok % page_size) * hk + h) * d;
                    let src = ((batch.offsets()[i] + t) * hk + h) * d;
                    write_at(kp, "K pool", dst, &ks[src..src + d])?;
                    write_at(vp, "V pool", dst, &vs[src..src + d])?;
                }
            }
        }
        Ok(())
    }

    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        match self.0 {
            Bug::UnwrittenElement => {
                let AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, desc, validated } = a;
                let before = read(out, "out")?;
                CpuBackend.attention(AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out: &mut *out, desc, validated })?;
                let mut after = read(out, "out")?;
                let last = after.len() - 1;
                after[last] = before[last];
                write(out, "out", &after)
            }
            Bug::LseBase2 => {
                let AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, desc, validated } = a;
                let Some(lse) = lse else {
                    return CpuBackend.attention(AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse: None, out, desc, validated });
                };
                CpuBackend.attention(AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse: Some(&mut *lse), out, desc, validated })?;
                let base2: Vec<f64> = read(lse, "lse")?.iter().map(|x| x * std::f64::consts::LOG2_E).collect();
                write(lse, "lse", &base2)
            }
            Bug::Fp8HeadZeroScale if a.pools.scales().is_some() => {
                let AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, .. } = a;
                let sinks = sinks.map(|s| read(s, "sinks")).transpose()?;
                let (heads, d, kv_heads) = (q.shape()[1], q.shape()[2], pools.spec().num_kv_heads);
                let qs = read(q, "q")?;
                let (kp, vp) = (read(pools.k(), "K pool")?, read(pools.v(), "V pool")?);
                let (ks, vs) = pools.scales().map(|(k, v)| Ok::<_, Error>((read(k, "K scales")?, read(v, "V scales")?))).transpose()?.unwrap_or_default();
                let (mut os, mut ls) = (vec![0.0; out.numel()], vec![0.0; out.numel() / d]);
                for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
                    let kv_len = kv_lens[i];
                    // Head 0's scales for every head.
                    let (k, v) = gather_kv(&kp, &vp, Some((&vec![ks[0]; kv_heads], &vec![vs[0]; kv_heads])), meta, seq, kv_len, kv_heads, d);
                    let row = batch.offsets()[i] * heads * d;
                    let n = q_len * heads * d;
                    let shape = attnforge_cpu::ops::attention::SeqShape { q_len, kv_len, heads, kv_heads, head_dim: d };
                    let (o, l) = attnforge_cpu::ops::attention::attend_lse(&qs[row..row + n], &k, &v, shape, params, sinks.as_deref());
                    os[row..row + n].copy_from_slice(&o);
                    ls[row / d..(row + n) / d].copy_from_slice(&l);
                }
                write(out, "out", &os)?;
                lse.map_or(Ok(()), |t| write(t, "lse", &ls))
            }
            Bug::CausalOffByOne | Bug::GqaModulo | Bug::SoftmaxNoMax | Bug::ScaleIgnored | Bug::SplitMergeDropsSplit | Bug::SoftcapIgnored | Bug::WindowOffByOne | Bug::SinksIgnored => {
                let AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, desc, validated } = a;
                if let Some(l) = lse {
                    // The lse right (the bug is in the output, which is overwritten below).
                    CpuBackend.attention(AttentionArgs { q, pools, meta, batch, kv_lens: kv_lens.clone(), params, sinks, lse: Some(l), out: &mut *out, desc, validated })?;
                }
                let sinks = sinks.map(|s| read(s, "sinks")).transpose()?;
                let (heads, d) = (q.shape()[1], q.shape()[2]);
                let kv_heads = pools.spec().num_kv_heads;
                let qs = read(q, "q")?;
                let (kp, vp) = (read(pools.k(), "K pool")?, read(pools.v(), "V pool")?);
                let dtype = q.dtype();
                let mut os = read(out, "out")?;
                for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
                    let kv_len = kv_lens[i];
                    let (k, v) = gather_kv(&kp, &vp, None, meta, seq, kv_len, kv_heads, d);
                    let row = batch.offsets()[i] * heads * d;
                    let n = q_len * heads * d;
                    let o = buggy_attend(self.0, &qs[row..row + n], &k, &v, q_len, kv_len, heads, kv_heads, d, params, sinks.as_deref(), dtype);
                    os[row..row + n].copy_from_slice(&o);
                }
                write(out, "out", &os)
            }
            _ => CpuBackend.attention(a),
        }
    }

    fn attention_plain(&self, a: PlainAttentionArgs<'_>) -> Result<()> {
        if self.0 != Bug::CrossRowsUnwritten {
            return CpuBackend.attention_plain(a);
        }
        let PlainAttentionArgs { q, k, v, batch, params, sinks, lse, out, desc, validated } = a;
        let before = read(out, "out")?;
        CpuBackend.attention_plain(PlainAttentionArgs { q, k, v, batch, params, sinks, lse, out: &mut *out, desc, validated })?;
        let mut after = read(out, "out")?;
        let row = out.shape()[1] * out.shape()[2];
        for (i, (&q_len, &kv_len)) in batch.q_lens().iter().zip(batch.kv_lens()).enumerate() {
            let first = batch.q_offsets()[i];
            for r in first + kv_len.min(q_len)..first + q_len {
                after[r * row..(r + 1) * row].copy_from_slice(&before[r * row..(r + 1) * row]);
            }
        }
        write(out, "out", &after)
    }

    fn merge_states(&self, a: MergeArgs<'_>) -> Result<()> {
        if self.0 != Bug::MergeIgnoresLse {
            return CpuBackend.merge_states(a);
        }
        let MergeArgs { states, out, lse, .. } = a;
        let outs: Vec<Vec<f64>> = states.iter().map(|(o, _)| read(o, "state output")).collect::<Result<_>>()?;
        let n = outs.len() as f64;
        let avg: Vec<f64> = (0..outs[0].len()).map(|i| outs.iter().map(|o| o[i]).sum::<f64>() / n).collect();
        write(out, "out", &avg)?;
        if let Some(l) = lse {
            let first = read(states[0].1, "state lse")?;
            write(l, "lse", &first)?;
        }
        Ok(())
    }

    fn rope_append_attend(&self, mut args: StepArgs<'_>) -> Result<()> {
        match self.0 {
            Bug::StepRotatesKTwice => {
                self.rope(args.rope_args())?;
                // ... and once more, K alone, before the append.
                let RopeArgs { k, positions, config, freqs, .. } = args.rope_args();
                let mut x = read(k, "k")?;
                attnforge_cpu::ops::rope::rope_rows(&mut x, k.shape()[1], positions, config, &freqs);
                write(k, "k", &x)?;
            }
            Bug::HybridQUnrotated => {
                let RopeArgs { q, .. } = args.rope_args();
                let unrotated = read(q, "q")?;
                self.rope(args.rope_args())?;
                let RopeArgs { q, .. } = args.rope_args();
                write(q, "q", &unrotated)?;
            }
            _ => self.rope(args.rope_args())?,
        }
        self.kv_append(args.append_args())?;
        self.attention(args.attention_args())
    }

    fn shift_positions(&self, a: ShiftArgs<'_>) -> Result<()> {
        let delta = if self.0 == Bug::ShiftWrongSign { -a.delta } else { a.delta };
        CpuBackend.shift_positions(ShiftArgs { delta, ..a })
    }
    fn update_plan(&self, plan: &mut dyn PlanState, a: PlanArgs<'_>) -> Result<()> {
        if self.0 == Bug::StalePlanUpdate {
            return Ok(());
        }
        CpuBackend.update_plan(plan, a)
    }
}

#[cfg(feature = "mutants")]
mod registered {
    use super::*;
    use attnforge_api::registry::BackendEntry;
    macro_rules! register {
        ($($bug:ident),*) => {$(
            inventory::submit! {
                BackendEntry { name: Bug::$bug.name(), description: "conformance mutant: the reference with one planted bug", priority: -100, create: || Ok(Arc::new(Mutant(Bug::$bug))) }
            }
        )*};
    }
    register!(
        RopeStyleSwapped,
        CausalOffByOne,
        GqaModulo,
        UnwrittenElement,
        SoftmaxNoMax,
        AppendIgnoresPageTable,
        ShiftWrongSign,
        RopeIgnoresRowStride,
        StalePlanUpdate,
        ScaleIgnored,
        StepRotatesKTwice,
        HybridQUnrotated,
        SplitMergeDropsSplit,
        ScalingTableShifted,
        CrossRowsUnwritten,
        SoftcapIgnored,
        WindowOffByOne,
        SinksIgnored,
        LseBase2,
        MergeIgnoresLse,
        MropeTokenMajor,
        Fp8HeadZeroScale
    );
}
