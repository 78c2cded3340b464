#!/usr/bin/env bash
# Installs the GPU kernel compilers attnforge's build.rs looks for, from package registries only.
#
#   scripts/install-toolchains.sh [nvidia] [amd]      (no argument: both)
#
# NVIDIA: nvcc 13.0 from PyPI into a venv at .toolchain/cuda-venv; build.rs finds it there
#         (or set ATTNFORGE_NVCC). nvvm is pinned: an unpinned one emits PTX this ptxas rejects.
# AMD:    hipcc + ROCm 5.2 device libraries from Debian (apt). build.rs runs it with
#         HIP_PLATFORM=amd (hipcc switches to the NVIDIA path when nvcc is on PATH).
# Idempotent: a second run only checks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
want=${*:-nvidia amd}
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

install_nvidia() {
  local venv="$root/.toolchain/cuda-venv"
  local nvcc
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  nvcc=$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1 || true)
  if [ -z "$nvcc" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
      nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
    nvcc=$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)
  fi
  echo "install-toolchains: nvcc at $nvcc"
  "$nvcc" --version | tail -2
}

install_amd() {
  if ! command -v hipcc >/dev/null 2>&1 || [ ! -d /usr/lib/x86_64-linux-gnu/amdgcn ] && [ ! -d /usr/share/amdgcn ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      hipcc libamdhip64-dev rocm-device-libs >/dev/null
  fi
  echo "install-toolchains: hipcc at $(command -v hipcc)"
  HIP_PLATFORM=amd hipcc --version 2>/dev/null | head -3 || true
}

for w in $want; do
  case "$w" in
    nvidia) install_nvidia ;;
    amd) install_amd ;;
    *) echo "install-toolchains: unknown toolchain '$w' (nvidia, amd)" >&2; exit 2 ;;
  esac
done
