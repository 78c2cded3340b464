//! Plan / run on the CPU (the default plan every host backend gets): one plan per step shared
//! by every layer, rewritten in place for the next step within its bucket, gives the eager
//! step's results bit for bit; a plan refuses views, steps and instances it was not made for,
//! with typed errors that write nothing. (The GPU's plans, their zero-copy runs and graph
//! replays are tested in backend-hip: fake driver in CI, `tests/gpu.rs` on a GPU.)

use attnforge::attnforge_cpu::CpuBackend;
use attnforge::*;

const H: usize = 4;
const HK: usize = 2;
const D: usize = 16;
const LAYERS: usize = 2;

fn kind<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
    r.expect_err("expected an error").kind()
}

fn normals(n: usize, seed: u64) -> Vec<f32> {
    attnforge_conformance::rng::Rng::new(seed).normals(n, 1.0)
}

fn spec() -> KvCacheSpec {
    KvCacheSpec { num_seqs: 3, num_kv_heads: HK, head_dim: D, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 4, num_pages: 12 } }
}

fn desc<'a>(op: PlanOp, spec: &'a KvCacheSpec, meta: &'a KvMetadata, batch: &'a Batch, positions: &'a [u32], rope: &'a RopeConfig, bucket: Option<usize>) -> StepDesc<'a> {
    StepDesc { op, spec, num_heads: H, meta, batch, positions, rope: Some(rope), params: AttentionParams::causal(D), max_kv_len: bucket }
}

#[test]
fn a_decode_loop_through_one_plan_matches_the_eager_steps_bit_for_bit() {
    let be = CpuBackend::handle();
    let s = spec();
    let rope = RopeConfig::new(D, 10000.0, 256);
    let params = AttentionParams::causal(D);
    // Per layer: an owned cache (eager) and engine pools (planned).
    let mut owned: Vec<KvCache> = (0..LAYERS).map(|_| be.create_kv_cache(&s).unwrap()).collect();
    let mut pools: Vec<KvPools> = (0..LAYERS).map(|_| be.kv_pools(&s, be.alloc(&s.pool_shape(), DType::BF16).unwrap(), be.alloc(&s.pool_shape(), DType::BF16).unwrap()).unwrap()).collect();
    let mut meta = KvMetadata::new(&s).unwrap();
    for (seq, pages) in [[3u32, 7, 1, 9], [0, 2, 4, 6], [5, 8, 10, 11]].iter().enumerate() {
        meta.set_page_table(seq, pages).unwrap();
        for c in &mut owned {
            c.set_page_table(seq, pages).unwrap();
        }
    }
    // A prefill of different lengths, eager on both, then decode steps through one plan.
    let mut plan: Option<StepPlan> = None;
    for step in 0..7 {
        let lens = if step == 0 { vec![5usize, 3, 6] } else { vec![1, 1, 1] };
        let batch = Batch::new(vec![0, 1, 2], lens.clone()).unwrap();
        let t = batch.total_tokens();
        let positions: Vec<u32> = (0..3).zip(&lens).flat_map(|(s, &l)| (meta.seq_len(s) as u32..).take(l)).collect();
        meta.extend(&batch).unwrap();
        if step == 1 {
            plan = Some(be.plan(desc(PlanOp::Step, &s, &meta, &batch, &positions, &rope, Some(16))).unwrap());
            assert_eq!(plan.as_ref().unwrap().max_kv_len(), 16);
        } else if step > 1 {
            be.update_plan(plan.as_mut().unwrap(), desc(PlanOp::Step, &s, &meta, &batch, &positions, &rope, None)).unwrap();
        }
        for layer in 0..LAYERS {
            let seed = 100 * step as u64 + 10 * layer as u64;
            let (qd, kd, vd) = (normals(t * H * D, seed), normals(t * HK * D, seed + 1), normals(t * HK * D, seed + 2));
            let up = |x: &[f32], h: usize| be.upload(x, &[t, h, D], DType::BF16).unwrap();
            let (mut q, mut k, v, mut out) = (up(&qd, H), up(&kd, HK), up(&vd, HK), up(&vec![f32::NAN; t * H * D], H));
            be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut owned[layer], batch: &batch, params, out: &mut out, sinks: None }).unwrap();
            let (mut q2, mut k2, v2, mut out2) = (up(&qd, H), up(&kd, HK), up(&vd, HK), up(&vec![f32::NAN; t * H * D], H));
            match &plan {
                None => be.step(StepViews { q: &mut q2, k: &mut k2, v: &v2, positions: &positions, rope: &rope, pools: &mut pools[layer], meta: &meta, batch: &batch, params, out: &mut out2, sinks: None }).unwrap(),
                Some(p) => be.run(p, LayerViews::Step { q: &mut q2, k: &mut k2, v: &v2, pools: &mut pools[layer], out: &mut out2, sinks: None }).unwrap(),
            }
            assert_eq!(be.download(&out2).unwrap(), be.download(&out).unwrap(), "step {step} layer {layer}");
            assert_eq!(be.read_kv_pools(&pools[layer]).unwrap(), be.read_kv_pool(&owned[layer]).unwrap(), "step {step} layer {layer}: pools");
        }
    }
    // Attention alone, planned, on the final state.
    let batch = Batch::new(vec![2, 0], vec![2, 1]).unwrap();
    let t = 3;
    let q = be.upload(&normals(t * H * D, 9), &[t, H, D], DType::BF16).unwrap();
    let plan = be.plan(StepDesc { op: PlanOp::Attention, rope: None, positions: &[], ..desc(PlanOp::Attention, &s, &meta, &batch, &[], &rope, None) }).unwrap();
    for layer in 0..LAYERS {
        let (mut out, mut out2) = (be.alloc(&[t, H, D], DType::BF16).unwrap(), be.alloc(&[t, H, D], DType::BF16).unwrap());
        be.attention(&q, &owned[layer], &batch, params, &mut out).unwrap();
        be.run(&plan, LayerViews::Attention { q: &q, pools: &pools[layer], out: &mut out2, sinks: None, lse: None }).unwrap();
        assert_eq!(be.download(&out2).unwrap(), be.download(&out).unwrap());
    }
}

#[test]
fn plans_refuse_what_they_were_not_made_for_and_write_nothing() {
    let be = CpuBackend::handle();
    let s = spec();
    let rope = RopeConfig::new(D, 10000.0, 256);
    let mut meta = KvMetadata::new(&s).unwrap();
    for seq in 0..3 {
        meta.set_page_table(seq, &[4 * seq as u32, 4 * seq as u32 + 1, 4 * seq as u32 + 2, 4 * seq as u32 + 3]).unwrap();
    }
    let batch = Batch::uniform(3, 1).unwrap();
    meta.extend(&batch).unwrap();
    let positions = [0u32, 0, 0];
    let mut plan = be.plan(desc(PlanOp::Step, &s, &meta, &batch, &positions, &rope, Some(8))).unwrap();
    let mut pools = be.kv_pools(&s, be.alloc(&s.pool_shape(), DType::BF16).unwrap(), be.alloc(&s.pool_shape(), DType::BF16).unwrap()).unwrap();
    let up = |t: usize, h: usize| be.upload(&normals(t * h * D, 5), &[t, h, D], DType::BF16).unwrap();
    let (mut q, mut k, v) = (up(3, H), up(3, HK), up(3, HK));
    let mut out = be.upload(&vec![f32::NAN; 3 * H * D], &[3, H, D], DType::BF16).unwrap();
    let pools_before = be.read_kv_pools(&pools).unwrap();
    // Views of another op, of another shape, pools of another spec.
    assert_eq!(kind(be.run(&plan, LayerViews::Attention { q: &q, pools: &pools, out: &mut out, sinks: None, lse: None })), "InvalidArgument");
    let (mut q4, mut k4, v4) = (up(4, H), up(4, HK), up(4, HK));
    assert_eq!(kind(be.run(&plan, LayerViews::Step { q: &mut q4, k: &mut k4, v: &v4, pools: &mut pools, out: &mut out, sinks: None })), "ShapeMismatch");
    let other = KvCacheSpec { layout: CacheLayout::Paged { page_size: 4, num_pages: 13 }, ..s.clone() };
    let mut pools2 = be.kv_pools(&other, be.alloc(&other.pool_shape(), DType::BF16).unwrap(), be.alloc(&other.pool_shape(), DType::BF16).unwrap()).unwrap();
    assert_eq!(kind(be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools2, out: &mut out, sinks: None })), "InvalidArgument");
    // out overlapping q.
    let base = be.alloc(&[3, H * D], DType::BF16).unwrap();
    let (mut qa, mut oa) = (be.view(&base, 0, &[3, H, D], H * D).unwrap(), be.view(&base, 0, &[3, H, D], H * D).unwrap());
    assert_eq!(kind(be.run(&plan, LayerViews::Step { q: &mut qa, k: &mut k, v: &v, pools: &mut pools, out: &mut oa, sinks: None })), "InvalidArgument");
    // A plan of another instance.
    let other_be = Backend::new(std::sync::Arc::new(CpuBackend::new()));
    assert_eq!(kind(other_be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools, out: &mut out, sinks: None })), "InvalidArgument");
    assert!(be.download(&out).unwrap().iter().all(|x| x.is_nan()), "a refused run wrote its output");
    assert_eq!(be.read_kv_pools(&pools).unwrap(), pools_before, "a refused run wrote the pools");
    // Updates: another batch shape, past the bucket, another bucket.
    let two = Batch::new(vec![0, 1, 2], vec![2, 1, 1]).unwrap();
    assert_eq!(kind(be.update_plan(&mut plan, desc(PlanOp::Step, &s, &meta, &two, &[0, 1, 0, 0], &rope, None))), "InvalidArgument");
    let mut long = meta.clone();
    for _ in 0..8 {
        long.extend(&batch).unwrap();
    }
    assert_eq!(kind(be.update_plan(&mut plan, desc(PlanOp::Step, &s, &long, &batch, &positions, &rope, None))), "InvalidArgument", "9 tokens in a bucket of 8");
    assert_eq!(kind(be.update_plan(&mut plan, desc(PlanOp::Step, &s, &meta, &batch, &positions, &rope, Some(12)))), "InvalidArgument");
    // Plans validate like the eager op: a sequence outside the metadata, a position past the
    // table, RoPE missing.
    let far = Batch::new(vec![5], vec![1]).unwrap();
    assert_eq!(kind(be.plan(desc(PlanOp::Step, &s, &meta, &far, &[0], &rope, None))), "InvalidArgument");
    assert_eq!(kind(be.plan(desc(PlanOp::Step, &s, &meta, &batch, &[0, 0, 300], &rope, None))), "PositionOutOfRange");
    assert_eq!(kind(be.plan(StepDesc { rope: None, ..desc(PlanOp::Step, &s, &meta, &batch, &positions, &rope, None) })), "InvalidArgument");
    // The run still works after all that.
    be.run(&plan, LayerViews::Step { q: &mut q, k: &mut k, v: &v, pools: &mut pools, out: &mut out, sinks: None }).unwrap();
    assert!(be.download(&out).unwrap().iter().all(|x| x.is_finite()));
}

#[test]
fn a_step_whose_rope_table_moves_needs_a_new_plan() {
    // Dynamic NTK rescales its table once positions pass the original length: a plan keeps the
    // table it was made with (the GPU's is uploaded once), so the update is refused, on every
    // backend alike (the API checks it), and the plan is left as it was.
    let be = CpuBackend::handle();
    let s = spec();
    let rope = RopeConfig { scaling: RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 4 }, ..RopeConfig::new(D, 10000.0, 256) };
    let mut meta = KvMetadata::new(&s).unwrap();
    for seq in 0..3 {
        meta.set_page_table(seq, &[4 * seq as u32, 4 * seq as u32 + 1, 4 * seq as u32 + 2, 4 * seq as u32 + 3]).unwrap();
    }
    let batch = Batch::uniform(3, 1).unwrap();
    meta.extend(&batch).unwrap();
    let mut plan = be.plan(desc(PlanOp::Step, &s, &meta, &batch, &[0, 1, 2], &rope, Some(8))).unwrap();
    be.update_plan(&mut plan, desc(PlanOp::Step, &s, &meta, &batch, &[1, 2, 3], &rope, None)).expect("within the original length: the same table");
    assert_eq!(kind(be.update_plan(&mut plan, desc(PlanOp::Step, &s, &meta, &batch, &[1, 2, 9], &rope, None))), "InvalidArgument");
    be.plan(desc(PlanOp::Step, &s, &meta, &batch, &[1, 2, 9], &rope, None)).expect("a new plan takes the new table");
}

#[test]
fn host_backends_capture_no_graphs() {
    let be = CpuBackend::handle();
    assert_eq!(be.graph_support(), GraphSupport::Never);
    assert_eq!(kind(be.capture(|| Ok(()))), "Unsupported");
}
