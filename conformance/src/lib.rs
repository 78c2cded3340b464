//! # attnforge conformance
//!
//! The promise to engine authors: a backend that passes this suite computes what the CPU
//! reference computes, on any valid problem, and rejects invalid ones the same way.
//!
//! - [`case`]: proptest strategies for valid problems (batches of 1-8 sequences mixing prefill,
//!   chunked prefill and decode; MHA/GQA/MQA; head dims 32-256 plus 512 and 2048 where claimed;
//!   full and partial rotary; both RoPE styles; every scaling; arbitrary, repeated positions,
//!   many near `max_position`; contiguous and paged caches with random page tables; causal and
//!   not; every dtype; random normals at three amplitudes).
//! - [`ops`]: one check per op against a golden f64 result and the reference, with the
//!   tolerance of [`tolerance`]; outputs are NaN-poisoned first; appends are checked bit-exact
//!   with sentinels in every slot they must not touch; each op runs twice and must give
//!   bitwise-identical output (determinism; the composite step is checked for values only).
//! - [`invalid`]: one corrupted problem per error kind; the backend must answer with the
//!   reference's error variant, never a panic.
//! - [`mutants`]: the reference with one planted bug each; the suite must catch all of them.
//!
//! Test your own backend in one call:
//!
//! ```
//! use conformance::{check_backend, Config};
//! let backend = backend_cpu::CpuBackend::handle(); // yours here
//! let report = check_backend(&backend, &Config { cases: 4, ..Config::default() });
//! assert!(report.passed(), "{}", report.to_markdown());
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod case;
pub mod invalid;
pub mod mutants;
pub mod ops;
pub mod perf;
pub mod rng;
pub mod setup;
pub mod sharded;
pub mod tolerance;

use std::cell::{Cell, RefCell};
use std::fmt::Write;

use backend_api::{registry, AttentionBackend, Backend, DType, Op};
use backend_cpu::CpuBackend;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use case::{cases, GenConfig};
use ops::Outcome;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Random cases per op and dtype.
    pub cases: u32,
    /// Seed of the whole run; each (op, dtype) cell derives its own from it.
    pub seed: u64,
    /// Dtypes to test.
    pub dtypes: Vec<DType>,
    /// Ops to test.
    pub ops: Vec<Op>,
    /// Also run the invalid-problem checks.
    pub errors: bool,
    /// Head dims the generator draws from.
    pub head_dims: Vec<usize>,
    /// How the checks hand data to the backend: owned tensors and caches, and views into
    /// engine buffers (a cell each; see [`setup::Path`]).
    pub paths: Vec<setup::Path>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cases: 32,
            seed: 0x5EED,
            dtypes: DType::ALL.to_vec(),
            ops: Op::ALL.to_vec(),
            errors: true,
            head_dims: GenConfig::new(DType::F32).head_dims,
            paths: setup::Path::ALL.to_vec(),
        }
    }
}

/// One failure, shrunk, with what reproduces it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The minimal failing case proptest shrank to (Debug form).
    pub case: String,
    /// The run's seed (`--seed`).
    pub seed: u64,
}

/// Counts of one backend × op × dtype cell.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// Backend name.
    pub backend: String,
    /// Op (or `errors` for the invalid-problem checks).
    pub op: String,
    /// Dtype.
    pub dtype: DType,
    /// Cases that matched the reference.
    pub passed: u32,
    /// Cases the backend declared unsupported (never counted as passed).
    pub unsupported: u32,
    /// The failure, if any (the cell stops at the first, then shrinks it).
    pub failure: Option<Failure>,
    /// A sample of the reasons given for unsupported cases.
    pub unsupported_reasons: Vec<String>,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per backend × op × dtype.
    pub cells: Vec<CellResult>,
    /// Registered backends that could not be created here, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// No failure in any cell.
    pub fn passed(&self) -> bool {
        self.cells.iter().all(|c| c.failure.is_none())
    }

    /// The matrix and every failure, as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| backend | op | dtype | passed | failed | unsupported |\n| --- | --- | --- | ---: | ---: | ---: |");
        for c in &self.cells {
            let _ = writeln!(s, "| {} | {} | {} | {} | {} | {} |", c.backend, c.op, c.dtype, c.passed, c.failure.is_some() as u32, c.unsupported);
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(s, "| {name} | (all) | - | skipped: {why} | | |");
        }
        for c in self.cells.iter().filter(|c| c.failure.is_some()) {
            let f = c.failure.as_ref().unwrap();
            let _ = writeln!(s, "\n### FAILED: {} {} {}\n\n{}\n\nreproduce with `--backend {} --seed {}`; shrunk case:\n\n```\n{}\n```", c.backend, c.op, c.dtype, f.message, c.backend, f.seed, f.case);
        }
        for c in self.cells.iter().filter(|c| !c.unsupported_reasons.is_empty()) {
            let _ = writeln!(s, "\nunsupported by {} for {} {}: {}", c.backend, c.op, c.dtype, c.unsupported_reasons.join("; "));
        }
        s
    }
}

fn runner(cfg: &Config, salt: u64) -> TestRunner {
    let seed = cfg.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (seed.rotate_left(i as u32 * 8) & 0xff) as u8 ^ i as u8;
    }
    let pt = PtConfig { cases: cfg.cases, failure_persistence: None, max_shrink_iters: 200, ..PtConfig::default() };
    TestRunner::new_with_rng(pt, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

#[allow(clippy::too_many_arguments)]
fn run_cell(be: &Backend, rf: &Backend, cfg: &Config, op: Option<Op>, path: setup::Path, dtype: DType, salt: u64, progress: &dyn Fn(&str)) -> CellResult {
    let passed = Cell::new(0u32);
    let unsupported = Cell::new(0u32);
    let failed_once = Cell::new(false);
    let reasons = RefCell::new(Vec::<String>::new());
    let gen = GenConfig { head_dims: cfg.head_dims.clone(), ..GenConfig::new(dtype) };
    let mut r = runner(cfg, salt);
    fn shrunk<T: std::fmt::Debug>(r: Result<(), TestError<T>>, seed: u64) -> Option<Failure> {
        match r {
            Ok(()) => None,
            Err(TestError::Fail(msg, case)) => Some(Failure { message: msg.to_string(), case: format!("{case:#?}"), seed }),
            Err(TestError::Abort(msg)) => Some(Failure { message: format!("aborted: {msg}"), case: String::new(), seed }),
        }
    }
    let failure = match op {
        Some(op) => r.run(&cases(gen), |case| match ops::check(op, path, be, rf, &case) {
            Outcome::Pass => {
                if !failed_once.get() {
                    passed.set(passed.get() + 1);
                }
                Ok(())
            }
            Outcome::Unsupported(why) => {
                if !failed_once.get() {
                    unsupported.set(unsupported.get() + 1);
                    let mut rs = reasons.borrow_mut();
                    for w in why {
                        if rs.len() < 6 && !rs.contains(&w) {
                            rs.push(w);
                        }
                    }
                }
                Ok(())
            }
            Outcome::Fail(msg) => {
                failed_once.set(true);
                Err(TestCaseError::fail(msg))
            }
        })
        .map_or_else(|e| shrunk::<case::Case>(Err(e), cfg.seed), |_| None),
        // Every corruption kind on every drawn case: each kind is compared with the reference
        // in every run, whatever the case count.
        None => r
            .run(&cases(gen), |case| match invalid::check_all(be, rf, &case) {
                Ok(_) => {
                    if !failed_once.get() {
                        passed.set(passed.get() + 1);
                    }
                    Ok(())
                }
                Err(msg) => {
                    failed_once.set(true);
                    Err(TestCaseError::fail(msg))
                }
            })
            .map_or_else(|e| shrunk::<case::Case>(Err(e), cfg.seed), |_| None),
    };
    let name = op.map(|o| format!("{}{}", o.name(), path.suffix())).unwrap_or_else(|| "errors".into());
    progress(&format!("{:<28} {:<16} {:<5} {:>4} passed {:>4} unsupported {}", be.name(), name, dtype.name(), passed.get(), unsupported.get(), if failure.is_some() { "FAILED" } else { "ok" }));
    CellResult {
        backend: be.name().to_string(),
        op: name,
        dtype,
        passed: passed.get(),
        unsupported: unsupported.get(),
        failure,
        unsupported_reasons: reasons.into_inner(),
    }
}

/// References every backend crate this build links, so their registrations survive linking.
pub fn link_backends() {
    backend_cpu::link();
    #[cfg(feature = "hip")]
    backend_hip::link();
}

/// Runs the whole suite on one backend against the CPU reference.
pub fn check_backend(backend: &Backend, config: &Config) -> Report {
    check_backend_with(backend, config, &|_| {})
}

/// [`check_backend`] for a bare trait object (e.g. a backend you have not registered).
pub fn check_backend_dyn(backend: std::sync::Arc<dyn AttentionBackend>, config: &Config) -> Report {
    check_backend(&Backend::new(backend), config)
}

/// [`check_backend`], reporting each finished cell through `progress`.
pub fn check_backend_with(backend: &Backend, config: &Config, progress: &dyn Fn(&str)) -> Report {
    let rf = CpuBackend::handle();
    let mut report = Report::default();
    for (di, &dtype) in config.dtypes.iter().enumerate() {
        for (oi, &op) in config.ops.iter().enumerate() {
            for &path in config.paths.iter().filter(|p| p.runs(op)) {
                let salt = (di * 16 + oi) as u64
                    + 1
                    + match path {
                        setup::Path::Owned => 0,
                        setup::Path::Views => 1 << 20,
                        setup::Path::Plan => 2 << 20,
                    };
                report.cells.push(run_cell(backend, &rf, config, Some(op), path, dtype, salt, progress));
            }
        }
        if config.errors {
            report.cells.push(run_cell(backend, &rf, config, None, setup::Path::Owned, dtype, (di * 16 + 15) as u64 + 1, progress));
        }
    }
    report
}

/// Runs the suite on every registered backend (or only `only`), skipping, visibly, those that
/// cannot be created here. The reference itself is included: against the golden f64 results it
/// checks the generators and the tolerance model.
pub fn check_registered(config: &Config, only: Option<&str>, progress: &dyn Fn(&str)) -> Report {
    link_backends();
    let mut report = Report::default();
    for info in registry::list() {
        if only.is_some_and(|n| n != info.name) {
            continue;
        }
        match registry::get(&info.name) {
            Ok(be) => {
                let r = check_backend_with(&be, config, progress);
                report.cells.extend(r.cells);
            }
            Err(e) => {
                progress(&format!("{:<28} skipped: {e}", info.name));
                report.skipped.push((info.name.clone(), e.to_string()));
            }
        }
    }
    report
}
