//! The machine-readable reports: the JSON and the JUnit XML of a run with a failing cell, a
//! passing cell and a skipped backend are parsed back and must say the same as the report; a
//! failure's reproduction line must give the same shrunk case when run alone.

use attnforge_api::{DType, Op};
use attnforge_conformance::mutants::{Bug, Mutant};
use attnforge_conformance::setup::Path;
use attnforge_conformance::{check_backend, Config, Report, Skipped};

fn mutant_report() -> Report {
    // Two ops, two dtypes: the causal mutant fails attention, passes rope.
    let cfg = Config { cases: 24, dtypes: vec![DType::F32, DType::BF16], ops: vec![Op::Rope, Op::Attention], errors: false, head_dims: vec![32, 64], paths: vec![Path::Owned], ..Config::default() };
    let mut r = check_backend(&Mutant::handle(Bug::CausalOffByOne), &cfg);
    r.skipped.push(Skipped { backend: "hip-flash".into(), reason: "no CUDA driver here".into() });
    r
}

#[test]
fn the_json_report_parses_and_says_what_the_report_says() {
    let r = mutant_report();
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(v["seed"], r.seed);
    assert_eq!(v["cases"], r.cases);
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), r.cells.len());
    for (c, j) in r.cells.iter().zip(cells) {
        assert_eq!(j["backend"], c.backend.as_str());
        assert_eq!(j["op"], c.op.as_str());
        assert_eq!(j["dtype"], c.dtype.name());
        assert_eq!(j["passed"], c.passed);
        assert_eq!(j["failure"].is_null(), c.failure.is_none());
        if let Some(f) = &c.failure {
            assert_eq!(j["failure"]["reproduce"], f.reproduce.as_str());
            assert!(j["failure"]["message"].as_str().unwrap().len() > 5);
        }
    }
    assert!(cells.iter().any(|c| !c["failure"].is_null()) && cells.iter().any(|c| c["failure"].is_null()));
    assert_eq!(v["skipped"][0]["backend"], "hip-flash");
    assert_eq!(v["skipped"][0]["reason"], "no CUDA driver here");
}

#[test]
fn the_junit_report_parses_and_says_what_the_report_says() {
    let r = mutant_report();
    let xml = r.to_junit();
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let failed = r.cells.iter().filter(|c| c.failure.is_some()).count();
    assert!(failed > 0);
    assert_eq!(root.attribute("tests").unwrap().parse::<usize>().unwrap(), r.cells.len() + 1);
    assert_eq!(root.attribute("failures").unwrap().parse::<usize>().unwrap(), failed);
    let cases: Vec<_> = root.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), r.cells.len() + 1);
    for c in &r.cells {
        let name = format!("{}/{}", c.op, c.dtype);
        let tc = cases.iter().find(|n| n.attribute("name") == Some(name.as_str()) && n.attribute("classname") == Some("conformance.mutant-causal-off-by-one")).unwrap_or_else(|| panic!("{name}"));
        let failure = tc.children().find(|n| n.has_tag_name("failure"));
        assert_eq!(failure.is_some(), c.failure.is_some(), "{name}");
        if let (Some(n), Some(f)) = (failure, &c.failure) {
            assert_eq!(n.attribute("message"), Some(f.message.as_str()));
            assert!(n.text().unwrap_or("").contains(&f.reproduce), "{name}: the reproduction line is in the failure");
        }
    }
    let skipped = cases.iter().find(|n| n.attribute("classname") == Some("conformance.hip-flash")).unwrap();
    assert_eq!(skipped.children().find(|n| n.has_tag_name("skipped")).unwrap().attribute("message"), Some("no CUDA driver here"));
}

/// A cell's cases depend on the seed and the cell alone: the failing cell of a run over two
/// ops and two dtypes, run by itself (as its reproduction line says), fails on the same case.
#[test]
fn a_failure_reproduces_alone_whatever_filters_the_run_had() {
    let r = mutant_report();
    let (cell, f) = r.cells.iter().find_map(|c| c.failure.as_ref().map(|f| (c, f))).unwrap();
    assert!(f.reproduce.contains(&format!("--dtype {}", cell.dtype.name())) && f.reproduce.contains("--op attention --path owned"), "{}", f.reproduce);
    let alone = Config { cases: 24, dtypes: vec![cell.dtype], ops: vec![Op::Attention], errors: false, head_dims: vec![32, 64], paths: vec![Path::Owned], ..Config::default() };
    let again = check_backend(&Mutant::handle(Bug::CausalOffByOne), &alone);
    let g = again.cells[0].failure.as_ref().expect("fails alone too");
    assert_eq!(g.case, f.case, "same shrunk case");
    assert_eq!(g.reproduce, f.reproduce);
}
