//! Random, mostly invalid, arguments through every op of the public API: each call returns
//! `Ok` or a typed error, never a panic.

use attnforge::*;
use proptest::prelude::*;

fn tensor(be: &Backend, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    be.upload(&vec![0.5; n], shape, dtype).unwrap()
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn ops_never_panic(
        t in 0usize..5, h in 0usize..5, hk in 0usize..5, d in 0usize..9, d2 in 0usize..9,
        rot in 0usize..10, maxpos in 0usize..6, pos in proptest::collection::vec(0u32..8, 0..5),
        q_lens in proptest::collection::vec(0usize..4, 0..3), kv_lens in proptest::collection::vec(0usize..5, 0..3),
        seq_ids in proptest::collection::vec(0usize..3, 0..3), cap in 0usize..5, paged: bool,
        dt1 in dtype(), dt2 in dtype(), causal: bool,
    ) {
        let be = registry::get("cpu").unwrap();
        let cfg = RopeConfig { rotary_dim: rot, ..RopeConfig::new(d, 1e4, maxpos) };
        let mut q = tensor(&be, &[t, h, d], dt1);
        let mut k = tensor(&be, &[t, hk, d2], dt2);
        let v = tensor(&be, &[t, hk, d2], dt2);
        let _ = be.rope(&mut q, &mut k, &pos, &cfg);
        let layout = if paged { CacheLayout::Paged { page_size: 2, num_pages: cap } } else { CacheLayout::Contiguous { capacity: cap } };
        let spec = KvCacheSpec { num_seqs: 2, num_kv_heads: hk, head_dim: d2, dtype: dt2, kv_dtype: None, layout };
        let params = AttentionParams { causal, scale: 0.3, softcap: None, window: None };
        if let Ok(mut cache) = be.create_kv_cache(&spec) {
            let _ = cache.set_page_table(0, &[0]);
            let _ = cache.set_page_table(1, &[1, 2]);
            if let Ok(batch) = Batch::new(seq_ids.clone(), q_lens.clone()) {
                let _ = be.kv_append(&mut cache, &k, &v, &batch);
                let mut out = tensor(&be, &[t, h, d], dt1);
                let _ = be.attention(&q, &cache, &batch, params, &mut out);
                let _ = be.rope_append_attend(StepInputs {
                    q: &mut q, k: &mut k, v: &v, positions: &pos, rope: &cfg, cache: &mut cache,
                    batch: &batch, params, out: &mut out,
                    sinks: None,
                });
            }
            let _ = be.read_kv_cache(&cache);
        }
        if let Ok(pb) = PlainBatch::new(q_lens.clone(), kv_lens.clone()) {
            let mut out = tensor(&be, &[t, h, d], dt1);
            let _ = be.attention_plain(&q, &k, &v, &pb, params, &mut out);
        }
    }
}
