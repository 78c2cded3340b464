//! KV append, the reference: copy each new row into its slot (through the page table).

use backend_api::{AppendArgs, Result};

use crate::storage::{host, pools_mut};

pub(crate) fn run(a: AppendArgs<'_>) -> Result<()> {
    let AppendArgs { cache, k, v, batch, start, .. } = a;
    let (hk, d) = (cache.spec().num_kv_heads, cache.spec().head_dim);
    let (ks, vs) = (host(k, "k")?, host(v, "v")?);
    // Slot offsets first (they read the page table), then the writes.
    let mut moves = Vec::new();
    for (i, (&seq, &q_len)) in batch.seq_ids().iter().zip(batch.q_lens()).enumerate() {
        for t in 0..q_len {
            for h in 0..hk {
                let src = ((batch.offsets()[i] + t) * hk + h) * d;
                moves.push((src, cache.slot_offset(seq, start[i] + t, h)));
            }
        }
    }
    let pools = pools_mut(cache)?;
    for (src, dst) in moves {
        pools.k.set_range(dst, &ks.range(src, d));
        pools.v.set_range(dst, &vs.range(src, d));
    }
    Ok(())
}
