//! KV append, the reference: copy each new row into its slot (through the page table); FP8
//! pools store each element as `e4m3(fl32(x / scale_h))` of its kv head's scale.

use attnforge_api::{AppendArgs, Result};

use crate::storage::{read, write_at};

pub(crate) fn run(a: AppendArgs<'_>) -> Result<()> {
    let AppendArgs { pools, meta, k, v, batch, start, .. } = a;
    let (hk, d) = (pools.spec().num_kv_heads, pools.spec().head_dim);
    let (mut ks, mut vs) = (read(k, "k")?, read(v, "v")?);
    if let Some((ksc, vsc)) = pools.scales() {
        let (ksc, vsc) = (read(ksc, "K scales")?, read(vsc, "V scales")?);
        for (xs, sc) in [(&mut ks, &ksc), (&mut vs, &vsc)] {
            for (i, x) in xs.iter_mut().enumerate() {
                *x = attnforge_api::e4m3_quantise(*x, sc[(i / d) % hk] as f32).to_f64();
            }
        }
    }
    let (kp, vp, _) = pools.parts_mut();
    for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
        for t in 0..q_len {
            for h in 0..hk {
                let src = ((batch.offsets()[i] + t) * hk + h) * d;
                let dst = (meta.slot(seq, start[i] + t) * hk + h) * d;
                write_at(kp, "K pool", dst, &ks[src..src + d])?;
                write_at(vp, "V pool", dst, &vs[src..src + d])?;
            }
        }
    }
    Ok(())
}
