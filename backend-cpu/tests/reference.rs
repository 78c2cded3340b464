//! The reference against hand-computed small cases (never against itself). Scaling values were
//! computed independently from the Hugging Face formulas in Python and pasted here.

use attnforge_api::*;
use attnforge_cpu::CpuBackend;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300) || (a - b).abs() < 1e-15
}

fn assert_all_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "element {i}: got {g}, want {w}");
    }
}

fn rope_once(x: &[f32], cfg: &RopeConfig, pos: u32) -> Vec<f32> {
    let be = CpuBackend::handle();
    let d = cfg.head_dim;
    let mut q = be.upload(x, &[1, 1, d], DType::F32).unwrap();
    let mut k = be.upload(x, &[1, 1, d], DType::F32).unwrap();
    be.rope(&mut q, &mut k, &[pos], cfg).unwrap();
    let (q, k) = (be.download(&q).unwrap(), be.download(&k).unwrap());
    assert_eq!(q, k, "q and k rotate alike");
    q
}

#[test]
fn rope_rotates_half_split_pair_by_one_radian() {
    // head_dim 4, theta 10000: inv_freq = [1, 0.01]; position 1 turns pair (0, 2) by 1 rad.
    let cfg = RopeConfig::new(4, 10000.0, 16);
    let out = rope_once(&[1.0, 0.0, 0.0, 0.0], &cfg, 1);
    assert_all_close(&out, &[1f64.cos(), 0.0, 1f64.sin(), 0.0], 1e-7);
    // pair (1, 3) turns by 0.01 rad
    let out = rope_once(&[0.0, 2.0, 0.0, 0.0], &cfg, 1);
    assert_all_close(&out, &[0.0, 2.0 * 0.01f64.cos(), 0.0, 2.0 * 0.01f64.sin()], 1e-7);
}

#[test]
fn rope_interleaved_pairs_neighbours() {
    let cfg = RopeConfig { style: RopeStyle::Interleaved, ..RopeConfig::new(4, 10000.0, 16) };
    let out = rope_once(&[1.0, 0.0, 0.0, 0.0], &cfg, 2);
    assert_all_close(&out, &[2f64.cos(), 2f64.sin(), 0.0, 0.0], 1e-7);
}

#[test]
fn rope_position_zero_is_identity_and_partial_rotary_passes_through() {
    let cfg = RopeConfig { rotary_dim: 4, ..RopeConfig::new(6, 10000.0, 16) };
    let x = [0.3, -1.2, 0.7, 2.5, 9.0, -9.0];
    let out = rope_once(&x, &cfg, 0);
    assert_eq!(out, x.to_vec());
    let out = rope_once(&x, &cfg, 3);
    assert_eq!(&out[4..], &[9.0, -9.0], "dims past rotary_dim untouched");
    // pair (0, 2) by 3 rad
    let (s, c) = 3f64.sin_cos();
    assert!(close(out[0] as f64, 0.3 * c - 0.7 * s, 1e-6));
    assert!(close(out[2] as f64, 0.7 * c + 0.3 * s, 1e-6));
}

#[test]
fn linear_and_ntk_scaling() {
    let base = RopeConfig::new(4, 10000.0, 64);
    let lin = RopeConfig { scaling: RopeScaling::Linear { factor: 4.0 }, ..base.clone() };
    assert_eq!(lin.frequencies(0).unwrap().inv_freq, vec![0.25, 0.0025]);
    // NTK-aware, d = 4: base' = 10000 * 4^(4/2) = 160000, inv_freq[1] = 160000^(-1/2)
    let ntk = RopeConfig { scaling: RopeScaling::NtkAware { factor: 4.0 }, ..base.clone() };
    let f = ntk.frequencies(0).unwrap().inv_freq;
    assert!(close(f[1], 1.0 / 400.0, 1e-12), "{f:?}");
}

#[test]
fn dynamic_ntk_only_past_the_original_context() {
    let cfg = RopeConfig {
        scaling: RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 100 },
        ..RopeConfig::new(4, 10000.0, 1000)
    };
    assert!(close(cfg.frequencies(99).unwrap().inv_freq[1], 0.01, 1e-12));
    // L = 200: s = 2 * 200 / 100 - 1 = 3; base' = 10000 * 3^2 = 90000; inv_freq[1] = 1/300
    assert!(close(cfg.frequencies(199).unwrap().inv_freq[1], 1.0 / 300.0, 1e-12));
}

#[test]
fn llama3_scaling_matches_hand_values() {
    let cfg = RopeConfig {
        scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 },
        ..RopeConfig::new(128, 500000.0, 131072)
    };
    let f = cfg.frequencies(0).unwrap();
    assert_eq!(f.attention_factor, 1.0);
    for (i, want) in [(0, 1.0), (20, 0.016560440080994446), (30, 0.0013718935677611381), (32, 0.0005248461609929547), (40, 3.428102195952591e-05), (63, 3.068925988914511e-07)] {
        assert!(close(f.inv_freq[i], want, 1e-12), "pair {i}: {} vs {want}", f.inv_freq[i]);
    }
}

#[test]
fn yarn_scaling_matches_hand_values() {
    let cfg = RopeConfig {
        scaling: RopeScaling::Yarn { factor: 4.0, original_max_position: 4096, beta_fast: 32.0, beta_slow: 1.0, attention_factor: None },
        ..RopeConfig::new(64, 10000.0, 16384)
    };
    let f = cfg.frequencies(0).unwrap();
    assert!(close(f.attention_factor, 1.138629436111989, 1e-12));
    for (i, want) in [(0, 1.0), (5, 0.23713737056616555), (10, 0.056234132519034905), (20, 0.0013378867023789293), (31, 3.33380358040831e-05)] {
        assert!(close(f.inv_freq[i], want, 1e-12), "pair {i}: {} vs {want}", f.inv_freq[i]);
    }
    // attention_factor scales cos and sin: at position 0 the output is x * factor
    let out = rope_once(&[1.0; 64], &cfg, 0);
    assert!(out.iter().all(|&x| close(x as f64, 1.138629436111989, 1e-6)));
}

#[test]
fn longrope_switches_tables_and_scales() {
    let cfg = RopeConfig {
        scaling: RopeScaling::LongRope {
            short_factors: vec![1.0, 2.0],
            long_factors: vec![4.0, 8.0],
            original_max_position: 4096,
            attention_factor: None,
        },
        ..RopeConfig::new(4, 10000.0, 131072)
    };
    let short = cfg.frequencies(4095).unwrap();
    assert_eq!(short.inv_freq, vec![1.0, 0.005]);
    let long = cfg.frequencies(4096).unwrap();
    assert_eq!(long.inv_freq, vec![0.25, 0.00125]);
    assert!(close(long.attention_factor, 1.1902380714238083, 1e-12));
}

fn plain(q: &[f32], k: &[f32], v: &[f32], h: usize, hk: usize, d: usize, q_len: usize, kv_len: usize, params: AttentionParams) -> Vec<f32> {
    let be = CpuBackend::handle();
    let q = be.upload(q, &[q_len, h, d], DType::F32).unwrap();
    let k = be.upload(k, &[kv_len, hk, d], DType::F32).unwrap();
    let v = be.upload(v, &[kv_len, hk, d], DType::F32).unwrap();
    let mut out = be.alloc(&[q_len, h, d], DType::F32).unwrap();
    be.fill(&mut out, f32::NAN).unwrap();
    let batch = PlainBatch::new(vec![q_len], vec![kv_len]).unwrap();
    be.attention_plain(&q, &k, &v, &batch, params, &mut out).unwrap();
    be.download(&out).unwrap()
}

#[test]
fn two_token_softmax() {
    // scores q.k0 = 1, q.k1 = 0: weights e/(1+e) and 1/(1+e) on v0 = [1, 0], v1 = [0, 1].
    let p = AttentionParams { causal: false, scale: 1.0, softcap: None, window: None };
    let out = plain(&[1.0, 0.0], &[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 0.0, 1.0], 1, 1, 2, 1, 2, p);
    let e = std::f64::consts::E;
    assert_all_close(&out, &[e / (1.0 + e), 1.0 / (1.0 + e)], 1e-7);
}

#[test]
fn causal_mask_is_bottom_right_aligned() {
    // q_len 2, kv_len 3: query 0 sees keys 0..=1, query 1 sees all three. All scores equal, so
    // the output is the mean of the visible values.
    let p = AttentionParams { causal: true, scale: 1.0, softcap: None, window: None };
    let out = plain(&[0.0; 4], &[0.0; 6], &[3.0, 0.0, 5.0, 0.0, 10.0, 0.0], 1, 1, 2, 2, 3, p);
    assert_all_close(&out, &[4.0, 0.0, 6.0, 0.0], 1e-6);
    let full = plain(&[0.0; 4], &[0.0; 6], &[3.0, 0.0, 5.0, 0.0, 10.0, 0.0], 1, 1, 2, 2, 3, AttentionParams { causal: false, scale: 1.0, softcap: None, window: None });
    assert_all_close(&full, &[6.0, 0.0, 6.0, 0.0], 1e-6);
}

#[test]
fn a_sliding_window_sees_the_last_keys_only() {
    // q_len 2, kv_len 3, window 2: query 0 sees keys 0..=1, query 1 keys 1..=2 (equal scores: the mean).
    let p = AttentionParams { causal: true, scale: 1.0, softcap: None, window: Some(2) };
    let out = plain(&[0.0; 4], &[0.0; 6], &[3.0, 0.0, 5.0, 0.0, 10.0, 0.0], 1, 1, 2, 2, 3, p);
    assert_all_close(&out, &[4.0, 0.0, 7.5, 0.0], 1e-6);
}

#[test]
fn an_attention_sink_joins_the_denominator_only() {
    // One key with score 0 and v = [3, 1]; a sink of logit ln 3: weight 1 / (1 + 3) on v.
    use attnforge_cpu::ops::attention::{attend, SeqShape};
    let shape = SeqShape { q_len: 1, kv_len: 1, heads: 1, kv_heads: 1, head_dim: 2 };
    let out = attend(&[0.0, 0.0], &[1.0, 1.0], &[3.0, 1.0], shape, AttentionParams::full(2), Some(&[3f64.ln()]));
    assert!((out[0] - 0.75).abs() < 1e-12 && (out[1] - 0.25).abs() < 1e-12, "{out:?}");
    // Through the backend: sinks f32 [H].
    let be = Backend::new(std::sync::Arc::new(CpuBackend));
    let (q, kv) = (be.upload(&[0.0, 0.0], &[1, 1, 2], DType::F32).unwrap(), be.upload(&[3.0, 1.0], &[1, 1, 2], DType::F32).unwrap());
    let sinks = be.upload(&[3f32.ln()], &[1], DType::F32).unwrap();
    let mut o = be.alloc(&[1, 1, 2], DType::F32).unwrap();
    be.attention_plain_with_sinks(&q, &kv, &kv, &PlainBatch::new(vec![1], vec![1]).unwrap(), AttentionParams::full(2), &sinks, &mut o).unwrap();
    assert_all_close(&be.download(&o).unwrap(), &[0.75, 0.25], 1e-6);
}

#[test]
fn gqa_maps_query_head_to_kv_head_by_group() {
    // 4 query heads over 2 kv heads, one key: head h outputs v[h / 2].
    let p = AttentionParams::full(2);
    let out = plain(&[0.5; 8], &[1.0; 4], &[1.0, 2.0, 3.0, 4.0], 4, 2, 2, 1, 1, p);
    assert_all_close(&out, &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0], 0.0);
}

#[test]
fn paged_append_follows_the_page_table() {
    let be = CpuBackend::handle();
    let spec = KvCacheSpec { num_seqs: 2, num_kv_heads: 1, head_dim: 2, dtype: DType::F32, kv_dtype: None, layout: CacheLayout::Paged { page_size: 2, num_pages: 4 } };
    let mut cache = be.create_kv_cache(&spec).unwrap();
    cache.set_page_table(0, &[3, 1]).unwrap();
    cache.set_page_table(1, &[0]).unwrap();
    let k = be.upload(&[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 7.0, 7.5], &[4, 1, 2], DType::F32).unwrap();
    let v = be.upload(&[-1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -7.0, -7.5], &[4, 1, 2], DType::F32).unwrap();
    let batch = Batch::new(vec![0, 1], vec![3, 1]).unwrap();
    be.kv_append(&mut cache, &k, &v, &batch).unwrap();
    let pool = be.read_kv_pool(&cache).unwrap();
    // pool [page, slot, head, dim]: seq 0 tokens 0,1 in page 3, token 2 in page 1 slot 0;
    // seq 1 token 0 in page 0 slot 0; page 2 and the rest untouched (zeros).
    assert_eq!(pool.k, vec![7.0, 7.5, 0.0, 0.0, 3.0, 3.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(pool.v[12..], [-1.0, -1.5, -2.0, -2.5]);
    let seqs = be.read_kv_cache(&cache).unwrap();
    assert_eq!(seqs[0].k, vec![1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    assert_eq!(seqs[1].v, vec![-7.0, -7.5]);
}

#[test]
fn stores_round_to_the_dtype() {
    let be = CpuBackend::handle();
    // 1 + 2^-9 is not representable in bf16 (7 mantissa bits): rounds to 1.0 (ties to even);
    // in f16 (10 bits) it is exact.
    let x = [1.0 + 1.0 / 512.0];
    assert_eq!(be.download(&be.upload(&x, &[1], DType::BF16).unwrap()).unwrap(), vec![1.0]);
    assert_eq!(be.download(&be.upload(&x, &[1], DType::F16).unwrap()).unwrap(), x.to_vec());
}

#[test]
fn bf16_rounding_is_correct_to_nearest_even() {
    // 0x3e608003 as f32: bf16 candidates 0x3e60 and 0x3e61; the low half 0x8003 is past the
    // midpoint, so nearest is 0x3e61 (half's from_f64 gave 0x3e60).
    let x = f32::from_bits(0x3e60_8003) as f64;
    assert_eq!(bf16_from_f64(x).to_bits(), 0x3e61);
    // A tie goes to even: 0x3e60_8000 -> 0x3e60, 0x3e61_8000 -> 0x3e62.
    assert_eq!(bf16_from_f64(f32::from_bits(0x3e60_8000) as f64).to_bits(), 0x3e60);
    assert_eq!(bf16_from_f64(f32::from_bits(0x3e61_8000) as f64).to_bits(), 0x3e62);
    // Just above a tie in f64 (below f32 resolution) rounds up, not to even.
    let above_tie = f32::from_bits(0x3e60_8000) as f64 * (1.0 + 1e-12);
    assert_eq!(bf16_from_f64(above_tie).to_bits(), 0x3e61);
    assert_eq!(bf16_from_f64(-x).to_bits(), 0xbe61);
    assert!(bf16_from_f64(f64::NAN).is_nan());
    assert_eq!(bf16_from_f64(1e300).to_bits(), 0x7f80);
    // f16 likewise, including just above a tie.
    let t = 1.0 + 2f64.powi(-11); // tie between 1.0 and 1 + 2^-10
    assert_eq!(f16_from_f64(t).to_bits(), 0x3c00);
    assert_eq!(f16_from_f64(t * (1.0 + 1e-12)).to_bits(), 0x3c01);
}

/// M-RoPE as Hugging Face's Qwen2-VL computes it (`apply_multimodal_rotary_pos_emb`): cos and
/// sin per component, `[3, T, D]` (frequencies duplicated over both halves), cut along the last
/// dim into `mrope_section * 2` chunks, chunk `i` taken from component `i % 3`, then
/// `x * cos + rotate_half(x) * sin`. The reference must agree with it.
#[test]
fn mrope_matches_qwen2_vl() {
    let (d, t) = (16usize, 3usize);
    let section = [2usize, 3, 3];
    let cfg = RopeConfig { scaling: RopeScaling::MRope { section }, ..RopeConfig::new(d, 10000.0, 4096) };
    // [3, T] positions: temporal, height, width (a vision token's three differ).
    let positions: Vec<u32> = vec![5, 5, 9, /* h */ 5, 7, 2, /* w */ 5, 1, 30];
    let be = CpuBackend::handle();
    let x: Vec<f32> = (0..t * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
    let mut q = be.upload(&x, &[t, 1, d], DType::F32).unwrap();
    let mut k = be.upload(&x, &[t, 1, d], DType::F32).unwrap();
    be.rope(&mut q, &mut k, &positions, &cfg).unwrap();
    let got = be.download(&q).unwrap();
    let inv: Vec<f64> = (0..d / 2).map(|i| 10000f64.powf(-((2 * i) as f64) / d as f64)).collect();
    let chunks: Vec<usize> = section.iter().chain(section.iter()).copied().collect();
    let mut want = vec![0.0f64; t * d];
    for tok in 0..t {
        // cos/sin [3, D] of this token, then the chunks.
        let (mut cos, mut sin) = (vec![0.0; d], vec![0.0; d]);
        let mut at = 0;
        for (i, &n) in chunks.iter().enumerate() {
            let comp = i % 3;
            for j in at..at + n {
                let ang = positions[comp * t + tok] as f64 * inv[j % (d / 2)];
                (cos[j], sin[j]) = (ang.cos(), ang.sin());
            }
            at += n;
        }
        let row = &x[tok * d..(tok + 1) * d];
        for j in 0..d {
            let rot = if j < d / 2 { -(row[j + d / 2] as f64) } else { row[j - d / 2] as f64 };
            want[tok * d + j] = row[j] as f64 * cos[j] + rot * sin[j];
        }
    }
    assert_all_close(&got, &want, 1e-5);
    // Text tokens (three equal ids) are plain RoPE.
    let same: Vec<u32> = [4u32, 8, 15].repeat(3);
    let (mut q1, mut k1) = (be.upload(&x, &[t, 1, d], DType::F32).unwrap(), be.upload(&x, &[t, 1, d], DType::F32).unwrap());
    be.rope(&mut q1, &mut k1, &same, &cfg).unwrap();
    let (mut q2, mut k2) = (be.upload(&x, &[t, 1, d], DType::F32).unwrap(), be.upload(&x, &[t, 1, d], DType::F32).unwrap());
    be.rope(&mut q2, &mut k2, &[4, 8, 15], &RopeConfig::new(d, 10000.0, 4096)).unwrap();
    assert_eq!(be.download(&q1).unwrap(), be.download(&q2).unwrap());
    // Sections must cover the pairs; positions must be [3, T].
    let bad = RopeConfig { scaling: RopeScaling::MRope { section: [2, 3, 2] }, ..cfg.clone() };
    assert!(matches!(be.rope(&mut q, &mut k, &positions, &bad), Err(Error::InvalidArgument(m)) if m.contains("sum")));
    assert!(matches!(be.rope(&mut q, &mut k, &positions[..t], &cfg), Err(Error::ShapeMismatch { .. })));
}
