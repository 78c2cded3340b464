//! List the registered backends, then run one decode step through the backend named on the
//! command line (`--backend NAME` or the first argument) or in `ATTNFORGE_BACKEND`.
//!
//!     cargo run --release --example select_backend -- --backend cpu
use attnforge::*;

fn main() {
    // The libraries' spans and events (per op: backend, shapes, dtype, the plan; selection
    // decisions) on stderr when RUST_LOG asks, e.g. RUST_LOG=attnforge_api=debug,attnforge_hip=debug.
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let named = match args.as_slice() {
        [flag, name, ..] if flag == "--backend" => Some(name.clone()),
        [name, ..] if !name.starts_with('-') => Some(name.clone()),
        _ => None,
    };
    if let Err(e) = run(named.as_deref()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(named: Option<&str>) -> Result<()> {
    for b in registry::list() {
        let state = b.available.as_ref().map(|_| "available".to_string()).unwrap_or_else(|e| format!("unavailable: {e}"));
        println!("{:<14} {:>4}  {} [{state}]", b.name, b.priority, b.description);
    }
    let (h, hk, d, dtype) = (16, 4, 128, DType::BF16);
    let rope = RopeConfig::new(d, 1_000_000.0, 32768);
    let layout = CacheLayout::Contiguous { capacity: 256 };
    let problem = ProblemDesc::step(dtype, h, hk, rope.clone(), layout);
    // A name from the command line wins; otherwise ATTNFORGE_BACKEND; otherwise automatic.
    let sel = match named {
        Some(n) => registry::select_with(&problem, Some(n))?,
        None => registry::select(&problem)?,
    };
    let be = sel.backend;
    println!("\nrunning on {} ({})", be.name(), sel.reason);

    let spec = KvCacheSpec { num_seqs: 1, num_kv_heads: hk, head_dim: d, dtype, kv_dtype: None, layout };
    let mut cache = be.create_kv_cache(&spec)?;
    let wave = |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * f).sin()).collect() };
    let mut out = be.alloc(&[1, h, d], dtype)?;
    for step in 0..4u32 {
        let mut q = be.upload(&wave(h * d, 0.37 + step as f32), &[1, h, d], dtype)?;
        let mut k = be.upload(&wave(hk * d, 0.11 + step as f32), &[1, hk, d], dtype)?;
        let v = be.upload(&wave(hk * d, 0.53 + step as f32), &[1, hk, d], dtype)?;
        be.rope_append_attend(StepInputs {
            q: &mut q, k: &mut k, v: &v, positions: &[step], rope: &rope, cache: &mut cache,
            batch: &Batch::uniform(1, 1)?, params: AttentionParams::causal(d), out: &mut out,
            sinks: None,
        })?;
        let o = be.download(&out)?;
        println!("step {step}: kv_len {}  out[0..4] = {:?}", cache.seq_len(0), &o[..4]);
    }
    Ok(())
}
