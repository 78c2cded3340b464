#!/usr/bin/env bash
# Builds and runs bench/lab/wgmma_prefill_lab.cu on the GPU machine (nvcc there, no Rust): the
# checks alone under compute-sanitizer (memcheck, then racecheck), the checks and timings, then
# PyTorch's FlashAttention-2 and cuDNN on the same 48 shapes. Logs go to $1 (default ./wglab-out).
set -u
out=${1:-wglab-out}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
nvcc -O3 -std=c++17 -lineinfo -gencode arch=compute_90a,code=sm_90a -Xptxas -v -I backend-hip/kernels \
  bench/lab/wgmma_prefill_lab.cu -lcuda -o "$out/wglab" > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
compute-sanitizer --tool memcheck "$out/wglab" check > "$out/memcheck.log" 2>&1; echo "memcheck exit $?" | tee -a "$out/summary.txt"
compute-sanitizer --tool racecheck "$out/wglab" check > "$out/racecheck.log" 2>&1; echo "racecheck exit $?" | tee -a "$out/summary.txt"
"$out/wglab" > "$out/lab.log" 2>&1; echo "lab exit $?" | tee -a "$out/summary.txt"
python3 bench/torch_baseline.py --mma --json "$out/torch.json" > "$out/torch.log" 2>&1; echo "torch exit $?" | tee -a "$out/summary.txt"
grep -E "check|time|ALL|FAIL" "$out/lab.log" | tee -a "$out/summary.txt"
