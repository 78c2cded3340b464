//! 1. Reads the kernel contract (`kernels/include/af_contract.h`: parameter structs, shared
//!    limits, instantiation lists) and generates its Rust side (`OUT_DIR/contract.rs`) plus
//!    `OUT_DIR/af_layout.h`, the layout the kernels static_assert against (both sides are checked
//!    against the sizes and offsets computed here from the C layout rules).
//! 2. Compiles every `kernels/*.hip` ahead of time and embeds the code objects:
//!    - NVIDIA: `nvcc -x cu` (HIP dialect through our vendor header) to a fatbin with sm_80 and
//!      sm_90 machine code plus compute_90 PTX (`ATTNFORGE_CUDA_ARCHS` overrides, e.g. "80 90";
//!      the modules of `ARCH_SPECIFIC` take sm_90a for 90);
//!      ptxas' report (`-Xptxas -v`: entry points, registers, spills, shared memory) is kept in
//!      `OUT_DIR/ptxas-<module>.txt`, and the entry points it names per architecture are embedded
//!      (`NVIDIA_ENTRIES`) so a test can check every kernel a plan can choose;
//!    - AMD, only when ROCm is wanted (the `rocm` feature, or `ATTNFORGE_AMD_ARCHS` set):
//!      `hipcc --genco` with HIP_PLATFORM=amd for gfx90a and gfx1030 (`ATTNFORGE_AMD_ARCHS`).
//!
//!    `none` as an arch list skips that vendor; `native` builds for this machine's GPUs
//!    (`nvidia-smi`, `rocm_agent_enumerator`). `ATTNFORGE_REQUIRE_KERNELS=1` fails the build
//!    when a wanted vendor's compiler is missing. nvcc comes from ATTNFORGE_NVCC, then CUDA_HOME /
//!    CUDA_PATH / CUDA_ROOT (`bin/nvcc`), then PATH, then the project's own toolchain folder
//!    (`scripts/install-toolchains.sh` puts nvcc in .toolchain/), then /usr/local/cuda; hipcc
//!    from ATTNFORGE_HIPCC, then ROCM_PATH / HIP_PATH, then PATH, then /opt/rocm and /usr/bin. PATH is
//!    watched only when it chose a compiler or a wanted one is missing, so other PATH changes
//!    recompile nothing. A missing compiler is one cargo warning and a reason the backend
//!    reports at run time; a kernel that fails to compile fails the build.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

// ------------------------------------------------------------------ the contract

struct Field {
    ty: String,
    name: String,
    doc: String,
}

struct Struct {
    name: String,
    doc: String,
    fields: Vec<Field>,
}

enum Limit {
    One(i64),
    Vendor(i64, i64),
}

#[derive(Default)]
struct Contract {
    limits: Vec<(String, Limit, String)>,
    structs: Vec<Struct>,
    lists: Vec<(String, Vec<Vec<i64>>, String)>,
}

/// `NAME(a, b, c) // doc` -> (["a", "b", "c"], "doc").
fn call_args(rest: &str) -> (Vec<String>, String) {
    let open = rest.find('(').expect("contract: '(' expected");
    let close = rest.find(')').expect("contract: ')' expected");
    let args = rest[open + 1..close].split(',').map(|a| a.trim().to_string()).collect();
    let doc = rest[close + 1..].split_once("//").map(|(_, d)| d.trim().to_string()).unwrap_or_default();
    (args, doc)
}

fn parse_contract(text: &str) -> Contract {
    let mut c = Contract::default();
    let mut open: Option<Struct> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = |what: &str| format!("af_contract.h:{}: {what}: {line}", n + 1);
        if line.starts_with("#define AF_LIMIT") || line.starts_with("#define AF_STRUCT") || line.starts_with("#define AF_FIELD") || line.starts_with("#define AF_END") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("AF_LIMIT_VENDOR") {
            let (a, doc) = call_args(rest);
            assert_eq!(a.len(), 3, "{}", at("AF_LIMIT_VENDOR(NAME, nvidia, amd)"));
            c.limits.push((a[0].clone(), Limit::Vendor(a[1].parse().unwrap_or_else(|_| panic!("{}", at("integer"))), a[2].parse().unwrap_or_else(|_| panic!("{}", at("integer")))), doc));
        } else if let Some(rest) = line.strip_prefix("AF_LIMIT") {
            let (a, doc) = call_args(rest);
            assert_eq!(a.len(), 2, "{}", at("AF_LIMIT(NAME, value)"));
            c.limits.push((a[0].clone(), Limit::One(a[1].parse().unwrap_or_else(|_| panic!("{}", at("integer")))), doc));
        } else if let Some(rest) = line.strip_prefix("AF_STRUCT") {
            assert!(open.is_none(), "{}", at("AF_STRUCT inside a struct"));
            let (a, doc) = call_args(rest);
            open = Some(Struct { name: a[0].clone(), doc, fields: Vec::new() });
        } else if let Some(rest) = line.strip_prefix("AF_FIELD") {
            let (a, doc) = call_args(rest);
            assert_eq!(a.len(), 2, "{}", at("AF_FIELD(type, name)"));
            open.as_mut().unwrap_or_else(|| panic!("{}", at("AF_FIELD outside a struct"))).fields.push(Field { ty: a[0].clone(), name: a[1].clone(), doc });
        } else if let Some(rest) = line.strip_prefix("AF_END") {
            let (a, _) = call_args(rest);
            let s = open.take().unwrap_or_else(|| panic!("{}", at("AF_END without AF_STRUCT")));
            assert_eq!(s.name, a[0], "{}", at("AF_END names another struct"));
            c.structs.push(s);
        } else if let Some(rest) = line.strip_prefix("#define AF_") {
            // An instantiation list: #define AF_NAME(X) X(a) X(b, c) ...  // doc
            let Some((head, body)) = rest.split_once("(X)") else { continue };
            let (body, doc) = body.split_once("//").map(|(b, d)| (b, d.trim().to_string())).unwrap_or((body, String::new()));
            let items: Vec<Vec<i64>> = body
                .split("X(")
                .skip(1)
                .map(|it| it.split(')').next().unwrap().split(',').map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{}", at("integer list item")))).collect())
                .collect();
            assert!(!items.is_empty(), "{}", at("empty list"));
            c.lists.push((head.to_string(), items, doc));
        }
    }
    assert!(open.is_none(), "af_contract.h: a struct is not closed");
    c
}

/// (size, align, rust type) of a field type.
fn field_type(c: &Contract, layouts: &BTreeMap<String, (usize, usize)>, ty: &str) -> (usize, usize, String) {
    match ty {
        "af_ptr" => (8, 8, "u64".into()),
        "af_i64" => (8, 8, "i64".into()),
        "int" => (4, 4, "i32".into()),
        "float" => (4, 4, "f32".into()),
        "af_tmap" => (128, 64, "TensorMap".into()),
        s if c.structs.iter().any(|x| x.name == s) => {
            let (size, align) = layouts.get(s).unwrap_or_else(|| panic!("af_contract.h: struct {s} used before it is defined"));
            (*size, *align, s.to_string())
        }
        other => panic!("af_contract.h: field type {other} is not one of af_ptr, af_i64, int, float, af_tmap or an earlier struct"),
    }
}

fn generate_contract(c: &Contract) -> (String, String) {
    let mut rs = String::from("// Generated by backend-hip/build.rs from kernels/include/af_contract.h. Edit that file.\n\n");
    let mut h = String::from("// Generated by backend-hip/build.rs from af_contract.h: the layout both sides must have.\n#pragma once\n");
    for (name, limit, doc) in &c.limits {
        let _ = writeln!(rs, "/// {doc}");
        match limit {
            Limit::One(v) => {
                let _ = writeln!(rs, "pub const {name}: usize = {v};");
            }
            Limit::Vendor(nv, amd) => {
                let _ = writeln!(rs, "pub const {name}: Vendored = Vendored {{ nvidia: {nv}, amd: {amd} }};");
            }
        }
    }
    let mut layouts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut names = Vec::new();
    for s in &c.structs {
        let (mut off, mut align) = (0usize, 1usize);
        let _ = writeln!(rs, "\n/// {} (mirrors `{}` in af_contract.h)\n#[repr(C)]\n#[derive(Debug, Clone, Copy, Default, PartialEq)]\npub struct {} {{", s.doc, s.name, s.name);
        let mut asserts = String::new();
        for f in &s.fields {
            let (size, a, rty) = field_type(c, &layouts, &f.ty);
            assert!(off % a == 0, "af_contract.h: {}.{} would need {} bytes of implicit padding before it; add an explicit pad field", s.name, f.name, a - off % a);
            let _ = writeln!(rs, "    /// {}\n    pub {}: {},", if f.doc.is_empty() { "(padding)" } else { &f.doc }, f.name, rty);
            let _ = writeln!(asserts, "    assert!(std::mem::offset_of!({}, {}) == {off});", s.name, f.name);
            let _ = writeln!(h, "static_assert(__builtin_offsetof({}, {}) == {off}, \"{}.{}: offset differs from backend-hip's\");", s.name, f.name, s.name, f.name);
            off += size;
            align = align.max(a);
        }
        assert!(off % align == 0, "af_contract.h: {} would end in implicit padding; add an explicit pad field", s.name);
        let _ = writeln!(rs, "}}\nconst _: () = {{\n    assert!(std::mem::size_of::<{}>() == {off});\n    assert!(std::mem::align_of::<{}>() == {align});\n{asserts}}};", s.name, s.name);
        let _ = writeln!(h, "static_assert(sizeof({}) == {off} && alignof({}) == {align}, \"{}: size differs from backend-hip's\");", s.name, s.name, s.name);
        layouts.insert(s.name.clone(), (off, align));
        names.push(s.name.clone());
    }
    let _ = writeln!(rs, "\n/// Calls `$m!(Struct, ...)` with every parameter struct of the contract.\nmacro_rules! with_param_structs {{\n    ($m:ident) => {{ $m!({}); }};\n}}\npub(crate) use with_param_structs;", names.join(", "));
    for (name, items, doc) in &c.lists {
        let arity = items[0].len();
        assert!(items.iter().all(|i| i.len() == arity), "af_contract.h: AF_{name} mixes arities");
        let (ty, vals): (String, Vec<String>) = if arity == 1 {
            ("usize".into(), items.iter().map(|i| i[0].to_string()).collect())
        } else {
            (format!("({})", vec!["usize"; arity].join(", ")), items.iter().map(|i| format!("({})", i.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))).collect())
        };
        let _ = writeln!(rs, "\n/// {doc} (`AF_{name}`)\npub const {name}: &[{ty}] = &[{}];", vals.join(", "));
    }
    (rs, h)
}

// ------------------------------------------------------------------ compilers

/// (module, architecture) pairs compiled for the architecture-specific target (`sm_90a`): the
/// sm_90a prefill's warpgroup MMA and TMA exist only there. Other targets compile the module to
/// entry points that trap (never launched: the plan checks the device).
const ARCH_SPECIFIC: &[(&str, &str)] = &[("attention_wgmma", "90")];

/// A compiler and whether it was found through PATH (then a PATH change may change which one).
type Found = Option<(PathBuf, bool)>;

/// `name` in the first PATH folder that has it.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// `bin/name` under the first of the folders `vars` name (as cudarc reads CUDA_HOME and friends).
fn under_env(vars: &[&str], name: &str) -> Option<PathBuf> {
    vars.iter().filter_map(|v| std::env::var_os(v)).map(|d| PathBuf::from(d).join("bin").join(name)).find(|p| p.is_file())
}

/// nvcc: ATTNFORGE_NVCC, then CUDA_HOME / CUDA_PATH / CUDA_ROOT, then PATH (a user's CUDA
/// toolkit), then the project's toolchain folder (scripts/install-toolchains.sh), then
/// /usr/local/cuda.
fn find_nvcc(root: &Path) -> Found {
    if let Ok(p) = std::env::var("ATTNFORGE_NVCC") {
        return Some((PathBuf::from(p), false));
    }
    if let Some(p) = under_env(&["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"], "nvcc") {
        return Some((p, false));
    }
    if let Some(p) = on_path("nvcc") {
        return Some((p, true));
    }
    let venv = root.join(".toolchain/cuda-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if p.exists() {
                return Some((p, false));
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    p.is_file().then_some((p, false))
}

/// hipcc: ATTNFORGE_HIPCC, then ROCM_PATH / HIP_PATH, then PATH, then /opt/rocm and /usr/bin.
fn find_hipcc() -> Found {
    if let Ok(p) = std::env::var("ATTNFORGE_HIPCC") {
        return Some((PathBuf::from(p), false));
    }
    if let Some(p) = under_env(&["ROCM_PATH", "HIP_PATH"], "hipcc") {
        return Some((p, false));
    }
    if let Some(p) = on_path("hipcc") {
        return Some((p, true));
    }
    ["/opt/rocm/bin/hipcc", "/usr/bin/hipcc"].into_iter().map(PathBuf::from).find(|p| p.is_file()).map(|p| (p, false))
}

/// Runs the compiler; its stderr (ptxas' report) on success.
fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("attnforge: could not run {what}: {e}"));
    if !out.status.success() {
        panic!("attnforge: {what} failed ({}):\n{}\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Entry points per architecture from ptxas' report
/// (`Compiling entry function 'NAME' for 'sm_90'`).
fn ptxas_entries(report: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in report.lines() {
        let Some(rest) = line.split("Compiling entry function '").nth(1) else { continue };
        let Some((name, tail)) = rest.split_once('\'') else { continue };
        let Some(arch) = tail.split('\'').nth(1) else { continue };
        m.entry(arch.to_string()).or_default().insert(name.to_string());
    }
    m
}

fn rerun_on_dir(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rerun_on_dir(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

/// `ATTNFORGE_CUDA_ARCHS=native`: the compute capabilities of this machine's GPUs
/// (`nvidia-smi --query-gpu=compute_cap`, e.g. `9.0` -> `90`), each once.
fn native_cuda_archs() -> String {
    let out = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!("ATTNFORGE_CUDA_ARCHS=native: nvidia-smi failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => panic!("ATTNFORGE_CUDA_ARCHS=native: cannot run nvidia-smi ({e}); name the architectures instead, e.g. ATTNFORGE_CUDA_ARCHS=\"80 90\""),
    };
    let mut archs: Vec<String> = text.lines().map(|l| l.trim().replace('.', "")).filter(|a| !a.is_empty()).collect();
    archs.sort();
    archs.dedup();
    assert!(!archs.is_empty(), "ATTNFORGE_CUDA_ARCHS=native: nvidia-smi lists no GPU");
    println!("cargo:warning=attnforge: ATTNFORGE_CUDA_ARCHS=native: building for sm_{}", archs.join(", sm_"));
    archs.join(" ")
}

/// `ATTNFORGE_AMD_ARCHS=native`: the gfx targets of this machine's GPUs (ROCm's
/// `rocm_agent_enumerator`, the host's `gfx000` left out), each once.
fn native_amd_archs() -> String {
    let out = Command::new("rocm_agent_enumerator").output().or_else(|_| Command::new("/opt/rocm/bin/rocm_agent_enumerator").output());
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        _ => panic!("ATTNFORGE_AMD_ARCHS=native: rocm_agent_enumerator did not run; name the targets instead, e.g. ATTNFORGE_AMD_ARCHS=gfx90a"),
    };
    let mut archs: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|a| a.starts_with("gfx") && a != "gfx000").collect();
    archs.sort();
    archs.dedup();
    assert!(!archs.is_empty(), "ATTNFORGE_AMD_ARCHS=native: no AMD GPU found");
    archs.join(" ")
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let kdir = manifest.join("kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for v in ["ATTNFORGE_NVCC", "ATTNFORGE_HIPCC", "ATTNFORGE_CUDA_ARCHS", "ATTNFORGE_AMD_ARCHS", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "ROCM_PATH", "HIP_PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed={}", root.join(".toolchain").display());
    rerun_on_dir(&kdir);

    // 1. The contract.
    let contract_src = std::fs::read_to_string(kdir.join("include/af_contract.h")).expect("kernels/include/af_contract.h");
    let (rs, layout_h) = generate_contract(&parse_contract(&contract_src));
    std::fs::write(out.join("contract.rs"), rs).unwrap();
    std::fs::write(out.join("af_layout.h"), layout_h).unwrap();

    // 2. The kernels.
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .expect("kernels/ folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hip"))
        .collect();
    sources.sort();
    // NVIDIA: by default (the NVIDIA runtime is always built); `none` opts out. AMD: only when
    // ROCm is wanted: the `rocm` feature (the AMD runtime) or ATTNFORGE_AMD_ARCHS set.
    let rocm = std::env::var_os("CARGO_FEATURE_ROCM").is_some();
    let cuda_archs = std::env::var("ATTNFORGE_CUDA_ARCHS").unwrap_or_else(|_| "80 90".into());
    let amd_archs = std::env::var("ATTNFORGE_AMD_ARCHS").unwrap_or_else(|_| if rocm { "gfx90a gfx1030".into() } else { "none".into() });
    let cuda_archs = if cuda_archs.trim() == "native" { native_cuda_archs() } else { cuda_archs };
    let amd_archs = if amd_archs.trim() == "native" { native_amd_archs() } else { amd_archs };
    let nvcc = if cuda_archs.trim() == "none" { None } else { find_nvcc(&root) };
    let hipcc = if amd_archs.trim() == "none" { None } else { find_hipcc() };
    // PATH matters only where it chose a compiler or where a wanted one is missing (one may
    // appear on it): other PATH changes rebuild nothing. A compiler rebuilds the kernels when
    // it changes in place.
    let wanted_missing = (cuda_archs.trim() != "none" && nvcc.is_none()) || (amd_archs.trim() != "none" && hipcc.is_none());
    if wanted_missing || [&nvcc, &hipcc].into_iter().flatten().any(|(_, from_path)| *from_path) {
        println!("cargo:rerun-if-env-changed=PATH");
    }
    for (p, _) in [&nvcc, &hipcc].into_iter().flatten() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let (nvcc, hipcc) = (nvcc.map(|(p, _)| p), hipcc.map(|(p, _)| p));

    // Every (vendor, source) pair in parallel: the machine has few cores and nvcc is slow.
    let mut jobs: Vec<std::thread::JoinHandle<Option<(String, String)>>> = Vec::new();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        if let Some(nvcc) = &nvcc {
            let (nvcc, src, out, kdir, archs, stem) = (nvcc.clone(), src.clone(), out.clone(), kdir.clone(), cuda_archs.clone(), stem.clone());
            jobs.push(std::thread::spawn(move || {
                let mut c = Command::new(&nvcc);
                c.args(["-x", "cu", "-std=c++17", "-O3", "--fatbin", "-Xptxas", "-v,-warn-spills", "-DAF_LAYOUT_CHECK"]).arg("-I").arg(&kdir).arg("-I").arg(&out);
                let mut last = String::new();
                for a in archs.split_whitespace() {
                    // Modules on architecture-specific instructions take that target's `a`
                    // variant (sm_90a: wgmma, TMA); their PTX stays the portable one.
                    let t = if ARCH_SPECIFIC.contains(&(stem.as_str(), a)) { format!("{a}a") } else { a.to_string() };
                    c.arg(format!("-gencode=arch=compute_{t},code=sm_{t}"));
                    last = a.to_string();
                }
                c.arg(format!("-gencode=arch=compute_{last},code=compute_{last}"));
                c.arg(&src).arg("-o").arg(out.join(format!("{stem}.fatbin")));
                let report = run(c, &format!("nvcc on {}", src.display()));
                std::fs::write(out.join(format!("ptxas-{stem}.txt")), &report).unwrap();
                Some((stem, report))
            }));
        }
        if let Some(hipcc) = &hipcc {
            let (hipcc, src, out, kdir, archs, stem) = (hipcc.clone(), src.clone(), out.clone(), kdir.clone(), amd_archs.clone(), stem);
            jobs.push(std::thread::spawn(move || {
                let mut c = Command::new(&hipcc);
                // hipcc picks the NVIDIA path when nvcc is on PATH: force AMD.
                c.env("HIP_PLATFORM", "amd").args(["--genco", "-O3", "-std=c++17", "-DAF_LAYOUT_CHECK"]).arg("-I").arg(&kdir).arg("-I").arg(&out);
                for a in archs.split_whitespace() {
                    c.arg(format!("--offload-arch={a}"));
                }
                c.arg(&src).arg("-o").arg(out.join(format!("{stem}.hsaco")));
                run(c, &format!("hipcc on {}", src.display()));
                None
            }));
        }
    }
    let mut nvidia_entries: Vec<(String, BTreeMap<String, BTreeSet<String>>)> = Vec::new();
    for j in jobs {
        match j.join() {
            Ok(Some((stem, report))) => nvidia_entries.push((stem, ptxas_entries(&report))),
            Ok(None) => {}
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    nvidia_entries.sort_by(|a, b| a.0.cmp(&b.0));

    let embed = |ext: &str, present: bool| -> String {
        if !present {
            return "None".into();
        }
        let items: Vec<String> = sources
            .iter()
            .map(|s| {
                let stem = s.file_stem().unwrap().to_string_lossy();
                format!("(\"{stem}\", include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.{ext}\")) as &[u8])")
            })
            .collect();
        format!("Some(&[{}])", items.join(", "))
    };
    let why = |name: &str, found: bool, archs: &str| {
        if found {
            String::new()
        } else if archs.trim() == "none" && name == "hipcc" && !rocm {
            "built without AMD kernels (they are built with the `rocm` feature or ATTNFORGE_AMD_ARCHS set)".to_string()
        } else if archs.trim() == "none" {
            format!("built without {name} kernels (ATTNFORGE_{}_ARCHS=none)", if name == "nvcc" { "CUDA" } else { "AMD" })
        } else {
            format!("built without {name}: run scripts/install-toolchains.sh (or set ATTNFORGE_{}) and rebuild", name.to_uppercase())
        }
    };
    // CI's promise (`ATTNFORGE_REQUIRE_KERNELS=1`): every wanted vendor's kernels are built.
    // (Watched whatever its value: setting it after a build without it must run the check.)
    println!("cargo:rerun-if-env-changed=ATTNFORGE_REQUIRE_KERNELS");
    if std::env::var("ATTNFORGE_REQUIRE_KERNELS").as_deref() == Ok("1") {
        assert!(nvcc.is_some() || cuda_archs.trim() == "none", "ATTNFORGE_REQUIRE_KERNELS=1 but nvcc was not found (ATTNFORGE_NVCC, CUDA_HOME, PATH, .toolchain, /usr/local/cuda)");
        assert!(hipcc.is_some() || amd_archs.trim() == "none", "ATTNFORGE_REQUIRE_KERNELS=1 but hipcc was not found (ATTNFORGE_HIPCC, ROCM_PATH, PATH, /opt/rocm)");
    }
    if nvcc.is_none() && cuda_archs.trim() != "none" {
        println!("cargo:warning=attnforge: nvcc not found; hip-* backends will report themselves unavailable on NVIDIA (run scripts/install-toolchains.sh)");
    }
    if hipcc.is_none() && amd_archs.trim() != "none" {
        println!("cargo:warning=attnforge: hipcc not found; AMD code objects are not built (run scripts/install-toolchains.sh amd)");
    }
    let entries: Vec<String> = nvidia_entries
        .iter()
        .flat_map(|(stem, per_arch)| {
            per_arch.iter().map(move |(arch, names)| {
                format!("(\"{stem}\", \"{arch}\", &[{}])", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "))
            })
        })
        .collect();
    let gen = format!(
        "/// NVIDIA fatbins (module name, bytes), or None when nvcc was missing.\n\
         pub const NVIDIA: Option<&[(&str, &[u8])]> = {};\n\
         /// Why NVIDIA code is missing (empty when present).\n\
         pub const NVIDIA_MISSING: &str = {:?};\n\
         /// NVIDIA architectures compiled.\npub const CUDA_ARCHS: &str = {:?};\n\
         /// Entry points ptxas compiled, per (module, architecture).\n\
         pub const NVIDIA_ENTRIES: &[(&str, &str, &[&str])] = &[{}];\n\
         /// AMD code objects (module name, bytes), or None when hipcc was missing.\n\
         pub const AMD: Option<&[(&str, &[u8])]> = {};\n\
         /// Why AMD code is missing (empty when present).\n\
         pub const AMD_MISSING: &str = {:?};\n\
         /// AMD architectures compiled.\npub const AMD_ARCHS: &str = {:?};\n",
        embed("fatbin", nvcc.is_some()),
        why("nvcc", nvcc.is_some(), &cuda_archs),
        cuda_archs,
        entries.join(", "),
        embed("hsaco", hipcc.is_some()),
        why("hipcc", hipcc.is_some(), &amd_archs),
        amd_archs
    );
    std::fs::write(out.join("kernels.rs"), gen).unwrap();
}
