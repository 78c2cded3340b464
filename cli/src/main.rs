//! `attnforge`: the one command of the project.
//!
//! ```text
//! attnforge list [--json]                     backends, availability and why; devices with arch and limits
//! attnforge info                              version, kernels built in, what automatic selection picks and why
//! attnforge conformance [OPTIONS]             the suite against the CPU reference (see `attnforge conformance --help`)
//! attnforge bench [OPTIONS]                   GPU benchmarks; JSON and SVG plots next to PyTorch's
//! attnforge --trace ...                       tracing spans and events of the libraries on stderr
//! ```
//!
//! Exit status: 0 on success, 1 when a check failed (a cell, a required backend that could not
//! start), 2 on bad arguments.

mod bench;
mod conformance;
mod plot;

use std::process::ExitCode;

use attnforge_api::{registry, CacheLayout, DType, ProblemDesc, RopeConfig};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "attnforge", version, about = "Pluggable attention backends: list them, check them against the CPU reference, benchmark them")]
struct Cli {
    /// Print the libraries' tracing spans (per op: backend, op, shapes, dtype, plan) and events
    /// (selection decisions) on stderr; RUST_LOG overrides the filter.
    #[arg(long, global = true)]
    trace: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Registered backends (available here or why not) and the GPUs the GPU backends see.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Version, the kernels this build embeds, and what automatic selection picks here and why.
    Info,
    /// Property tests of every registered backend against the CPU reference.
    Conformance(conformance::Args),
    /// GPU benchmarks (device events; medians), with JSON and SVG plots.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.trace {
        use tracing_subscriber::fmt::format::FmtSpan;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("attnforge_api=debug,attnforge_cpu=debug,attnforge_hip=debug"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::CLOSE).with_ansi(ansi).with_writer(std::io::stderr).init();
    }
    attnforge_conformance::link_backends();
    match cli.command {
        Command::List { json } => list(json),
        Command::Info => info(),
        Command::Conformance(a) => conformance::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

#[derive(serde::Serialize)]
struct BackendLine {
    name: String,
    priority: i32,
    description: String,
    available: bool,
    reason: Option<String>,
    devices: Option<usize>,
}

#[derive(serde::Serialize)]
struct DeviceLine {
    ordinal: usize,
    vendor: &'static str,
    name: String,
    arch: String,
    sms: usize,
    warp_size: usize,
    smem_per_block: usize,
    matrix_cores: bool,
    hopper_prefill: bool,
}

fn list(json: bool) -> ExitCode {
    let backends: Vec<BackendLine> = registry::list()
        .into_iter()
        .map(|b| BackendLine {
            devices: registry::device_count(&b.name).ok(),
            available: b.available.is_ok(),
            reason: b.available.err(),
            name: b.name,
            priority: b.priority,
            description: b.description,
        })
        .collect();
    let (devices, device_errors): (Vec<_>, Vec<_>) = attnforge_hip::devices().into_iter().partition(Result::is_ok);
    let devices: Vec<DeviceLine> = devices
        .into_iter()
        .flatten()
        .map(|d| DeviceLine { ordinal: d.ordinal, vendor: d.vendor, name: d.name, arch: d.arch, sms: d.sm_count, warp_size: d.warp_size, smem_per_block: d.smem_per_block, matrix_cores: d.matrix_cores, hopper_prefill: d.hopper_prefill })
        .collect();
    let device_errors: Vec<String> = device_errors.into_iter().filter_map(Result::err).collect();
    if json {
        let v = serde_json::json!({ "backends": backends, "devices": devices, "device_errors": device_errors });
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
        return ExitCode::SUCCESS;
    }
    println!("{:<28} {:>8}  {:<11} description / why not", "backend", "priority", "available");
    for b in &backends {
        let avail = if b.available { format!("yes ({} dev)", b.devices.unwrap_or(1)) } else { "no".into() };
        println!("{:<28} {:>8}  {:<11} {}", b.name, b.priority, avail, b.reason.as_deref().unwrap_or(&b.description));
    }
    println!();
    if devices.is_empty() {
        println!("GPUs: none the GPU backends can open: {}", device_errors.join("; "));
    }
    for d in &devices {
        println!(
            "GPU {}: {} ({}, {} SMs, warp {}, {} KiB shared memory per block, matrix cores: {}, Hopper prefill (wgmma, TMA): {})",
            d.ordinal,
            if d.name.starts_with(d.vendor) { d.name.clone() } else { format!("{} {}", d.vendor, d.name) },
            d.arch,
            d.sms,
            d.warp_size,
            d.smem_per_block >> 10,
            if d.matrix_cores { "yes" } else { "no" },
            if d.hopper_prefill { "yes" } else { "no" }
        );
    }
    ExitCode::SUCCESS
}

fn info() -> ExitCode {
    use attnforge_hip::kernels;
    println!("attnforge {}", env!("CARGO_PKG_VERSION"));
    println!("NVIDIA kernels: {}", if kernels::NVIDIA.is_some() { format!("built for {}", kernels::CUDA_ARCHS) } else { kernels::NVIDIA_MISSING.to_string() });
    println!("AMD kernels:    {}", if kernels::AMD.is_some() { format!("built for {}", kernels::AMD_ARCHS) } else { kernels::AMD_MISSING.to_string() });
    match std::env::var("ATTNFORGE_BACKEND") {
        Ok(v) => println!("ATTNFORGE_BACKEND={v}"),
        Err(_) => println!("ATTNFORGE_BACKEND unset: automatic selection"),
    }
    // What an engine running a LLaMA-style model (GQA 32/8, head dim 128, bf16) would get.
    let rope = RopeConfig { theta: 500000.0, ..RopeConfig::new(128, 10000.0, 131072) };
    let mut problem = ProblemDesc::step(DType::BF16, 32, 8, rope, CacheLayout::Paged { page_size: 16, num_pages: 4096 });
    (problem.batch_size, problem.max_q_len, problem.max_kv_len) = (16, 1, 8192);
    match registry::select(&problem) {
        Ok(sel) => {
            println!("selected for a bf16 decode step (GQA 32/8, head_dim 128, paged, B=16, L=8192): {} ({})", sel.backend.name(), sel.reason);
            for (name, why) in &sel.rejected {
                println!("  passed over {name}: {why}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("no backend for a bf16 decode step here: {e}");
            ExitCode::FAILURE
        }
    }
}
