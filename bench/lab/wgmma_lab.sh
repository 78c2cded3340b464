#!/usr/bin/env bash
# Builds and runs bench/lab/wgmma_prefill_lab.cu on the GPU machine (nvcc there, no Rust): the
# checks, the checks and timings, PyTorch's FlashAttention-2 and cuDNN on the same 48 shapes,
# then the checks alone under compute-sanitizer (memcheck, then racecheck). Every step has a
# time limit, so a hung kernel costs one step, not the call. Logs go to $1 (default ./wglab-out).
set -u
out=${1:-wglab-out}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
nvcc -O3 -std=c++17 -lineinfo -gencode arch=compute_90a,code=sm_90a -Xptxas -v -I backend-hip/kernels \
  bench/lab/wgmma_prefill_lab.cu -lcuda -o "$out/wglab" > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
timeout 60 "$out/wglab" check > "$out/check.log" 2>&1; echo "check exit $?" | tee -a "$out/summary.txt"
timeout 200 "$out/wglab" > "$out/lab.log" 2>&1; echo "lab exit $?" | tee -a "$out/summary.txt"
timeout 150 python3 bench/torch_baseline.py --mma --json "$out/torch.json" > "$out/torch.log" 2>&1; echo "torch exit $?" | tee -a "$out/summary.txt"
timeout ${SAN_LIMIT:-120} compute-sanitizer --tool memcheck "$out/wglab" check > "$out/memcheck.log" 2>&1; echo "memcheck exit $?" | tee -a "$out/summary.txt"
timeout ${SAN_LIMIT:-120} compute-sanitizer --tool racecheck "$out/wglab" check > "$out/racecheck.log" 2>&1; echo "racecheck exit $?" | tee -a "$out/summary.txt"
grep -E "check|time|ALL|FAIL" "$out/lab.log" "$out/check.log" | tee -a "$out/summary.txt" > /dev/null
tail -3 "$out/memcheck.log" "$out/racecheck.log" >> "$out/summary.txt"
