#!/usr/bin/env bash
# GPU acceptance run for the HIP backends, on a machine with a GPU and no Rust toolchain.
#
# Build here (no GPU needed):
#   DEVICE_BUNDLE_EXTRA="attnforge quickstart select_backend engine_decode" \
#     ../shared/tools/device-bundle --workspace
# then, on the GPU machine, from the repository root:
#   bash scripts/gpu-acceptance.sh [LOGDIR]
#
# What it runs, in parallel where the GPU allows (correctness runs only; timings come from the
# bench binary alone on a quiet GPU):
#   1. conformance, CASES (300) cases per op and dtype, for each of the four HIP backends;
#   2. the bundled test binaries (backend-hip/tests/gpu.rs and the rest of the workspace);
#   3. compute-sanitizer with default settings for each tool (memcheck, racecheck, synccheck,
#      initcheck) over the conformance suite (SAN_CASES cases; racecheck RACE_CASES) for each
#      backend, and memcheck over the long-problem GPU test;
#   4. quickstart, select_backend, and engine_decode on each backend (cudarc memory on the
#      program's stream, checked in lockstep against the CPU reference);
#   5. then, alone on the GPU, `attnforge bench --mode engine` (BENCH_ENGINE=0 skips it): a decode step through
#      the owned API and through views, same run; with BENCH_DECODE=1 first `attnforge bench --mode decode-graph`
#      and `bench/torch_baseline.py --decode-graph` (eager / plan+run / graph replay per layer
#      against PyTorch SDPA flash and cuDNN, eager and under a CUDA graph); with BENCH_WINDOW=1
#      `attnforge bench --mode window` and `bench/torch_baseline.py --window` (sliding-window
#      decode against full attention at L=131072); with BENCH_MERGE=1 `attnforge bench --mode merge`
#      and `bench/torch_baseline.py --merge` (merge_states against the same merge in PyTorch); with
#      BENCH_FP8=1 `attnforge bench --mode fp8` and `bench/torch_baseline.py --fp8` (decode over an
#      FP8 e4m3 KV cache against a bf16 one, and PyTorch's dequantise-then-SDPA).
# Every log goes to LOGDIR; the last lines printed are one summary line per run.
set -uo pipefail
B=${BUNDLE:-.device-bundle}
LOG=${1:-gpu-logs}
CASES=${CASES:-300}
SAN_CASES=${SAN_CASES:-20}
RACE_CASES=${RACE_CASES:-4}
LIMIT=${LIMIT:-480}
BACKENDS=${BACKENDS:-"hip-flash hip-hybrid hip-fused hip-separate"}
# Parts (1 = run): conformance, sanitizers, tests + examples. Two device calls can split them.
CONFORM=${CONFORM:-1}
SANITIZE=${SANITIZE:-1}
TESTS=${TESTS:-1}
mkdir -p "$LOG"
for f in "$B"/bin/*.xz "$B"/test/*.xz; do [ -e "$f" ] && xz -d -f -T0 "$f"; done
chmod +x "$B"/bin/* "$B"/test/* 2>/dev/null
gputest=$(ls "$B"/test/gpu-* 2>/dev/null | grep -v '\.dir$' | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$LOG/device.txt" 2>&1
compute-sanitizer --version > "$LOG/sanitizer-version.txt" 2>&1

pids=()
LOG=$(cd "$LOG" && pwd)
run_in() { # dir, name, command...
  local dir=$1 name=$2; shift 2
  ( cd "$dir" && timeout "$LIMIT" "$@" > "$LOG/$name.log" 2>&1; echo $? > "$LOG/$name.rc" ) &
  pids+=($!)
}
run() { run_in . "$@"; }
for b in $BACKENDS; do
  if [ "$CONFORM" = 1 ]; then
    run "conformance-$b" "$B/bin/attnforge" conformance --no-progress --require "$b" --backend "$b" --cases "$CASES" --report "$LOG/conformance-$b.md" --json "$LOG/conformance-$b.json" --junit "$LOG/conformance-$b.xml"
  fi
  if [ "$SANITIZE" = 1 ]; then
    run "memcheck-$b" compute-sanitizer "$B/bin/attnforge" conformance --no-progress --backend "$b" --cases "$SAN_CASES"
    run "initcheck-$b" compute-sanitizer --tool initcheck "$B/bin/attnforge" conformance --no-progress --backend "$b" --cases "$SAN_CASES"
    run "synccheck-$b" compute-sanitizer --tool synccheck "$B/bin/attnforge" conformance --no-progress --backend "$b" --cases "$SAN_CASES"
    run "racecheck-$b" compute-sanitizer --tool racecheck "$B/bin/attnforge" conformance --no-progress --backend "$b" --cases "$RACE_CASES"
  fi
  if [ "$TESTS" = 1 ] && [ -x "$B/bin/engine_decode" ]; then
    run "engine-decode-$b" env ATTNFORGE_BACKEND="$b" "$B/bin/engine_decode"
  fi
done
if [ "$SANITIZE" = 1 ] && [ -n "$gputest" ]; then
  run_in backend-hip memcheck-long-problems compute-sanitizer "$PWD/$gputest" --exact long_problems_match_the_reference --test-threads 1
fi
if [ "$TESTS" = 1 ]; then
  run tests bash "$B/run"
  run quickstart "$B/bin/quickstart"
  run select-backend "$B/bin/select_backend" --backend hip-hybrid
fi
wait "${pids[@]}"
if [ "${BENCH_DECODE:-0}" = 1 ] && [ -x "$B/bin/attnforge" ]; then
  # Plan / run / graph replay against PyTorch SDPA (flash, cuDNN; eager and CUDA graph), same call.
  timeout "$LIMIT" "$B/bin/attnforge" bench --mode decode-graph --json "$LOG/bench-decode-graph.json" > "$LOG/bench-decode-graph.log" 2>&1; echo $? > "$LOG/bench-decode-graph.rc"
  timeout "$LIMIT" python3 bench/torch_baseline.py --decode-graph --json "$LOG/torch-decode-graph.json" > "$LOG/torch-decode-graph.log" 2>&1; echo $? > "$LOG/torch-decode-graph.rc"
  # The plots: ours next to PyTorch's, per shape, and % of the copy's bandwidth.
  "$B/bin/attnforge" bench --from "$LOG/bench-decode-graph.json" --torch "$LOG/torch-decode-graph.json" --plots "$LOG/plots" > "$LOG/plots.log" 2>&1; echo $? > "$LOG/plots.rc"
fi
if [ "${BENCH_WINDOW:-0}" = 1 ] && [ -x "$B/bin/attnforge" ]; then
  timeout "$LIMIT" "$B/bin/attnforge" bench --mode window --json "$LOG/bench-window.json" > "$LOG/bench-window.log" 2>&1; echo $? > "$LOG/bench-window.rc"
  timeout "$LIMIT" python3 bench/torch_baseline.py --window --json "$LOG/torch-window.json" > "$LOG/torch-window.log" 2>&1; echo $? > "$LOG/torch-window.rc"
  "$B/bin/attnforge" bench --from "$LOG/bench-window.json" --torch "$LOG/torch-window.json" --plots "$LOG/plots-window" > "$LOG/plots-window.log" 2>&1; echo $? > "$LOG/plots-window.rc"
fi
if [ "${BENCH_MERGE:-0}" = 1 ] && [ -x "$B/bin/attnforge" ]; then
  timeout "$LIMIT" "$B/bin/attnforge" bench --mode merge --json "$LOG/bench-merge.json" > "$LOG/bench-merge.log" 2>&1; echo $? > "$LOG/bench-merge.rc"
  timeout "$LIMIT" python3 bench/torch_baseline.py --merge --json "$LOG/torch-merge.json" > "$LOG/torch-merge.log" 2>&1; echo $? > "$LOG/torch-merge.rc"
fi
if [ "${BENCH_FP8:-0}" = 1 ] && [ -x "$B/bin/attnforge" ]; then
  timeout "$LIMIT" "$B/bin/attnforge" bench --mode fp8 --json "$LOG/bench-fp8.json" > "$LOG/bench-fp8.log" 2>&1; echo $? > "$LOG/bench-fp8.rc"
  timeout "$LIMIT" python3 bench/torch_baseline.py --fp8 --json "$LOG/torch-fp8.json" > "$LOG/torch-fp8.log" 2>&1; echo $? > "$LOG/torch-fp8.rc"
  "$B/bin/attnforge" bench --from "$LOG/bench-fp8.json" --torch "$LOG/torch-fp8.json" --plots "$LOG/plots-fp8" > "$LOG/plots-fp8.log" 2>&1; echo $? > "$LOG/plots-fp8.rc"
fi
if [ "${BENCH_ENGINE:-1}" = 1 ] && [ -x "$B/bin/attnforge" ]; then
  timeout "$LIMIT" "$B/bin/attnforge" bench --mode engine --json "$LOG/bench-engine.json" > "$LOG/bench-engine.log" 2>&1; echo $? > "$LOG/bench-engine.rc"
fi

for rc in "$LOG"/*.rc; do
  n=$(basename "$rc" .rc)
  s=$(grep -h "ERROR SUMMARY" "$LOG/$n.log" | tail -1)
  r=$(grep -hE "^test result|cases|passed|FAILED" "$LOG/$n.log" | tail -1)
  printf '%-28s exit %-3s %s %s\n' "$n" "$(cat "$rc")" "${s:-}" "${s:+|} ${r:-}"
done | tee "$LOG/summary.txt"
