//! Speculative decoding's rollback: a sequence truncated to `len` and appended again attends
//! exactly like one that never held the dropped tokens, on every available backend (the CPU
//! reference in CI; the GPU backends where a GPU is present).

use attnforge::*;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    attnforge_conformance::rng::Rng::new(seed).normals(n, 1.0)
}

#[test]
fn truncate_then_append_equals_never_having_the_dropped_tokens() {
    let (hq, hk, d) = (4usize, 2usize, 64usize);
    for info in registry::list().into_iter().filter(|i| i.available.is_ok() && !i.name.starts_with("test-")) {
        let be = registry::get(&info.name).unwrap();
        for layout in [CacheLayout::Contiguous { capacity: 32 }, CacheLayout::Paged { page_size: 4, num_pages: 16 }] {
            let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype: DType::F32, kv_dtype: None, layout };
            let rows = |n: usize, seed: u64| be.upload(&randn(n * hk * d, seed), &[n, hk, d], DType::F32).unwrap();
            let mut spec_cache = be.create_kv_cache(&spec).unwrap();
            let mut plain = be.create_kv_cache(&spec).unwrap();
            if let CacheLayout::Paged { .. } = layout {
                spec_cache.set_page_table(0, &[0, 1, 2, 3]).unwrap();
                plain.set_page_table(0, &[0, 1, 2, 3]).unwrap();
            }
            // 6 accepted tokens, then 4 draft tokens that get rejected, then 3 new ones.
            let (k6, k4, k3) = (rows(6, 1), rows(4, 2), rows(3, 3));
            be.kv_append(&mut spec_cache, &k6, &k6, &Batch::uniform(1, 6).unwrap()).unwrap();
            be.kv_append(&mut spec_cache, &k4, &k4, &Batch::uniform(1, 4).unwrap()).unwrap();
            assert_eq!(spec_cache.truncate(0, 11).unwrap_err().kind(), "InvalidArgument", "{}: growing by truncate", info.name);
            spec_cache.truncate(0, 6).unwrap();
            assert_eq!(spec_cache.seq_len(0), 6);
            be.kv_append(&mut spec_cache, &k3, &k3, &Batch::uniform(1, 3).unwrap()).unwrap();
            be.kv_append(&mut plain, &k6, &k6, &Batch::uniform(1, 6).unwrap()).unwrap();
            be.kv_append(&mut plain, &k3, &k3, &Batch::uniform(1, 3).unwrap()).unwrap();
            let q = be.upload(&randn(hq * d, 4), &[1, hq, d], DType::F32).unwrap();
            let mut a = be.alloc(&[1, hq, d], DType::F32).unwrap();
            let mut b = be.alloc(&[1, hq, d], DType::F32).unwrap();
            be.attention(&q, &spec_cache, &Batch::uniform(1, 1).unwrap(), AttentionParams::causal(d), &mut a).unwrap();
            be.attention(&q, &plain, &Batch::uniform(1, 1).unwrap(), AttentionParams::causal(d), &mut b).unwrap();
            let (a, b) = (be.download(&a).unwrap(), be.download(&b).unwrap());
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{} {layout:?}: rollback differs", info.name);
            assert!(a.iter().all(|x| x.is_finite()));
        }
    }
}
