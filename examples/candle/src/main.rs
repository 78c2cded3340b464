//! attnforge on candle tensors, without copies: a `CustomOp3` whose CUDA forward views candle's
//! `CudaSlice`s (q, k and v may be column slices of one fused QKV tensor: strided rows), runs
//! attnforge's attention on candle's own stream, and hands candle the output slice it
//! allocated. The pattern candle-flash-attn uses, with attnforge's backends behind it.
//!
//! candle-core's `cuda` feature links cudarc with `dynamic-linking`, so attnforge is built with
//! `default-features = false, features = ["cpu", "hip-core", "cudarc"]` (no run-time loader of
//! its own: see the root Cargo.toml). On a machine with an NVIDIA GPU:
//!
//!     cargo run --release --manifest-path examples/candle/Cargo.toml
use std::sync::Arc;

use attnforge::attnforge_hip::{ForeignStream, HipBackend, Strategy};
use attnforge::{AttentionParams, Backend, DType, PlainBatch};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Device, Layout, Shape, Tensor, D};

/// Attention of q `[T, H, Dh]` over k, v `[T, Hkv, Dh]` (one sequence, causal), f16.
struct Attention {
    hip: Arc<HipBackend>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// A candle layout of `[T, n * Dh]` or `[T, n, Dh]` as attnforge sees it: rows (tokens)
/// `stride[0]` apart, each row dense.
fn rows(l: &Layout, n: usize, d: usize) -> candle_core::Result<(usize, usize)> {
    let (dims, st) = (l.dims(), l.stride());
    let dense = match dims.len() {
        2 => dims[1] == n * d && st[1] == 1,
        3 => dims[1] == n && dims[2] == d && st[2] == 1 && st[1] == d,
        _ => false,
    };
    if !dense {
        candle_core::bail!("attnforge takes [tokens, heads * head_dim] with dense rows, got {dims:?} strides {st:?}");
    }
    Ok((dims[0], st[0]))
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attnforge-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("this recipe runs on CUDA tensors (attnforge's cpu backend takes host buffers: CpuBackend::tensor_in)")
    }

    fn cuda_fwd(&self, q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let af = |e: attnforge::Error| candle_core::Error::Msg(e.to_string());
        let (h, hk, d) = (self.heads, self.kv_heads, self.head_dim);
        let ((t, qs), (tk, ks), (_, vs)) = (rows(lq, h, d)?, rows(lk, hk, d)?, rows(lv, hk, d)?);
        let dev = q.device().clone();
        // Views of candle's memory from each tensor's first element (a column slice of a fused
        // QKV tensor starts inside its row).
        let qv = q.as_cuda_slice::<half::f16>()?.slice(lq.start_offset()..);
        let kv = k.as_cuda_slice::<half::f16>()?.slice(lk.start_offset()..);
        let vv = v.as_cuda_slice::<half::f16>()?.slice(lv.start_offset()..);
        let qt = self.hip.borrow_cudarc(&qv, &[t, h, d], qs, DType::F16).map_err(af)?;
        let kt = self.hip.borrow_cudarc(&kv, &[tk, hk, d], ks, DType::F16).map_err(af)?;
        let vt = self.hip.borrow_cudarc(&vv, &[tk, hk, d], vs, DType::F16).map_err(af)?;
        let mut out = dev.alloc_zeros::<half::f16>(t * h * d)?;
        {
            let mut ot = self.hip.borrow_cudarc_mut(&mut out, &[t, h, d], h * d, DType::F16).map_err(af)?;
            let batch = PlainBatch::new(vec![t], vec![tk]).map_err(af)?;
            Backend::new(self.hip.clone()).attention_plain(&qt, &kt, &vt, &batch, AttentionParams::causal(d), &mut ot).map_err(af)?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, h, d))))
    }
}

fn main() -> candle_core::Result<()> {
    let device = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no CUDA device here ({e}); this recipe needs one");
            std::process::exit(2);
        }
    };
    // attnforge on candle's stream: its work and candle's stay ordered, and candle frees
    // memory on that stream after it.
    let stream = device.as_cuda_device()?.cuda_stream();
    let hip = HipBackend::open_on_stream("hip-flash", Strategy::Flash, 0, ForeignStream::from_cudarc(&stream)).map_err(candle_core::Error::Msg)?;
    let (t, h, hk, d) = (128usize, 8usize, 2usize, 64usize);
    let op = Attention { hip: Arc::new(hip), heads: h, kv_heads: hk, head_dim: d };
    // One fused projection output; q, k and v are column slices of it (no copies).
    let qkv = Tensor::randn(0f32, 1.0, (t, (h + 2 * hk) * d), &device)?.to_dtype(candle_core::DType::F16)?;
    let q = qkv.narrow(1, 0, h * d)?;
    let k = qkv.narrow(1, h * d, hk * d)?;
    let v = qkv.narrow(1, (h + hk) * d, hk * d)?;
    let out = q.apply_op3_no_bwd(&k, &v, &op)?;
    // candle's own attention, for comparison (f32, GQA by repeating kv heads, causal mask).
    let f = |x: &Tensor, n: usize| x.to_dtype(candle_core::DType::F32)?.reshape((t, n, d))?.transpose(0, 1)?.contiguous();
    let (qf, kf, vf) = (f(&q, h)?, f(&k, hk)?, f(&v, hk)?);
    let rep = |x: &Tensor| Tensor::cat(&(0..h).map(|i| x.narrow(0, i / (h / hk), 1)).collect::<candle_core::Result<Vec<_>>>()?, 0);
    let (kf, vf) = (rep(&kf)?, rep(&vf)?);
    let scores = (qf.matmul(&kf.t()?)? / (d as f64).sqrt())?;
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let scores = scores.broadcast_add(&Tensor::from_vec(mask, (t, t), &device)?)?;
    let p = candle_core::Tensor::exp(&scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?)?)?;
    let p = p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?;
    let want = p.matmul(&vf)?.transpose(0, 1)?;
    let err = (out.to_dtype(candle_core::DType::F32)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("attnforge (hip-flash) on candle tensors, {t} tokens, GQA {h}/{hk}, head_dim {d}: largest difference from candle's attention {err:.2e}");
    if err > 1e-2 {
        std::process::exit(1);
    }
    Ok(())
}
