//! Validated arguments of the trait's ops. Only [`crate::Backend`] builds these, after checking
//! every shape, dtype, device, length and position, so a backend receives only valid input and
//! every backend reports invalid input identically. Backends read the public fields (destructure
//! with `..`).

use std::ops::Range;

use crate::{AttentionParams, Batch, KvMetadata, KvPools, PlainBatch, ProblemDesc, RopeConfig, RopeFrequencies, Tensor};

/// Proof of validation; cannot be made outside this crate.
#[derive(Debug, Clone, Copy)]
pub struct Validated(pub(crate) ());

/// [`crate::AttentionBackend::rope`]: rotate Q `[T, H, D]` and K `[T, Hkv, D]` in place, token
/// `t` at `positions[t]`.
#[derive(Debug)]
pub struct RopeArgs<'a> {
    /// Queries, rotated in place.
    pub q: &'a mut Tensor,
    /// Keys, rotated in place.
    pub k: &'a mut Tensor,
    /// One position id per token (M-RoPE: three, `[3, T]`, see [`crate::RopeScaling::MRope`]); each `< config.max_position`.
    pub positions: &'a [u32],
    /// The RoPE configuration (validated).
    pub config: &'a RopeConfig,
    /// `config.frequencies(max(positions))`, computed once by the API.
    pub freqs: RopeFrequencies,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// [`crate::AttentionBackend::kv_append`]: write entry `i`'s rows of K/V `[T, Hkv, D]` into
/// sequence `batch.seq_ids()[i]` at tokens `start[i]..start[i] + q_lens[i]`, pool slot
/// `meta.slot(seq, t)`. K and V may be strided ([`Tensor::row_stride`]); the pools are dense.
#[derive(Debug)]
pub struct AppendArgs<'a> {
    /// The pools written to.
    pub pools: &'a mut KvPools,
    /// Lengths and page tables (already counting the new tokens).
    pub meta: &'a KvMetadata,
    /// New keys.
    pub k: &'a Tensor,
    /// New values.
    pub v: &'a Tensor,
    /// Which sequences, how many tokens each.
    pub batch: &'a Batch,
    /// First token written per batch entry (`seq_len - q_len`).
    pub start: Vec<usize>,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// [`crate::AttentionBackend::attention`]: for each batch entry, its `q_lens[i]` query rows of
/// Q `[T, H, D]` attend over tokens `0..kv_lens[i]` of the sequence in the cache; the result
/// goes to `out` `[T, H, D]`. Query head `h` reads kv head `h / (H / Hkv)`.
#[derive(Debug)]
pub struct AttentionArgs<'a> {
    /// Queries.
    pub q: &'a Tensor,
    /// The pools read from.
    pub pools: &'a KvPools,
    /// Lengths and page tables.
    pub meta: &'a KvMetadata,
    /// Which sequences, how many query rows each.
    pub batch: &'a Batch,
    /// Keys visible per batch entry (`>= q_lens[i]`).
    pub kv_lens: Vec<usize>,
    /// Causal flag and softmax scale.
    pub params: AttentionParams,
    /// Attention sinks (gpt-oss): f32 `[H]` (dense), one learned logit per query head that joins each
    /// row's softmax denominator (`out = sum_j e^(s_j) v_j / (e^sink + sum_j e^(s_j))`; the
    /// sink is neither scaled nor soft-capped). `None`: no sinks.
    pub sinks: Option<&'a Tensor>,
    /// Log-sum-exp of every output row, f32 `[T, H]` (dense): `lse[t, h] = ln(e^sink_h + sum_j
    /// e^(s_j))` over the row's visible keys, `s_j` the scaled (and soft-capped) logits, the sink
    /// term only with sinks. With it, partial results over disjoint key sets merge exactly
    /// ([`crate::Backend::merge_states`]). `None`: not written.
    pub lse: Option<&'a mut Tensor>,
    /// Output, fully overwritten.
    pub out: &'a mut Tensor,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// [`crate::AttentionBackend::attention_plain`]: attention over given Q `[Tq, H, D]`, K and V
/// `[Tk, Hkv, D]`, variable length per [`PlainBatch`]; the result goes to `out` `[Tq, H, D]`.
#[derive(Debug)]
pub struct PlainAttentionArgs<'a> {
    /// Queries.
    pub q: &'a Tensor,
    /// Keys.
    pub k: &'a Tensor,
    /// Values.
    pub v: &'a Tensor,
    /// Rows per entry.
    pub batch: &'a PlainBatch,
    /// Causal flag and softmax scale.
    pub params: AttentionParams,
    /// Attention sinks (gpt-oss): f32 `[H]` (dense), one learned logit per query head that joins each
    /// row's softmax denominator (`out = sum_j e^(s_j) v_j / (e^sink + sum_j e^(s_j))`; the
    /// sink is neither scaled nor soft-capped). `None`: no sinks.
    pub sinks: Option<&'a Tensor>,
    /// Log-sum-exp of every output row, f32 `[T, H]` (dense): `lse[t, h] = ln(e^sink_h + sum_j
    /// e^(s_j))` over the row's visible keys, `s_j` the scaled (and soft-capped) logits, the sink
    /// term only with sinks. With it, partial results over disjoint key sets merge exactly
    /// ([`crate::Backend::merge_states`]). `None`: not written.
    pub lse: Option<&'a mut Tensor>,
    /// Output, fully overwritten.
    pub out: &'a mut Tensor,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// [`crate::AttentionBackend::rope_append_attend`]: rotate Q and K at `positions`, append K/V,
/// attend. Afterwards `q` and `k` hold unspecified values (a backend may rotate them in place
/// or not at all) and the cache holds K in the backend's own form (rotated or not); only `out`
/// and the cache lengths are specified.
#[derive(Debug)]
pub struct StepArgs<'a> {
    /// Queries (scratch afterwards).
    pub q: &'a mut Tensor,
    /// New keys (scratch afterwards).
    pub k: &'a mut Tensor,
    /// New values.
    pub v: &'a Tensor,
    /// One position id per new token (M-RoPE: three, `[3, T]`).
    pub positions: &'a [u32],
    /// The RoPE configuration (validated).
    pub config: &'a RopeConfig,
    /// `config.frequencies(max(positions))`.
    pub freqs: RopeFrequencies,
    /// The pools appended to and read from.
    pub pools: &'a mut KvPools,
    /// Lengths and page tables (already counting the new tokens).
    pub meta: &'a KvMetadata,
    /// Which sequences, how many tokens each.
    pub batch: &'a Batch,
    /// First slot written per batch entry.
    pub start: Vec<usize>,
    /// Keys visible per entry after the append.
    pub kv_lens: Vec<usize>,
    /// Causal flag and softmax scale.
    pub params: AttentionParams,
    /// Attention sinks (gpt-oss): f32 `[H]` (dense), one learned logit per query head that joins each
    /// row's softmax denominator (`out = sum_j e^(s_j) v_j / (e^sink + sum_j e^(s_j))`; the
    /// sink is neither scaled nor soft-capped). `None`: no sinks.
    pub sinks: Option<&'a Tensor>,
    /// Output, fully overwritten.
    pub out: &'a mut Tensor,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

impl StepArgs<'_> {
    /// The RoPE part, for backends that build the step from primitives.
    pub fn rope_args(&mut self) -> RopeArgs<'_> {
        RopeArgs { q: self.q, k: self.k, positions: self.positions, config: self.config, freqs: self.freqs.clone(), desc: self.desc.clone(), validated: self.validated }
    }

    /// The append part.
    pub fn append_args(&mut self) -> AppendArgs<'_> {
        AppendArgs { pools: self.pools, meta: self.meta, k: self.k, v: self.v, batch: self.batch, start: self.start.clone(), desc: self.desc.clone(), validated: self.validated }
    }

    /// The attention part (over the cache after the append).
    pub fn attention_args(&mut self) -> AttentionArgs<'_> {
        AttentionArgs {
            q: self.q,
            pools: self.pools,
            meta: self.meta,
            batch: self.batch,
            kv_lens: self.kv_lens.clone(),
            params: self.params,
            sinks: self.sinks,
            lse: None,
            out: self.out,
            desc: self.desc.clone(),
            validated: self.validated,
        }
    }
}

/// [`crate::AttentionBackend::merge_states`]: `n` partial attention states of the same rows,
/// each an output `[T, H, D]` over some key set and its log-sum-exp f32 `[T, H]`, merged into
/// the state of attention over the union of the key sets:
///
/// ```text
/// M        = max_i lse_i[t, h]
/// w_i      = exp(lse_i[t, h] - M)
/// out[t,h] = sum_i w_i out_i[t, h] / sum_i w_i
/// lse[t,h] = M + ln(sum_i w_i)
/// ```
///
/// A state with `lse = -inf` (no keys) weighs nothing; when every state has `-inf` the row's
/// output is 0 and its lse `-inf`. NaN propagates.
#[derive(Debug)]
pub struct MergeArgs<'a> {
    /// The partial states, `(output, lse)`: outputs of one shape and dtype (may be strided),
    /// lse f32 `[T, H]` dense. At least one.
    pub states: &'a [(&'a Tensor, &'a Tensor)],
    /// The merged output, same shape and dtype (may be strided), fully overwritten.
    pub out: &'a mut Tensor,
    /// The merged log-sum-exp, f32 `[T, H]` dense (None: not written).
    pub lse: Option<&'a mut Tensor>,
    /// What the capability query saw (`max_q_len` = T rows).
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}

/// [`crate::AttentionBackend::shift_positions`]: the cached tokens `tokens` of sequence `seq`
/// move by `delta` positions. A token whose key was rotated for position `p` must afterwards
/// behave, in every later attention, as if rotated for `p + delta`. Backends that store rotated
/// keys rotate them by `delta` in place (rotations compose: `R(p + d) = R(d) R(p)`, with the
/// cos/sin multiplier applied once); a backend that stores unrotated keys with their positions
/// (`hip-fused`) only updates the positions. V does not change.
#[derive(Debug)]
pub struct ShiftArgs<'a> {
    /// The pools.
    pub pools: &'a mut KvPools,
    /// Lengths and page tables.
    pub meta: &'a KvMetadata,
    /// Which sequence.
    pub seq: usize,
    /// Token indices (`end <= seq_len`, non-empty).
    pub tokens: Range<usize>,
    /// Positions to add (may be negative).
    pub delta: i64,
    /// The RoPE configuration the keys were rotated with (validated; not length-dependent).
    pub config: &'a RopeConfig,
    /// Its frequency table (position-independent: see [`RopeConfig::is_length_dependent`]).
    pub freqs: RopeFrequencies,
    /// What the capability query saw.
    pub desc: ProblemDesc,
    /// Proof of validation.
    pub validated: Validated,
}
