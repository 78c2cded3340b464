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
//! use attnforge_conformance::{check_backend, Config};
//! let backend = attnforge_cpu::CpuBackend::handle(); // yours here
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

use attnforge_api::{registry, AttentionBackend, Backend, DType, Op};
use attnforge_cpu::CpuBackend;
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The minimal failing case proptest shrank to (Debug form).
    pub case: String,
    /// The run's seed (`--seed`).
    pub seed: u64,
    /// The `attnforge conformance` arguments that run this cell alone, with the same cases:
    /// a cell's cases depend only on the seed, its op, path and dtype (not on which other cells
    /// run), so the line reproduces the failure whatever filters the failing run had.
    pub reproduce: String,
}

/// Counts of one backend × op × dtype cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CellResult {
    /// Backend name.
    pub backend: String,
    /// Op (or `errors` for the invalid-problem checks).
    pub op: String,
    /// Dtype.
    #[serde(serialize_with = "dtype_name")]
    pub dtype: DType,
    /// Cases that matched the reference.
    pub passed: u32,
    /// Cases the backend declared unsupported (never counted as passed).
    pub unsupported: u32,
    /// The failure, if any (the cell stops at the first, then shrinks it).
    pub failure: Option<Failure>,
    /// The distinct reasons given for unsupported cases (reasons that differ only in their
    /// numbers count as one), each with how many cases gave it; the text is the first seen.
    pub unsupported_reasons: Vec<(String, u32)>,
    /// Wall time of the cell, seconds.
    pub seconds: f64,
}

fn dtype_name<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

/// A registered backend that could not be created here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    /// Backend name.
    pub backend: String,
    /// Why it could not start (the registry's error).
    pub reason: String,
}

/// The result of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Random cases per op and dtype.
    pub cases: u32,
    /// One entry per backend × op × dtype.
    pub cells: Vec<CellResult>,
    /// Registered backends that could not be created here, with the reason.
    pub skipped: Vec<Skipped>,
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
        for k in &self.skipped {
            let _ = writeln!(s, "| {} | (all) | - | skipped: {} | | |", k.backend, k.reason);
        }
        for c in self.cells.iter().filter(|c| c.failure.is_some()) {
            let f = c.failure.as_ref().unwrap();
            let _ = writeln!(s, "\n### FAILED: {} {} {}\n\n{}\n\nreproduce with `attnforge conformance {}`; shrunk case:\n\n```\n{}\n```", c.backend, c.op, c.dtype, f.message, f.reproduce, f.case);
        }
        for c in self.cells.iter().filter(|c| !c.unsupported_reasons.is_empty()) {
            let rs: Vec<String> = c.unsupported_reasons.iter().map(|(r, n)| format!("{r} ({n}x)")).collect();
            let _ = writeln!(s, "\nunsupported by {} for {} {}: {}", c.backend, c.op, c.dtype, rs.join("; "));
        }
        s
    }

    /// The report as JSON (`serde_json`): seed, case count, every cell (with its failure and
    /// unsupported reasons) and every skipped backend.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The report as JUnit XML, the format CI systems show as test results: one test suite per
    /// backend, one test case per cell (`op/dtype`), a `<failure>` with the message, the
    /// reproduction line and the shrunk case for a failed cell, a `<skipped>` with the reason
    /// for a backend that could not start (so `--require` is not needed to see it).
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};
        let mut report = quick_junit::Report::new("attnforge conformance");
        let mut backends: Vec<&str> = Vec::new();
        for c in &self.cells {
            if !backends.contains(&c.backend.as_str()) {
                backends.push(&c.backend);
            }
        }
        for b in backends {
            let mut suite = TestSuite::new(b);
            suite.add_property(Property::new("seed", self.seed.to_string()));
            suite.add_property(Property::new("cases", self.cases.to_string()));
            for c in self.cells.iter().filter(|c| c.backend == b) {
                let status = match &c.failure {
                    None => TestCaseStatus::success(),
                    Some(f) => {
                        let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        st.set_message(f.message.clone());
                        st.set_description(format!("reproduce with: attnforge conformance {}\nshrunk case:\n{}", f.reproduce, f.case));
                        st
                    }
                };
                let mut tc = TestCase::new(format!("{}/{}", c.op, c.dtype), status);
                tc.set_classname(format!("conformance.{b}"));
                tc.set_time(std::time::Duration::from_secs_f64(c.seconds.max(0.0)));
                tc.set_system_out(format!("{} passed, {} unsupported", c.passed, c.unsupported));
                suite.add_test_case(tc);
            }
            report.add_test_suite(suite);
        }
        for k in &self.skipped {
            let mut suite = TestSuite::new(k.backend.as_str());
            let mut st = TestCaseStatus::skipped();
            st.set_message(k.reason.clone());
            let mut tc = TestCase::new("(all)", st);
            tc.set_classname(format!("conformance.{}", k.backend));
            suite.add_test_case(tc);
            report.add_test_suite(suite);
        }
        report.to_string().expect("a report serialises")
    }
}

/// What a run reports while it goes: drive a progress bar or print lines from it.
#[derive(Debug)]
pub enum Event<'a> {
    /// A cell starts; `cases` is how many random cases it draws (shrinking may add runs).
    CellStart {
        /// Backend name.
        backend: &'a str,
        /// Op and path (`attention/views`), or `errors`.
        cell: &'a str,
        /// Dtype.
        dtype: DType,
        /// Cases it will draw.
        cases: u32,
    },
    /// One case of the current cell finished (passed, unsupported or failed).
    Case,
    /// The cell finished; `line` is the one-line summary the CLI prints.
    CellDone {
        /// Its result.
        result: &'a CellResult,
        /// A one-line summary.
        line: &'a str,
    },
    /// A registered backend could not be created here.
    Skipped {
        /// Backend name.
        backend: &'a str,
        /// Why.
        reason: &'a str,
    },
}

/// The seed of one cell: the run's seed mixed with a hash (FNV-1a) of the cell's name and
/// dtype, so it depends on nothing else (not on which cells run before it).
fn cell_seed(seed: u64, cell: &str, dtype: DType) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cell.bytes().chain([b'|']).chain(dtype.name().bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

/// Reasons that differ only in their numbers are one reason.
fn reason_key(r: &str) -> String {
    r.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn runner(cfg: &Config, seed: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (seed.rotate_left(i as u32 * 8) & 0xff) as u8 ^ i as u8;
    }
    let pt = PtConfig { cases: cfg.cases, failure_persistence: None, max_shrink_iters: 200, ..PtConfig::default() };
    TestRunner::new_with_rng(pt, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// The `attnforge conformance` arguments that run one cell alone.
fn reproduce(backend: &str, cfg: &Config, op: Option<Op>, path: setup::Path, dtype: DType) -> String {
    let path = match path {
        setup::Path::Owned => "owned",
        setup::Path::Views => "views",
        setup::Path::Plan => "plan",
    };
    let op = op.map(|o| format!("--op {} --path {path}", o.name())).unwrap_or_else(|| "--op errors".into());
    let dims: Vec<String> = cfg.head_dims.iter().map(ToString::to_string).collect();
    let dims = if cfg.head_dims == GenConfig::new(dtype).head_dims { String::new() } else { format!(" --head-dims {}", dims.join(",")) };
    format!("--backend {backend} --seed {} --cases {} --dtype {} {op}{dims}", cfg.seed, cfg.cases, dtype.name())
}

#[allow(clippy::too_many_arguments)]
fn run_cell(be: &Backend, rf: &Backend, cfg: &Config, op: Option<Op>, path: setup::Path, dtype: DType, events: &dyn Fn(Event)) -> CellResult {
    let passed = Cell::new(0u32);
    let unsupported = Cell::new(0u32);
    let failed_once = Cell::new(false);
    let reasons = RefCell::new(Vec::<(String, String, u32)>::new());
    let gen = GenConfig { head_dims: cfg.head_dims.clone(), ..GenConfig::new(dtype) };
    let name = op.map(|o| format!("{}{}", o.name(), path.suffix())).unwrap_or_else(|| "errors".into());
    let mut r = runner(cfg, cell_seed(cfg.seed, &name, dtype));
    let repro = reproduce(be.name(), cfg, op, path, dtype);
    let shrunk = |r: Result<(), TestError<case::Case>>| match r {
        Ok(()) => None,
        Err(TestError::Fail(msg, case)) => Some(Failure { message: msg.to_string(), case: format!("{case:#?}"), seed: cfg.seed, reproduce: repro.clone() }),
        Err(TestError::Abort(msg)) => Some(Failure { message: format!("aborted: {msg}"), case: String::new(), seed: cfg.seed, reproduce: repro.clone() }),
    };
    events(Event::CellStart { backend: be.name(), cell: &name, dtype, cases: cfg.cases });
    let t0 = std::time::Instant::now();
    let failure = match op {
        Some(op) => r.run(&cases(gen), |case| {
            let out = ops::check(op, path, be, rf, &case);
            if !failed_once.get() {
                events(Event::Case);
            }
            match out {
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
                            let key = reason_key(&w);
                            match rs.iter_mut().find(|(k, _, _)| *k == key) {
                                Some(e) => e.2 += 1,
                                None => rs.push((key, w, 1)),
                            }
                        }
                    }
                    Ok(())
                }
                Outcome::Fail(msg) => {
                    failed_once.set(true);
                    Err(TestCaseError::fail(msg))
                }
            }
        }),
        // Every corruption kind on every drawn case: each kind is compared with the reference
        // in every run, whatever the case count.
        None => r.run(&cases(gen), |case| {
            let out = invalid::check_all(be, rf, &case);
            if !failed_once.get() {
                events(Event::Case);
            }
            match out {
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
            }
        }),
    };
    let failure = shrunk(failure);
    let result = CellResult {
        backend: be.name().to_string(),
        op: name,
        dtype,
        passed: passed.get(),
        unsupported: unsupported.get(),
        failure,
        unsupported_reasons: reasons.into_inner().into_iter().map(|(_, w, n)| (w, n)).collect(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let line = format!(
        "{:<28} {:<16} {:<5} {:>4} passed {:>4} unsupported {}",
        result.backend,
        result.op,
        dtype.name(),
        result.passed,
        result.unsupported,
        if result.failure.is_some() { "FAILED" } else { "ok" }
    );
    events(Event::CellDone { result: &result, line: &line });
    result
}

/// References every backend crate this build links, so their registrations survive linking.
pub fn link_backends() {
    attnforge_cpu::link();
    #[cfg(feature = "hip")]
    attnforge_hip::link();
}

/// Runs the whole suite on one backend against the CPU reference.
pub fn check_backend(backend: &Backend, config: &Config) -> Report {
    check_backend_observed(backend, config, &|_| {})
}

/// [`check_backend`] for a bare trait object (e.g. a backend you have not registered).
pub fn check_backend_dyn(backend: std::sync::Arc<dyn AttentionBackend>, config: &Config) -> Report {
    check_backend(&Backend::new(backend), config)
}

/// [`check_backend`], reporting each finished cell's summary line through `progress`.
pub fn check_backend_with(backend: &Backend, config: &Config, progress: &dyn Fn(&str)) -> Report {
    check_backend_observed(backend, config, &|e| lines(e, progress))
}

fn lines(e: Event, progress: &dyn Fn(&str)) {
    match e {
        Event::CellDone { line, .. } => progress(line),
        Event::Skipped { backend, reason } => progress(&format!("{backend:<28} skipped: {reason}")),
        _ => {}
    }
}

/// [`check_backend`], reporting every [`Event`] (cell starts, each case, cell results).
pub fn check_backend_observed(backend: &Backend, config: &Config, events: &dyn Fn(Event)) -> Report {
    let rf = CpuBackend::handle();
    let mut report = Report { seed: config.seed, cases: config.cases, ..Report::default() };
    for &dtype in &config.dtypes {
        for &op in &config.ops {
            for &path in config.paths.iter().filter(|p| p.runs(op)) {
                report.cells.push(run_cell(backend, &rf, config, Some(op), path, dtype, events));
            }
        }
        if config.errors {
            report.cells.push(run_cell(backend, &rf, config, None, setup::Path::Owned, dtype, events));
        }
    }
    report
}

/// Runs the suite on every registered backend (or only `only`), skipping, visibly, those that
/// cannot be created here. The reference itself is included: against the golden f64 results it
/// checks the generators and the tolerance model.
pub fn check_registered(config: &Config, only: Option<&str>, progress: &dyn Fn(&str)) -> Report {
    check_registered_observed(config, only, &|e| lines(e, progress))
}

/// [`check_registered`], reporting every [`Event`].
pub fn check_registered_observed(config: &Config, only: Option<&str>, events: &dyn Fn(Event)) -> Report {
    link_backends();
    let mut report = Report { seed: config.seed, cases: config.cases, ..Report::default() };
    for info in registry::list() {
        if only.is_some_and(|n| n != info.name) {
            continue;
        }
        match registry::get(&info.name) {
            Ok(be) => {
                let r = check_backend_observed(&be, config, events);
                report.cells.extend(r.cells);
            }
            Err(e) => {
                let reason = e.to_string();
                events(Event::Skipped { backend: &info.name, reason: &reason });
                report.skipped.push(Skipped { backend: info.name.clone(), reason });
            }
        }
    }
    report
}
