//! The engine path on the CPU (the borrowed path runs in CI): views into caller buffers with
//! strided rows, pools viewed out of one allocation, metadata the caller owns. Results equal
//! the owned path's bit for bit (one code path), and bad input is a typed error that writes
//! nothing.

use attnforge::attnforge_cpu::storage::HostBuffer;
use attnforge::attnforge_cpu::CpuBackend;
use attnforge::*;

const H: usize = 4;
const HK: usize = 2;
const D: usize = 16;
const W: usize = (H + 2 * HK) * D + 8; // a fused QKV row, padded

fn cpu() -> Backend {
    CpuBackend::handle()
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
    r.expect_err("expected an error").kind()
}

fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut r = attnforge_conformance::rng::Rng::new(seed);
    r.normals(n, 1.0)
}

fn spec(num_pages: usize) -> KvCacheSpec {
    KvCacheSpec { num_seqs: 3, num_kv_heads: HK, head_dim: D, dtype: DType::BF16, kv_dtype: None, layout: CacheLayout::Paged { page_size: 4, num_pages } }
}

/// Q, K, V of `t` tokens as views into one fused buffer (the engine's projection output).
fn fused(buf: &HostBuffer, t: usize, q: &[f32], k: &[f32], v: &[f32]) -> (Tensor, Tensor, Tensor) {
    for i in 0..t {
        buf.write_f32(i * W, &q[i * H * D..(i + 1) * H * D]).unwrap();
        buf.write_f32(i * W + H * D, &k[i * HK * D..(i + 1) * HK * D]).unwrap();
        buf.write_f32(i * W + (H + HK) * D, &v[i * HK * D..(i + 1) * HK * D]).unwrap();
    }
    let dt = buf.dtype();
    (
        CpuBackend::tensor_in(buf, 0, &[t, H, D], W, dt).unwrap(),
        CpuBackend::tensor_in(buf, H * D, &[t, HK, D], W, dt).unwrap(),
        CpuBackend::tensor_in(buf, (H + HK) * D, &[t, HK, D], W, dt).unwrap(),
    )
}

#[test]
fn views_and_engine_metadata_give_the_owned_results_bit_for_bit() {
    let be = cpu();
    let rope = RopeConfig::new(D, 10000.0, 256);
    let params = AttentionParams::causal(D);
    let mut owned = be.create_kv_cache(&spec(12)).unwrap();
    // The engine: pools as layer 1 of a two-layer allocation, its own block tables.
    let s = spec(12);
    let n = s.pool_len();
    let pool_buf = HostBuffer::zeros(4 * n, DType::BF16).unwrap();
    let row = 4 * HK * D;
    let k = CpuBackend::tensor_in(&pool_buf, n, &s.pool_shape(), row, DType::BF16).unwrap();
    let v = CpuBackend::tensor_in(&pool_buf, 3 * n, &s.pool_shape(), row, DType::BF16).unwrap();
    let mut pools = be.kv_pools(&s, k, v).unwrap();
    let mut meta = KvMetadata::new(&s).unwrap();
    for (seq, pages) in [[3u32, 7, 1, 9], [0, 2, 4, 6], [5, 8, 10, 11]].iter().enumerate() {
        owned.set_page_table(seq, pages).unwrap();
        meta.set_page_table(seq, pages).unwrap();
    }
    let buf = HostBuffer::zeros(16 * W, DType::BF16).unwrap();
    let out_buf = HostBuffer::zeros(16 * (H * D + 4), DType::BF16).unwrap();
    for (step, lens) in [vec![5usize, 3, 6], vec![1, 1, 1], vec![2, 1, 3]].into_iter().enumerate() {
        let batch = Batch::new(vec![0, 1, 2], lens.clone()).unwrap();
        let t = batch.total_tokens();
        let (qd, kd, vd) = (normals(t * H * D, 3 * step as u64), normals(t * HK * D, 3 * step as u64 + 1), normals(t * HK * D, 3 * step as u64 + 2));
        let positions: Vec<u32> = batch.seq_ids().iter().zip(&lens).flat_map(|(&s, &l)| (owned.seq_len(s) as u32..).take(l)).collect();
        // Owned.
        let (mut q, mut k) = (be.upload(&qd, &[t, H, D], DType::BF16).unwrap(), be.upload(&kd, &[t, HK, D], DType::BF16).unwrap());
        let v = be.upload(&vd, &[t, HK, D], DType::BF16).unwrap();
        let mut out = be.alloc(&[t, H, D], DType::BF16).unwrap();
        be.rope_append_attend(StepInputs { q: &mut q, k: &mut k, v: &v, positions: &positions, rope: &rope, cache: &mut owned, batch: &batch, params, out: &mut out, sinks: None }).unwrap();
        // Engine: views into one fused buffer, a strided output, its metadata.
        let (mut qv, mut kv, vv) = fused(&buf, t, &qd, &kd, &vd);
        let mut ov = CpuBackend::tensor_in(&out_buf, 2, &[t, H, D], H * D + 4, DType::BF16).unwrap();
        meta.extend(&batch).unwrap();
        be.step(StepViews { q: &mut qv, k: &mut kv, v: &vv, positions: &positions, rope: &rope, pools: &mut pools, meta: &meta, batch: &batch, params, out: &mut ov, sinks: None }).unwrap();
        assert_eq!(be.download(&ov).unwrap(), be.download(&out).unwrap(), "step {step}");
        assert_eq!(be.read_kv_pools(&pools).unwrap(), be.read_kv_pool(&owned).unwrap(), "step {step}: pools");
        // Attention alone, again through both paths.
        be.attention(&q, &owned, &batch, params, &mut out).unwrap();
        be.attend(&qv, &pools, &meta, &batch, params, &mut ov).unwrap();
        assert_eq!(be.download(&ov).unwrap(), be.download(&out).unwrap());
    }
    // Layer 0 of the allocation and the padding between views were never written.
    assert!(pool_buf.read_f32(0..n).unwrap().iter().all(|&x| x == 0.0));
    assert!(pool_buf.read_f32(2 * n..3 * n).unwrap().iter().all(|&x| x == 0.0));
    assert!(buf.read_f32(W - 8..W).unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn bad_views_are_typed_errors() {
    let be = cpu();
    let buf = HostBuffer::zeros(4 * W, DType::F16).unwrap();
    assert_eq!(kind(CpuBackend::tensor_in(&buf, 0, &[4, H, D], H * D - 1, DType::F16)), "InvalidArgument", "stride shorter than a row");
    assert_eq!(kind(CpuBackend::tensor_in(&buf, W, &[4, H, D], W, DType::F16)), "StorageTooSmall", "runs past the buffer");
    assert_eq!(kind(CpuBackend::tensor_in(&buf, 0, &[4, H, D], W, DType::BF16)), "DtypeMismatch");
    assert_eq!(kind(CpuBackend::tensor_in(&buf, 5 * W, &[1, H, D], W, DType::F16)), "InvalidArgument");
    let base = be.alloc(&[4, W], DType::F16).unwrap();
    assert_eq!(kind(be.view(&base, 0, &[4, H, D], H * D - 2)), "InvalidArgument");
    assert_eq!(kind(be.view(&base, W, &[4, H, D], W)), "InvalidArgument", "past the base");
    let strided = be.view(&base, 0, &[4, H, D], W).unwrap();
    assert_eq!(kind(be.view(&strided, 0, &[2, D], D)), "InvalidArgument", "a view of a strided view");
    // Pools must be dense, of the pool shape, not overlapping.
    let s = spec(4);
    let pool = be.alloc(&[2 * s.pool_len()], DType::BF16).unwrap();
    let shape = s.pool_shape();
    let row = 4 * HK * D;
    let same = || be.view(&pool, 0, &shape, row).unwrap();
    assert_eq!(kind(be.kv_pools(&s, same(), same())), "InvalidArgument", "K and V overlap");
    let strided = be.view(&pool, 0, &shape, row + 2);
    assert!(strided.is_err() || kind(be.kv_pools(&s, strided.unwrap(), same())) == "InvalidArgument");
}

#[test]
fn outputs_overlapping_their_inputs_are_refused_and_nothing_is_written() {
    let be = cpu();
    let t = 2;
    let buf = HostBuffer::zeros(t * W, DType::F16).unwrap();
    let (qd, kd, vd) = (normals(t * H * D, 1), normals(t * HK * D, 2), normals(t * HK * D, 3));
    let (mut q, mut k, v) = fused(&buf, t, &qd, &kd, &vd);
    let rope = RopeConfig::new(D, 10000.0, 64);
    // q and k overlapping (the same columns twice).
    let mut q2 = CpuBackend::tensor_in(&buf, H * D, &[t, HK, D], W, DType::F16).unwrap();
    let before = buf.read_f32(0..t * W).unwrap();
    assert_eq!(kind(be.rope(&mut q2, &mut k, &[0, 1], &rope)), "InvalidArgument");
    // Plain attention whose output is q's own memory, or v's.
    let batch = PlainBatch::new(vec![t], vec![t]).unwrap();
    let mut out = CpuBackend::tensor_in(&buf, 0, &[t, H, D], W, DType::F16).unwrap();
    assert_eq!(kind(be.attention_plain(&q, &k, &v, &batch, AttentionParams::causal(D), &mut out)), "InvalidArgument");
    let mut out = CpuBackend::tensor_in(&buf, H * D, &[t, H, D], W, DType::F16).unwrap();
    assert_eq!(kind(be.attention_plain(&q, &k, &v, &batch, AttentionParams::causal(D), &mut out)), "InvalidArgument", "out covers k and v");
    assert_eq!(buf.read_f32(0..t * W).unwrap(), before, "a refused op wrote something");
    // Disjoint views of one buffer are fine: rope on q and k of the fused buffer.
    be.rope(&mut q, &mut k, &[0, 1], &rope).unwrap();
    let mut out = be.alloc(&[t, H, D], DType::F16).unwrap();
    be.attention_plain(&q, &k, &v, &batch, AttentionParams::causal(D), &mut out).unwrap();
    // Views in another row range of the same columns do not overlap.
    let top = CpuBackend::tensor_in(&buf, 0, &[1, H, D], W, DType::F16).unwrap();
    let bottom = CpuBackend::tensor_in(&buf, W, &[1, H, D], W, DType::F16).unwrap();
    assert!(!top.overlaps(&bottom) && top.overlaps(&q) && !q.overlaps(&k) && !k.overlaps(&v));
}

#[test]
fn engine_metadata_errors_are_typed_and_change_nothing() {
    let be = cpu();
    let s = spec(6);
    let mut meta = KvMetadata::new(&s).unwrap();
    assert_eq!(kind(meta.set_page_table(0, &[1, 6])), "PageTableOutOfRange", "a page past the pool");
    assert_eq!(kind(meta.set_page_table(0, &[1, 1])), "PageTableOutOfRange", "a page twice in one table");
    assert_eq!(kind(meta.set_page_table(3, &[1])), "InvalidArgument", "a sequence past the metadata");
    meta.set_page_table(0, &[1, 2]).unwrap();
    assert_eq!(kind(meta.set_seq_len(0, 9)), "KvCacheOverflow", "a length past capacity");
    let batch = Batch::new(vec![0, 1], vec![3, 1]).unwrap();
    assert_eq!(kind(meta.extend(&batch)), "KvCacheOverflow", "sequence 1 has no pages");
    assert_eq!(meta.seq_len(0), 0, "a refused extend changed a length");
    assert_eq!(kind(meta.truncate(0, 1)), "InvalidArgument", "truncation cannot grow");
    // Appending before the lengths count the new tokens.
    let mut pools = be.kv_pools(&s, be.alloc(&s.pool_shape(), DType::BF16).unwrap(), be.alloc(&s.pool_shape(), DType::BF16).unwrap()).unwrap();
    let kv = be.upload(&normals(3 * HK * D, 5), &[3, HK, D], DType::BF16).unwrap();
    let one = Batch::new(vec![0], vec![3]).unwrap();
    assert_eq!(kind(be.append_kv(&mut pools, &meta, &kv, &kv, &one)), "InvalidArgument");
    // Metadata of another layout does not address these pools.
    let other = KvMetadata::new(&KvCacheSpec { layout: CacheLayout::Paged { page_size: 8, num_pages: 6 }, ..s.clone() }).unwrap();
    assert_eq!(kind(be.append_kv(&mut pools, &other, &kv, &kv, &one)), "InvalidArgument");
    meta.extend(&one).unwrap();
    be.append_kv(&mut pools, &meta, &kv, &kv, &one).unwrap();
    // Page copies: in the pool, each target once and never a source.
    assert_eq!(kind(be.copy_kv_pages(&mut pools, &[(1, 6)])), "InvalidArgument");
    assert_eq!(kind(be.copy_kv_pages(&mut pools, &[(1, 3), (2, 3)])), "InvalidArgument");
    assert_eq!(kind(be.copy_kv_pages(&mut pools, &[(1, 3), (3, 4)])), "InvalidArgument");
}

#[test]
fn forks_share_pages_and_truncation_rolls_back_on_the_engine_path() {
    let be = cpu();
    let s = KvCacheSpec { dtype: DType::F32, ..spec(8) };
    let mut pools = be.kv_pools(&s, be.alloc(&s.pool_shape(), DType::F32).unwrap(), be.alloc(&s.pool_shape(), DType::F32).unwrap()).unwrap();
    let mut meta = KvMetadata::new(&s).unwrap();
    meta.set_page_table(0, &[0, 1, 2]).unwrap();
    let kd = normals(6 * HK * D, 9);
    let k = be.upload(&kd, &[6, HK, D], DType::F32).unwrap();
    let six = Batch::new(vec![0], vec![6]).unwrap();
    meta.extend(&six).unwrap();
    be.append_kv(&mut pools, &meta, &k, &k, &six).unwrap();
    // Fork: page 0 (full) shared, page 1 (partial) copied into page 5.
    let copy = meta.fork(0, 1, Some(5)).unwrap();
    assert_eq!(copy, Some((1, 5)));
    assert!(meta.page_shared(0) && !meta.page_shared(1));
    be.copy_kv_pages(&mut pools, &[copy.unwrap()]).unwrap();
    let pool = be.read_kv_pools(&pools).unwrap();
    let page = 4 * HK * D;
    assert_eq!(&pool.k[5 * page..5 * page + 2 * HK * D], &kd[4 * HK * D..]);
    // Sequence 1 appending into its copy is fine; an append into the shared page would not be.
    let one = Batch::new(vec![1], vec![1]).unwrap();
    assert_eq!(meta.append_conflict(&one), None);
    meta.truncate(1, 3).unwrap();
    assert_eq!(meta.append_conflict(&one), Some((1, 0)), "token 3 of sequence 1 lies in the shared page 0");
    // Rollback: sequence 0 drops two tokens; the next append overwrites them.
    meta.truncate(0, 4).unwrap();
    let k1 = be.upload(&normals(HK * D, 10), &[1, HK, D], DType::F32).unwrap();
    let b0 = Batch::new(vec![0], vec![1]).unwrap();
    meta.extend(&b0).unwrap();
    be.append_kv(&mut pools, &meta, &k1, &k1, &b0).unwrap();
    let pool = be.read_kv_pools(&pools).unwrap();
    assert_eq!(&pool.k[page..page + HK * D], &be.download(&k1).unwrap()[..]);
}

#[test]
fn a_step_whose_q_shares_memory_with_v_or_the_pools_is_refused() {
    let be = cpu();
    let s = spec(4);
    let (t, n) = (2, s.pool_len());
    let buf = HostBuffer::zeros(t * W + 2 * n, DType::BF16).unwrap();
    let (_, mut k, v) = fused(&buf, t, &normals(t * H * D, 1), &normals(t * HK * D, 2), &normals(t * HK * D, 3));
    let row = 4 * HK * D;
    let kp = CpuBackend::tensor_in(&buf, t * W, &s.pool_shape(), row, DType::BF16).unwrap();
    let vp = CpuBackend::tensor_in(&buf, t * W + n, &s.pool_shape(), row, DType::BF16).unwrap();
    let mut pools = be.kv_pools(&s, kp, vp).unwrap();
    let mut meta = KvMetadata::new(&s).unwrap();
    meta.set_page_table(0, &[0]).unwrap();
    let batch = Batch::new(vec![0], vec![t]).unwrap();
    meta.extend(&batch).unwrap();
    let rope = RopeConfig::new(D, 10000.0, 64);
    let mut out = be.alloc(&[t, H, D], DType::BF16).unwrap();
    let before = buf.read_f32(0..t * W + 2 * n).unwrap();
    // q over v's columns (and beyond, into the padding and the next row's q).
    let mut q = CpuBackend::tensor_in(&buf, (H + HK) * D, &[t, H, D], W, DType::BF16).unwrap();
    let e = be.step(StepViews { q: &mut q, k: &mut k, v: &v, positions: &[0, 1], rope: &rope, pools: &mut pools, meta: &meta, batch: &batch, params: AttentionParams::causal(D), out: &mut out, sinks: None });
    assert_eq!(kind(e), "InvalidArgument");
    // q inside the K pool.
    let mut q = CpuBackend::tensor_in(&buf, t * W, &[t, H, D], H * D, DType::BF16).unwrap();
    let e = be.step(StepViews { q: &mut q, k: &mut k, v: &v, positions: &[0, 1], rope: &rope, pools: &mut pools, meta: &meta, batch: &batch, params: AttentionParams::causal(D), out: &mut out, sinks: None });
    assert_eq!(kind(e), "InvalidArgument");
    assert_eq!(buf.read_f32(0..t * W + 2 * n).unwrap(), before, "a refused step wrote something");
}
