//! `attnforge conformance`: the suite against the CPU reference on every registered backend (or
//! one), the backend × op × dtype matrix, Markdown / JSON / JUnit reports.
//!
//! A backend that cannot start (no GPU, no driver) is listed as skipped, with why, and does not
//! fail the run by itself: on a GPU runner, `--require NAME` (repeatable) fails the run with the
//! reason when backend NAME could not start (an unknown name exits 2), and `--fail-on-skip`
//! fails it when any backend was skipped, so a runner with a broken driver cannot pass green.
//!
//! Every failure prints the arguments that reproduce it alone: a cell's cases depend only on the
//! seed, the case count, its op, path and dtype, never on which other cells ran.

use std::cell::RefCell;
use std::process::ExitCode;

use attnforge_api::{registry, DType, Op};
use attnforge_conformance::setup::Path;
use attnforge_conformance::{check_backend_observed, check_registered_observed, perf, Config, Event, Report};
use indicatif::{ProgressBar, ProgressStyle};

/// Which cells: an op, or `errors` for the invalid-problem checks alone.
#[derive(Debug, Clone, Copy)]
enum OpArg {
    Op(Op),
    Errors,
}

fn parse_op(s: &str) -> Result<OpArg, String> {
    if s == "errors" {
        return Ok(OpArg::Errors);
    }
    Op::ALL.into_iter().find(|o| o.name() == s).map(OpArg::Op).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        format!("unknown op {s:?}; one of {}, errors", names.join(", "))
    })
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| format!("unknown dtype {s:?}; one of f32, f16, bf16"))
}

fn parse_path(s: &str) -> Result<Path, String> {
    match s {
        "owned" => Ok(Path::Owned),
        "views" => Ok(Path::Views),
        "plan" => Ok(Path::Plan),
        _ => Err(format!("unknown path {s:?}; one of owned, views, plan")),
    }
}

/// Options of `attnforge conformance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this backend (default: every registered one).
    #[arg(long)]
    backend: Option<String>,
    /// Random cases per op, path and dtype.
    #[arg(long, default_value_t = 32)]
    cases: u32,
    /// Seed of the run.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Only this dtype (f32, f16, bf16).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// Only this op (rope, kv_append, attention, attention_plain, step, shift), or `errors`
    /// for the invalid-problem checks alone.
    #[arg(long, value_parser = parse_op)]
    op: Option<OpArg>,
    /// Only this path: owned tensors, views into engine buffers, or plan / run.
    #[arg(long, value_parser = parse_path)]
    path: Option<Path>,
    /// Head dims the generator draws from (comma-separated; default: every size claimed).
    #[arg(long, value_delimiter = ',')]
    head_dims: Option<Vec<usize>>,
    /// Skip the invalid-problem checks.
    #[arg(long)]
    no_errors: bool,
    /// Fail the run (with the reason) if backend NAME could not start; repeatable.
    #[arg(long, value_name = "NAME")]
    require: Vec<String>,
    /// Fail the run if any registered backend could not start.
    #[arg(long)]
    fail_on_skip: bool,
    /// Write the report as Markdown.
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Write the report as JUnit XML (one test case per cell).
    #[arg(long, value_name = "FILE")]
    junit: Option<std::path::PathBuf>,
    /// Also time every op (µs, GB/s, TFLOP/s; host clock around synchronize).
    #[arg(long)]
    perf: bool,
    /// Run on the backend's instance on device K (needs --backend).
    #[arg(long, value_name = "K", requires = "backend")]
    device: Option<usize>,
    /// The tensor-parallel check instead: the heads of a GQA 32/8 problem over N instances, one
    /// per device (0: every device; needs --backend).
    #[arg(long, value_name = "N", requires = "backend")]
    shards: Option<usize>,
    /// With --shards: STEPS decode steps on every shard at once; device memory must come back
    /// to its level after the warm-up.
    #[arg(long, value_name = "STEPS", requires = "shards")]
    soak: Option<usize>,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

pub fn run(a: Args) -> ExitCode {
    let mut cfg = Config { cases: a.cases, seed: a.seed, ..Config::default() };
    if let Some(d) = a.dtype {
        cfg.dtypes = vec![d];
    }
    match a.op {
        Some(OpArg::Op(o)) => {
            cfg.ops = vec![o];
            cfg.errors = false;
        }
        Some(OpArg::Errors) => cfg.ops.clear(),
        None => {}
    }
    if a.no_errors {
        cfg.errors = false;
    }
    if let Some(p) = a.path {
        cfg.paths = vec![p];
    }
    if let Some(d) = a.head_dims {
        cfg.head_dims = d;
    }
    for name in a.backend.iter().chain(&a.require) {
        if let Err(e @ attnforge_api::Error::UnknownBackend { .. }) = registry::get(name) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(name) = a.require.iter().find(|r| a.backend.as_ref().is_some_and(|o| o != *r)) {
        eprintln!("error: --require {name} with --backend {}: the required backend would not run", a.backend.as_deref().unwrap_or(""));
        return ExitCode::from(2);
    }
    if let (Some(n), Some(name)) = (a.shards, &a.backend) {
        return sharded(name, n, &cfg, a.soak);
    }
    println!("attnforge conformance: {} cases per op and dtype, seed {}", cfg.cases, cfg.seed);
    let bar: RefCell<Option<ProgressBar>> = RefCell::new(None);
    let show = !a.no_progress;
    let events = |e: Event| match e {
        Event::CellStart { backend, cell, dtype, cases } if show => {
            let pb = ProgressBar::new(cases as u64);
            pb.set_style(ProgressStyle::with_template("{prefix:<52} [{bar:30}] {pos}/{len} {elapsed}").expect("template").progress_chars("=> "));
            pb.set_prefix(format!("{backend} {cell} {dtype}"));
            *bar.borrow_mut() = Some(pb);
        }
        Event::Case => {
            if let Some(pb) = bar.borrow().as_ref() {
                pb.inc(1);
            }
        }
        Event::CellDone { line, .. } => {
            if let Some(pb) = bar.borrow_mut().take() {
                pb.finish_and_clear();
            }
            println!("{line}");
        }
        Event::Skipped { backend, reason } => println!("{backend:<28} skipped: {reason}"),
        _ => {}
    };
    let report = match (a.device, &a.backend) {
        (Some(k), Some(name)) => match registry::get_on(name, k) {
            Ok(be) => check_backend_observed(&be, &cfg, &events),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => check_registered_observed(&cfg, a.backend.as_deref(), &events),
    };
    let md = report.to_markdown();
    println!("\n{md}");
    if a.perf {
        for info in registry::list() {
            if a.backend.as_ref().is_some_and(|n| *n != info.name) {
                continue;
            }
            if let Ok(be) = registry::get(&info.name) {
                let n = if be.device() == attnforge_api::Device::CPU { 2 } else { 8 };
                print!("{}", perf::table(&perf::run(&be, &cfg.ops, &cfg.dtypes, n, cfg.seed, 5)));
            }
        }
    }
    if let Err(e) = write_reports(&a.report, &a.json, &a.junit, &report, &md) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // A required backend that was skipped (or every skipped one, with --fail-on-skip) fails the
    // run, with the reason it could not start.
    let missing: Vec<_> = report.skipped.iter().filter(|k| a.fail_on_skip || a.require.contains(&k.backend)).collect();
    for k in &missing {
        println!("conformance: required backend {} did not run: {}", k.backend, k.reason);
    }
    let failed: Vec<_> = report.cells.iter().filter_map(|c| c.failure.as_ref().map(|f| (c, f))).collect();
    for (c, f) in &failed {
        println!("conformance: {} {} {} FAILED; reproduce with: attnforge conformance {}", c.backend, c.op, c.dtype, f.reproduce);
    }
    if !failed.is_empty() {
        println!("conformance: {} cell(s) FAILED", failed.len());
    }
    if !missing.is_empty() || !failed.is_empty() {
        ExitCode::FAILURE
    } else {
        println!("conformance: all {} cells passed ({} backends skipped)", report.cells.len(), report.skipped.len());
        ExitCode::SUCCESS
    }
}

fn write_reports(md_path: &Option<std::path::PathBuf>, json: &Option<std::path::PathBuf>, junit: &Option<std::path::PathBuf>, report: &Report, md: &str) -> Result<(), String> {
    let write = |p: &std::path::PathBuf, text: String| std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()));
    if let Some(p) = md_path {
        write(p, format!("# Conformance report\n\nseed {}, {} cases per op and dtype\n\n{md}", report.seed, report.cases))?;
    }
    if let Some(p) = json {
        write(p, report.to_json())?;
    }
    if let Some(p) = junit {
        write(p, report.to_junit())?;
    }
    Ok(())
}

/// `--shards N`: the tensor-parallel check of backend `name` for every dtype of `cfg`.
fn sharded(name: &str, n: usize, cfg: &Config, soak: Option<usize>) -> ExitCode {
    let count = match registry::device_count(name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let n = if n == 0 { count.max(1) } else { n };
    // One instance per device; a host backend (one device) simulates N with N fresh instances.
    let shards: Result<Vec<_>, _> = (0..n).map(|i| if count > 1 || n == 1 { registry::get_on(name, i) } else { registry::create_on(name, 0) }).collect();
    let (shards, reference) = match (shards, registry::get("cpu")) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for &dtype in &cfg.dtypes {
        let p = attnforge_conformance::sharded::ShardProblem { dtype, seed: cfg.seed, ..Default::default() };
        match attnforge_conformance::sharded::check_sharded(&shards, &reference, &p) {
            Ok(r) => println!(
                "sharded {name} {dtype}: GQA {}/{} head_dim {} over {} shard(s) on {}: {} steps (prefill in {} chunks, {} decode) from {} threads passed, max |err| {:.3e}",
                p.heads, p.kv_heads, p.head_dim, r.shards, shards.iter().map(|b| b.device().to_string()).collect::<Vec<_>>().join(", "), r.steps, p.chunks, p.decode_steps, r.shards, r.max_abs_err
            ),
            Err(e) => {
                println!("sharded {name} {dtype}: FAILED: {e}");
                failed = true;
            }
        }
    }
    if let Some(steps) = soak {
        // Device memory must come back to its level after the warm-up: a leak per step shows.
        const SLACK: usize = 4 << 20; // two 2 MiB pages of the stream-ordered allocator's pool
        let p = attnforge_conformance::sharded::ShardProblem { dtype: cfg.dtypes[0], seed: cfg.seed, ..Default::default() };
        match attnforge_conformance::sharded::soak(&shards, &p, steps) {
            Ok(v) => {
                for s in v {
                    let ok = s.after <= s.before + SLACK;
                    failed |= !ok;
                    println!(
                        "soak {name} on {}: {steps} steps from {} threads: device memory in use {} MiB after the warm-up, {} MiB after ({:+} KiB): {}",
                        s.device, n, s.before >> 20, s.after >> 20, (s.after as i64 - s.before as i64) / 1024, if ok { "back to its level" } else { "FAILED: grew" }
                    );
                }
            }
            Err(e) => {
                println!("soak {name}: FAILED: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
