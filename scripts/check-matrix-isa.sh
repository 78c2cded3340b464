#!/usr/bin/env bash
# Checks that the matrix-core kernels compile to matrix instructions on both vendors, from the
# compilers' own output (no GPU needed): PTX mma.sync (NVIDIA, sm_90) and v_mfma (AMD, gfx90a),
# and that gfx1030, which has no matrix cores, has none (its emulation is never launched); and
# that the sm_90a prefill (attention_wgmma.hip) holds warpgroup MMA and TMA loads for sm_90a and
# neither elsewhere (sm_80: its entry points trap, never launched).
#
#   scripts/check-matrix-isa.sh        (after scripts/install-toolchains.sh; CI runs it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/backend-hip/kernels/attention_mma.hip"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
nvcc=${ATTNFORGE_NVCC:-$(ls "$root"/.toolchain/cuda-venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)}
"$nvcc" -x cu -std=c++17 -O3 -I "$root/backend-hip/kernels" -arch=sm_90 --ptx "$src" -o "$tmp/mma.ptx"
(cd "$tmp" && HIP_PLATFORM=amd hipcc --genco -O3 -std=c++17 -I "$root/backend-hip/kernels" \
  --offload-arch=gfx90a --offload-arch=gfx1030 -save-temps "$src" -o mma.hsaco 2>/dev/null)
fail=0
count() { grep -c "$1" "$2" || true; }
for k in attn_prefill_mma_d64_bf16 attn_prefill_mma_d128_f16 attn_prefill_mma_d256_bf16 attn_prefill_mma_qrope_d128_bf16 attn_decode_mma_d128_bf16 attn_decode_mma_qrope_d64_f16; do
  ptx=$(awk -v k="$k" '$0 ~ "\\.entry "k"\\(" {on=1} on && /mma\.sync\.aligned\.m16n8k16/ {n++} on && /^}/ {print n+0; exit}' "$tmp/mma.ptx")
  amd=$(awk -v k="$k" '$0 ~ "^"k":" {on=1} on && /v_mfma_f32_16x16x16/ {n++} on && /s_endpgm/ {print n+0; exit}' "$tmp"/*gfx90a.s)
  rdna=$(awk -v k="$k" '$0 ~ "^"k":" {on=1} on && /v_mfma/ {n++} on && /s_endpgm/ {print n+0; exit}' "$tmp"/*gfx1030.s)
  echo "$k: sm_90 mma.sync $ptx, gfx90a v_mfma $amd, gfx1030 v_mfma $rdna"
  if [ "${ptx:-0}" -eq 0 ] || [ "${amd:-0}" -eq 0 ] || [ "${rdna:-0}" -ne 0 ]; then fail=1; fi
done
wg="$root/backend-hip/kernels/attention_wgmma.hip"
"$nvcc" -x cu -std=c++17 -O3 -I "$root/backend-hip/kernels" -gencode arch=compute_90a,code=compute_90a --ptx "$wg" -o "$tmp/wg90a.ptx"
"$nvcc" -x cu -std=c++17 -O3 -I "$root/backend-hip/kernels" -arch=sm_80 --ptx "$wg" -o "$tmp/wg80.ptx"
for k in attn_prefill_wgmma_d64_f16 attn_prefill_wgmma_d64_bf16 attn_prefill_wgmma_d128_f16 attn_prefill_wgmma_d128_bf16; do
  # Lines of the entry's body up to the next entry (its inline-asm blocks close braces at column 0).
  per() { awk -v k="$k" -v re="$2" 'on && /\.entry / {exit} $0 ~ "\\.entry "k"\\(" {on=1} on && $0 ~ re {n++} END {print n+0}' "$1"; }
  mma=$(per "$tmp/wg90a.ptx" 'wgmma\\.mma_async'); tma=$(per "$tmp/wg90a.ptx" 'cp\\.async\\.bulk\\.tensor'); old=$(per "$tmp/wg80.ptx" 'wgmma\\.')
  echo "$k: sm_90a wgmma.mma_async $mma, cp.async.bulk.tensor $tma; sm_80 wgmma $old"
  if [ "${mma:-0}" -eq 0 ] || [ "${tma:-0}" -eq 0 ] || [ "${old:-0}" -ne 0 ]; then fail=1; fi
done
[ $fail = 0 ] && echo "check-matrix-isa: matrix instructions present on sm_90 and gfx90a, warpgroup MMA and TMA on sm_90a" || { echo "check-matrix-isa: FAILED" >&2; exit 1; }
