//! The conformance CLI: runs the suite on every registered backend (or one) and prints the
//! backend × op × dtype matrix; exits non-zero on any failure.
//!
//!     cargo run -p conformance --release -- [--backend NAME] [--cases N] [--seed S]
//!         [--dtype f32|f16|bf16] [--op rope|kv_append|attention|attention_plain|step]
//!         [--report report.md] [--perf] [--no-errors]

use std::process::ExitCode;

use backend_api::{registry, DType, Op};
use conformance::{check_registered, perf, Config};

fn usage() -> ExitCode {
    eprintln!("usage: conformance [--backend NAME] [--cases N] [--seed S] [--dtype f32|f16|bf16] [--op OP] [--report FILE] [--perf] [--no-errors]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    conformance::link_backends();
    let mut cfg = Config::default();
    let (mut only, mut report_path, mut perf_mode) = (None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next();
        match a.as_str() {
            "--backend" => only = val(),
            "--cases" => match val().and_then(|v| v.parse().ok()) { Some(n) => cfg.cases = n, None => return usage() },
            "--seed" => match val().and_then(|v| v.parse().ok()) { Some(n) => cfg.seed = n, None => return usage() },
            "--dtype" => match val().and_then(|v| DType::ALL.into_iter().find(|d| d.name() == v)) { Some(d) => cfg.dtypes = vec![d], None => return usage() },
            "--op" => match val().and_then(|v| Op::ALL.into_iter().find(|o| o.name() == v)) { Some(o) => { cfg.ops = vec![o]; cfg.errors = false } None => return usage() },
            "--report" => report_path = val(),
            "--perf" => perf_mode = true,
            "--no-errors" => cfg.errors = false,
            "-h" | "--help" => { usage(); return ExitCode::SUCCESS }
            _ => return usage(),
        }
    }
    if let Some(name) = &only {
        if let Err(e) = registry::get(name) {
            if matches!(e, backend_api::Error::UnknownBackend { .. }) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!("attnforge conformance: {} cases per op and dtype, seed {}", cfg.cases, cfg.seed);
    let report = check_registered(&cfg, only.as_deref(), &|line| println!("{line}"));
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
    let failed = report.cells.iter().filter(|c| c.failure.is_some()).count();
    if failed > 0 {
        println!("conformance: {failed} cell(s) FAILED");
        ExitCode::FAILURE
    } else {
        println!("conformance: all {} cells passed ({} backends skipped)", report.cells.len(), report.skipped.len());
        ExitCode::SUCCESS
    }
}
