//! Forking a sequence of a paged cache (prefix caching, beam search): the fork reads the
//! parent's full pages in place and a copy of its partial last page; both then grow on their
//! own and attend exactly as if each had been built from scratch. Every available backend (the
//! CPU reference in CI, the GPU backends where a GPU is present).

use attnforge::*;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    attnforge_conformance::rng::Rng::new(seed).normals(n, 1.0)
}

#[test]
fn a_fork_shares_full_pages_copies_the_partial_one_and_both_grow_independently() {
    let (hq, hk, d, ps) = (4usize, 2usize, 64usize, 4usize);
    for info in registry::list().into_iter().filter(|i| i.available.is_ok() && !i.name.starts_with("test-")) {
        let be = registry::get(&info.name).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let spec = KvCacheSpec { num_seqs: 3, num_kv_heads: hk, head_dim: d, dtype, kv_dtype: None, layout: CacheLayout::Paged { page_size: ps, num_pages: 16 } };
            let rows = |n: usize, seed: u64| be.upload(&randn(n * hk * d, seed), &[n, hk, d], dtype).unwrap();
            let mut c = be.create_kv_cache(&spec).unwrap();
            c.set_page_table(0, &[0, 1, 2]).unwrap();
            let prefix = rows(6, 1); // one full page and half of the next
            be.kv_append(&mut c, &prefix, &prefix, &Batch::uniform(1, 6).unwrap()).unwrap();
            assert_eq!(be.fork_sequence(&mut c, 0, 1, None).unwrap_err().kind(), "InvalidArgument", "a partial page needs a spare");
            assert_eq!(be.fork_sequence(&mut c, 0, 1, Some(2)).unwrap_err().kind(), "PageTableOutOfRange", "page 2 is in use");
            be.fork_sequence(&mut c, 0, 1, Some(5)).unwrap();
            assert_eq!((c.seq_len(1), c.page_table(1)), (6, &[0u32, 5][..]));
            assert!(c.page_shared(0) && !c.page_shared(5));
            c.set_page_table(1, &[0, 5, 6]).unwrap();
            // Both grow: the parent into its page 1, the fork into its copy (page 5) and page 6.
            let (a, b) = (rows(3, 2), rows(4, 3));
            be.kv_append(&mut c, &a, &a, &Batch::new(vec![0], vec![3]).unwrap()).unwrap();
            be.kv_append(&mut c, &b, &b, &Batch::new(vec![1], vec![4]).unwrap()).unwrap();
            // The same histories built from scratch.
            let fresh = |tail: &Tensor, n: usize| {
                let mut f = be.create_kv_cache(&KvCacheSpec { num_seqs: 1, ..spec.clone() }).unwrap();
                f.set_page_table(0, &[7, 8, 9]).unwrap();
                be.kv_append(&mut f, &prefix, &prefix, &Batch::uniform(1, 6).unwrap()).unwrap();
                be.kv_append(&mut f, tail, tail, &Batch::uniform(1, n).unwrap()).unwrap();
                f
            };
            let (fa, fb) = (fresh(&a, 3), fresh(&b, 4));
            let q = be.upload(&randn(hq * d, 4), &[1, hq, d], dtype).unwrap();
            let attend = |cache: &KvCache, seq: usize| {
                let mut o = be.alloc(&[1, hq, d], dtype).unwrap();
                be.attention(&q, cache, &Batch::new(vec![seq], vec![1]).unwrap(), AttentionParams::causal(d), &mut o).unwrap();
                be.download(&o).unwrap()
            };
            for (name, got, want) in [("parent", attend(&c, 0), attend(&fa, 0)), ("fork", attend(&c, 1), attend(&fb, 0))] {
                assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{} {dtype}: the {name} differs from its history built from scratch", info.name);
            }
        }
    }
}
