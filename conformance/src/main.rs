//! The conformance CLI: runs the suite on every registered backend (or one) and prints the
//! backend × op × dtype matrix; exits non-zero on any failure.
//!
//!     cargo run -p conformance --release -- [--backend NAME] [--cases N] [--seed S]
//!         [--dtype f32|f16|bf16] [--op rope|kv_append|attention|attention_plain|step]
//!         [--report report.md] [--perf] [--no-errors] [--device K] [--shards N]
//!         [--path owned|views|plan] [--require NAME]... [--fail-on-skip]
//!
//! A backend that cannot start (no GPU, no driver) is listed as skipped, with why, and does not
//! fail the run by itself: on a GPU runner, `--require NAME` (repeatable) fails the run with
//! the reason when backend NAME could not start (an unknown name exits 2), and `--fail-on-skip`
//! fails it when any backend was skipped, so a runner with a broken driver cannot pass green.
//!
//! `--device K` runs the suite on the backend's instance on device K (`registry::get_on`; needs
//! `--backend`). `--shards N` runs the tensor-parallel check instead (`conformance::sharded`):
//! the heads of a GQA 32/8 problem split over N instances, one per device (GPU `i` for a GPU
//! backend; N fresh instances for a host backend), driven from N threads at once, for every
//! dtype; `--shards 0` takes every device the backend sees. `--soak STEPS` (with `--shards`)
//! then runs STEPS decode steps on every shard at once and checks that each device's memory
//! in use comes back to its level after the warm-up (GPU backends).

use std::process::ExitCode;

use backend_api::{registry, DType, Op};
use conformance::{check_registered, perf, Config};

fn usage() -> ExitCode {
    eprintln!("usage: conformance [--backend NAME] [--cases N] [--seed S] [--dtype f32|f16|bf16] [--op OP] [--report FILE] [--perf] [--no-errors] [--device K] [--shards N] [--path owned|views|plan] [--require NAME]... [--fail-on-skip]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    conformance::link_backends();
    let mut cfg = Config::default();
    let (mut only, mut report_path, mut perf_mode) = (None, None, false);
    let (mut device, mut shards, mut soak): (Option<usize>, Option<usize>, Option<usize>) = (None, None, None);
    let (mut require, mut fail_on_skip): (Vec<String>, bool) = (Vec::new(), false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next();
        match a.as_str() {
            "--backend" => only = val(),
            "--cases" => match val().and_then(|v| v.parse().ok()) { Some(n) => cfg.cases = n, None => return usage() },
            "--seed" => match val().and_then(|v| v.parse().ok()) { Some(n) => cfg.seed = n, None => return usage() },
            "--dtype" => match val().and_then(|v| DType::ALL.into_iter().find(|d| d.name() == v)) { Some(d) => cfg.dtypes = vec![d], None => return usage() },
            "--path" => match val().as_deref() {
                Some("owned") => cfg.paths = vec![conformance::setup::Path::Owned],
                Some("views") => cfg.paths = vec![conformance::setup::Path::Views],
                Some("plan") => cfg.paths = vec![conformance::setup::Path::Plan],
                _ => return usage(),
            },
            "--op" => match val().and_then(|v| Op::ALL.into_iter().find(|o| o.name() == v)) { Some(o) => { cfg.ops = vec![o]; cfg.errors = false } None => return usage() },
            "--report" => report_path = val(),
            "--perf" => perf_mode = true,
            "--no-errors" => cfg.errors = false,
            "--require" => match val() { Some(n) => require.push(n), None => return usage() },
            "--fail-on-skip" => fail_on_skip = true,
            "--device" => match val().and_then(|v| v.parse().ok()) { Some(n) => device = Some(n), None => return usage() },
            "--soak" => match val().and_then(|v| v.parse().ok()) { Some(n) => soak = Some(n), None => return usage() },
            "--shards" => match val().and_then(|v| v.parse().ok()) { Some(n) => shards = Some(n), None => return usage() },
            "-h" | "--help" => { usage(); return ExitCode::SUCCESS }
            _ => return usage(),
        }
    }
    for name in only.iter().chain(&require) {
        if let Err(e) = registry::get(name) {
            if matches!(e, backend_api::Error::UnknownBackend { .. }) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(name) = require.iter().find(|r| only.as_ref().is_some_and(|o| o != *r)) {
        eprintln!("error: --require {name} with --backend {}: the required backend would not run", only.as_deref().unwrap_or(""));
        return ExitCode::from(2);
    }
    if (device.is_some() || shards.is_some()) && only.is_none() {
        eprintln!("error: --device and --shards need --backend");
        return usage();
    }
    if let (Some(n), Some(name)) = (shards, &only) {
        return sharded(name, n, &cfg, soak);
    }
    println!("attnforge conformance: {} cases per op and dtype, seed {}", cfg.cases, cfg.seed);
    let report = match (device, &only) {
        (Some(k), Some(name)) => match registry::get_on(name, k) {
            Ok(be) => conformance::check_backend_with(&be, &cfg, &|line| println!("{line}")),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => check_registered(&cfg, only.as_deref(), &|line| println!("{line}")),
    };
    let md = report.to_markdown();
    println!("\n{md}");
    if perf_mode {
        for info in registry::list() {
            if only.as_ref().is_some_and(|n| *n != info.name) {
                continue;
            }
            if let Ok(be) = registry::get(&info.name) {
                let n = if be.device() == backend_api::Device::CPU { 2 } else { 8 };
                print!("{}", perf::table(&perf::run(&be, &cfg.ops, &cfg.dtypes, n, cfg.seed, 5)));
            }
        }
    }
    if let Some(p) = report_path {
        let header = format!("# Conformance report\n\nseed {}, {} cases per op and dtype\n\n", cfg.seed, cfg.cases);
        if let Err(e) = std::fs::write(&p, header + &md) {
            eprintln!("error: writing {p}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // A required backend that was skipped (or every skipped one, with --fail-on-skip) fails the
    // run, with the reason it could not start.
    let missing: Vec<&(String, String)> = report.skipped.iter().filter(|(n, _)| fail_on_skip || require.contains(n)).collect();
    for (name, why) in &missing {
        println!("conformance: required backend {name} did not run: {why}");
    }
    let failed = report.cells.iter().filter(|c| c.failure.is_some()).count();
    if !missing.is_empty() {
        if failed > 0 {
            println!("conformance: {failed} cell(s) FAILED");
        }
        ExitCode::FAILURE
    } else if failed > 0 {
        println!("conformance: {failed} cell(s) FAILED");
        ExitCode::FAILURE
    } else {
        println!("conformance: all {} cells passed ({} backends skipped)", report.cells.len(), report.skipped.len());
        ExitCode::SUCCESS
    }
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
        let p = conformance::sharded::ShardProblem { dtype, seed: cfg.seed, ..Default::default() };
        match conformance::sharded::check_sharded(&shards, &reference, &p) {
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
        let p = conformance::sharded::ShardProblem { dtype: cfg.dtypes[0], seed: cfg.seed, ..Default::default() };
        match conformance::sharded::soak(&shards, &p, steps) {
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
