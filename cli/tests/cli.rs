//! The `attnforge` binary as a user or a CI job runs it: exit codes, `--require` on a runner
//! where a backend cannot start, the machine-readable reports, `list`, and `bench`'s JSON and
//! plots (from recorded rows: no GPU here).

use std::process::Command;

fn attnforge(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attnforge")).args(args).output().expect("run the attnforge binary");
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn conformance(args: &[&str]) -> (i32, String) {
    attnforge(&[&["conformance", "--no-progress"][..], args].concat())
}

const ONE_ROPE_CASE: [&str; 7] = ["--cases", "1", "--op", "rope", "--dtype", "f32", "--no-errors"];

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("attnforge-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn a_required_backend_that_cannot_start_fails_the_run_with_its_reason() {
    attnforge_conformance::link_backends();
    let with = |extra: &[&str]| conformance(&[&["--backend", "hip-flash"], extra, &ONE_ROPE_CASE].concat());
    match attnforge_api::registry::get("hip-flash") {
        Err(e) => {
            let (code, text) = with(&[]);
            assert_eq!(code, 0, "skipped without --require: {text}");
            assert!(text.contains("skipped"), "{text}");
            for flag in [&["--require", "hip-flash"][..], &["--fail-on-skip"][..]] {
                let (code, text) = with(flag);
                assert_eq!(code, 1, "{flag:?}: {text}");
                assert!(text.contains("required backend hip-flash did not run") && text.contains(&e.to_string()), "{flag:?}: {text}");
            }
            // The acceptance's own line: no --backend, only --require.
            let (code, text) = conformance(&[&["--require", "hip-flash"][..], &ONE_ROPE_CASE].concat());
            assert_eq!(code, 1, "{text}");
            assert!(text.contains(&e.to_string()), "{text}");
        }
        Ok(_) => {
            let (code, text) = with(&["--require", "hip-flash", "--fail-on-skip"]);
            assert_eq!(code, 0, "hip-flash starts here: {text}");
        }
    }
}

#[test]
fn a_backend_that_runs_satisfies_require() {
    let (code, text) = conformance(&[&["--backend", "cpu", "--require", "cpu", "--fail-on-skip"][..], &ONE_ROPE_CASE].concat());
    assert_eq!(code, 0, "{text}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["conformance", "--require", "no-such-backend", "--cases", "1"][..],
        &["conformance", "--backend", "cpu", "--require", "hip-flash", "--cases", "1"],
        &["conformance", "--no-such-flag"],
        &["conformance", "--op", "no-such-op"],
        &["conformance", "--dtype", "f64"],
        &["bench", "--quick", "--no-such-flag"],
        &["no-such-command"],
    ] {
        let (code, text) = attnforge(args);
        assert_eq!(code, 2, "{args:?}: {text}");
    }
}

#[test]
fn the_cli_writes_json_and_junit_reports_that_parse() {
    let (json, junit, md) = (tmp("c.json"), tmp("c.xml"), tmp("c.md"));
    let (code, text) = conformance(&[
        "--backend", "cpu", "--cases", "2", "--dtype", "bf16", "--op", "attention", "--json", json.to_str().unwrap(), "--junit", junit.to_str().unwrap(), "--report", md.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3, "attention on three paths: {v}");
    assert!(cells.iter().all(|c| c["backend"] == "cpu" && c["dtype"] == "bf16" && c["passed"] == 2 && c["failure"].is_null()), "{v}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), 3);
    assert!(cases.iter().all(|c| c.attribute("classname") == Some("conformance.cpu") && c.children().all(|n| !n.has_tag_name("failure"))));
    assert!(std::fs::read_to_string(&md).unwrap().contains("| cpu | attention/plan | bf16 | 2 | 0 | 0 |"));
}

#[test]
fn list_names_every_backend_and_why_one_is_unavailable() {
    let (code, text) = attnforge(&["list", "--json"]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = v["backends"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    for n in ["cpu", "hip-flash", "hip-hybrid", "hip-fused", "hip-separate"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    for b in v["backends"].as_array().unwrap() {
        assert!(b["available"] == true || b["reason"].as_str().is_some_and(|r| !r.is_empty()), "{b}");
    }
    let (code, text) = attnforge(&["list"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cpu") && text.contains("hip-flash"), "{text}");
    let (code, text) = attnforge(&["info"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("NVIDIA kernels:") && text.contains("selected for"), "{text}");
}

#[test]
fn bench_without_a_gpu_says_why_and_fails() {
    attnforge_conformance::link_backends();
    if attnforge_api::registry::get("hip-flash").is_ok() {
        return; // a GPU here: the benchmark would run
    }
    let (code, text) = attnforge(&["bench", "--quick"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no GPU backend here"), "{text}");
}

/// `bench --from` re-reads recorded rows (the NaN of a host-time row was written as null),
/// writes them back as valid JSON and draws the plots next to PyTorch's rows.
#[test]
fn bench_writes_valid_json_and_an_svg_plot_per_table() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (json, dir) = (tmp("bench.json"), tmp("plots"));
    let (code, text) = attnforge(&[
        "bench",
        "--from",
        fixtures.join("decode-graph.json").to_str().unwrap(),
        "--torch",
        fixtures.join("decode-graph-torch.json").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--plots",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["bytes"].is_null()), "the host-time rows have no byte count: null, not NaN");
    for name in ["decode-graph-time.svg", "decode-graph-bandwidth.svg"] {
        let svg = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc = roxmltree::Document::parse(&svg).expect("valid SVG");
        let texts: String = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect::<Vec<_>>().join("|");
        for want in ["B=1 L=8192", "B=16 L=8192", "graph replay", "torch sdpa cudnn CUDA graph"] {
            assert!(texts.contains(want), "{name} names {want}: {texts}");
        }
        let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert!(bars >= 16, "{name}: a bar per series and shape, found {bars} rects");
    }
}
