//! FP8 (e4m3) KV caches through the public API, on every available backend (the CPU reference
//! in CI, the GPU backends where a GPU is present): what an append stores, that attention over
//! the e4m3 pools equals attention over a 16-bit cache holding the same values, the scales'
//! validation, and the refusals (f32 models, context shifts) with nothing written.

use attnforge::*;

fn randn(n: usize, seed: u64, amplitude: f32) -> Vec<f32> {
    attnforge_conformance::rng::Rng::new(seed).normals(n, amplitude)
}

fn spec(dtype: DType, kv_dtype: Option<DType>) -> KvCacheSpec {
    KvCacheSpec { num_seqs: 2, num_kv_heads: 2, head_dim: 64, dtype, kv_dtype, layout: CacheLayout::Paged { page_size: 16, num_pages: 8 } }
}

fn backends() -> Vec<Backend> {
    registry::list().into_iter().filter(|i| i.available.is_ok() && !i.name.starts_with("test-")).map(|i| registry::get(&i.name).unwrap()).collect()
}

#[test]
fn specs_that_cannot_hold_fp8_are_refused() {
    for (dtype, kv) in [(DType::F32, Some(DType::F8E4M3)), (DType::F8E4M3, None), (DType::BF16, Some(DType::F16)), (DType::F16, Some(DType::BF16))] {
        let e = spec(dtype, kv).validate().unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{dtype:?} / {kv:?}: {e}");
    }
    let s = spec(DType::BF16, Some(DType::F8E4M3));
    s.validate().unwrap();
    assert_eq!((s.storage_dtype(), s.pool_bytes()), (DType::F8E4M3, 8 * 16 * 2 * 64));
}

#[test]
fn an_append_stores_e4m3_of_x_over_the_head_scale_and_attention_reads_it_back_scaled() {
    let (hq, hk, d) = (4usize, 2usize, 64usize);
    for be in backends() {
        for dtype in [DType::F16, DType::BF16] {
            let s8 = spec(dtype, Some(DType::F8E4M3));
            let mut c = be.create_kv_cache(&s8).unwrap();
            // Scales of powers of two, so that e4m3 * scale is exact in the 16-bit cache below;
            // amplitude 40 with scale 1/16 on head 1 drives values past 448 * scale (saturated).
            let (ks, vs) = ([0.25f32, 0.0625], [0.5f32, 0.125]);
            be.set_kv_cache_scales(&mut c, &ks, &vs).unwrap();
            c.set_page_table(0, &[3, 1]).unwrap();
            c.set_page_table(1, &[0]).unwrap();
            let n = 19;
            let (kx, vx) = (randn(n * hk * d, 1, 40.0), randn(n * hk * d, 2, 40.0));
            let (k, v) = (be.upload(&kx, &[n, hk, d], dtype).unwrap(), be.upload(&vx, &[n, hk, d], dtype).unwrap());
            let first = Batch::new(vec![0, 1], vec![15, 4]).unwrap();
            be.kv_append(&mut c, &k, &v, &first).unwrap();
            // The raw pool values: e4m3(fl32(x / scale)), x as uploaded (rounded to the dtype).
            let pool = be.read_kv_pool(&c).unwrap();
            let mut saturated = 0;
            for (row, (seq, t)) in (0..15).map(|t| (0, t)).chain((0..4).map(|t| (1, t))).enumerate() {
                for h in 0..hk {
                    for j in 0..d {
                        let i = (row * hk + h) * d + j;
                        let x = dtype.round(kx[i] as f64);
                        let want = e4m3_quantise(x, ks[h]).to_f32();
                        saturated += (want.abs() == 448.0) as usize;
                        let got = pool.k[c.slot_offset(seq, t, h) + j];
                        assert_eq!(got.to_bits(), want.to_bits(), "{} {dtype}: K of seq {seq} token {t} head {h} dim {j}: {got} for {x} / {}", be.name(), ks[h]);
                        let got_v = pool.v[c.slot_offset(seq, t, h) + j];
                        assert_eq!(got_v, e4m3_quantise(dtype.round(vx[i] as f64), vs[h]).to_f32());
                    }
                }
            }
            assert!(saturated > 0, "the draw reaches e4m3's saturation");
            // Attention over the FP8 pools against a 16-bit cache holding e4m3 * scale.
            let s16 = spec(dtype, None);
            let mut c16 = be.create_kv_cache(&s16).unwrap();
            c16.set_page_table(0, &[3, 1]).unwrap();
            c16.set_page_table(1, &[0]).unwrap();
            let deq = |x: &[f32], sc: &[f32; 2]| x.iter().enumerate().map(|(i, &x)| e4m3_quantise(dtype.round(x as f64), sc[(i / d) % hk]).to_f32() * sc[(i / d) % hk]).collect::<Vec<f32>>();
            let (k16, v16) = (be.upload(&deq(&kx, &ks), &[n, hk, d], dtype).unwrap(), be.upload(&deq(&vx, &vs), &[n, hk, d], dtype).unwrap());
            be.kv_append(&mut c16, &k16, &v16, &first).unwrap();
            let q = be.upload(&randn(2 * hq * d, 3, 0.1), &[2, hq, d], dtype).unwrap();
            let decode = Batch::new(vec![0, 1], vec![1, 1]).unwrap();
            // One more token each, so the decode's keys include its own.
            let (k1, v1) = (be.upload(&kx[..2 * hk * d], &[2, hk, d], dtype).unwrap(), be.upload(&vx[..2 * hk * d], &[2, hk, d], dtype).unwrap());
            be.kv_append(&mut c, &k1, &v1, &decode).unwrap();
            let (k1, v1) = (be.upload(&deq(&kx[..2 * hk * d], &ks), &[2, hk, d], dtype).unwrap(), be.upload(&deq(&vx[..2 * hk * d], &vs), &[2, hk, d], dtype).unwrap());
            be.kv_append(&mut c16, &k1, &v1, &decode).unwrap();
            let params = AttentionParams::causal(d);
            let mut out8 = be.alloc(&[2, hq, d], dtype).unwrap();
            let mut out16 = be.alloc(&[2, hq, d], dtype).unwrap();
            match be.attention(&q, &c, &decode, params, &mut out8) {
                Err(Error::Unsupported { reasons, .. }) => {
                    println!("{} declines attention over FP8 pools: {reasons:?}", be.name());
                    continue;
                }
                r => r.unwrap(),
            }
            be.attention(&q, &c16, &decode, params, &mut out16).unwrap();
            let (a, b) = (be.download(&out8).unwrap(), be.download(&out16).unwrap());
            // The CPU computes both in f64 from the same values: equal. A GPU backend may run
            // other kernels over the 16-bit pools (hip-fused's vector units): a few units of the
            // dtype at the outputs' magnitude.
            let tol = if be.device() == Device::CPU { 0.0 } else { 4.0 * dtype.epsilon() * b.iter().fold(1.0f32, |m, y| m.max(y.abs())) as f64 };
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(((x - y).abs() as f64) <= tol, "{} {dtype}: element {i}: {x} over FP8 pools, {y} over 16-bit ones (tolerance {tol:.3e})", be.name());
            }
        }
    }
}

#[test]
fn bad_scales_and_shifts_are_refused_and_nothing_is_written() {
    for be in backends() {
        let mut c = be.create_kv_cache(&spec(DType::BF16, Some(DType::F8E4M3))).unwrap();
        be.set_kv_cache_scales(&mut c, &[0.5], &[2.0]).unwrap();
        let before = c.pools().scales().map(|(k, v)| (be.download(k).unwrap(), be.download(v).unwrap())).unwrap();
        assert_eq!(before, (vec![0.5, 0.5], vec![2.0, 2.0]), "one scale is every head's");
        for (k, v) in [(vec![0.0f32], vec![1.0f32]), (vec![1.0], vec![-1.0]), (vec![f32::NAN], vec![1.0]), (vec![f32::INFINITY], vec![1.0]), (vec![1.0, 1.0, 1.0], vec![1.0]), (vec![], vec![1.0])] {
            let e = be.set_kv_cache_scales(&mut c, &k, &v).unwrap_err();
            assert_eq!(e.kind(), "InvalidArgument", "{k:?} {v:?}: {e}");
        }
        let after = c.pools().scales().map(|(k, v)| (be.download(k).unwrap(), be.download(v).unwrap())).unwrap();
        assert_eq!(before, after, "a refused call writes nothing");
        // Pools stored in their dtype have no scales.
        let mut c16 = be.create_kv_cache(&spec(DType::BF16, None)).unwrap();
        assert!(c16.pools().scales().is_none());
        assert_eq!(be.set_kv_cache_scales(&mut c16, &[1.0], &[1.0]).unwrap_err().kind(), "InvalidArgument");
        // A context shift would round the shifted keys to e4m3 a second time.
        c.set_page_table(0, &[0]).unwrap();
        let k = be.upload(&randn(4 * 2 * 64, 5, 1.0), &[4, 2, 64], DType::BF16).unwrap();
        be.kv_append(&mut c, &k, &k, &Batch::new(vec![0], vec![4]).unwrap()).unwrap();
        let pool = be.read_kv_pool(&c).unwrap();
        let e = be.shift_positions(&mut c, 0, 0..4, 3, &RopeConfig::new(64, 10000.0, 4096)).unwrap_err();
        assert_eq!(e.kind(), "InvalidArgument", "{e}");
        assert_eq!(be.read_kv_pool(&c).unwrap().k, pool.k);
        // Caller-made scales: f32 [kv_heads] only.
        let s8 = spec(DType::BF16, Some(DType::F8E4M3));
        let pools = || {
            let (k, v) = (be.alloc(&s8.pool_shape(), DType::F8E4M3).unwrap(), be.alloc(&s8.pool_shape(), DType::F8E4M3).unwrap());
            be.kv_pools(&s8, k, v).unwrap()
        };
        let bad = [(be.alloc(&[3], DType::F32).unwrap(), "ShapeMismatch"), (be.alloc(&[2], DType::BF16).unwrap(), "DtypeMismatch")];
        for (t, kind) in bad {
            let ok = be.alloc(&[2], DType::F32).unwrap();
            assert_eq!(pools().with_scales(t, ok).unwrap_err().kind(), kind);
        }
    }
}
