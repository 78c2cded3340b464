//! Every error kind of the API, produced by feeding invalid input through the public API, and
//! the registry's behaviour (unknown names, unavailable and unsupported backends, priorities).

use std::any::Any;
use std::sync::Arc;

use attnforge::registry::BackendEntry;
use attnforge::*;
use attnforge_cpu::CpuBackend;

fn cpu() -> Backend {
    registry::get("cpu").expect("cpu backend is linked")
}

fn t(be: &Backend, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    be.upload(&(0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), shape, dtype).unwrap()
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
    r.expect_err("expected an error").kind()
}

fn cache(be: &Backend, layout: CacheLayout) -> KvCache {
    be.create_kv_cache(&KvCacheSpec { num_seqs: 2, num_kv_heads: 2, head_dim: 8, dtype: DType::F32, kv_dtype: None, layout }).unwrap()
}

#[test]
fn shape_dtype_and_device_mismatches() {
    let be = cpu();
    let rope = RopeConfig::new(8, 10000.0, 64);
    let (mut q, mut k) = (t(&be, &[2, 4, 8], DType::F32), t(&be, &[2, 2, 8], DType::F32));
    assert_eq!(kind(be.rope(&mut q, &mut k, &[0], &rope)), "ShapeMismatch"); // positions
    let mut k3 = t(&be, &[3, 2, 8], DType::F32);
    assert_eq!(kind(be.rope(&mut q, &mut k3, &[0, 1], &rope)), "ShapeMismatch");
    let mut q16 = t(&be, &[2, 4, 16], DType::F32);
    assert_eq!(kind(be.rope(&mut q16, &mut k, &[0, 1], &rope)), "ShapeMismatch");
    let mut kh = t(&be, &[2, 2, 8], DType::F16);
    assert_eq!(kind(be.rope(&mut q, &mut kh, &[0, 1], &rope)), "DtypeMismatch");

    // A tensor whose storage belongs to another device.
    #[derive(Debug)]
    struct Foreign;
    impl Storage for Foreign {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
        fn byte_len(&self) -> usize {
            1 << 20
        }
    }
    let mut gpu_q = Tensor::from_storage(vec![2, 4, 8], DType::F32, Device::cuda(0), Box::new(Foreign)).unwrap();
    let e = be.rope(&mut gpu_q, &mut k, &[0, 1], &rope).unwrap_err();
    assert_eq!(e.kind(), "WrongDevice");
    assert!(e.to_string().contains("cuda:0"), "{e}");
    assert_eq!(kind(be.download(&gpu_q)), "WrongDevice");
    // Even a tensor that claims the CPU device but holds foreign storage is refused.
    let mut liar = Tensor::from_storage(vec![2, 4, 8], DType::F32, Device::CPU, Box::new(Foreign)).unwrap();
    assert_eq!(kind(be.rope(&mut liar, &mut k, &[0, 1], &rope)), "WrongDevice");

    let mut c = cache(&be, CacheLayout::Contiguous { capacity: 8 });
    let batch = Batch::new(vec![0], vec![2]).unwrap();
    let kbad = t(&be, &[2, 3, 8], DType::F32);
    let v = t(&be, &[2, 2, 8], DType::F32);
    assert_eq!(kind(be.kv_append(&mut c, &kbad, &v, &batch)), "ShapeMismatch");
    let kb = t(&be, &[2, 2, 8], DType::BF16);
    assert_eq!(kind(be.kv_append(&mut c, &kb, &v, &batch)), "DtypeMismatch");
    let mut out = t(&be, &[2, 4, 8], DType::F16);
    be.kv_append(&mut c, &k, &v, &batch).unwrap();
    assert_eq!(kind(be.attention(&q, &c, &batch, AttentionParams::causal(8), &mut out)), "DtypeMismatch");
    assert_eq!(kind(be.upload(&[1.0; 3], &[2, 2], DType::F32)), "InvalidArgument");
}

#[test]
fn head_dim_and_rotary_dim() {
    let be = cpu();
    let (mut q, mut k) = (t(&be, &[1, 2, 7], DType::F32), t(&be, &[1, 2, 7], DType::F32));
    assert_eq!(kind(be.rope(&mut q, &mut k, &[0], &RopeConfig::new(7, 10000.0, 8))), "OddHeadDim");
    let v = t(&be, &[1, 2, 7], DType::F32);
    let mut out = t(&be, &[1, 2, 7], DType::F32);
    let pb = PlainBatch::new(vec![1], vec![1]).unwrap();
    assert_eq!(kind(be.attention_plain(&q, &k, &v, &pb, AttentionParams::full(7), &mut out)), "OddHeadDim");
    let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: 1, head_dim: 5, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 4 } };
    assert_eq!(kind(be.create_kv_cache(&spec)), "OddHeadDim");

    let (mut q, mut k) = (t(&be, &[1, 2, 8], DType::F32), t(&be, &[1, 2, 8], DType::F32));
    for rotary_dim in [10, 3, 0] {
        let cfg = RopeConfig { rotary_dim, ..RopeConfig::new(8, 10000.0, 8) };
        assert_eq!(kind(be.rope(&mut q, &mut k, &[0], &cfg)), "InvalidRotaryDim", "rotary_dim {rotary_dim}");
    }
    let bad_theta = RopeConfig { theta: f64::NAN, ..RopeConfig::new(8, 10000.0, 8) };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[0], &bad_theta)), "InvalidArgument");
    let bad_table = RopeConfig { scaling: RopeScaling::Custom { inv_freq: vec![1.0], attention_factor: 1.0 }, ..RopeConfig::new(8, 10000.0, 8) };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[0], &bad_table)), "InvalidArgument");
}

#[test]
fn positions_past_max_position() {
    let be = cpu();
    let (mut q, mut k) = (t(&be, &[2, 2, 8], DType::F32), t(&be, &[2, 2, 8], DType::F32));
    let cfg = RopeConfig::new(8, 10000.0, 100);
    let e = be.rope(&mut q, &mut k, &[5, 100], &cfg).unwrap_err();
    assert_eq!(e, Error::PositionOutOfRange { token: 1, position: 100, max_position: 100 });
    be.rope(&mut q, &mut k, &[5, 99], &cfg).unwrap();
}

#[test]
fn cache_overflow_and_page_tables() {
    let be = cpu();
    let mut c = cache(&be, CacheLayout::Contiguous { capacity: 3 });
    let (k, v) = (t(&be, &[4, 2, 8], DType::F32), t(&be, &[4, 2, 8], DType::F32));
    let e = be.kv_append(&mut c, &k, &v, &Batch::new(vec![1], vec![4]).unwrap()).unwrap_err();
    assert_eq!(e, Error::KvCacheOverflow { seq: 1, needed: 4, capacity: 3 });
    assert_eq!(c.seq_len(1), 0, "a failed append leaves the length alone");

    let mut p = cache(&be, CacheLayout::Paged { page_size: 2, num_pages: 4 });
    assert_eq!(kind(p.set_page_table(0, &[1, 4])), "PageTableOutOfRange");
    p.set_page_table(0, &[1]).unwrap();
    assert_eq!(kind(p.set_page_table(1, &[2, 2])), "PageTableOutOfRange"); // twice in one table
    let e = be.kv_append(&mut p, &k, &v, &Batch::new(vec![0], vec![4]).unwrap()).unwrap_err();
    assert_eq!(e, Error::KvCacheOverflow { seq: 0, needed: 4, capacity: 2 }); // out of pages
                                                                              // Page 1 shared by sequences 0 and 1 (prefix caching): both may read it, neither append
                                                                              // into it, and nothing is written by the refused append.
    p.set_page_table(1, &[1, 2]).unwrap();
    let (k1, v1) = (t(&be, &[1, 2, 8], DType::F32), t(&be, &[1, 2, 8], DType::F32));
    let e = be.kv_append(&mut p, &k1, &v1, &Batch::new(vec![0], vec![1]).unwrap()).unwrap_err();
    assert!(e.kind() == "InvalidArgument" && e.to_string().contains("fork"), "{e}");
    assert_eq!(p.seq_len(0), 0);
    p.set_page_table(1, &[2, 3]).unwrap(); // unshared again
    be.kv_append(&mut p, &k1, &v1, &Batch::new(vec![0], vec![1]).unwrap()).unwrap();
    assert_eq!(kind(p.set_page_table(2, &[0])), "InvalidArgument"); // no sequence 2
    let mut contiguous = cache(&be, CacheLayout::Contiguous { capacity: 3 });
    assert_eq!(kind(contiguous.set_page_table(0, &[0])), "InvalidArgument");
    assert_eq!(kind(be.kv_append(&mut contiguous, &k, &v, &Batch::new(vec![5], vec![4]).unwrap())), "InvalidArgument");
}

#[test]
fn heads_batches_and_lengths() {
    let be = cpu();
    let (q, k, v) = (t(&be, &[2, 6, 8], DType::F32), t(&be, &[2, 4, 8], DType::F32), t(&be, &[2, 4, 8], DType::F32));
    let mut out = t(&be, &[2, 6, 8], DType::F32);
    let pb = PlainBatch::new(vec![2], vec![2]).unwrap();
    assert_eq!(kind(be.attention_plain(&q, &k, &v, &pb, AttentionParams::full(8), &mut out)), "HeadsNotDivisible");

    assert_eq!(kind(Batch::new(vec![], vec![])), "EmptyBatch");
    assert_eq!(kind(Batch::new(vec![0], vec![0])), "EmptyBatch");
    assert_eq!(kind(PlainBatch::new(vec![], vec![])), "EmptyBatch");
    assert_eq!(kind(Batch::new(vec![0, 0], vec![1, 1])), "InvalidArgument");
    assert_eq!(
        kind(be.create_kv_cache(&KvCacheSpec { num_seqs: 0, num_kv_heads: 1, head_dim: 8, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 1 } })),
        "EmptyBatch"
    );
    let (mut q0, mut k0) = (t(&be, &[0, 2, 8], DType::F32), t(&be, &[0, 2, 8], DType::F32));
    assert_eq!(kind(be.rope(&mut q0, &mut k0, &[], &RopeConfig::new(8, 1e4, 8))), "EmptyBatch");

    // More queries than keys: cross-attention for non-causal attention, refused by causal.
    let pb = PlainBatch::new(vec![2, 3], vec![2, 1]).unwrap();
    let (q5, kv3) = (t(&be, &[5, 4, 8], DType::F32), t(&be, &[3, 2, 8], DType::F32));
    let mut out5 = t(&be, &[5, 4, 8], DType::F32);
    assert_eq!(be.attention_plain(&q5, &kv3, &kv3, &pb, AttentionParams::causal(8), &mut out5).unwrap_err(), Error::QLenExceedsKvLen { seq: 1, q_len: 3, kv_len: 1 });
    be.attention_plain(&q5, &kv3, &kv3, &pb, AttentionParams::full(8), &mut out5).unwrap();
    assert_eq!(kind(PlainBatch::new(vec![3], vec![0])), "EmptyBatch");
    // Attention over a cache that holds fewer tokens than the queries.
    let c = cache(&be, CacheLayout::Contiguous { capacity: 8 });
    let q = t(&be, &[2, 4, 8], DType::F32);
    let mut out = t(&be, &[2, 4, 8], DType::F32);
    let e = be.attention(&q, &c, &Batch::new(vec![0], vec![2]).unwrap(), AttentionParams::causal(8), &mut out).unwrap_err();
    assert_eq!(e, Error::QLenExceedsKvLen { seq: 0, q_len: 2, kv_len: 0 });
    let nan_scale = AttentionParams { causal: false, scale: f32::NAN, softcap: None, window: None };
    assert_eq!(kind(be.attention(&q, &c, &Batch::new(vec![0], vec![2]).unwrap(), nan_scale, &mut out)), "InvalidArgument");
    // Attention sinks: f32 [H] only, and never where the output goes.
    let kv = t(&be, &[2, 4, 8], DType::F32);
    let pb = PlainBatch::new(vec![2], vec![2]).unwrap();
    for (sinks, want) in [(t(&be, &[5], DType::F32), "ShapeMismatch"), (t(&be, &[4], DType::F16), "DtypeMismatch"), (t(&be, &[4, 1], DType::F32), "ShapeMismatch")] {
        assert_eq!(kind(be.attention_plain_with_sinks(&q, &kv, &kv, &pb, AttentionParams::full(8), &sinks, &mut out)), want);
    }
    // A strided view of sinks (every other float of a buffer) is refused, not read as dense.
    let base = t(&be, &[8], DType::F32);
    let strided = be.view(&base, 0, &[4], 2).unwrap();
    let e = be.attention_plain_with_sinks(&q, &kv, &kv, &pb, AttentionParams::full(8), &strided, &mut out).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("dense")), "{e}");
    let ok = t(&be, &[4], DType::F32);
    be.attention_plain_with_sinks(&q, &kv, &kv, &pb, AttentionParams::full(8), &ok, &mut out).unwrap();
    // The lse output: f32 [T, H], dense, apart from every input and the output; nothing is
    // written when it is refused.
    for (lse, want) in [(t(&be, &[2, 5], DType::F32), "ShapeMismatch"), (t(&be, &[2, 4], DType::F16), "DtypeMismatch"), (t(&be, &[8], DType::F32), "ShapeMismatch")] {
        let mut lse = lse;
        assert_eq!(kind(be.attention_plain_with(&q, &kv, &kv, &pb, AttentionParams::full(8), AttentionExtras::lse(&mut lse), &mut out)), want);
    }
    let lse_base = t(&be, &[2, 8], DType::F32);
    let mut strided = be.view(&lse_base, 0, &[2, 4], 8).unwrap();
    let e = be.attention_plain_with(&q, &kv, &kv, &pb, AttentionParams::full(8), AttentionExtras::lse(&mut strided), &mut out).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("dense")), "{e}");
    let out_base = t(&be, &[2 * 4 * 8 + 8], DType::F32);
    let mut out_view = be.view(&out_base, 0, &[2, 4, 8], 32).unwrap();
    let mut lse_over_out = be.view(&out_base, 56, &[2, 4], 4).unwrap();
    let e = be.attention_plain_with(&q, &kv, &kv, &pb, AttentionParams::full(8), AttentionExtras::lse(&mut lse_over_out), &mut out_view).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("overlaps")), "{e}");
    let mut lse_in_sinks = be.view(&out_base, 0, &[2, 4], 4).unwrap();
    let sinks_view = be.view(&out_base, 4, &[4], 1).unwrap();
    let e = be.attention_plain_with(&q, &kv, &kv, &pb, AttentionParams::full(8), AttentionExtras::lse(&mut lse_in_sinks).with_sinks(&sinks_view), &mut out).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("overlaps")), "{e}");
    let mut lse = t(&be, &[2, 4], DType::F32);
    be.attention_plain_with(&q, &kv, &kv, &pb, AttentionParams::full(8), AttentionExtras::lse(&mut lse), &mut out).unwrap();
    assert!(be.download(&lse).unwrap().iter().all(|x| x.is_finite()));
    // merge_states: at least one state, every state of the output's shape and dtype with an
    // lse f32 [T, H], an output apart from every state.
    let (o1, l1) = (t(&be, &[2, 4, 8], DType::F32), t(&be, &[2, 4], DType::F32));
    let mut merged = t(&be, &[2, 4, 8], DType::F32);
    assert_eq!(kind(be.merge_states(&[], &mut merged, None)), "EmptyBatch");
    let (o_f16, l_bad) = (t(&be, &[2, 4, 8], DType::F16), t(&be, &[2, 5], DType::F32));
    assert_eq!(kind(be.merge_states(&[(&o1, &l1), (&o_f16, &l1)], &mut merged, None)), "DtypeMismatch");
    assert_eq!(kind(be.merge_states(&[(&o1, &l1), (&o1, &l_bad)], &mut merged, None)), "ShapeMismatch");
    let mut wrong_out = t(&be, &[2, 4, 16], DType::F32);
    assert_eq!(kind(be.merge_states(&[(&o1, &l1)], &mut wrong_out, None)), "ShapeMismatch");
    let mut bad_lse = t(&be, &[2, 4], DType::F16);
    assert_eq!(kind(be.merge_states(&[(&o1, &l1)], &mut merged, Some(&mut bad_lse))), "DtypeMismatch");
    let mut aliased = be.view(&out_base, 0, &[2, 4, 8], 32).unwrap();
    let state_in_out = be.view(&out_base, 8, &[2, 4, 8], 32).unwrap();
    let e = be.merge_states(&[(&state_in_out, &l1)], &mut aliased, None).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("overlaps")), "{e}");
    be.merge_states(&[(&o1, &l1), (&o1, &l1)], &mut merged, None).unwrap();
    // A sliding window of no keys, or without the causal mask.
    for (params, what) in [(AttentionParams::causal(8).with_window(0), "at least 1 key"), (AttentionParams::full(8).with_window(16), "needs causal")] {
        let e = be.attention(&q, &c, &Batch::new(vec![0], vec![2]).unwrap(), params, &mut out).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(what)), "{e}");
    }
    assert_eq!(kind(be.alloc(&[usize::MAX, 4], DType::F32)), "InvalidArgument");
}

/// A backend that runs only f16 problems (wrapping the reference), registered for these tests.
struct F16Only;
impl AttentionBackend for F16Only {
    fn name(&self) -> &str {
        "test-f16-only"
    }
    fn device(&self) -> Device {
        Device::CPU
    }
    fn supports(&self, _op: Op, p: &ProblemDesc) -> std::result::Result<(), Vec<String>> {
        let mut why = Vec::new();
        if p.dtype != DType::F16 {
            why.push(format!("dtype {} (only f16)", p.dtype));
        }
        if p.head_dim > 64 {
            why.push(format!("head_dim {} (at most 64)", p.head_dim));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
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
    fn rope(&self, a: RopeArgs<'_>) -> Result<()> {
        CpuBackend.rope(a)
    }
    fn kv_append(&self, a: AppendArgs<'_>) -> Result<()> {
        CpuBackend.kv_append(a)
    }
    fn attention(&self, a: AttentionArgs<'_>) -> Result<()> {
        CpuBackend.attention(a)
    }
    fn attention_plain(&self, a: PlainAttentionArgs<'_>) -> Result<()> {
        CpuBackend.attention_plain(a)
    }
}

inventory::submit! {
    BackendEntry { name: "test-f16-only", description: "test: f16, head_dim <= 64", priority: 500, create: || Ok(Arc::new(F16Only)) }
}
inventory::submit! {
    BackendEntry { name: "test-no-device", description: "test: never available", priority: 1000, create: || Err("no device in this test".into()) }
}
inventory::submit! {
    BackendEntry { name: "test-twice", description: "test: first", priority: 1, create: || Ok(Arc::new(F16Only)) }
}
inventory::submit! {
    BackendEntry { name: "test-twice", description: "test: second", priority: 1, create: || Ok(Arc::new(F16Only)) }
}

#[test]
fn context_shift_refuses_bad_input() {
    let be = cpu();
    let mut c = cache(&be, CacheLayout::Contiguous { capacity: 8 });
    let (k, v) = (t(&be, &[3, 2, 8], DType::F32), t(&be, &[3, 2, 8], DType::F32));
    be.kv_append(&mut c, &k, &v, &Batch::uniform(1, 3).unwrap()).unwrap();
    let rope = RopeConfig::new(8, 10000.0, 64);
    assert!(be.shift_positions(&mut c, 0, 0..3, -2, &rope).is_ok());
    assert_eq!(kind(be.shift_positions(&mut c, 0, 1..4, 1, &rope)), "InvalidArgument"); // past the length
    assert_eq!(kind(be.shift_positions(&mut c, 2, 0..1, 1, &rope)), "InvalidArgument"); // no such sequence
    assert_eq!(kind(be.shift_positions(&mut c, 0, 0..1, 64, &rope)), "InvalidArgument"); // |delta| >= max_position
    let wrong_dim = RopeConfig::new(16, 10000.0, 64);
    assert_eq!(kind(be.shift_positions(&mut c, 0, 0..1, 1, &wrong_dim)), "ShapeMismatch"); // as the step reports it
    let dynamic = RopeConfig { scaling: RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 32 }, ..rope.clone() };
    assert_eq!(kind(be.shift_positions(&mut c, 0, 0..1, 1, &dynamic)), "InvalidArgument");
    let odd = RopeConfig { rotary_dim: 9, ..rope };
    assert_eq!(kind(be.shift_positions(&mut c, 0, 0..1, 1, &odd)), "InvalidRotaryDim");
}

fn problem(dtype: DType, d: usize) -> ProblemDesc {
    ProblemDesc::step(dtype, 8, 2, RopeConfig::new(d, 1e4, 128), CacheLayout::Contiguous { capacity: 16 })
}

#[test]
fn registry_lists_gets_and_refuses() {
    assert!(registry::linked().contains(&"cpu"));
    let names = registry::names();
    for n in ["cpu", "test-f16-only", "test-no-device", "test-twice"] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    let list = registry::list();
    assert_eq!(list[0].name, "test-no-device", "sorted by priority");
    assert!(list[0].available.as_ref().unwrap_err().contains("no device"));
    let twice = list.iter().find(|b| b.name == "test-twice").unwrap();
    assert!(twice.available.as_ref().unwrap_err().contains("more than one backend"));
    // On any device, and fresh: a name registered twice is refused, never "first one wins".
    for e in [registry::get_on("test-twice", 1).unwrap_err(), registry::create_on("test-twice", 0).unwrap_err()] {
        assert!(e.kind() == "BackendUnavailable" && e.to_string().contains("more than one backend"), "{e}");
    }

    let e = registry::get("nosuch").unwrap_err();
    assert_eq!(e.kind(), "UnknownBackend");
    assert!(e.to_string().contains("cpu") && e.to_string().contains("test-f16-only"), "{e}");
    assert_eq!(kind(registry::get("test-no-device")), "BackendUnavailable");
    assert_eq!(registry::get("cpu").unwrap().name(), "cpu");
}

#[test]
fn select_picks_by_priority_and_explains() {
    let s = registry::select_with(&problem(DType::F16, 64), None).unwrap();
    assert_eq!(s.backend.name(), "test-f16-only");
    let why: std::collections::HashMap<_, _> = s.rejected.iter().cloned().collect();
    assert!(why["test-no-device"].contains("no device"));
    assert!(why["cpu"].contains("lower priority"));

    // f32: the test backend declines, so the best real backend wins (hip-flash on a GPU
    // machine, the reference elsewhere).
    let s = registry::select_with(&problem(DType::F32, 128), None).unwrap();
    let best_real = registry::list().into_iter().filter(|b| b.available.is_ok() && !b.name.starts_with("test-")).max_by_key(|b| b.priority).unwrap();
    assert_eq!(s.backend.name(), best_real.name);
    let why: std::collections::HashMap<_, _> = s.rejected.iter().cloned().collect();
    assert!(why["test-f16-only"].contains("dtype f32") && why["test-f16-only"].contains("head_dim 128"), "{why:?}");
}

#[test]
fn forced_backend_never_falls_back() {
    let e = registry::select_with(&problem(DType::F32, 128), Some("test-f16-only")).unwrap_err();
    match e {
        Error::Unsupported { backend, reasons, .. } => {
            assert_eq!(backend, "test-f16-only");
            assert!(reasons.iter().any(|r| r.contains("dtype f32")) && reasons.iter().any(|r| r.contains("head_dim 128")), "{reasons:?}");
        }
        e => panic!("expected Unsupported, got {e}"),
    }
    assert_eq!(kind(registry::select_with(&problem(DType::F16, 64), Some("test-no-device"))), "BackendUnavailable");
    assert_eq!(kind(registry::select_with(&problem(DType::F16, 64), Some("nosuch"))), "UnknownBackend");
    let s = registry::select_with(&problem(DType::F16, 64), Some("cpu")).unwrap();
    assert_eq!(s.backend.name(), "cpu");

    // An op on an unsupported problem is refused with the reasons, not rerouted.
    let be = registry::get("test-f16-only").unwrap();
    let (mut q, mut k) = (t(&be, &[1, 2, 128], DType::F32), t(&be, &[1, 2, 128], DType::F32));
    let e = be.rope(&mut q, &mut k, &[0], &RopeConfig::new(128, 1e4, 8)).unwrap_err();
    assert_eq!(e.kind(), "Unsupported");
    assert!(e.to_string().contains("dtype f32"), "{e}");
}

#[test]
fn env_override_is_read() {
    // The only test that touches the environment variable.
    std::env::set_var(registry::BACKEND_ENV, "nosuch");
    let e = registry::select(&problem(DType::F16, 64)).unwrap_err();
    std::env::remove_var(registry::BACKEND_ENV);
    assert_eq!(e.kind(), "UnknownBackend");
}

#[test]
fn device_errors_carry_code_and_message() {
    // Device errors come from drivers (backend-hip tests provoke real ones on a GPU); here the
    // host allocator's failure is the one the CPU backend can report.
    let e = Error::Device { code: 2, message: "cuMemAlloc: out of memory".into() };
    assert_eq!(e.to_string(), "device error 2: cuMemAlloc: out of memory");
}
