//! Attention, the reference.

use attnforge_api::{AttentionArgs, AttentionParams, KvMetadata, MergeArgs, PlainAttentionArgs, Result};

use crate::storage::{read, write};

/// Shape of one sequence's attention problem.
#[derive(Debug, Clone, Copy)]
pub struct SeqShape {
    /// Query rows.
    pub q_len: usize,
    /// Key/value rows.
    pub kv_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

/// Attention of one sequence in f64: `q` `[q_len, H, D]`, `k`/`v` `[kv_len, Hkv, D]`, returns
/// `[q_len, H, D]`.
///
/// ```text
/// g        = H / Hkv                    query head h reads kv head h / g (GQA; MQA when Hkv = 1)
/// last(i)  = kv_len - q_len + i         causal: query i sees keys 0..=last(i); otherwise all
/// first(i) = max(0, last(i) + 1 - W)    with a sliding window of W keys: keys first(i)..=last(i)
/// s_j      = scale * (q_i . k_j)
/// s_j      = cap * tanh(s_j / cap)      with logit soft-capping (`params.softcap = Some(cap)`)
/// p_j      = exp(s_j - max s) / sum_j exp(s_j - max s)
/// p_j      = exp(s_j - m) / (exp(sink_h - m) + sum_j exp(s_j - m)), m = max(sink_h, max s)
///                                       with attention sinks (`sinks[h]`, one logit per head)
/// out_i    = sum_j p_j v_j
/// ```
pub fn attend(q: &[f64], k: &[f64], v: &[f64], s: SeqShape, params: AttentionParams, sinks: Option<&[f64]>) -> Vec<f64> {
    attend_lse(q, k, v, s, params, sinks).0
}

/// [`attend`] and each row's log-sum-exp `[q_len, H]`: `lse = m + ln(exp(sink_h - m) + sum_j
/// exp(s_j - m))` (the sink term only with sinks), the natural log of the softmax denominator.
pub fn attend_lse(q: &[f64], k: &[f64], v: &[f64], s: SeqShape, params: AttentionParams, sinks: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let SeqShape { q_len, kv_len, heads, kv_heads, head_dim: d } = s;
    let group = heads / kv_heads;
    let mut out = vec![0.0; q_len * heads * d];
    let mut lse = vec![f64::NEG_INFINITY; q_len * heads];
    for i in 0..q_len {
        let visible = params.visible_keys(i, q_len, kv_len);
        for h in 0..heads {
            let kh = h / group;
            let qi = &q[(i * heads + h) * d..][..d];
            let scores: Vec<f64> = visible
                .clone()
                .map(|j| {
                    let kj = &k[(j * kv_heads + kh) * d..][..d];
                    let s = params.scale as f64 * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    match params.softcap {
                        Some(cap) => cap as f64 * (s / cap as f64).tanh(),
                        None => s,
                    }
                })
                .collect();
            let sink = sinks.map(|s| s[h]);
            let max = scores.iter().copied().chain(sink).fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
            lse[i * heads + h] = max + total.ln();
            let o = &mut out[(i * heads + h) * d..][..d];
            for (j, w) in visible.clone().zip(&weights) {
                let vj = &v[(j * kv_heads + kh) * d..][..d];
                for (oe, ve) in o.iter_mut().zip(vj) {
                    *oe += w / total * ve;
                }
            }
        }
    }
    (out, lse)
}

/// Merges partial states (see [`MergeArgs`]): `outs[i]` `[rows, D]`, `lses[i]` `[rows]`;
/// returns the merged output and log-sum-exp.
pub fn merge(outs: &[Vec<f64>], lses: &[Vec<f64>], d: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = lses.first().map_or(0, Vec::len);
    let (mut out, mut lse) = (vec![0.0; rows * d], vec![f64::NEG_INFINITY; rows]);
    for r in 0..rows {
        let m = lses.iter().map(|l| l[r]).fold(f64::NEG_INFINITY, f64::max);
        if lses.iter().any(|l| l[r].is_nan()) {
            out[r * d..(r + 1) * d].fill(f64::NAN);
            lse[r] = f64::NAN;
            continue;
        }
        if m == f64::NEG_INFINITY {
            continue; // no state saw a key: 0 and -inf
        }
        let w: Vec<f64> = lses.iter().map(|l| (l[r] - m).exp()).collect();
        let total: f64 = w.iter().sum();
        for (o, wi) in outs.iter().zip(&w) {
            for c in 0..d {
                out[r * d + c] += wi / total * o[r * d + c];
            }
        }
        lse[r] = m + total.ln();
    }
    (out, lse)
}

pub(crate) fn run_merge(a: MergeArgs<'_>) -> Result<()> {
    let MergeArgs { states, out, lse, .. } = a;
    let d = out.shape()[2];
    let outs: Vec<Vec<f64>> = states.iter().map(|(o, _)| read(o, "state output")).collect::<Result<_>>()?;
    let lses: Vec<Vec<f64>> = states.iter().map(|(_, l)| read(l, "state lse")).collect::<Result<_>>()?;
    let (o, l) = merge(&outs, &lses, d);
    write(out, "out", &o)?;
    if let Some(t) = lse {
        write(t, "lse", &l)?;
    }
    Ok(())
}

/// The K and V rows (`[kv_len, kv_heads, d]`, f64) of sequence `seq`'s first `kv_len` tokens
/// in pools read whole (`kp`, `vp`), through `meta`'s slots; with FP8 scales (`[kv_heads]`
/// each), every stored value times its kv head's scale.
#[allow(clippy::too_many_arguments)]
pub fn gather_kv(kp: &[f64], vp: &[f64], scales: Option<(&[f64], &[f64])>, meta: &KvMetadata, seq: usize, kv_len: usize, kv_heads: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut k, mut v) = (Vec::with_capacity(kv_len * kv_heads * d), Vec::with_capacity(kv_len * kv_heads * d));
    for t in 0..kv_len {
        for h in 0..kv_heads {
            let o = (meta.slot(seq, t) * kv_heads + h) * d;
            match scales {
                Some((ks, vs)) => {
                    k.extend(kp[o..o + d].iter().map(|x| x * ks[h]));
                    v.extend(vp[o..o + d].iter().map(|x| x * vs[h]));
                }
                None => {
                    k.extend_from_slice(&kp[o..o + d]);
                    v.extend_from_slice(&vp[o..o + d]);
                }
            }
        }
    }
    (k, v)
}

pub(crate) fn run_cache(a: AttentionArgs<'_>) -> Result<()> {
    let AttentionArgs { q, pools, meta, batch, kv_lens, params, sinks, lse, out, .. } = a;
    let sinks = sinks.map(|s| read(s, "sinks")).transpose()?;
    let (heads, d) = (q.shape()[1], q.shape()[2]);
    let kv_heads = pools.spec().num_kv_heads;
    let qs = read(q, "q")?;
    let (kp, vp) = (read(pools.k(), "K pool")?, read(pools.v(), "V pool")?);
    // FP8 pools: each stored value times its kv head's scale.
    let scales = pools.scales().map(|(k, v)| Ok::<_, attnforge_api::Error>((read(k, "K scales")?, read(v, "V scales")?))).transpose()?;
    let mut os = vec![0.0; out.numel()];
    let mut ls = vec![0.0; out.numel() / d];
    for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
        let kv_len = kv_lens[i];
        let (k, v) = gather_kv(&kp, &vp, scales.as_ref().map(|(k, v)| (k.as_slice(), v.as_slice())), meta, seq, kv_len, kv_heads, d);
        let row = batch.offsets()[i] * heads * d;
        let n = q_len * heads * d;
        let shape = SeqShape { q_len, kv_len, heads, kv_heads, head_dim: d };
        let (o, l) = attend_lse(&qs[row..row + n], &k, &v, shape, params, sinks.as_deref());
        os[row..row + n].copy_from_slice(&o);
        ls[row / d..(row + n) / d].copy_from_slice(&l);
    }
    write(out, "out", &os)?;
    lse.map_or(Ok(()), |t| write(t, "lse", &ls))
}

pub(crate) fn run_plain(a: PlainAttentionArgs<'_>) -> Result<()> {
    let PlainAttentionArgs { q, k, v, batch, params, sinks, lse, out, .. } = a;
    let sinks = sinks.map(|s| read(s, "sinks")).transpose()?;
    let (heads, d) = (q.shape()[1], q.shape()[2]);
    let kv_heads = k.shape()[1];
    let (qs, ks, vs) = (read(q, "q")?, read(k, "k")?, read(v, "v")?);
    let mut os = vec![0.0; out.numel()];
    let mut ls = vec![0.0; out.numel() / d];
    for i in 0..batch.len() {
        let (q_len, kv_len) = (batch.q_lens()[i], batch.kv_lens()[i]);
        let qrow = batch.q_offsets()[i] * heads * d;
        let krow = batch.kv_offsets()[i] * kv_heads * d;
        let (nq, nk) = (q_len * heads * d, kv_len * kv_heads * d);
        let shape = SeqShape { q_len, kv_len, heads, kv_heads, head_dim: d };
        let (o, l) = attend_lse(&qs[qrow..qrow + nq], &ks[krow..krow + nk], &vs[krow..krow + nk], shape, params, sinks.as_deref());
        os[qrow..qrow + nq].copy_from_slice(&o);
        ls[qrow / d..(qrow + nq) / d].copy_from_slice(&l);
    }
    write(out, "out", &os)?;
    lse.map_or(Ok(()), |t| write(t, "lse", &ls))
}
