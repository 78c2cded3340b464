//! Describing work: batches, attention parameters, ops and the problem descriptor that
//! capability queries and backend selection look at.

use std::fmt;

use crate::{try_vec, CacheLayout, DType, Error, KvCacheSpec, Result, RopeConfig};

/// The sequences of one step: which cache sequence each entry appends to / attends over, and
/// how many new tokens it brings. Q, K and V rows are token-major: entry `i` owns rows
/// `offsets()[i]..offsets()[i + 1]`. One shape covers prefill, chunked prefill and decode
/// (`q_len = 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    seq_ids: Vec<usize>,
    q_lens: Vec<usize>,
    offsets: Vec<usize>,
}

impl Batch {
    /// A batch: `seq_ids[i]` gets `q_lens[i]` new tokens. Errors on an empty batch, a zero
    /// q_len, mismatched lengths or a sequence named twice.
    pub fn new(seq_ids: Vec<usize>, q_lens: Vec<usize>) -> Result<Self> {
        if seq_ids.is_empty() {
            return Err(Error::EmptyBatch { detail: "a batch needs at least one sequence".into() });
        }
        if seq_ids.len() != q_lens.len() {
            return Err(Error::InvalidArgument(format!(
                "batch has {} sequence ids but {} q_lens",
                seq_ids.len(),
                q_lens.len()
            )));
        }
        if let Some(i) = q_lens.iter().position(|&q| q == 0) {
            return Err(Error::EmptyBatch { detail: format!("batch entry {i} (sequence {}) has q_len 0", seq_ids[i]) });
        }
        let mut sorted = seq_ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidArgument(format!("sequence {} appears twice in one batch", w[0])));
        }
        let offsets = prefix_sum(&q_lens)?;
        Ok(Batch { seq_ids, q_lens, offsets })
    }

    /// Sequences `0..n`, each with `q_len` new tokens. Sizes the host cannot hold are an
    /// [`Error::OutOfMemory`], never an abort.
    pub fn uniform(n: usize, q_len: usize) -> Result<Self> {
        let mut ids = try_vec(n, 0usize, "batch sequence ids")?;
        ids.iter_mut().enumerate().for_each(|(i, s)| *s = i);
        Batch::new(ids, try_vec(n, q_len, "batch q_lens")?)
    }

    /// Cache sequence of each entry.
    pub fn seq_ids(&self) -> &[usize] {
        &self.seq_ids
    }

    /// New tokens of each entry.
    pub fn q_lens(&self) -> &[usize] {
        &self.q_lens
    }

    /// Row offsets into Q/K/V/output: `len() + 1` entries, the last is the token total.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Entries in the batch.
    pub fn len(&self) -> usize {
        self.seq_ids.len()
    }

    /// Never true for a constructed batch; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.seq_ids.is_empty()
    }

    /// New tokens over all entries (rows of Q).
    pub fn total_tokens(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }
}

/// Sequence lengths for attention over given Q, K, V with no cache (variable length, token
/// major): entry `i` has `q_lens[i]` query rows and `kv_lens[i]` key/value rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainBatch {
    q_lens: Vec<usize>,
    kv_lens: Vec<usize>,
    q_offsets: Vec<usize>,
    kv_offsets: Vec<usize>,
}

impl PlainBatch {
    /// Errors on an empty batch, a zero length (queries or keys) or mismatched lengths. An entry
    /// may have more queries than keys (encoder self-attention over a shorter memory,
    /// cross-attention into a fixed memory): non-causal attention takes it; causal attention
    /// refuses it (`QLenExceedsKvLen`: its first rows would see no key).
    pub fn new(q_lens: Vec<usize>, kv_lens: Vec<usize>) -> Result<Self> {
        if q_lens.is_empty() {
            return Err(Error::EmptyBatch { detail: "a batch needs at least one sequence".into() });
        }
        if q_lens.len() != kv_lens.len() {
            return Err(Error::InvalidArgument(format!("{} q_lens but {} kv_lens", q_lens.len(), kv_lens.len())));
        }
        if let Some(i) = q_lens.iter().position(|&q| q == 0) {
            return Err(Error::EmptyBatch { detail: format!("batch entry {i} has q_len 0") });
        }
        if let Some(i) = kv_lens.iter().position(|&kv| kv == 0) {
            return Err(Error::EmptyBatch { detail: format!("batch entry {i} has kv_len 0 (attention needs a key)") });
        }
        let q_offsets = prefix_sum(&q_lens)?;
        let kv_offsets = prefix_sum(&kv_lens)?;
        Ok(PlainBatch { q_lens, kv_lens, q_offsets, kv_offsets })
    }

    /// Query rows per entry.
    pub fn q_lens(&self) -> &[usize] {
        &self.q_lens
    }

    /// Key/value rows per entry.
    pub fn kv_lens(&self) -> &[usize] {
        &self.kv_lens
    }

    /// Row offsets into Q and the output (`len() + 1` entries).
    pub fn q_offsets(&self) -> &[usize] {
        &self.q_offsets
    }

    /// Row offsets into K and V (`len() + 1` entries).
    pub fn kv_offsets(&self) -> &[usize] {
        &self.kv_offsets
    }

    /// Entries in the batch.
    pub fn len(&self) -> usize {
        self.q_lens.len()
    }

    /// Never true for a constructed batch.
    pub fn is_empty(&self) -> bool {
        self.q_lens.is_empty()
    }
}

fn prefix_sum(v: &[usize]) -> Result<Vec<usize>> {
    let mut out = try_vec(0, 0usize, "batch offsets")?;
    out.try_reserve_exact(v.len() + 1).map_err(|_| Error::OutOfMemory { what: "batch offsets (host)".into(), bytes: (v.len() + 1) * 8 })?;
    let mut acc = 0usize;
    out.push(0);
    for &x in v {
        acc = acc.checked_add(x).ok_or_else(|| Error::InvalidArgument("sequence lengths overflow when summed".into()))?;
        out.push(acc);
    }
    Ok(out)
}

/// Softmax options of an attention op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query `i` of a sequence with `q_len` new tokens and `kv_len` keys sees keys
    /// `0..=kv_len - q_len + i` (its own position and before). Off: it sees all keys.
    pub causal: bool,
    /// Multiplies `q . k` before the softmax; usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Logit soft-capping (Gemma 2, Grok): each logit `s = scale * (q . k)` becomes
    /// `cap * tanh(s / cap)` before the softmax, so none exceeds `cap` in magnitude. `None`: off.
    /// Must be finite and positive.
    pub softcap: Option<f32>,
    /// Sliding-window attention (Mistral, Gemma 2/3's local layers, gpt-oss): query `i` sees at
    /// most the `window` keys ending at its own position, `last(i) + 1 - window ..= last(i)`
    /// (`last(i) = kv_len - q_len + i`), as Hugging Face's `sliding_window` and
    /// FlashAttention's `window_size = (window - 1, 0)`. Needs `causal`; at least 1. Kernels
    /// skip the keys outside every query's window: the work grows with the window, not the
    /// context. `None`: off.
    pub window: Option<usize>,
}

impl AttentionParams {
    /// Causal attention with scale `1 / sqrt(head_dim)`.
    pub fn causal(head_dim: usize) -> Self {
        AttentionParams { causal: true, scale: 1.0 / (head_dim as f32).sqrt(), softcap: None, window: None }
    }

    /// Non-causal attention with scale `1 / sqrt(head_dim)`.
    pub fn full(head_dim: usize) -> Self {
        AttentionParams { causal: false, scale: 1.0 / (head_dim as f32).sqrt(), softcap: None, window: None }
    }

    /// The same with logits soft-capped at `cap` (`cap * tanh(s / cap)`; Gemma 2 uses 50).
    pub fn with_softcap(self, cap: f32) -> Self {
        AttentionParams { softcap: Some(cap), ..self }
    }

    /// The same with a sliding window of `window` keys (Mistral uses 4096; needs causal).
    pub fn with_window(self, window: usize) -> Self {
        AttentionParams { window: Some(window), ..self }
    }

    /// Keys query `i` of a sequence with `q_len` queries over `kv_len` keys sees: `first..end`.
    /// Empty when a non-causal query has no keys (never for a valid problem).
    pub fn visible_keys(&self, i: usize, q_len: usize, kv_len: usize) -> std::ops::Range<usize> {
        if !self.causal {
            return 0..kv_len;
        }
        let end = (kv_len + i + 1).saturating_sub(q_len).min(kv_len);
        let first = self.window.map_or(0, |w| end.saturating_sub(w));
        first..end
    }
}

/// The ops of the trait, for capability queries and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// RoPE on Q and K in place.
    Rope,
    /// Append new K/V rows to a cache.
    KvAppend,
    /// Attention of new queries over a cache.
    Attention,
    /// Attention over given Q, K, V, no cache.
    AttentionPlain,
    /// The composite step: RoPE, append, attention.
    Step,
    /// Context shift: move cached tokens to other positions (re-rotate their keys).
    Shift,
    /// Merge partial attention states (output and log-sum-exp over disjoint key sets) into
    /// the state of attention over their union.
    MergeStates,
}

impl Op {
    /// Every op, in a fixed order.
    pub const ALL: [Op; 7] = [Op::Rope, Op::KvAppend, Op::Attention, Op::AttentionPlain, Op::Step, Op::Shift, Op::MergeStates];

    /// snake_case name: `rope`, `kv_append`, `attention`, `attention_plain`, `step`, `shift`,
    /// `merge_states`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Rope => "rope",
            Op::KvAppend => "kv_append",
            Op::Attention => "attention",
            Op::AttentionPlain => "attention_plain",
            Op::Step => "step",
            Op::Shift => "shift",
            Op::MergeStates => "merge_states",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a capability query and [`crate::registry::select`] look at: everything about a problem
/// that decides which kernel runs, none of the data.
#[derive(Debug, Clone, PartialEq)]
pub struct ProblemDesc {
    /// Element type of Q, K, V, output and cache.
    pub dtype: DType,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// The RoPE configuration, for ops that rotate.
    pub rope: Option<RopeConfig>,
    /// The cache layout, for ops on a cache.
    pub layout: Option<CacheLayout>,
    /// The cache's storage type when it is not `dtype` ([`KvCacheSpec::kv_dtype`]: FP8 e4m3
    /// pools), for ops on a cache.
    pub kv_dtype: Option<DType>,
    /// Causal masking, for attention.
    pub causal: bool,
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Longest q_len in the batch.
    pub max_q_len: usize,
    /// Longest kv_len in the batch (after the append).
    pub max_kv_len: usize,
    /// Sliding window of the attention, if any ([`AttentionParams::window`]): plans size their
    /// key splits from the keys a query sees, not the context.
    pub window: Option<usize>,
}

impl ProblemDesc {
    /// A decode or prefill step over a cache with RoPE: the problem the quickstart and
    /// [`crate::registry::select`] usually see.
    pub fn step(dtype: DType, num_heads: usize, num_kv_heads: usize, rope: RopeConfig, layout: CacheLayout) -> Self {
        ProblemDesc {
            dtype,
            num_heads,
            num_kv_heads,
            head_dim: rope.head_dim,
            rope: Some(rope),
            layout: Some(layout),
            kv_dtype: None,
            causal: true,
            batch_size: 1,
            max_q_len: 1,
            max_kv_len: 1,
            window: None,
        }
    }

    /// The most keys one query sees: `max_kv_len`, or less under a sliding window.
    pub fn max_visible_keys(&self) -> usize {
        match self.window {
            Some(w) if self.causal => self.max_kv_len.min(w.saturating_add(self.max_q_len).saturating_sub(1)),
            _ => self.max_kv_len,
        }
    }

    /// Checks that the description is one a valid call could produce: an even, non-zero
    /// head_dim; heads divisible by KV heads; a valid RoPE configuration for this head_dim; a
    /// valid cache layout; a non-empty batch with `max_q_len <= max_kv_len` where keys are
    /// given; sizes that fit an allocation. [`crate::registry::select`],
    /// [`crate::Backend::supports`] and [`crate::Backend::supports_problem`] call it before
    /// asking any backend, so every backend sees only valid descriptions.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(true)
    }

    /// [`ProblemDesc::validate`] for a description built by an op from its arguments: the RoPE
    /// tables are left to the op, which computes and checks the one table it uses.
    pub(crate) fn validate_call(&self) -> Result<()> {
        self.validate_with(false)
    }

    fn validate_with(&self, tables: bool) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::OddHeadDim { head_dim: self.head_dim });
        }
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::HeadsNotDivisible { num_heads: self.num_heads, num_kv_heads: self.num_kv_heads });
        }
        if let Some(r) = &self.rope {
            if tables {
                r.validate()?;
            } else {
                r.validate_params()?;
            }
            if r.head_dim != self.head_dim {
                return Err(Error::ShapeMismatch { what: "RoPE head_dim of the problem".into(), expected: vec![self.head_dim], got: vec![r.head_dim] });
            }
        }
        if self.batch_size == 0 || self.max_q_len == 0 {
            return Err(Error::EmptyBatch { detail: format!("problem with batch_size {} and max_q_len {}", self.batch_size, self.max_q_len) });
        }
        if let Some(layout) = self.layout {
            KvCacheSpec { num_seqs: self.batch_size, num_kv_heads: self.num_kv_heads, head_dim: self.head_dim, dtype: self.dtype, layout, kv_dtype: self.kv_dtype }.validate()?;
        } else if self.kv_dtype.is_some() {
            return Err(Error::InvalidArgument("a problem with a KV storage type but no cache layout".into()));
        }
        // More queries than keys: only causal attention cannot take it (non-causal plain
        // attention is cross-attention; a cache always holds the new tokens too).
        if self.causal && self.max_kv_len > 0 && self.max_q_len > self.max_kv_len {
            return Err(Error::QLenExceedsKvLen { seq: 0, q_len: self.max_q_len, kv_len: self.max_kv_len });
        }
        crate::tensor::checked_bytes(&[self.batch_size, self.max_q_len, self.num_heads, self.head_dim], self.dtype)?;
        crate::tensor::checked_bytes(&[self.batch_size, self.max_kv_len, self.num_kv_heads, self.head_dim], self.dtype)?;
        Ok(())
    }

    /// The ops a backend must support to run this problem end to end: the composite step (and
    /// its parts) for problems with a cache and RoPE, attention over the cache and appends for
    /// problems with a cache only, plain attention otherwise.
    pub fn ops(&self) -> Vec<Op> {
        match (&self.layout, &self.rope) {
            (Some(_), Some(_)) => vec![Op::Rope, Op::KvAppend, Op::Attention, Op::Step],
            (Some(_), None) => vec![Op::KvAppend, Op::Attention],
            (None, Some(_)) => vec![Op::Rope, Op::AttentionPlain],
            (None, None) => vec![Op::AttentionPlain],
        }
    }
}
