//! Input that used to pass validation and then panicked, aborted or computed garbage: each case
//! here must now be a typed error, on the reference (which panicked or aborted on several of
//! them before) and, through the conformance suite's error checks, on every backend.

use attnforge::*;
use attnforge_cpu::storage::{CpuTensor, HostBuffer};

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

#[test]
fn tensors_from_too_small_or_mistyped_storage_are_refused() {
    let be = cpu();
    let small = t(&be, &[4], DType::F32);
    // Re-wrapped with a larger shape: the storage holds 16 bytes, the shape needs 4000.
    let e = Tensor::from_storage(vec![1000], DType::F32, Device::CPU, small.into_storage()).unwrap_err();
    assert_eq!(e, Error::StorageTooSmall { what: "tensor".into(), needed: 4000, got: 16 });
    // f16 storage of 8 elements viewed as 4 f32: the bytes fit, the type does not.
    let h = t(&be, &[8], DType::F16);
    assert_eq!(kind(Tensor::from_storage(vec![4], DType::F32, Device::CPU, h.into_storage())), "DtypeMismatch");
    // A shape whose byte size overflows never becomes a tensor (numel cannot overflow).
    let s = t(&be, &[2], DType::F32).into_storage();
    assert_eq!(kind(Tensor::from_storage(vec![usize::MAX, 2], DType::F32, Device::CPU, s)), "InvalidArgument");
}

#[test]
fn ops_check_storage_that_shrank_after_construction() {
    // The reference indexed past the end of its storage and panicked here.
    let be = cpu();
    let rope = RopeConfig::new(8, 10000.0, 64);
    let (mut q, mut k) = (t(&be, &[2, 4, 8], DType::F32), t(&be, &[2, 2, 8], DType::F32));
    *q.storage_mut().as_any_mut().downcast_mut::<CpuTensor>().unwrap() = CpuTensor { buf: HostBuffer::zeros(3, DType::F32).unwrap(), offset: 0 };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[0, 1], &rope)), "StorageTooSmall");
    assert_eq!(kind(be.download(&q)), "StorageTooSmall");
    assert_eq!(kind(be.fill(&mut q, 1.0)), "StorageTooSmall");
    // Storage of another dtype swapped in.
    *k.storage_mut().as_any_mut().downcast_mut::<CpuTensor>().unwrap() = CpuTensor { buf: HostBuffer::zeros(64, DType::BF16).unwrap(), offset: 0 };
    assert_eq!(kind(be.download(&k)), "DtypeMismatch");

    let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: 2, head_dim: 8, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 4 } };
    let mut c = be.create_kv_cache(&spec).unwrap();
    let (_, v, _) = c.parts_mut().0.parts_mut();
    *v.storage_mut().as_any_mut().downcast_mut::<CpuTensor>().unwrap() = CpuTensor { buf: HostBuffer::zeros(1, DType::F32).unwrap(), offset: 0 };
    let kv = t(&be, &[1, 2, 8], DType::F32);
    assert_eq!(kind(be.kv_append(&mut c, &kv, &kv, &Batch::uniform(1, 1).unwrap())), "StorageTooSmall");
    assert_eq!(c.seq_len(0), 0);
}

#[test]
fn caches_from_bad_storage_or_huge_specs_are_errors() {
    let spec = KvCacheSpec { num_seqs: 2, num_kv_heads: 1, head_dim: 8, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 4 } };
    let k = cpu().alloc(&spec.pool_shape(), DType::F32).unwrap();
    let v = Tensor::from_storage(vec![63], DType::F32, Device::CPU, Box::new(CpuTensor { buf: HostBuffer::zeros(63, DType::F32).unwrap(), offset: 0 })).unwrap();
    assert_eq!(kind(KvPools::from_tensors(spec.clone(), Device::CPU, k, v, None)), "ShapeMismatch");
    let k = cpu().alloc(&spec.pool_shape(), DType::F32).unwrap();
    let v = Tensor::from_storage(spec.pool_shape().to_vec(), DType::F32, Device::CPU, Box::new(CpuTensor { buf: HostBuffer::zeros(63, DType::F32).unwrap(), offset: 0 }));
    assert_eq!(kind(v), "StorageTooSmall");
    drop(k);
    // 2^40 sequences of one slot: the pools' byte size fits, the host metadata does not (this
    // aborted the process before).
    let huge = KvCacheSpec { num_seqs: 1 << 40, num_kv_heads: 1, head_dim: 2, dtype: DType::F16, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 1 } };
    assert_eq!(kind(KvMetadata::new(&huge)), "OutOfMemory");
    assert_eq!(kind(Batch::uniform(usize::MAX / 2, 1)), "OutOfMemory");
}

#[test]
fn positions_and_scalings_that_do_not_fit_are_refused() {
    let be = cpu();
    let (mut q, mut k) = (t(&be, &[1, 2, 8], DType::F32), t(&be, &[1, 2, 8], DType::F32));
    let base = RopeConfig::new(8, 10000.0, 4096);
    // Positions beyond the kernels' 32-bit integers (with room for a shift).
    let far = RopeConfig { max_position: (1usize << 31) + 5, ..base.clone() };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[(1u32 << 31) + 1], &far)), "InvalidArgument");
    let yarn_backwards =
        RopeConfig { scaling: RopeScaling::Yarn { factor: 4.0, original_max_position: 1024, beta_fast: 1.0, beta_slow: 32.0, attention_factor: None }, ..base.clone() };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[3], &yarn_backwards)), "InvalidArgument");
    let longrope_one =
        RopeConfig { scaling: RopeScaling::LongRope { short_factors: vec![1.0; 4], long_factors: vec![2.0; 4], original_max_position: 1, attention_factor: None }, ..base.clone() };
    assert_eq!(kind(be.rope(&mut q, &mut k, &[3], &longrope_one)), "InvalidArgument");
    // 1 / 1e-310 overflows to infinity: the table is not finite.
    let tiny = RopeConfig { scaling: RopeScaling::Linear { factor: 1e-310 }, ..base.clone() };
    let e = be.rope(&mut q, &mut k, &[3], &tiny).unwrap_err();
    assert_eq!(e.kind(), "InvalidArgument");
    assert!(e.to_string().contains("inverse frequency inf"), "{e}");
    assert_eq!(kind(tiny.frequencies(0)), "InvalidArgument");
}

#[test]
fn yarn_default_attention_factor_follows_hugging_face() {
    // get_mscale(s) = 0.1 ln(s) + 1 for s > 1, else 1.
    for (factor, want) in [(0.5, 1.0), (1.0, 1.0), (4.0, 0.1 * 4f64.ln() + 1.0)] {
        let cfg = RopeConfig {
            scaling: RopeScaling::Yarn { factor, original_max_position: 1024, beta_fast: 32.0, beta_slow: 1.0, attention_factor: None },
            ..RopeConfig::new(64, 10000.0, 8192)
        };
        assert_eq!(cfg.frequencies(0).unwrap().attention_factor, want, "factor {factor}");
    }
}

#[test]
fn context_shift_and_step_report_a_head_dim_mismatch_alike() {
    let be = cpu();
    let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: 2, head_dim: 8, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Contiguous { capacity: 8 } };
    let mut c = be.create_kv_cache(&spec).unwrap();
    let kv = t(&be, &[2, 2, 8], DType::F32);
    be.kv_append(&mut c, &kv, &kv, &Batch::uniform(1, 2).unwrap()).unwrap();
    let rope16 = RopeConfig::new(16, 10000.0, 64);
    let shift = be.shift_positions(&mut c, 0, 0..1, 1, &rope16).unwrap_err();
    let (mut q, mut k, v) = (t(&be, &[1, 4, 16], DType::F32), t(&be, &[1, 2, 16], DType::F32), t(&be, &[1, 2, 16], DType::F32));
    let mut out = t(&be, &[1, 4, 16], DType::F32);
    let step = be
        .rope_append_attend(StepInputs {
            q: &mut q,
            k: &mut k,
            v: &v,
            positions: &[2],
            rope: &rope16,
            cache: &mut c,
            batch: &Batch::uniform(1, 1).unwrap(),
            params: AttentionParams::causal(16),
            out: &mut out,
            sinks: None,
        })
        .unwrap_err();
    assert_eq!(shift.kind(), step.kind());
    assert_eq!(shift.kind(), "ShapeMismatch");
}

#[test]
fn selection_validates_the_problem_first() {
    let rope = RopeConfig::new(64, 1e4, 128);
    let layout = CacheLayout::Contiguous { capacity: 16 };
    let good = ProblemDesc::step(DType::F16, 8, 2, rope.clone(), layout);
    registry::select_with(&good, Some("cpu")).unwrap();
    let cases: Vec<(ProblemDesc, &str)> = vec![
        (ProblemDesc { num_kv_heads: 0, ..good.clone() }, "HeadsNotDivisible"),
        (ProblemDesc { num_kv_heads: 3, ..good.clone() }, "HeadsNotDivisible"),
        (ProblemDesc { head_dim: 63, ..good.clone() }, "OddHeadDim"),
        (ProblemDesc { head_dim: 128, ..good.clone() }, "ShapeMismatch"), // RoPE head_dim 64
        (ProblemDesc { batch_size: 0, ..good.clone() }, "EmptyBatch"),
        (ProblemDesc { layout: Some(CacheLayout::Paged { page_size: 0, num_pages: 4 }), ..good.clone() }, "InvalidArgument"),
        (ProblemDesc { max_q_len: 9, max_kv_len: 3, ..good.clone() }, "QLenExceedsKvLen"),
        (ProblemDesc { batch_size: usize::MAX / 4, max_q_len: 1 << 20, ..good.clone() }, "InvalidArgument"),
    ];
    for (p, want) in cases {
        assert_eq!(kind(registry::select_with(&p, None)), want, "{p:?}");
        assert_eq!(kind(cpu().supports_problem(&p)), want, "{p:?}");
        assert_eq!(kind(cpu().supports(Op::Attention, &p)), want, "{p:?}");
    }
}
