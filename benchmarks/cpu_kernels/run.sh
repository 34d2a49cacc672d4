#!/usr/bin/env bash
# Build and run the C++ kernel microbenchmarks (x86-64 with AVX-512, g++ with OpenMP). They include
# the kernels' headers from csrc/ directly, so they measure the working tree's code.
#   bash benchmarks/cpu_kernels/run.sh            # everything, 2 threads
# Nothing else should run meanwhile (2-core machines: a background job halves every number).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
csrc="$here/../../csrc"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-O3 -fopenmp -fno-math-errno -ffp-contract=fast -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma -mavx2 -I"$csrc")
for cfg in "8 2" "12 2" "6 4" "4 4" "16 1"; do
  set -- $cfg
  g++ "${flags[@]}" -DMR_=$1 -DNV_=$2 -DBS_=$((($1 * 32) > 128 ? $1 * 32 : 128)) "$here/micro_kernel.cpp" -o "$out/mk_$1_$2"
done
for name in linear_products infonce_forward_parts infonce_backward_parts; do
  g++ "${flags[@]}" "$here/$name.cpp" -o "$out/$name"
done
echo "== micro-kernel, one thread (kc groups)"
for kg in "256 1" "768 16" "256 16"; do
  set -- $kg
  for cfg in 8_2 12_2 6_4 4_4 16_1; do "$out/mk_$cfg" "$1" "$2" $((20000000 / ($1 * $2))); done
done
echo "== dense-layer products, warm caches"; "$out/linear_products"
echo "== dense-layer products, caches flushed before each call"; FLUSH=1 "$out/linear_products"
echo "== InfoNCE forward"; "$out/infonce_forward_parts" 2 | tail -3
echo "== InfoNCE backward"; "$out/infonce_backward_parts" 2 | tail -3
