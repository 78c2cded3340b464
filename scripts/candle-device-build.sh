#!/usr/bin/env bash
# Builds examples/candle for a GPU machine that has no Rust, on a machine without CUDA
# libraries (this one): candle-core links cudarc with `dynamic-linking`, so the link needs
# libcuda, libcublas, libcurand, libnvrtc; empty stubs with the real libraries' sonames stand
# in for them here (generated from cudarc's own bindings), and the real ones are loaded on the
# GPU machine. Our kernels are built for sm_90 only (CUDA_ARCHS overrides).
#
#   bash scripts/candle-device-build.sh          # -> target/candle-bin/attnforge-candle-example.xz
# then, on the GPU machine (carry target/candle-bin):
#   xz -d target/candle-bin/*.xz && target/candle-bin/attnforge-candle-example
#   (with LD_LIBRARY_PATH holding libcublas.so.13 / libcurand.so.10 if they are not in the
#   loader's path, e.g. PyTorch's site-packages/nvidia/cu13/lib)
set -euo pipefail
cd "$(dirname "$0")/.."
cuda_root="$PWD/.toolchain/cuda-venv/lib/python3.11/site-packages/nvidia/cu13"
[ -x "$cuda_root/bin/nvcc" ] || bash scripts/install-toolchains.sh
stubs="$PWD/target/cuda-stubs"
mkdir -p "$stubs"
cudarc=$(cargo metadata --format-version 1 --manifest-path examples/candle/Cargo.toml | python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(os.path.dirname(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc")))')
python3 - "$cudarc" "$stubs" <<'PY'
import os, re, subprocess, sys
src, out = sys.argv[1], sys.argv[2]
libs = {"cuda": ("driver", "libcuda.so.1"), "nvrtc": ("nvrtc", "libnvrtc.so.13"), "cublas": ("cublas", "libcublas.so.13"),
        "cublasLt": ("cublaslt", "libcublasLt.so.13"), "curand": ("curand", "libcurand.so.10")}
for lib, (mod, soname) in libs.items():
    text = open(os.path.join(src, "src", mod, "sys", "mod.rs")).read()
    names = sorted({n for n in re.findall(r"\bfn\s+([A-Za-z_]\w*)\s*\(", text) if re.match(r"(cu|nvrtc)", n)})
    c = os.path.join(out, lib + ".c")
    open(c, "w").write("".join(f"void {n}(void) {{}}\n" for n in names))
    subprocess.check_call(["gcc", "-shared", "-fPIC", "-o", os.path.join(out, f"lib{lib}.so"), c, f"-Wl,-soname,{soname}"])
PY
ln -sf "$cuda_root/lib/libcudart.so.13" "$stubs/libcudart.so"
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} ATTNFORGE_CUDA_ARCHS=${CUDA_ARCHS:-90} ATTNFORGE_AMD_ARCHS=none \
  RUSTFLAGS="-L $stubs" PATH="$cuda_root/bin:$PATH" CUDA_PATH="$cuda_root" CUDA_HOME="$cuda_root" \
  cargo build --release --manifest-path examples/candle/Cargo.toml --target-dir target/candle
rm -rf target/candle-bin && mkdir -p target/candle-bin
cp target/candle/release/attnforge-candle-example target/candle-bin/
xz -T0 -6 target/candle-bin/attnforge-candle-example
ls -la target/candle-bin
