//! Quickstart: let the registry pick the best backend for a small GQA problem, then run RoPE,
//! KV append and attention through it.
//!
//!     cargo run --release --example quickstart
//!     ATTNFORGE_BACKEND=cpu cargo run --release --example quickstart
use attnforge::*;

fn main() {
    // The libraries' spans and events (per op: backend, shapes, dtype, the plan; selection
    // decisions) on stderr when RUST_LOG asks, e.g. RUST_LOG=attnforge_api=debug,attnforge_hip=debug.
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    // 2 sequences, GQA 8 query heads over 2 KV heads, head_dim 64, a Llama-style RoPE.
    let (h, hk, d, dtype) = (8, 2, 64, DType::F32);
    let prompt_lens = [7usize, 12];
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(d, 10000.0, 8192) };
    let layout = CacheLayout::Paged { page_size: 16, num_pages: 8 };
    let mut problem = ProblemDesc::step(dtype, h, hk, rope.clone(), layout);
    problem.batch_size = prompt_lens.len();
    problem.max_q_len = 12;
    problem.max_kv_len = 12;

    println!("registered backends:");
    for b in registry::list() {
        let avail = match &b.available {
            Ok(()) => "available".to_string(),
            Err(why) => format!("unavailable: {why}"),
        };
        println!("  {:<14} priority {:>3}  {}  [{}]", b.name, b.priority, b.description, avail);
    }

    let sel = registry::select(&problem)?;
    let backend = sel.backend;
    println!("\nchosen: {} on {} ({})", backend.name(), backend.device(), sel.reason);
    for (name, why) in &sel.rejected {
        println!("  not {name}: {why}");
    }

    let spec = KvCacheSpec { num_seqs: 2, num_kv_heads: hk, head_dim: d, dtype, kv_dtype: None, layout };
    let mut cache = backend.create_kv_cache(&spec)?;
    cache.set_page_table(0, &[3, 5])?;
    cache.set_page_table(1, &[0, 6, 2])?;

    let batch = Batch::new(vec![0, 1], prompt_lens.to_vec())?;
    let t = batch.total_tokens();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let mut normals = |n: usize| -> Vec<f32> { (0..n).map(|_| rand::Rng::sample::<f32, _>(&mut rng, rand_distr::StandardNormal)).collect() };
    let mut q = backend.upload(&normals(t * h * d), &[t, h, d], dtype)?;
    let mut k = backend.upload(&normals(t * hk * d), &[t, hk, d], dtype)?;
    let v = backend.upload(&normals(t * hk * d), &[t, hk, d], dtype)?;
    let positions: Vec<u32> = prompt_lens.iter().flat_map(|&n| 0..n as u32).collect();
    let mut out = backend.alloc(&[t, h, d], dtype)?;

    backend.rope(&mut q, &mut k, &positions, &rope)?;
    backend.kv_append(&mut cache, &k, &v, &batch)?;
    backend.attention(&q, &cache, &batch, AttentionParams::causal(d), &mut out)?;
    backend.synchronize()?;

    let o = backend.download(&out)?;
    let checksum: f64 = o.iter().map(|&x| x as f64).sum();
    let abs: f64 = o.iter().map(|&x| x.abs() as f64).sum();
    println!("\nprefill of {t} tokens: cache lengths {} and {}", cache.seq_len(0), cache.seq_len(1));
    println!("output [{t}, {h}, {d}] checksum {checksum:.6} (sum |x| {abs:.6})");
    Ok(())
}
