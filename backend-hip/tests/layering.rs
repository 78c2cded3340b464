//! backend-hip's layering, checked on the source: no module imports one above it. From the
//! bottom: the generated contract, the runtime (drivers, staging), the typed launchers, storage,
//! the plan, the strategy steps, the trait implementation (lib.rs).

use std::path::Path;

/// (files under src/, crate paths they must not import).
const RULES: &[(&str, &[&str])] = &[
    ("contract.rs", &["crate::runtime", "crate::plan", "crate::step", "crate::storage", "crate::HipBackend"]),
    ("runtime", &["crate::plan", "crate::step", "crate::storage", "crate::HipBackend", "crate::bench"]),
    ("runtime/launch", &["crate::plan", "crate::step", "crate::storage", "crate::HipBackend"]),
    ("storage.rs", &["crate::plan", "crate::step", "crate::HipBackend"]),
    ("plan.rs", &["crate::step", "crate::storage", "crate::HipBackend"]),
    ("step", &["crate::HipBackend", "crate::bench"]),
];

fn sources(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            sources(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (under, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(under), &mut files);
        assert!(!files.is_empty(), "no sources under src/{under}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for p in *forbidden {
                    if line.contains(p) {
                        bad.push(format!("{}: {}", f.strip_prefix(&src).unwrap().display(), line.trim()));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layering:\n{}", bad.join("\n"));
}
