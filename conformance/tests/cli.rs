//! The CLI on a runner where a backend cannot start: `--require NAME` and `--fail-on-skip` fail
//! the run with the reason (a GPU runner with a broken driver must not pass green); without
//! them the backend is listed as skipped and the run passes.

use std::process::Command;

fn conformance(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_conformance")).args(args).output().expect("run the conformance binary");
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const ONE_ROPE_CASE: [&str; 7] = ["--cases", "1", "--op", "rope", "--dtype", "f32", "--no-errors"];

#[test]
fn a_required_backend_that_cannot_start_fails_the_run_with_its_reason() {
    conformance::link_backends();
    let with = |extra: &[&str]| conformance(&[&["--backend", "hip-flash"], extra, &ONE_ROPE_CASE].concat());
    match backend_api::registry::get("hip-flash") {
        Err(e) => {
            let (code, text) = with(&[]);
            assert_eq!(code, 0, "skipped without --require: {text}");
            assert!(text.contains("skipped"), "{text}");
            for flag in [&["--require", "hip-flash"][..], &["--fail-on-skip"][..]] {
                let (code, text) = with(flag);
                assert_eq!(code, 1, "{flag:?}: {text}");
                assert!(text.contains("required backend hip-flash did not run") && text.contains(&e.to_string()), "{flag:?}: {text}");
            }
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
fn requiring_an_unknown_backend_or_one_the_filter_excludes_is_a_usage_error() {
    let (code, text) = conformance(&[&["--require", "no-such-backend"][..], &ONE_ROPE_CASE].concat());
    assert_eq!(code, 2, "{text}");
    let (code, text) = conformance(&[&["--backend", "cpu", "--require", "hip-flash"][..], &ONE_ROPE_CASE].concat());
    assert_eq!(code, 2, "{text}");
}
