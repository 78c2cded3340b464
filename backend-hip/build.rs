//! Compiles every `kernels/*.hip` ahead of time and embeds the code objects:
//! - NVIDIA: `nvcc -x cu` (HIP dialect through our vendor header) to a fatbin with sm_80 and
//!   sm_90 machine code plus compute_90 PTX (`ATTNFORGE_CUDA_ARCHS` overrides, e.g. "80 90");
//! - AMD: `hipcc --genco` with HIP_PLATFORM=amd for gfx90a and gfx1030 (`ATTNFORGE_AMD_ARCHS`).
//! Compilers come from ATTNFORGE_NVCC / ATTNFORGE_HIPCC, then the project's own toolchain folder
//! (`scripts/install-toolchains.sh` puts nvcc in .toolchain/), then PATH. A missing compiler is
//! one cargo warning and a reason the backend reports at run time; a kernel that fails to
//! compile fails the build.
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ATTNFORGE_NVCC") {
        return Some(PathBuf::from(p));
    }
    let venv = root.join(".toolchain/cuda-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/local/cuda/bin"]) {
        let p = Path::new(dir).join("nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

fn find_hipcc() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ATTNFORGE_HIPCC") {
        return Some(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/opt/rocm/bin", "/usr/bin"]) {
        let p = Path::new(dir).join("hipcc");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("attnforge: could not run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "attnforge: {what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let kdir = root.join("kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for v in ["ATTNFORGE_NVCC", "ATTNFORGE_HIPCC", "ATTNFORGE_CUDA_ARCHS", "ATTNFORGE_AMD_ARCHS", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed={}", root.join(".toolchain").display());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .expect("kernels/ folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hip"))
        .collect();
    sources.sort();
    println!("cargo:rerun-if-changed={}", kdir.display());
    for e in std::fs::read_dir(kdir.join("include")).expect("kernels/include").flatten() {
        println!("cargo:rerun-if-changed={}", e.path().display());
    }
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let cuda_archs = std::env::var("ATTNFORGE_CUDA_ARCHS").unwrap_or_else(|_| "80 90".into());
    let amd_archs = std::env::var("ATTNFORGE_AMD_ARCHS").unwrap_or_else(|_| "gfx90a gfx1030".into());
    // "none" skips a vendor (development builds that need only one).
    let nvcc = if cuda_archs.trim() == "none" { None } else { find_nvcc(&root) };
    let hipcc = if amd_archs.trim() == "none" { None } else { find_hipcc() };

    // Compile every (vendor, source) pair in parallel: the machine has few cores and nvcc is slow.
    let mut jobs = Vec::new();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        if let Some(nvcc) = &nvcc {
            let (nvcc, src, out, kdir, archs, stem) = (nvcc.clone(), src.clone(), out.clone(), kdir.clone(), cuda_archs.clone(), stem.clone());
            jobs.push(std::thread::spawn(move || {
                let mut c = Command::new(&nvcc);
                c.args(["-x", "cu", "-std=c++17", "-O3", "--fatbin", "-Xptxas", "-warn-spills"]).arg("-I").arg(&kdir);
                let mut last = String::new();
                for a in archs.split_whitespace() {
                    c.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
                    last = a.to_string();
                }
                c.arg(format!("-gencode=arch=compute_{last},code=compute_{last}"));
                c.arg(&src).arg("-o").arg(out.join(format!("{stem}.fatbin")));
                run(c, &format!("nvcc on {}", src.display()));
            }));
        }
        if let Some(hipcc) = &hipcc {
            let (hipcc, src, out, kdir, archs, stem) = (hipcc.clone(), src.clone(), out.clone(), kdir.clone(), amd_archs.clone(), stem);
            jobs.push(std::thread::spawn(move || {
                let mut c = Command::new(&hipcc);
                // hipcc picks the NVIDIA path when nvcc is on PATH: force AMD.
                c.env("HIP_PLATFORM", "amd").args(["--genco", "-O3", "-std=c++17"]).arg("-I").arg(&kdir);
                for a in archs.split_whitespace() {
                    c.arg(format!("--offload-arch={a}"));
                }
                c.arg(&src).arg("-o").arg(out.join(format!("{stem}.hsaco")));
                run(c, &format!("hipcc on {}", src.display()));
            }));
        }
    }
    for j in jobs {
        if let Err(e) = j.join() {
            std::panic::resume_unwind(e);
        }
    }

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
    let why = |name: &str, found: bool| {
        if found { String::new() } else { format!("built without {name}: run scripts/install-toolchains.sh (or set ATTNFORGE_{}) and rebuild", name.to_uppercase()) }
    };
    if nvcc.is_none() {
        println!("cargo:warning=attnforge: nvcc not found; hip-* backends will report themselves unavailable on NVIDIA (run scripts/install-toolchains.sh)");
    }
    if hipcc.is_none() {
        println!("cargo:warning=attnforge: hipcc not found; AMD code objects are not built (run scripts/install-toolchains.sh amd)");
    }
    let gen = format!(
        "/// NVIDIA fatbins (module name, bytes), or None when nvcc was missing.\n\
         pub const NVIDIA: Option<&[(&str, &[u8])]> = {};\n\
         /// Why NVIDIA code is missing (empty when present).\n\
         pub const NVIDIA_MISSING: &str = {:?};\n\
         /// NVIDIA architectures compiled.\npub const CUDA_ARCHS: &str = {:?};\n\
         /// AMD code objects (module name, bytes), or None when hipcc was missing.\n\
         pub const AMD: Option<&[(&str, &[u8])]> = {};\n\
         /// Why AMD code is missing (empty when present).\n\
         pub const AMD_MISSING: &str = {:?};\n\
         /// AMD architectures compiled.\npub const AMD_ARCHS: &str = {:?};\n",
        embed("fatbin", nvcc.is_some()),
        why("nvcc", nvcc.is_some()),
        cuda_archs,
        embed("hsaco", hipcc.is_some()),
        why("hipcc", hipcc.is_some()),
        amd_archs
    );
    std::fs::write(out.join("kernels.rs"), gen).unwrap();
}
