#!/usr/bin/env bash
# Multi-GPU run (tensor parallelism, issue 17) on a machine with several GPUs and no Rust
# toolchain, from a device bundle built here (see scripts/gpu-acceptance.sh):
#   bash scripts/gpu-multi.sh [LOGDIR]
# Runs, with N = the number of visible GPUs:
#   1. the full conformance suite (CASES cases) of each HIP backend on each ordinal
#      (`attnforge conformance --backend B --device K`), all at once;
#   2. the sharded check: GQA 32/8 split over N GPUs, one instance and one thread per GPU,
#      prefill in chunks then decode, every dtype, against the unsharded CPU reference
#      (`attnforge conformance --backend B --shards N`), and the same with N = 1;
#   3. the soak: SOAK decode steps on every GPU at once; device memory in use must come back to
#      its level after the warm-up (`--soak`);
#   4. the bundled tests (backend-hip/tests/gpu.rs shards over every GPU) and compute-sanitizer
#      memcheck over the sharded check.
# NVLink multicast stays off (attnforge itself uses no collectives; an engine's NCCL does).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=${BUNDLE:-.device-bundle}
LOG=${1:-gpu-multi-logs}
CASES=${CASES:-300}
SOAK=${SOAK:-10000}
LIMIT=${LIMIT:-480}
BACKENDS=${BACKENDS:-"hip-flash hip-hybrid hip-fused hip-separate"}
mkdir -p "$LOG" && LOG=$(cd "$LOG" && pwd)
for f in "$B"/bin/*.xz "$B"/test/*.xz; do [ -e "$f" ] && xz -d -f -T0 "$f"; done
chmod +x "$B"/bin/* "$B"/test/* 2>/dev/null
N=$(nvidia-smi -L | grep -c '^GPU')
{ nvidia-smi -L; nvidia-smi topo -m; } > "$LOG/device.txt" 2>&1
C="$B/bin/attnforge conformance --no-progress"
pids=()
run() { local name=$1; shift; ( timeout "$LIMIT" "$@" > "$LOG/$name.log" 2>&1; echo $? > "$LOG/$name.rc" ) & pids+=($!); }
for b in $BACKENDS; do
  for k in $(seq 0 $((N - 1))); do
    run "conformance-$b-gpu$k" $C --backend "$b" --device "$k" --cases "$CASES" --report "$LOG/conformance-$b-gpu$k.md"
  done
done
run tests bash "$B/run"
wait "${pids[@]}"
# Sharded runs and the soak on quiet GPUs (the soak reads device-wide memory).
for b in hip-flash hip-hybrid; do
  timeout 200 $C --backend "$b" --shards "$N" > "$LOG/sharded-$b.log" 2>&1; echo $? > "$LOG/sharded-$b.rc"
  timeout 200 $C --backend "$b" --shards 1 > "$LOG/sharded1-$b.log" 2>&1; echo $? > "$LOG/sharded1-$b.rc"
done
timeout 300 $C --backend hip-flash --shards "$N" --dtype bf16 --soak "$SOAK" > "$LOG/soak.log" 2>&1; echo $? > "$LOG/soak.rc"
timeout 300 compute-sanitizer $C --backend hip-flash --shards "$N" --dtype bf16 > "$LOG/memcheck-sharded.log" 2>&1; echo $? > "$LOG/memcheck-sharded.rc"
for rc in "$LOG"/*.rc; do
  n=$(basename "$rc" .rc)
  s=$(grep -h "ERROR SUMMARY" "$LOG/$n.log" | tail -1)
  r=$(grep -hE "^test result|cells passed|FAILED|^sharded|^soak" "$LOG/$n.log" | tail -3 | tr '\n' ' ')
  printf '%-34s exit %-3s %s %s\n' "$n" "$(cat "$rc")" "${s:-}" "${r:-}"
done | tee "$LOG/summary.txt"
