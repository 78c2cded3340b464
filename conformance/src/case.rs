//! Valid problems, as proptest strategies. A [`Case`] is small and shrinkable; its tensors are
//! drawn from its `seed` when it runs, so every case sees fresh random normals (never zeros).

use attnforge_api::{AttentionParams, CacheLayout, DType, Op, ProblemDesc, RopeConfig, RopeScaling, RopeStyle};
use proptest::prelude::*;

/// One sequence of a case: tokens already in the cache, then new tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqCase {
    /// Tokens appended before the op under test.
    pub cached: usize,
    /// New tokens (q_len).
    pub q_len: usize,
}

/// A valid problem for any op.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Element type.
    pub dtype: DType,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// RoPE configuration (its head_dim is the case's head_dim).
    pub rope: RopeConfig,
    /// Paged (with this page size) or contiguous.
    pub page_size: Option<usize>,
    /// Causal mask.
    pub causal: bool,
    /// The sequences of the batch.
    pub seqs: Vec<SeqCase>,
    /// Scale of the random inputs (large values stress softmax overflow in f16).
    pub amplitude: f32,
    /// The softmax scale relative to `1/sqrt(head_dim)` (1.0: the default; half the drawn cases
    /// take another, so a backend that ignores the scale it is given fails).
    pub scale: f32,
    /// Seed of the tensors and page tables.
    pub seed: u64,
    /// Cross-attention in the `attention_plain` cells (only when not causal; drawn in half of
    /// those cases): each sequence's keys and values are its cached rows and its first new row
    /// only (`kv_len = cached + 1`), so a sequence has more queries than keys whenever `q_len >
    /// cached + 1` (an encoder over a shorter memory, cross-attention into a fixed one).
    pub cross: bool,
    /// Logit soft-cap of the attention (Gemma 2, Grok): drawn in a quarter of the cases, 0.5-20
    /// (logits of the drawn data reach a few units, so the cap bends them).
    pub softcap: Option<f32>,
    /// Sliding window of the attention (Mistral, Gemma, gpt-oss): drawn in half of the causal
    /// cases (a quarter of all), 1-300 keys: often fewer than a sequence's keys (cached up to
    /// `max_cached`, long decodes up to `max_long_decode`), so the window cuts, across the
    /// GPU decode's splits and the prefill's key tiles.
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): drawn in a quarter of the cases; one logit per query head,
    /// uniform in -2..6 from the case's seed ([`Case::sink_values`]): near the logsumexp of a
    /// few keys' logits, so the sink takes a share of every row's weight that an implementation
    /// ignoring it cannot hide.
    pub sinks: bool,
    /// Attention writes each row's log-sum-exp (checked against the golden one), and the
    /// `merge_states` cells merge partial results with it: drawn in a third of the cases.
    pub lse: bool,
    /// FP8 e4m3 KV cache ([`attnforge_api::KvCacheSpec::kv_dtype`]) in the cells that use a
    /// cache (append, attention, step; f16 and bf16 cases only): drawn in a third of the
    /// cases, with scales per kv head or one per tensor ([`Case::kv_scales`]).
    pub fp8: bool,
}

impl Case {
    /// The cache's storage type: e4m3 for the FP8 cases of f16/bf16, else the dtype's own.
    pub fn kv_dtype(&self) -> Option<DType> {
        (self.fp8 && matches!(self.dtype, DType::F16 | DType::BF16)).then_some(DType::F8E4M3)
    }

    /// The FP8 cases' K and V scales (`[kv_heads]` each): per kv head for odd seeds, one for
    /// every head for even ones; each `amplitude * u / 64` with `u` uniform in 0.5..8, so the
    /// drawn values (normals of the amplitude, up to ~4.5 of it) land across e4m3's range:
    /// subnormals (below `2^-6 scale`), the normal range and, for the smallest scales, past
    /// 448 (saturated).
    pub fn kv_scales(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.kv_dtype()?;
        let mut r = crate::rng::Rng::new(self.seed ^ 0x4638_4b56_5343_414c);
        let per_head = self.seed & 1 == 1;
        let mut draw = || {
            let one = (self.amplitude as f64 * (0.5 + 7.5 * r.uniform()) / 64.0) as f32;
            let mut v: Vec<f32> = (0..self.kv_heads).map(|_| (self.amplitude as f64 * (0.5 + 7.5 * r.uniform()) / 64.0) as f32).collect();
            if !per_head {
                v.iter_mut().for_each(|x| *x = one);
            }
            v
        };
        let k = draw();
        Some((k, draw()))
    }

    /// What an FP8 cache holds of `rows` (`[tokens, kv_heads, D]`, f64) and attention reads
    /// back: `e4m3(fl32(x / s_h)) * s_h` with the K (`key`) or V scales; `rows` as they are for
    /// other cases.
    pub fn as_cached(&self, mut rows: Vec<f64>, key: bool) -> Vec<f64> {
        if let Some((ks, vs)) = self.kv_scales() {
            let s = if key { ks } else { vs };
            let d = self.head_dim();
            for (i, x) in rows.iter_mut().enumerate() {
                let sc = s[(i / d) % self.kv_heads];
                *x = attnforge_api::e4m3_quantise(*x, sc).to_f64() * sc as f64;
            }
        }
        rows
    }

    /// The attention sinks of the case (`[heads]`), if it draws them.
    pub fn sink_values(&self) -> Option<Vec<f32>> {
        self.sinks.then(|| {
            let mut r = crate::rng::Rng::new(self.seed ^ 0x5141_4b5f_5349_4e4b);
            (0..self.heads).map(|_| (-2.0 + 8.0 * r.uniform()) as f32).collect()
        })
    }

    /// Keys of sequence `s` in `op`: its cached and new rows, or for a cross-attention case's
    /// plain attention its cached rows and first new row.
    pub fn plain_kv_len(&self, s: &SeqCase, op: Op) -> usize {
        if self.cross && op == Op::AttentionPlain {
            s.cached + 1
        } else {
            s.cached + s.q_len
        }
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.rope.head_dim
    }

    /// Attention parameters (scale `self.scale / sqrt(head_dim)`).
    pub fn params(&self) -> AttentionParams {
        AttentionParams { causal: self.causal, scale: self.scale / (self.head_dim() as f32).sqrt(), softcap: self.softcap, window: self.window }
    }

    /// The cache layout, with room for every sequence (pages: exactly enough plus spares).
    pub fn layout(&self) -> CacheLayout {
        let max_len = self.seqs.iter().map(|s| s.cached + s.q_len).max().unwrap_or(1);
        match self.page_size {
            None => CacheLayout::Contiguous { capacity: max_len + 3 },
            Some(p) => {
                let pages: usize = self.seqs.iter().map(|s| (s.cached + s.q_len).div_ceil(p)).sum();
                CacheLayout::Paged { page_size: p, num_pages: pages + 3 }
            }
        }
    }

    /// What a capability query sees for `op` (for [`Op::MergeStates`]: up to three states of
    /// every new token's rows, see `ops::merge`).
    pub fn desc(&self, op: Op) -> ProblemDesc {
        let max_q = self.seqs.iter().map(|s| s.q_len).max().unwrap_or(0);
        if op == Op::MergeStates {
            let tokens = self.seqs.iter().map(|s| s.q_len).sum();
            return ProblemDesc {
                dtype: self.dtype,
                num_heads: self.heads,
                num_kv_heads: self.heads,
                head_dim: self.head_dim(),
                rope: None,
                layout: None,
                kv_dtype: None,
                causal: false,
                batch_size: 3,
                max_q_len: tokens,
                max_kv_len: 0,
                window: None,
            };
        }
        let max_kv = self.seqs.iter().map(|s| self.plain_kv_len(s, op)).max().unwrap_or(0);
        ProblemDesc {
            dtype: self.dtype,
            num_heads: if op == Op::KvAppend { self.kv_heads } else { self.heads },
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim(),
            rope: matches!(op, Op::Rope | Op::Step | Op::Shift).then(|| self.rope.clone()),
            layout: matches!(op, Op::KvAppend | Op::Attention | Op::Step | Op::Shift).then(|| self.layout()),
            kv_dtype: if matches!(op, Op::KvAppend | Op::Attention | Op::Step) { self.kv_dtype() } else { None },
            causal: self.causal && op != Op::Rope && op != Op::KvAppend,
            batch_size: self.seqs.len(),
            max_q_len: max_q,
            max_kv_len: if op == Op::KvAppend || op == Op::Rope { 0 } else { max_kv },
            window: if matches!(op, Op::Attention | Op::AttentionPlain | Op::Step) && self.causal { self.window } else { None },
        }
    }
}

/// Knobs of the generator.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// The dtype every case uses.
    pub dtype: DType,
    /// Head dims to draw from.
    pub head_dims: Vec<usize>,
    /// Largest q_len of a prefill sequence.
    pub max_q_len: usize,
    /// Largest number of tokens cached before the op.
    pub max_cached: usize,
    /// Largest number of cached tokens of a long decode (a seventh of the drawn sequences:
    /// `max_cached + 1 ..= max_long_decode` keys, enough for the GPU backends' split-K decode).
    pub max_long_decode: usize,
}

impl GenConfig {
    /// The default mix for `dtype`: head dims {32, 64, 80, 96, 128, 256} and the large ones
    /// (512, 2048) that backends may claim, lengths sized for a CPU reference.
    pub fn new(dtype: DType) -> Self {
        GenConfig { dtype, head_dims: vec![32, 64, 80, 96, 128, 256, 512, 2048], max_q_len: 24, max_cached: 48, max_long_decode: 400 }
    }
}

fn heads() -> impl Strategy<Value = (usize, usize)> {
    // MHA, GQA (groups of 2, 3, 4, 8), MQA.
    prop_oneof![
        Just((1, 1)),
        Just((4, 4)),
        Just((4, 2)),
        Just((6, 2)),
        Just((8, 2)),
        Just((8, 1)),
        Just((4, 1)),
        Just((16, 2)),
    ]
}

fn scaling(rotary_dim: usize) -> impl Strategy<Value = RopeScaling> {
    let pairs = rotary_dim / 2;
    prop_oneof![
        3 => Just(RopeScaling::None),
        // M-RoPE (Qwen2-VL) in a quarter of the cases: the pairs cut in three sections at two
        // drawn points (a section may be empty).
        3 => ((0..=pairs), (0..=pairs)).prop_map(move |(a, b)| {
            let (lo, hi) = (a.min(b), a.max(b));
            RopeScaling::MRope { section: [lo, hi - lo, pairs - hi] }
        }),
        1 => (1.0f64..8.0).prop_map(|factor| RopeScaling::Linear { factor }),
        1 => (1.0f64..8.0).prop_map(|factor| RopeScaling::NtkAware { factor }),
        1 => ((1.0f64..8.0), (16usize..2048)).prop_map(|(factor, o)| RopeScaling::DynamicNtk { factor, original_max_position: o }),
        1 => ((1.0f64..16.0), (64usize..8192), prop::option::of(0.5f64..2.0)).prop_map(|(factor, o, a)| RopeScaling::Yarn {
            factor, original_max_position: o, beta_fast: 32.0, beta_slow: 1.0, attention_factor: a }),
        1 => ((1.0f64..16.0), (1.0f64..2.0), (2.5f64..8.0), (64usize..8192)).prop_map(|(factor, low, high, o)| RopeScaling::Llama3 {
            factor, low_freq_factor: low, high_freq_factor: high, original_max_position: o }),
        1 => (prop::collection::vec(1.0f64..4.0, pairs), prop::collection::vec(1.0f64..64.0, pairs), (16usize..2048))
            .prop_map(|(s, l, o)| RopeScaling::LongRope { short_factors: s, long_factors: l, original_max_position: o, attention_factor: None }),
        1 => (prop::collection::vec(1e-5f64..1.0, pairs), (0.5f64..1.5))
            .prop_map(|(f, a)| RopeScaling::Custom { inv_freq: f, attention_factor: a }),
    ]
}

fn rope(head_dims: Vec<usize>) -> impl Strategy<Value = RopeConfig> {
    prop::sample::select(head_dims)
        .prop_flat_map(|d| {
            // Full rotation, or partial (GLM / Phi style: a quarter or half, at least one pair).
            let rotary = prop_oneof![Just(d), Just(d / 2), Just((d / 4).max(2) & !1)];
            (Just(d), rotary)
        })
        .prop_flat_map(|(d, r)| {
            let style = prop_oneof![Just(RopeStyle::HalfSplit), Just(RopeStyle::Interleaved)];
            let theta = prop_oneof![Just(10000.0), Just(500000.0), Just(1_000_000.0), 100.0f64..1e6];
            let max_position = prop_oneof![Just(4096usize), Just(131072), 64usize..1_000_000];
            (Just(d), Just(r), style, theta, scaling(r), max_position)
        })
        .prop_map(|(head_dim, rotary_dim, style, theta, scaling, max_position)| RopeConfig {
            head_dim, rotary_dim, theta, style, scaling, max_position,
        })
}

/// Strategy for valid [`Case`]s.
pub fn cases(cfg: GenConfig) -> impl Strategy<Value = Case> {
    let (max_q, max_cached, long) = (cfg.max_q_len, cfg.max_cached, cfg.max_long_decode);
    let seq = prop_oneof![
        // decode
        2 => (0..=max_cached).prop_map(|cached| SeqCase { cached, q_len: 1 }),
        // long decode: more keys than one split of the GPU backends' split-K decode (128 keys
        // on the vector units, 256 on the matrix cores), so the merge of splits runs
        1 => (max_cached + 1..=long.max(max_cached + 1)).prop_map(|cached| SeqCase { cached, q_len: 1 }),
        // prefill
        2 => (1..=max_q).prop_map(|q_len| SeqCase { cached: 0, q_len }),
        // chunked prefill
        2 => ((1..=max_cached), (1..=max_q)).prop_map(|(cached, q_len)| SeqCase { cached, q_len }),
    ];
    (
        heads(),
        rope(cfg.head_dims.clone()),
        prop_oneof![Just(None), Just(Some(1usize)), Just(Some(16)), (2usize..9).prop_map(Some)],
        any::<bool>(),
        prop::collection::vec(seq, 1..=8),
        prop_oneof![3 => Just(1.0f32), 1 => Just(4.0f32), 1 => Just(0.25f32)],
        prop_oneof![2 => Just(1.0f32), 1 => 0.05f32..1.0, 1 => 1.0f32..3.0],
        any::<u64>(),
        // A quarter of the batches decode only (every sequence one new token): the GPU backends
        // run their decode kernels only when no sequence of the batch has more than a few
        // queries, and split the long ones (split-K) only there.
        prop_oneof![3 => Just(false), 1 => Just(true)],
        any::<bool>(),
        (
            prop_oneof![3 => Just(None), 1 => (0.5f32..20.0).prop_map(Some)],
            prop_oneof![2 => Just(None), 1 => Just(Some(1usize)), 3 => (2usize..24).prop_map(Some), 2 => (24usize..300).prop_map(Some)],
            prop_oneof![3 => Just(false), 1 => Just(true)],
            prop_oneof![2 => Just(false), 1 => Just(true)],
            prop_oneof![2 => Just(false), 1 => Just(true)],
        ),
    )
        .prop_map(move |((heads, kv_heads), rope, page_size, causal, mut seqs, amplitude, scale, seed, decode_only, cross, (softcap, window, sinks, lse, fp8))| {
            if decode_only {
                for s in &mut seqs {
                    s.q_len = 1;
                }
            }
            // Large heads: keep the reference's work bounded.
            if rope.head_dim >= 512 {
                seqs.truncate(2);
                for s in &mut seqs {
                    s.cached = s.cached.min(8);
                    s.q_len = s.q_len.min(4);
                }
            }
            Case { dtype: cfg.dtype, heads, kv_heads, rope, page_size, causal, seqs, amplitude, scale, seed, cross: cross && !causal, softcap, window: window.filter(|_| causal), sinks, lse, fp8 }
        })
}
