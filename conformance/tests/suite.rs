//! The suite on the CPU: the reference against the golden results (every op, dtype and error
//! kind), and every registered backend through the registry (GPU backends report themselves
//! skipped, with their reason, where there is no device).

use attnforge_api::DType;
use attnforge_conformance::{check_backend, check_registered, Config};
use serial_test::serial;

#[test]
#[serial]
fn reference_conforms_in_every_dtype() {
    let report = check_backend(&attnforge_cpu::CpuBackend::handle(), &Config { cases: 24, ..Config::default() });
    println!("{}", report.to_markdown());
    assert!(report.passed());
    for c in &report.cells {
        assert!(c.passed > 0, "{} {} {} ran no case", c.backend, c.op, c.dtype);
        assert_eq!(c.unsupported, 0);
    }
    // every dtype x (every op on every path that runs it + the error cell)
    let per_dtype: usize = attnforge_api::Op::ALL.iter().map(|&op| attnforge_conformance::setup::Path::ALL.iter().filter(|p| p.runs(op)).count()).sum();
    assert_eq!(report.cells.len(), DType::ALL.len() * (per_dtype + 1));
    assert_eq!(per_dtype, 18, "7 ops owned and views, 4 of them planned");
    assert!(report.cells.iter().any(|c| c.op == "attention/views"));
    assert!(report.cells.iter().any(|c| c.op == "step/plan"));
}

#[test]
#[serial]
fn registered_backends_conform_or_are_skipped_visibly() {
    let cfg = Config { cases: 8, dtypes: vec![DType::BF16], ..Config::default() };
    let report = check_registered(&cfg, None, &|l| println!("{l}"));
    println!("{}", report.to_markdown());
    assert!(report.passed());
    assert!(report.cells.iter().any(|c| c.backend == "cpu"));
    for k in &report.skipped {
        assert!(!k.reason.is_empty(), "{} skipped without a reason", k.backend);
    }
}

#[test]
fn every_corruption_kind_is_an_error_of_the_reference() {
    use attnforge_conformance::case::{cases, GenConfig};
    use attnforge_conformance::invalid::{check_all, Corruption};
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    assert!(Corruption::ALL.len() >= 25, "the issue asks for at least 25 kinds of invalid input");
    let cpu = attnforge_cpu::CpuBackend::handle();
    let mut runner = TestRunner::deterministic();
    for dtype in DType::ALL {
        for _ in 0..8 {
            let case = cases(GenConfig::new(dtype)).new_tree(&mut runner).unwrap().current();
            // Every kind but the foreign-device one (the reference against itself is one device).
            assert_eq!(check_all(&cpu, &cpu, &case), Ok(Corruption::ALL.len() - 1), "{case:?}");
        }
    }
}
